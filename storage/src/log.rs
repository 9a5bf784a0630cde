//! A partition: an ordered list of segments, the last one active, and the offsets they hold.
//!
//! One writer appends at a time (a `Mutex` held for one positioned write per batch); any
//! number of readers read at the same time without taking it: they find their segment under a
//! read lock held for a binary search, load the published lengths with `Acquire` and slice the
//! segment's map. A reader never sees an offset at or past the high watermark.
//!
//! Durability (design.md §3): under [`Durability::Always`] an append is written to the page
//! cache and becomes readable, and acknowledged, only when a later [`Log::flush`] has
//! fdatasynced it. Concurrent `flush` calls coalesce (group commit): one caller syncs for all
//! writes made before its sync began while the others wait. Under `Interval` and `Never` the
//! high watermark follows the writes and a flusher syncs in the background.

use crate::cache::Key;
use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::format::{BatchView, stamp_base_offset};
use crate::index::{OFFSET_ENTRY_LEN, OffsetEntry, TIME_ENTRY_LEN, TimeEntry};
use crate::segment::{CHECKPOINT, Checkpoint, Segment, SegmentFiles};
use crate::stats::{Stats, StatsSnapshot};
use crate::store::Shared;
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};

/// Index entries buffered by the appender before one write to the index files.
const PENDING_INDEX_ENTRIES: usize = 32;

/// Name of the file that says the log was closed cleanly.
pub(crate) const CLEAN_MARKER: &str = ".clean-shutdown";

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

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches, starting with the one that holds the offset asked for; empty at the high
    /// watermark. A slice of the segment's map: no copy.
    pub batches: Bytes,
    /// The high watermark when the read began.
    pub high_watermark: u64,
}

/// One partition log. Open it through a [`Store`](crate::Store).
#[derive(Debug)]
pub struct Log {
    id: u64,
    dir: Arc<Path>,
    config: LogConfig,
    shared: Arc<Shared>,
    /// Segments in offset order; the last is active. Never empty.
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    /// One past the last readable offset.
    high_watermark: AtomicU64,
    /// One past the last offset written.
    log_end: AtomicU64,
    /// First offset retained.
    earliest: AtomicU64,
    sync: Mutex<SyncState>,
    synced: Condvar,
    poisoned: AtomicBool,
    closed: AtomicBool,
    stats: Stats,
    /// Called with the new high watermark each time it advances (see `on_high_watermark`).
    listener: OnceLock<Listener>,
}

/// The registered listener (a newtype, so the log can derive `Debug`).
struct Listener(HighWatermarkListener);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// A callback run with the new high watermark each time it advances.
pub type HighWatermarkListener = Box<dyn Fn(u64) + Send + Sync>;

/// The appender's state; only the holder of `Log::writer` touches it.
#[derive(Debug)]
pub(crate) struct Writer {
    pub active: Arc<Segment>,
    /// Bytes written to the active segment.
    pub position: u64,
    /// Preallocated size of the active segment's log file.
    pub capacity: u64,
    pub next_offset: u64,
    /// Position of the last index entry, if any.
    pub last_indexed: Option<u64>,
    /// Base offset of the last batch written to the active segment, if any.
    pub last_batch: Option<u64>,
    /// Entries already written to the index files.
    pub index_written: u64,
    pub time_written: u64,
    pub pending_index: Vec<u8>,
    pub pending_time: Vec<u8>,
    pub last_append_ms: i64,
    /// Append time of the active segment's first batch, for roll by age.
    pub first_append_ms: Option<i64>,
}

#[derive(Debug)]
struct SyncState {
    /// A caller is in fdatasync now.
    syncing: bool,
    /// Offsets below this are on disk.
    durable: u64,
}

