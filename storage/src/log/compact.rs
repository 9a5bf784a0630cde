//! Compaction's mechanism: one pass over a log's sealed segments, as
//! [`compaction`](crate::compaction) decides, each rewritten group put in place by a
//! [`Swap`](crate::swap::Swap).
//!
//! A pass holds the log's maintenance lock (so retention waits) but no writer or segment-list
//! lock while it reads and writes: appends and reads go on. Per group it writes the new
//! segment's `.cleaned` files, fsyncs them and commits the swap; then, under the `swap` lock
//! held for writing, it marks the replaced segments deleted, drops their cached files,
//! completes the swap on disk and puts the new segment in the list in one write-locked
//! replacement. A failure before the commit leaves the old segments and the log as they were;
//! one after it poisons the log (the next open completes the swap).

use super::Log;
use crate::compaction::{
    self, Checkpoint, CompactionLimits, CompactionReport, Horizon, Inserted, OffsetMap, Seen,
    SegmentStat, TimeCeiling, Verdict,
};
use crate::error::{Corruption, Error, Result};
use crate::format::{BatchView, Batches, FormatError, Retained, retain_records};
use crate::index::{OffsetEntry, TimeEntry};
use crate::io::{FaultOp, Faults};
use crate::segment::Segment;
use crate::stats::Stats;
use crate::swap::Swap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Write buffer of a rewritten segment's log.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

impl Log {
    /// Runs one compaction pass (blocking) if one is due: keeps the latest record of each key
    /// in the sealed segments below the high watermark, drops tombstones appended
    /// `delete_retention` or more before `now_ms` (the broker's clock), keeps records without
    /// keys, and never changes an offset or a timestamp. See [`compaction`](crate::compaction)
    /// for the policy and [`CompactionLimits`] for the bounds of one pass.
    ///
    /// Reads and appends go on meanwhile; retention on this log waits. A reader holding
    /// slices of a replaced segment keeps them. Returns what the pass did.
    pub fn compact(
        &self,
        now_ms: i64,
        delete_retention: Duration,
        limits: &CompactionLimits,
    ) -> Result<CompactionReport> {
        limits.validate()?;
        let _maintenance = self.lock_maintenance();
        self.check_writable()?;
        let segments: Vec<Arc<Segment>> = self.read_segments().clone();
        let stats: Vec<SegmentStat> = segments
            .iter()
            .map(|s| SegmentStat {
                base_offset: s.base_offset,
                next_offset: s.next_offset(),
                len: s.len(),
                sealed: s.is_sealed(),
            })
            .collect();
        let cleanable = compaction::cleanable(&stats, self.high_watermark());
        let mut report = CompactionReport::default();
        let Some(last) = stats[..cleanable].last() else {
            return Ok(report);
        };
        report.cleanable_end = last.next_offset;
        let mut checkpoint = Checkpoint::read(&self.dir);
        if checkpoint.cleaned_to > self.log_end_offset() {
            tracing::warn!(
                dir = %self.dir.display(),
                cleaned_to = checkpoint.cleaned_to,
                log_end = self.log_end_offset(),
                "compaction checkpoint past the log's end: compacting from the start"
            );
            checkpoint = Checkpoint::default();
        }
        report.cleaned_to = checkpoint.cleaned_to;
        let dirt = compaction::dirt(&stats[..cleanable], checkpoint.cleaned_to);
        let retention_ms = i64::try_from(delete_retention.as_millis()).unwrap_or(i64::MAX);
        let tombstones_until_ms = now_ms.saturating_sub(retention_ms);
        let tombstone_expired = checkpoint.oldest_tombstone_ms <= tombstones_until_ms;
        if !compaction::due(dirt, limits.min_dirty_percent, tombstone_expired) {
            return Ok(report);
        }
        report.ran = true;

        let mut map = OffsetMap::new(limits.max_map_entries);
        let stopped = self.map_dirty(&segments[..cleanable], dirt.dirty_start, &mut map)?;
        let clean_end = compaction::map_end(&stats[..cleanable], dirt.dirty_start, stopped);
        report.keys_mapped = map.len();
        let horizon = Horizon {
            clean_end,
            tombstones_until_ms,
        };
        let mut oldest_tombstone_ms = i64::MAX;
        for group in compaction::groups(&stats[..cleanable], clean_end, self.config.segment_bytes) {
            // The segment after the group: a sealed one, or the active one after the last.
            let end = stats[group.end].base_offset;
            let rewritten = self.rewrite_group(&segments[group], end, &map, horizon)?;
            oldest_tombstone_ms = oldest_tombstone_ms.min(rewritten.oldest_tombstone_ms);
            report.records_superseded += rewritten.superseded;
            report.tombstones_expired += rewritten.expired;
            if let Some((before, after, replaced)) = rewritten.swapped {
                report.segments_replaced += replaced;
                report.segments_written += 1;
                report.bytes_before += before;
                report.bytes_after += after;
            }
        }
        Checkpoint {
            cleaned_to: clean_end,
            oldest_tombstone_ms,
        }
        .write(&self.dir)?;
        report.cleaned_to = clean_end;
        Stats::add(&self.stats.compactions, 1);
        Stats::add(
            &self.stats.compacted_segments,
            report.segments_replaced as u64,
        );
        tracing::debug!(
            dir = %self.dir.display(),
            cleaned_to = clean_end,
            keys = report.keys_mapped,
            replaced = report.segments_replaced,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            superseded = report.records_superseded,
            tombstones = report.tombstones_expired,
            "compacted"
        );
        Ok(report)
    }

