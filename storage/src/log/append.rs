//! The write side of a log: validate, check, stamp, one positioned write per batch, roll.
//!
//! A batch is validated (every check of design.md §2) before the writer lock is taken; under
//! the lock the caller's pre-append check runs with the offset the batch will get, so a check
//! such as a producer's sequence number is atomic with offset assignment. Index entries are
//! buffered and written [`PENDING_INDEX_ENTRIES`] at a time (they need no sync: recovery checks
//! and rebuilds them). A failed write poisons the log.

use super::Log;
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::format::{BatchView, stamp_base_offset, stamp_leader_epoch};
use crate::index::{OFFSET_ENTRY_LEN, OffsetEntry, TIME_ENTRY_LEN, TimeEntry};
use crate::io::{FaultOp, remove_if_exists, sync_dir};
use crate::recovery::Tail;
use crate::segment::{CHECKPOINT, Segment, SegmentFiles};
use crate::stats::Stats;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The leader epoch stamped on every batch: 0 until replication gives partitions leaders and
/// epochs (design.md §7); stamping it means no producer's value is ever stored.
const LEADER_EPOCH: u32 = 0;

/// Index entries buffered by the appender before one write to the index files.
const PENDING_INDEX_ENTRIES: usize = 32;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset given to the batch's first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// Broker append time, ms since the epoch (never decreases within a log).
    pub append_time_ms: i64,
}

/// The appender's state; only the holder of `Log::writer` touches it.
#[derive(Debug)]
pub(super) struct Writer {
    pub active: Arc<Segment>,
    /// Where appends to `active` go on.
    pub tail: Tail,
    /// Encoded index entries not yet written to the index files.
    pub pending_index: Vec<u8>,
    pub pending_time: Vec<u8>,
}

impl Writer {
    pub(super) fn new(active: Arc<Segment>, tail: Tail) -> Self {
        Self {
            active,
            tail,
            pending_index: Vec::with_capacity(PENDING_INDEX_ENTRIES * OFFSET_ENTRY_LEN),
            pending_time: Vec::with_capacity((PENDING_INDEX_ENTRIES + 1) * TIME_ENTRY_LEN),
        }
    }
}

impl Log {
    /// Validates `batch` (every check of design.md §2 against this log's `max_batch_bytes`),
    /// stamps its base offset in place and writes it to the active segment with one
    /// positioned write, rolling the segment first if the batch does not fit or it is too old.
    ///
    /// The batch is readable at once under `Interval` and `Never`; under `Always` once a
    /// [`flush`](Self::flush) has synced it. Nothing of an invalid batch is written.
    pub fn append(&self, batch: &mut [u8]) -> Result<AppendInfo> {
        self.append_with(batch, |_, _| Ok::<(), Error>(()))
            .map(|(info, ())| info)
    }