impl Log {
    pub(crate) fn from_parts(
        id: u64,
        dir: Arc<Path>,
        config: LogConfig,
        shared: Arc<Shared>,
        segments: Vec<Arc<Segment>>,
        writer: Writer,
    ) -> Self {
        let next = writer.next_offset;
        let earliest = segments.first().map_or(next, |s| s.base_offset);
        Self {
            id,
            dir,
            config,
            shared,
            segments: RwLock::new(segments),
            writer: Mutex::new(writer),
            high_watermark: AtomicU64::new(next),
            log_end: AtomicU64::new(next),
            earliest: AtomicU64::new(earliest),
            sync: Mutex::new(SyncState {
                syncing: false,
                durable: next,
            }),
            synced: Condvar::new(),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stats: Stats::default(),
            listener: OnceLock::new(),
        }
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// First offset retained.
    pub fn earliest_offset(&self) -> u64 {
        self.earliest.load(Ordering::Acquire)
    }

    /// One past the last offset written (acknowledged or not).
    pub fn log_end_offset(&self) -> u64 {
        self.log_end.load(Ordering::Acquire)
    }

    /// One past the last readable (under `Always`: durable) offset.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Bytes held in segment files.
    pub fn size_bytes(&self) -> u64 {
        self.read_segments().iter().map(|s| s.len()).sum()
    }

    /// Segments held, the active one included.
    pub fn segment_count(&self) -> usize {
        self.read_segments().len()
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        // Writers of this lock swap whole Arcs, so a panic cannot leave it half-changed.
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_segments(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_sync(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, segment: &Segment) -> Key {
        (self.id, segment.base_offset)
    }

    /// The open files of `segment`, from the store's cache or freshly opened.
    fn files(&self, segment: &Segment) -> Result<Arc<SegmentFiles>> {
        let key = self.key(segment);
        if let Some(files) = self.shared.cache.get(key) {
            return Ok(files);
        }
        let files = if segment.is_sealed() {
            segment.open_sealed(self.config.index_interval_bytes)?
        } else {
            segment.open_active()?
        };
        Ok(self.shared.cache.insert(key, Arc::new(files)))
    }

    /// The active segment's files with their write handles.
    fn write_files(&self, segment: &Segment) -> Result<Arc<SegmentFiles>> {
        let files = self.files(segment)?;
        if files.writer.is_some() {
            return Ok(files);
        }
        // A reader that raced a roll may have cached the segment read-only; reopen it for
        // writing (only reached for the active segment, which is never sealed).
        self.shared.cache.remove(self.key(segment));
        Ok(self
            .shared
            .cache
            .insert(self.key(segment), Arc::new(segment.open_active()?)))
    }

    fn poison(&self, error: Error) -> Error {
        self.poisoned.store(true, Ordering::Release);
        tracing::error!(dir = %self.dir.display(), %error, "log poisoned: refusing writes until reopened");
        error
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                dir: self.dir.to_path_buf(),
            });
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                dir: self.dir.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Validates `batch` (every check of design.md §2 against this log's `max_batch_bytes`),
    /// stamps its base offset in place and writes it to the active segment with one
    /// positioned write, rolling the segment first if the batch does not fit or it is too old.
    ///
    /// The batch is readable at once under `Interval` and `Never`; under `Always` once a
    /// [`flush`](Self::flush) has synced it. Nothing of an invalid batch is written.
    pub fn append(&self, batch: &mut [u8]) -> Result<AppendInfo> {
        let view = BatchView::new(batch, self.config.max_batch_bytes as usize)?;
        let record_count = u64::from(view.record_count());
        let len = batch.len() as u64;
        let mut writer = self.lock_writer();
        self.check_writable()?;
        let now = self.shared.clock.now_ms().max(writer.last_append_ms);
        let relative_end = writer.next_offset + record_count - writer.active.base_offset;
        let full = writer.position + len > writer.capacity || relative_end > u64::from(u32::MAX);
        let old = writer.first_append_ms.is_some_and(|first| {
            now.saturating_sub(first) >= self.config.segment_age.as_millis() as i64
        });
        if writer.position > 0 && (full || old) {
            self.roll(&mut writer)?;
        }
        let base_offset = writer.next_offset;
        stamp_base_offset(batch, base_offset);
        let position = writer.position;
        let active = Arc::clone(&writer.active);
        let files = self.write_files(&active)?;
        let written = match &files.writer {
            Some(handles) => handles.log.write_all_at(batch, position),
            None => Err(std::io::Error::other("segment not open for writing")),
        };
        if let Err(e) = written {
            return Err(self.poison(Error::io("write", active.path("log"), e)));
        }
        let relative_offset = (base_offset - active.base_offset) as u32;
        let index_due = writer
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
            writer.last_indexed = Some(position);
        }
        writer.position += len;
        writer.next_offset += record_count;
        writer.last_batch = Some(base_offset);
        writer.last_append_ms = now;
        writer.first_append_ms.get_or_insert(now);
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
        Ok(AppendInfo {
            base_offset,
            last_offset: base_offset + record_count - 1,
            append_time_ms: now,
        })
    }

    /// Makes the writer's state visible to readers; returns whether the high watermark moved
    /// (the caller tells the listener once it released its locks).
    fn publish(&self, writer: &Writer) -> bool {
        writer.active.publish(
            writer.position,
            writer.next_offset,
            writer.index_written,
            writer.time_written,
            writer.last_append_ms,
        );
        self.log_end.store(writer.next_offset, Ordering::Release);
        self.config.durability != Durability::Always
            && self.advance_high_watermark(writer.next_offset)
    }

    /// Moves the high watermark forward to `to`, never back; returns whether it moved.
    fn advance_high_watermark(&self, to: u64) -> bool {
        self.high_watermark.fetch_max(to, Ordering::AcqRel) < to
    }

    /// Tells the listener, if any, the current high watermark. Called with no lock held.
    fn notify_listener(&self) {
        if let Some(Listener(listener)) = self.listener.get() {
            listener(self.high_watermark());
        }
    }

    /// Registers the callback run (on the thread that advanced it: an appender or a flusher,
    /// never under a lock) with the new high watermark each time it advances, so an async
    /// caller can wake long polls without polling. One listener per log; returns `false` if
    /// one was already set. The callback must be cheap and must not call back into the log.
    pub fn on_high_watermark(&self, listener: HighWatermarkListener) -> bool {
        self.listener.set(Listener(listener)).is_ok()
    }

    /// Writes the buffered index entries to the active segment's index files.
    fn write_pending_index(&self, writer: &mut Writer, files: &SegmentFiles) -> Result<()> {
        let Some(handles) = &files.writer else {
            return Ok(());
        };
        let active = &writer.active;
        if !writer.pending_index.is_empty() {
            let at = writer.index_written * OFFSET_ENTRY_LEN as u64;
            if let Err(e) = handles.index.write_all_at(&writer.pending_index, at) {
                return Err(self.poison(Error::io("write", active.path("index"), e)));
            }
            writer.index_written += (writer.pending_index.len() / OFFSET_ENTRY_LEN) as u64;
            writer.pending_index.clear();
        }
        if !writer.pending_time.is_empty() {
            let at = writer.time_written * TIME_ENTRY_LEN as u64;
            if let Err(e) = handles.time.write_all_at(&writer.pending_time, at) {
                return Err(self.poison(Error::io("write", active.path("timeindex"), e)));
            }
            writer.time_written += (writer.pending_time.len() / TIME_ENTRY_LEN) as u64;
            writer.pending_time.clear();
        }
        Ok(())
    }

    /// Finishes the active segment: index entries written, a last time entry for its newest
    /// batch, files cut to their lengths and synced. Used by roll and close.
    fn seal_files(&self, writer: &mut Writer, files: &SegmentFiles) -> Result<()> {
        if let Some(last) = writer.last_batch {
            TimeEntry {
                append_ms: writer.last_append_ms,
                relative_offset: (last - writer.active.base_offset) as u32,
            }
            .encode(&mut writer.pending_time);
        }
        self.write_pending_index(writer, files)?;
        let Some(handles) = &files.writer else {
            return Ok(());
        };
        let active = Arc::clone(&writer.active);
        for (file, len, extension) in [
            (&handles.log, writer.position, "log"),
            (
                &handles.index,
                writer.index_written * OFFSET_ENTRY_LEN as u64,
                "index",
            ),
            (
                &handles.time,
                writer.time_written * TIME_ENTRY_LEN as u64,
                "timeindex",
            ),
        ] {
            let path = active.path(extension);
            // Cut only down to what was published: readers never look past it.
            file.set_len(len)
                .map_err(|e| self.poison(Error::io("truncate", &path, e)))?;
            file.sync_all()
                .map_err(|e| self.poison(Error::io("fsync", &path, e)))?;
        }
        self.publish(writer);
        // A sealed segment is durable whole; its checkpoint says nothing more.
        let checkpoint = active.path(CHECKPOINT);
        match std::fs::remove_file(&checkpoint) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("unlink", checkpoint, e)),
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one at the next offset.
    fn roll(&self, writer: &mut Writer) -> Result<()> {
        let old = Arc::clone(&writer.active);
        let files = self.write_files(&old)?;
        self.seal_files(writer, &files)?;
        drop(files);
        old.set_sealed();
        // The cached files are the write handles; the next reader reopens it sealed.
        self.shared.cache.remove(self.key(&old));
        let capacity = self.config.segment_bytes;
        let segment = Segment::create(
            Arc::clone(&self.dir),
            writer.next_offset,
            capacity,
            self.config.index_capacity(),
        )
        .map_err(|e| self.poison(e))?;
        sync_dir(&self.dir).map_err(|e| self.poison(e))?;
        let segment = Arc::new(segment);
        self.write_segments().push(Arc::clone(&segment));
        *writer = Writer::fresh(segment, capacity, writer.last_append_ms);
        Stats::add(&self.stats.rolled_segments, 1);
        tracing::debug!(dir = %self.dir.display(), base_offset = writer.next_offset, "rolled segment");
        Ok(())
    }

    /// Group commit: fdatasyncs everything written so far and advances the durable offset (and,
    /// under `Always`, the high watermark) to it. Returns the durable offset.
    ///
    /// Callers that arrive while a sync is running wait for it and, if it did not cover their
    /// writes, one of them runs the next: one fdatasync per group of appends, never one per
    /// record. After a failed fdatasync the log is poisoned: the data may be lost, so this and
    /// every later write fails until the log is reopened (no retry of fsync).
    pub fn flush(&self) -> Result<u64> {
        let target = self.log_end.load(Ordering::Acquire);
        let mut state = self.lock_sync();
        loop {
            if state.durable >= target {
                return Ok(state.durable);
            }
            if self.poisoned.load(Ordering::Acquire) {
                return Err(Error::Poisoned {
                    dir: self.dir.to_path_buf(),
                });
            }
            if !state.syncing {
                state.syncing = true;
                break;
            }
            state = self.synced.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        drop(state);
        let result = self.sync_written();
        let mut state = self.lock_sync();
        state.syncing = false;
        let mut advanced = false;
        let outcome = match result {
            Ok(synced) => {
                state.durable = state.durable.max(synced);
                // Under the lock, so a waiter that sees its offset durable also sees it
                // readable.
                advanced = self.config.durability == Durability::Always
                    && self.advance_high_watermark(state.durable);
                Stats::add(&self.stats.syncs, 1);
                Ok(state.durable)
            }
            Err(error) => Err(self.poison(error)),
        };
        drop(state);
        self.synced.notify_all();
        if advanced {
            self.notify_listener();
        }
        outcome
    }

    /// fdatasyncs the active segment; returns the offset it covers. Earlier segments were
    /// synced when they were sealed.
    fn sync_written(&self) -> Result<u64> {
        let (snapshot, position, active, files) = {
            // Index entries stay buffered: they need no sync (recovery checks and rebuilds
            // them), and writing them here would cost two syscalls per group commit.
            let writer = self.lock_writer();
            let active = Arc::clone(&writer.active);
            let files = self.write_files(&active)?;
            (writer.next_offset, writer.position, active, files)
        };
        if let Some(handles) = &files.writer {
            handles
                .log
                .sync_data()
                .map_err(|e| Error::io("fdatasync", active.path("log"), e))?;
            // Only now, with the bytes on disk, may the checkpoint say so. It is not synced:
            // losing it only makes the next recovery scan further.
            let checkpoint = Checkpoint {
                position,
                next_offset: snapshot,
            };
            handles
                .checkpoint
                .write_all_at(&checkpoint.encode(), 0)
                .map_err(|e| Error::io("write", active.path(CHECKPOINT), e))?;
        }
        Ok(snapshot)
    }

    /// Whole batches starting with the one that holds `offset`, as many as fit in
    /// `max_bytes` (at least one, however large, so a consumer always progresses), all below
    /// the high watermark and within one segment. Empty at the high watermark; an error below
    /// the earliest offset or past the high watermark.
    pub fn read(&self, offset: u64, max_bytes: u64) -> Result<ReadResult> {
        let high_watermark = self.high_watermark();
        let empty = ReadResult {
            batches: Bytes::new(),
            high_watermark,
        };
        self.check_range(offset, high_watermark)?;
        if offset == high_watermark {
            return Ok(empty);
        }
        let segment = {
            let segments = self.read_segments();
            let i = segments.partition_point(|s| s.base_offset <= offset);
            match i.checked_sub(1).and_then(|i| segments.get(i)) {
                Some(segment) => Arc::clone(segment),
                None => return Err(self.out_of_range(offset)),
            }
        };
        let files = match self.files(&segment) {
            Ok(files) => files,
            // Retention deleted it between the lookup and the open.
            Err(_) if segment.is_deleted() => return Err(self.out_of_range(offset)),
            Err(e) => return Err(e),
        };
        let batches = segment
            .read(&files, offset, max_bytes, high_watermark)?
            .unwrap_or_default();
        Stats::add(&self.stats.read_bytes, batches.len() as u64);
        Ok(ReadResult {
            batches,
            high_watermark,
        })
    }

    fn check_range(&self, offset: u64, high_watermark: u64) -> Result<()> {
        if offset < self.earliest_offset() || offset > high_watermark {
            return Err(self.out_of_range(offset));
        }
        Ok(())
    }

    fn out_of_range(&self, offset: u64) -> Error {
        Error::OffsetOutOfRange {
            offset,
            earliest: self.earliest_offset(),
            latest: self.high_watermark(),
        }
    }

    /// The first readable offset whose batch was appended at or after `time_ms`, or `None` if
    /// every readable batch is older.
    ///
    /// The time index (broker append times, which never decrease) narrows the search to the
    /// batches between two index entries; among those, the first whose records' own
    /// timestamps reach `time_ms` is the answer, else the next indexed batch. So the answer is
    /// never later than the first batch appended at or after `time_ms`.
    pub fn offset_for_time(&self, time_ms: i64) -> Result<Option<u64>> {
        let high_watermark = self.high_watermark();
        let segments: Vec<Arc<Segment>> = self.read_segments().clone();
        for segment in segments {
            if segment.base_offset >= high_watermark {
                break;
            }
            let files = match self.files(&segment) {
                Ok(files) => files,
                Err(_) if segment.is_deleted() => continue,
                Err(e) => return Err(e),
            };
            if segment.last_append_ms() < time_ms {
                continue;
            }
            if let Some(offset) = segment.find_time(&files, time_ms, high_watermark)? {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }

    /// Deletes the oldest sealed segments that retention no longer keeps: while the log
    /// holds more than `retention_bytes` without them, or their newest batch is older than
    /// `retention_age`. Whole segments only; the active segment is never deleted, nor data not
    /// yet below the high watermark. Returns the segments deleted.
    pub fn enforce_retention(&self) -> Result<usize> {
        let now = self.shared.clock.now_ms();
        let mut deleted = 0;
        loop {
            let (oldest, total) = {
                let segments = self.read_segments();
                if segments.len() <= 1 {
                    break;
                }
                let total: u64 = segments.iter().map(|s| s.len()).sum();
                (Arc::clone(&segments[0]), total)
            };
            if !oldest.is_sealed() || oldest.next_offset() > self.high_watermark() {
                break;
            }
            let over_bytes = self
                .config
                .retention_bytes
                .is_some_and(|limit| total - oldest.len() >= limit);
            let too_old = match self.config.retention_age {
                Some(age) => {
                    // Opening a sealed segment loads its newest append time.
                    self.files(&oldest)?;
                    oldest.last_append_ms() < now.saturating_sub(age.as_millis() as i64)
                }
                None => false,
            };
            if !(over_bytes || too_old) {
                break;
            }
            self.delete_oldest(&oldest)?;
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Deletes the oldest sealed segments that hold only offsets below `offset` (and below the
    /// high watermark): the log's owner no longer needs them, as when it has copied what it
    /// keeps forward. Whole segments only; returns the segments deleted.
    pub fn delete_before(&self, offset: u64) -> Result<usize> {
        let limit = offset.min(self.high_watermark());
        let mut deleted = 0;
        loop {
            let oldest = {
                let segments = self.read_segments();
                if segments.len() <= 1 {
                    break;
                }
                Arc::clone(&segments[0])
            };
            if !oldest.is_sealed() || oldest.next_offset() > limit {
                break;
            }
            self.delete_oldest(&oldest)?;
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Base offsets of the segments, oldest first; the last is the active segment's.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.read_segments().iter().map(|s| s.base_offset).collect()
    }

    fn delete_oldest(&self, oldest: &Arc<Segment>) -> Result<()> {
        {
            let mut segments = self.write_segments();
            if !segments.first().is_some_and(|s| Arc::ptr_eq(s, oldest)) {
                return Ok(());
            }
            segments.remove(0);
            let earliest = segments
                .first()
                .map_or(oldest.next_offset(), |s| s.base_offset);
            self.earliest.store(earliest, Ordering::Release);
        }
        oldest.mark_deleted();
        self.shared.cache.remove(self.key(oldest));
        for extension in ["log", "index", "timeindex"] {
            let path = oldest.path(extension);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("unlink", path, e)),
            }
        }
        Stats::add(&self.stats.deleted_segments, 1);
        tracing::info!(
            dir = %self.dir.display(),
            base_offset = oldest.base_offset,
            "retention deleted segment"
        );
        Ok(())
    }

    /// Syncs everything, cuts the active segment's files to their lengths and writes the
    /// clean-shutdown marker, so the next open skips recovery. Later appends fail.
    pub fn close(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.flush()?;
        let mut writer = self.lock_writer();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let active = Arc::clone(&writer.active);
        let files = self.write_files(&active)?;
        self.seal_files(&mut writer, &files)?;
        drop(files);
        self.shared.cache.remove_log(self.id);
        let marker = self.dir.join(CLEAN_MARKER);
        std::fs::File::create(&marker)
            .and_then(|file| file.sync_all())
            .map_err(|e| Error::io("create", &marker, e))?;
        sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), "log closed cleanly");
        Ok(())
    }

    /// Whether the log was poisoned by a failed write or fsync.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(crate) fn durability(&self) -> Durability {
        self.config.durability
    }

    /// Whether [`close`](Self::close) ran.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Log {
    /// Releases the log's cached files. Dropping without [`Log::close`] is like a crash: the
    /// next open recovers the tail.
    fn drop(&mut self) {
        self.shared.cache.remove_log(self.id);
    }
}

impl Writer {
    /// A writer at the start of an empty active segment.
    pub(crate) fn fresh(active: Arc<Segment>, capacity: u64, last_append_ms: i64) -> Self {
        let next_offset = active.base_offset;
        Self {
            active,
            position: 0,
            capacity,
            next_offset,
            last_indexed: None,
            last_batch: None,
            index_written: 0,
            time_written: 0,
            pending_index: Vec::with_capacity(PENDING_INDEX_ENTRIES * OFFSET_ENTRY_LEN),
            pending_time: Vec::with_capacity((PENDING_INDEX_ENTRIES + 1) * TIME_ENTRY_LEN),
            last_append_ms,
            first_append_ms: None,
        }
    }
}

/// fsyncs a directory, so that files created, renamed or removed in it stay so after a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", PathBuf::from(dir), e))
}