    /// Maps the keyed records at or after `dirty_start` to their latest offsets; returns the
    /// offset of the first record the full map could not take, if one could not.
    fn map_dirty(
        &self,
        segments: &[Arc<Segment>],
        dirty_start: u64,
        map: &mut OffsetMap,
    ) -> Result<Option<u64>> {
        for segment in segments {
            if segment.next_offset() <= dirty_start {
                continue;
            }
            let files = self.files(segment)?;
            // Header and CRC only: what a record says is checked in full before any of it is
            // rewritten; here a damaged record only ends the walk with an error.
            for batch in self.stored_batches(segment, &files.log, Check::Checksum) {
                let (position, view) = batch?;
                self.check_open()?;
                if view.last_offset() < dirty_start || view.is_control() {
                    continue;
                }
                let mut records = view.records();
                for record in records.by_ref() {
                    let Some(key) = record.key else { continue };
                    if record.offset < dirty_start {
                        continue;
                    }
                    if map.insert(key, record.offset) == Inserted::Full {
                        return Ok(Some(record.offset));
                    }
                }
                if let Some(error) = records.error() {
                    return Err(corrupt(segment, position, error.clone()));
                }
            }
        }
        Ok(None)
    }

    /// The batches of a sealed segment's log, each checked as `check` says: a damaged one is
    /// an error naming the segment and position, and nothing is rewritten from it (a rewrite
    /// would give damaged records a fresh CRC).
    fn stored_batches<'a>(
        &self,
        segment: &'a Segment,
        log: &'a [u8],
        check: Check,
    ) -> impl Iterator<Item = Result<(u64, BatchView<'a>)>> + 'a {
        let mut walk = Batches::new(log);
        std::iter::from_fn(move || {
            let framed = match walk.next()? {
                Ok(framed) => framed,
                Err(error) => return Some(Err(corrupt(segment, walk.position() as u64, error))),
            };
            let checked = match check {
                Check::Checksum => framed.checked(),
                Check::Full => framed.stored(),
            };
            let position = framed.position as u64;
            Some(
                checked
                    .map(|view| (position, view))
                    .map_err(|e| corrupt(segment, position, e)),
            )
        })
    }

    /// Rewrites `group` (consecutive sealed segments; `end` is the next segment's base) into
    /// one segment keeping what `verdict` keeps, and swaps it in if it differs.
    fn rewrite_group(
        &self,
        group: &[Arc<Segment>],
        end: u64,
        map: &OffsetMap,
        horizon: Horizon,
    ) -> Result<Rewritten> {
        let Some(first) = group.first() else {
            return Ok(Rewritten::default());
        };
        let swap = Swap::new(&self.dir, first.base_offset, end, &self.shared.faults);
        let written = self.write_cleaned(&swap, group, map, horizon);
        let (outcome, cleaned) = match written {
            Ok(written) => written,
            Err(error) => {
                swap.abort();
                return Err(error);
            }
        };
        let mut result = outcome;
        // One segment that lost nothing stays as it is.
        if group.len() == 1 && result.superseded + result.expired == 0 {
            swap.abort();
            return Ok(result);
        }
        if let Err(error) = swap.commit() {
            swap.abort();
            return Err(error);
        }
        let before: u64 = group.iter().map(|s| s.len()).sum();
        let segment = Segment::new(Arc::clone(&self.dir), first.base_offset);
        segment.publish(
            cleaned.len,
            end,
            cleaned.index_entries,
            cleaned.time_entries,
            cleaned.last_append_ms,
        );
        segment.set_sealed();
        self.swap_in(group, Arc::new(segment), &swap)?;
        result.swapped = Some((before, cleaned.len, group.len()));
        Ok(result)
    }

    /// Replaces `group` with `segment` in memory and completes `swap` on disk, under the swap
    /// lock: no reader opens a replaced segment's files from here on.
    fn swap_in(
        &self,
        group: &[Arc<Segment>],
        segment: Arc<Segment>,
        swap: &Swap<'_>,
    ) -> Result<()> {
        let _swap = self.swap.write().unwrap_or_else(|p| p.into_inner());
        for old in group {
            old.mark_deleted();
            self.shared.cache.remove(self.key(old));
        }
        if let Err(error) = swap.complete() {
            // Committed on disk, half done: the next open completes it.
            return Err(self.poison(error));
        }
        let mut segments = self.write_segments();
        let start = segments.iter().position(|s| Arc::ptr_eq(s, &group[0]));
        let in_place = start.is_some_and(|start| {
            segments
                .get(start..start + group.len())
                .is_some_and(|found| found.iter().zip(group).all(|(a, b)| Arc::ptr_eq(a, b)))
        });
        match start {
            Some(start) if in_place => {
                segments.splice(start..start + group.len(), [segment]);
                Ok(())
            }
            // Retention and compaction take turns (the maintenance lock), so the group
            // cannot have moved; if it did, the list no longer matches the disk.
            _ => Err(self.poison(Error::io(
                "swap segments",
                self.dir.to_path_buf(),
                std::io::Error::other("the compacted segments left the segment list"),
            ))),
        }
    }

    /// Writes the `.cleaned` files of `group` rewritten, synced; returns what it kept.
    fn write_cleaned(
        &self,
        swap: &Swap<'_>,
        group: &[Arc<Segment>],
        map: &OffsetMap,
        horizon: Horizon,
    ) -> Result<(Rewritten, Cleaned)> {
        let Some(first) = group.first() else {
            return Ok((Rewritten::default(), Cleaned::default()));
        };
        let log_path = swap.cleaned("log");
        let mut out = CleanedSegment::create(
            &log_path,
            first.base_offset,
            self.config.index_interval_bytes,
        )?;
        let mut result = Rewritten::default();
        let mut scratch = Vec::new();
        for segment in group {
            let files = self.files(segment)?;
            let mut times =
                TimeCeiling::new(&files.time, segment.base_offset, segment.last_append_ms());
            for batch in self.stored_batches(segment, &files.log, Check::Full) {
                let (_, view) = batch?;
                self.check_open()?;
                let append_ms = times.at(view.base_offset());
                if view.is_control() {
                    out.push(&view, view.as_bytes(), append_ms, &self.shared.faults)?;
                    continue;
                }
                let mut oldest_tombstone = i64::MAX;
                let retained = retain_records(
                    &view,
                    |record| {
                        let seen = Seen {
                            offset: record.offset,
                            keyed: record.key.is_some(),
                            latest: record.key.and_then(|key| map.latest(key)),
                            tombstone: record.value.is_none(),
                            append_ms,
                        };
                        match compaction::verdict(seen, horizon) {
                            Verdict::Keep => {
                                if seen.tombstone && seen.keyed && seen.offset < horizon.clean_end {
                                    oldest_tombstone = oldest_tombstone.min(append_ms);
                                }
                                true
                            }
                            Verdict::Superseded => {
                                result.superseded += 1;
                                false
                            }
                            Verdict::ExpiredTombstone => {
                                result.expired += 1;
                                false
                            }
                        }
                    },
                    &mut scratch,
                );
                result.oldest_tombstone_ms = result.oldest_tombstone_ms.min(oldest_tombstone);
                match retained {
                    Retained::All => {
                        out.push(&view, view.as_bytes(), append_ms, &self.shared.faults)?
                    }
                    Retained::Some(_) => {
                        out.push(&view, &scratch, append_ms, &self.shared.faults)?;
                        scratch.clear();
                    }
                    Retained::None => {}
                }
            }
        }
        let cleaned = out.finish(swap, &self.shared.faults)?;
        Ok((result, cleaned))
    }
}