    /// [`append`](Self::append) with a check run under the writer lock, after validation and
    /// before anything is written: `check(view, base_offset)` sees the validated batch and the
    /// offset it will get, and no other append can run between the check and the write. An
    /// `Err` from it is returned and nothing is written; an `Ok` value is handed back with the
    /// append's result. The check must be quick and must not call back into this log.
    ///
    /// This is where state atomic with offset assignment lives: an idempotent producer's next
    /// sequence number, a dedup key's first offset.
    pub fn append_with<T, E>(
        &self,
        batch: &mut [u8],
        check: impl FnOnce(&BatchView<'_>, u64) -> Result<T, E>,
    ) -> Result<(AppendInfo, T), E>
    where
        E: From<Error>,
    {
        let view =
            BatchView::new(batch, self.config.max_batch_bytes as usize).map_err(Error::from)?;
        let record_count = u64::from(view.record_count());
        let len = batch.len() as u64;
        let mut writer = self.lock_writer();
        self.check_writable()?;
        let checked = check(&view, writer.tail.next_offset)?;
        let now = self.shared.clock.now_ms().max(writer.tail.last_append_ms);
        let tail = writer.tail;
        let relative_end = tail.next_offset + record_count - writer.active.base_offset;
        let full = tail.position + len > tail.capacity || relative_end > u64::from(u32::MAX);
        let old = tail.first_append_ms.is_some_and(|first| {
            now.saturating_sub(first) >= self.config.segment_age.as_millis() as i64
        });
        if tail.position > 0 && (full || old) {
            self.roll(&mut writer)?;
        }
        let base_offset = writer.tail.next_offset;
        stamp_base_offset(batch, base_offset);
        stamp_leader_epoch(batch, LEADER_EPOCH);
        let position = writer.tail.position;
        let active = Arc::clone(&writer.active);
        let files = self.write_files(&active)?;
        let written = match &files.writer {
            Some(handles) => self
                .shared
                .faults
                .check(FaultOp::Write, || active.path("log"))
                .and_then(|()| handles.log.write_all_at(batch, position)),
            None => Err(std::io::Error::other("segment not open for writing")),
        };
        if let Err(e) = written {
            return Err(self
                .poison(Error::io("write", active.path("log"), e))
                .into());
        }
        let relative_offset = (base_offset - active.base_offset) as u32;
        let index_due = writer
            .tail
            .last_indexed
            .is_none_or(|last| position >= last + u64::from(self.config.index_interval_bytes));
        if index_due {
            OffsetEntry {
                relative_offset,
                position: position as u32,
            }
            .encode(&mut writer.pending_index);
            TimeEntry {
                append_ms: now,
                relative_offset,
            }
            .encode(&mut writer.pending_time);
            writer.tail.last_indexed = Some(position);
        }
        let tail = &mut writer.tail;
        tail.position += len;
        tail.next_offset += record_count;
        tail.last_batch = Some(base_offset);
        tail.last_append_ms = now;
        tail.first_append_ms.get_or_insert(now);
        if writer.pending_index.len() >= PENDING_INDEX_ENTRIES * OFFSET_ENTRY_LEN {
            self.write_pending_index(&mut writer, &files)?;
        }
        let advanced = self.publish(&writer);
        drop(writer);
        if advanced {
            self.notify_listener();
        }
        Stats::add(&self.stats.appended_batches, 1);
        Stats::add(&self.stats.appended_records, record_count);
        Stats::add(&self.stats.appended_bytes, len);
        let info = AppendInfo {
            base_offset,
            last_offset: base_offset + record_count - 1,
            append_time_ms: now,
        };
        Ok((info, checked))
    }

    /// Makes the writer's state visible to readers; returns whether the high watermark moved
    /// (the caller tells the listener once it released its locks).
    fn publish(&self, writer: &Writer) -> bool {
        let tail = &writer.tail;
        writer.active.publish(
            tail.position,
            tail.next_offset,
            tail.index_entries,
            tail.time_entries,
            tail.last_append_ms,
        );
        self.log_end.store(tail.next_offset, Ordering::Release);
        self.config.durability != Durability::Always
            && self.advance_high_watermark(tail.next_offset)
    }

    /// Writes the buffered index entries to the active segment's index files.
    fn write_pending_index(&self, writer: &mut Writer, files: &SegmentFiles) -> Result<()> {
        let Some(handles) = &files.writer else {
            return Ok(());
        };
        let active = Arc::clone(&writer.active);
        let index_path = || active.path("index");
        if !writer.pending_index.is_empty() {
            let at = writer.tail.index_entries * OFFSET_ENTRY_LEN as u64;
            let written = self
                .shared
                .faults
                .check(FaultOp::Write, index_path)
                .and_then(|()| handles.index.write_all_at(&writer.pending_index, at));
            if let Err(e) = written {
                return Err(self.poison(Error::io("write", index_path(), e)));
            }
            writer.tail.index_entries += (writer.pending_index.len() / OFFSET_ENTRY_LEN) as u64;
            writer.pending_index.clear();
        }
        if !writer.pending_time.is_empty() {
            let at = writer.tail.time_entries * TIME_ENTRY_LEN as u64;
            if let Err(e) = handles.time.write_all_at(&writer.pending_time, at) {
                return Err(self.poison(Error::io("write", active.path("timeindex"), e)));
            }
            writer.tail.time_entries += (writer.pending_time.len() / TIME_ENTRY_LEN) as u64;
            writer.pending_time.clear();
        }
        Ok(())
    }

    /// Finishes the active segment: index entries written, a last time entry for its newest
    /// batch, files cut to their lengths and synced, its checkpoint removed. Used by roll and
    /// close.
    pub(super) fn seal_active(&self, writer: &mut Writer) -> Result<()> {
        let active = Arc::clone(&writer.active);
        let files = self.write_files(&active)?;
        if let Some(last) = writer.tail.last_batch {
            TimeEntry {
                append_ms: writer.tail.last_append_ms,
                relative_offset: (last - active.base_offset) as u32,
            }
            .encode(&mut writer.pending_time);
        }
        self.write_pending_index(writer, &files)?;
        let Some(handles) = &files.writer else {
            return Ok(());
        };
        let tail = writer.tail;
        for (file, len, extension) in [
            (&handles.log, tail.position, "log"),
            (
                &handles.index,
                tail.index_entries * OFFSET_ENTRY_LEN as u64,
                "index",
            ),
            (
                &handles.time,
                tail.time_entries * TIME_ENTRY_LEN as u64,
                "timeindex",
            ),
        ] {
            let path = active.path(extension);
            // Cut only down to what was published: readers never look past it.
            file.set_len(len)
                .map_err(|e| self.poison(Error::io("truncate", &path, e)))?;
            self.shared
                .faults
                .check(FaultOp::Sync, || path.clone())
                .and_then(|()| file.sync_all())
                .map_err(|e| self.poison(Error::io("fsync", &path, e)))?;
        }
        self.publish(writer);
        // A sealed segment is durable whole; its checkpoint says nothing more.
        remove_if_exists(&active.path(CHECKPOINT))
    }

    /// Seals the active segment and starts a new one at the next offset.
    fn roll(&self, writer: &mut Writer) -> Result<()> {
        let old = Arc::clone(&writer.active);
        self.seal_active(writer)?;
        old.set_sealed();
        // The cached files are the write handles; the next reader reopens it sealed.
        self.shared.cache.remove(self.key(&old));
        let capacity = self.config.segment_bytes;
        let next_offset = writer.tail.next_offset;
        let segment = Segment::create(
            Arc::clone(&self.dir),
            next_offset,
            capacity,
            self.config.index_capacity(),
        )
        .map_err(|e| self.poison(e))?;
        sync_dir(&self.dir).map_err(|e| self.poison(e))?;
        let segment = Arc::new(segment);
        self.write_segments().push(Arc::clone(&segment));
        let tail = Tail::empty(next_offset, capacity, writer.tail.last_append_ms);
        *writer = Writer::new(segment, tail);
        Stats::add(&self.stats.rolled_segments, 1);
        tracing::debug!(dir = %self.dir.display(), base_offset = next_offset, "rolled segment");
        Ok(())
    }
}