impl Log {
    /// `Closed` once [`close`](Log::close) or [`discard`](Log::discard) began: a pass stops
    /// at the next batch, and `close` waits for it.
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                dir: self.dir.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// How much of a stored batch a pass checks.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Header and CRC (the records were checked in full when they were appended).
    Checksum,
    /// Every check of `BatchView::stored`: before a batch is rewritten.
    Full,
}

/// A damaged batch in `segment`'s log, at byte `position`.
fn corrupt(segment: &Segment, position: u64, error: FormatError) -> Error {
    Error::Corrupt {
        path: segment.path("log"),
        position,
        corruption: Corruption::Batch(error),
    }
}

/// What rewriting one group did.
#[derive(Debug, Clone, Copy)]
struct Rewritten {
    superseded: u64,
    expired: u64,
    /// Append time of the oldest tombstone kept below the pass's end.
    oldest_tombstone_ms: i64,
    /// (bytes before, bytes after, segments replaced), if the group was swapped.
    swapped: Option<(u64, u64, usize)>,
}

impl Default for Rewritten {
    fn default() -> Self {
        Self {
            superseded: 0,
            expired: 0,
            oldest_tombstone_ms: i64::MAX,
            swapped: None,
        }
    }
}

/// A rewritten segment's files, written and synced.
#[derive(Debug, Clone, Copy)]
struct Cleaned {
    len: u64,
    index_entries: u64,
    time_entries: u64,
    last_append_ms: i64,
}

impl Default for Cleaned {
    fn default() -> Self {
        Self {
            len: 0,
            index_entries: 0,
            time_entries: 0,
            last_append_ms: i64::MIN,
        }
    }
}

/// A segment being written by compaction: its log, and its index entries by the appender's
/// rule (the first batch, then the first batch `index_interval_bytes` past the previous
/// entry), each with its batch's append time, plus a last time entry for the last batch.
struct CleanedSegment {
    log: BufWriter<File>,
    path: PathBuf,
    base_offset: u64,
    index_interval_bytes: u32,
    position: u64,
    last_indexed: Option<u64>,
    /// (relative offset, append time) of the last batch written.
    last_batch: Option<(u32, i64)>,
    index: Vec<u8>,
    time: Vec<u8>,
    index_entries: u64,
    time_entries: u64,
}

impl CleanedSegment {
    fn create(path: &Path, base_offset: u64, index_interval_bytes: u32) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io("create", path, e))?;
        Ok(Self {
            log: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            path: path.to_path_buf(),
            base_offset,
            index_interval_bytes,
            position: 0,
            last_indexed: None,
            last_batch: None,
            index: Vec::new(),
            time: Vec::new(),
            index_entries: 0,
            time_entries: 0,
        })
    }

    /// Appends `bytes`, the batch `view` (rewritten or as it was), appended at `append_ms`.
    fn push(
        &mut self,
        view: &BatchView<'_>,
        bytes: &[u8],
        append_ms: i64,
        faults: &Faults,
    ) -> Result<()> {
        // Append times never decrease in a time index, even if an older segment's were
        // rebuilt from a later file time: moving one later keeps every search early.
        let append_ms = self
            .last_batch
            .map_or(append_ms, |(_, last)| last.max(append_ms));
        // The group spans at most u32::MAX offsets (compaction::groups).
        let relative = (view.base_offset() - self.base_offset) as u32;
        let due = self
            .last_indexed
            .is_none_or(|last| self.position >= last + u64::from(self.index_interval_bytes));
        if due {
            OffsetEntry {
                relative_offset: relative,
                position: self.position as u32,
            }
            .encode(&mut self.index);
            TimeEntry {
                append_ms,
                relative_offset: relative,
            }
            .encode(&mut self.time);
            self.index_entries += 1;
            self.time_entries += 1;
            self.last_indexed = Some(self.position);
        }
        faults
            .check(FaultOp::Write, || self.path.clone())
            .and_then(|()| self.log.write_all(bytes))
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.position += bytes.len() as u64;
        self.last_batch = Some((relative, append_ms));
        Ok(())
    }

    /// Writes the indexes (and the seal entry), syncs all three files.
    fn finish(mut self, swap: &Swap<'_>, faults: &Faults) -> Result<Cleaned> {
        if let Some((relative, append_ms)) = self.last_batch {
            TimeEntry {
                append_ms,
                relative_offset: relative,
            }
            .encode(&mut self.time);
            self.time_entries += 1;
        }
        let log_path = self.path;
        let file = self
            .log
            .into_inner()
            .map_err(|e| Error::io("write", &log_path, e.into_error()))?;
        let sync = |file: &File, path: &Path| {
            faults
                .check(FaultOp::Sync, || path.to_path_buf())
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io("fsync", path, e))
        };
        sync(&file, &log_path)?;
        for (extension, bytes) in [("index", &self.index), ("timeindex", &self.time)] {
            let path = swap.cleaned(extension);
            let mut index = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
            index
                .write_all(bytes)
                .map_err(|e| Error::io("write", &path, e))?;
            sync(&index, &path)?;
        }
        Ok(Cleaned {
            len: self.position,
            index_entries: self.index_entries,
            time_entries: self.time_entries,
            last_append_ms: self.last_batch.map_or(i64::MIN, |(_, ms)| ms),
        })
    }
}
