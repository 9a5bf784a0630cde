//! One segment: a `.log` file of batches and its `.index` / `.timeindex` (design.md §3).
//!
//! A segment is active (the one being appended to: files preallocated to their full size and
//! opened for writing) or sealed (files truncated to their length, read-only). Its state that
//! readers need is in atomics the appender publishes with `Release` after the bytes are in the
//! file: `len` (bytes of whole batches), the readable index entries and `next_offset`. Readers
//! load them with `Acquire` and never look past them, which is what makes the read-only maps
//! of `mmap.rs` sound while the file grows under them. This module owns no offset policy: the
//! log decides where to append and what is readable.

use crate::error::{Corruption, Error, Result};
use crate::format::{BatchPrefix, BatchView, HEADER_LEN, MAGIC};
use crate::index::{self, OFFSET_ENTRY_LEN, OffsetEntry, TIME_ENTRY_LEN, TimeEntry};
use crate::mmap::map_read_only;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// `{base_offset:020}.{extension}`.
pub(crate) fn file_name(base_offset: u64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// The base offset a `.log` file name stands for, if it is one of ours.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Ids given to segments as they are made, so no two in a process share one.
static NEXT_SEGMENT_ID: AtomicU64 = AtomicU64::new(1);

/// A segment's metadata, shared by the appender and readers.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Unique in the process: the key of its files in the store's cache. A compacted segment
    /// replaces one with the same base offset but is a new segment, with files of its own.
    pub id: u64,
    /// Offset of the segment's first batch (in a compacted segment, of the first batch it
    /// held before compaction: its first offset, which may be in a gap).
    pub base_offset: u64,
    dir: Arc<Path>,
    /// Bytes of whole batches in the `.log` file.
    len: AtomicU64,
    /// One past the last offset in the segment.
    next_offset: AtomicU64,
    /// Offset-index entries readable in the `.index` file.
    index_entries: AtomicU64,
    /// Time-index entries readable in the `.timeindex` file.
    time_entries: AtomicU64,
    /// Newest append time in the segment, ms; `i64::MIN` while unknown.
    last_append_ms: AtomicI64,
    sealed: AtomicBool,
    deleted: AtomicBool,
}

/// A segment's open files and maps, held by the store's cache.
#[derive(Debug)]
pub(crate) struct SegmentFiles {
    /// The `.log` file, mapped.
    pub log: Bytes,
    /// The `.index` file, mapped.
    pub index: Bytes,
    /// The `.timeindex` file, mapped.
    pub time: Bytes,
    /// Write handles; only for the active segment.
    pub writer: Option<WriteFiles>,
}

/// Extension of the active segment's durable-point checkpoint (see [`Checkpoint`]).
pub(crate) const CHECKPOINT: &str = "durable";

/// The active segment's files, opened for positioned writes.
#[derive(Debug)]
pub(crate) struct WriteFiles {
    pub log: File,
    pub index: File,
    pub time: File,
    /// The `.durable` checkpoint, rewritten after each fdatasync.
    pub checkpoint: File,
}

/// How far an active segment is known to be on disk: written (not synced) after each
/// successful fdatasync, so it never claims more than is durable; if it is lost or torn,
/// recovery falls back to an older one or to a scan of the whole segment.
///
/// ```text
/// checkpoint = { u32 magic "SLDP" | u64 position | u64 next_offset | u32 crc }   (24 bytes)
/// ```
/// `crc` is CRC-32 of the 20 bytes before it. Bytes of the segment below `position`, holding
/// offsets below `next_offset`, were fdatasynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub position: u64,
    pub next_offset: u64,
}

impl Checkpoint {
    const MAGIC: [u8; 4] = *b"SLDP";
    pub(crate) const LEN: usize = 24;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..4].copy_from_slice(&Self::MAGIC);
        out[4..12].copy_from_slice(&self.position.to_le_bytes());
        out[12..20].copy_from_slice(&self.next_offset.to_le_bytes());
        let crc = crc32fast::hash(&out[..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` unless `bytes` is a whole checkpoint with a matching CRC.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..Self::LEN)?;
        if bytes[0..4] != Self::MAGIC
            || crate::format::read_u32(bytes, 20..24) != crc32fast::hash(&bytes[..20])
        {
            return None;
        }
        Some(Self {
            position: crate::format::read_u64(bytes, 4..12),
            next_offset: crate::format::read_u64(bytes, 12..20),
        })
    }
}

/// What walking a segment's batches found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Bytes of whole, valid batches from the start of the segment.
    pub valid_len: u64,
    /// One past the last offset of those batches.
    pub next_offset: u64,
    /// Index entries for the batches walked (from the scan's starting entry on).
    pub index: Vec<OffsetEntry>,
    /// Where and why the walk stopped before the end, unless it stopped at zero fill.
    pub stop: Option<(u64, Corruption)>,
    /// Base offset of the last valid batch walked.
    pub last_base: Option<u64>,
}

impl Segment {
    pub(crate) fn new(dir: Arc<Path>, base_offset: u64) -> Self {
        Self {
            id: NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed),
            base_offset,
            dir,
            len: AtomicU64::new(0),
            next_offset: AtomicU64::new(base_offset),
            index_entries: AtomicU64::new(0),
            time_entries: AtomicU64::new(0),
            last_append_ms: AtomicI64::new(i64::MIN),
            sealed: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        }
    }

    pub(crate) fn path(&self, extension: &str) -> PathBuf {
        self.dir.join(file_name(self.base_offset, extension))
    }

    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub(crate) fn last_append_ms(&self) -> i64 {
        self.last_append_ms.load(Ordering::Acquire)
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// Publishes what the appender wrote: readers may now read `len` bytes holding offsets up
    /// to `next_offset`, and the given index entries.
    pub(crate) fn publish(
        &self,
        len: u64,
        next_offset: u64,
        index_entries: u64,
        time_entries: u64,
        last_append_ms: i64,
    ) {
        self.index_entries.store(index_entries, Ordering::Release);
        self.time_entries.store(time_entries, Ordering::Release);
        self.last_append_ms.store(last_append_ms, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
        self.len.store(len, Ordering::Release);
    }

    pub(crate) fn set_sealed(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// Creates the files of a new active segment, preallocated (sparsely) to its capacity.
    pub(crate) fn create(
        dir: Arc<Path>,
        base_offset: u64,
        log_capacity: u64,
        index_capacity: u64,
    ) -> Result<Self> {
        let segment = Self::new(dir, base_offset);
        for (extension, len) in [
            ("log", log_capacity),
            ("index", index_capacity * OFFSET_ENTRY_LEN as u64),
            ("timeindex", (index_capacity + 1) * TIME_ENTRY_LEN as u64),
        ] {
            let path = segment.path(extension);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| Error::io("create", &path, e))?;
            file.set_len(len)
                .map_err(|e| Error::io("preallocate", &path, e))?;
        }
        Ok(segment)
    }

    /// Opens the active segment's files for writing and maps them whole.
    pub(crate) fn open_active(&self) -> Result<SegmentFiles> {
        let open = |extension| -> Result<(File, Bytes)> {
            let path = self.path(extension);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            let map = map_read_only(&file, len).map_err(|e| Error::io("mmap", &path, e))?;
            Ok((file, map))
        };
        let (log_file, log) = open("log")?;
        let (index_file, index) = open("index")?;
        let (time_file, time) = open("timeindex")?;
        let checkpoint_path = self.path(CHECKPOINT);
        let checkpoint = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&checkpoint_path)
            .map_err(|e| Error::io("open", &checkpoint_path, e))?;
        Ok(SegmentFiles {
            log,
            index,
            time,
            writer: Some(WriteFiles {
                log: log_file,
                index: index_file,
                time: time_file,
                checkpoint,
            }),
        })
    }

    /// Opens a sealed segment read-only. Its indexes are checked against the log and rebuilt
    /// from it if missing or inconsistent (`index_interval_bytes` is used for a rebuild).
    pub(crate) fn open_sealed(&self, index_interval_bytes: u32) -> Result<SegmentFiles> {
        let log = self.map_whole("log")?;
        let end = log.len() as u64;
        let (index, time) = match (self.map_whole("index"), self.map_whole("timeindex")) {
            (Ok(index), Ok(time)) if self.indexes_consistent(&log, &index, &time) => (index, time),
            _ => self.rebuild_indexes(&log, index_interval_bytes)?,
        };
        self.publish(
            end,
            self.next_offset(),
            (index.len() / OFFSET_ENTRY_LEN) as u64,
            (time.len() / TIME_ENTRY_LEN) as u64,
            last_time(&time),
        );
        Ok(SegmentFiles {
            log,
            index,
            time,
            writer: None,
        })
    }

    fn map_whole(&self, extension: &str) -> Result<Bytes> {
        let path = self.path(extension);
        let file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        map_read_only(&file, len).map_err(|e| Error::io("mmap", &path, e))
    }

    /// Cheap checks that a sealed segment's indexes describe its log: whole entries, ordered,
    /// inside the log, the first for the first batch and the last offset entry landing on the
    /// batch it names. A segment compaction emptied has no batches and no entries.
    fn indexes_consistent(&self, log: &[u8], index: &[u8], time: &[u8]) -> bool {
        if log.is_empty() {
            return index.is_empty() && time.is_empty();
        }
        let first_relative = BatchPrefix::parse(log)
            .and_then(|first| first.base_offset.checked_sub(self.base_offset))
            .and_then(|relative| u32::try_from(relative).ok());
        let Some(first_relative) = first_relative else {
            return false;
        };
        let span = self.next_offset().saturating_sub(self.base_offset);
        let entries = index.len() / OFFSET_ENTRY_LEN;
        let times = time.len() / TIME_ENTRY_LEN;
        if !index.len().is_multiple_of(OFFSET_ENTRY_LEN)
            || !time.len().is_multiple_of(TIME_ENTRY_LEN)
            || entries == 0
            || times == 0
            || index::valid_offset_prefix(index, log.len() as u64, first_relative) != entries
            || index::valid_time_prefix(time, span, first_relative) != times
        {
            return false;
        }
        let last = index::offset_entry(index, entries - 1);
        match BatchPrefix::parse(log.get(last.position as usize..).unwrap_or_default()) {
            Some(prefix) => {
                prefix.base_offset == self.base_offset + u64::from(last.relative_offset)
                    && prefix.magic == MAGIC
            }
            None => false,
        }
    }

    /// Rebuilds a sealed segment's indexes by walking its log; the append times, which only
    /// the index knew, become the log file's modification time (never earlier than the true
    /// ones, so a search by time may start early but never skips a record).
    fn rebuild_indexes(&self, log: &Bytes, index_interval_bytes: u32) -> Result<(Bytes, Bytes)> {
        let log_path = self.path("log");
        let scan = scan(
            log,
            self.base_offset,
            ScanFrom::start(self.base_offset),
            index_interval_bytes,
            true,
            OffsetRule::Gaps,
        );
        if let Some((position, corruption)) = scan.stop {
            return Err(Error::Corrupt {
                path: log_path,
                position,
                corruption,
            });
        }
        if scan.valid_len != log.len() as u64 {
            return Err(Error::Corrupt {
                path: log_path,
                position: scan.valid_len,
                corruption: Corruption::ZeroFill {
                    available: log.len() as u64 - scan.valid_len,
                },
            });
        }
        let modified_ms = modified_ms(&log_path);
        tracing::warn!(
            segment = %log_path.display(),
            entries = scan.index.len(),
            "rebuilt missing or inconsistent segment indexes from the log"
        );
        let mut index_bytes = Vec::with_capacity(scan.index.len() * OFFSET_ENTRY_LEN);
        let mut time_bytes = Vec::with_capacity((scan.index.len() + 1) * TIME_ENTRY_LEN);
        for entry in &scan.index {
            entry.encode(&mut index_bytes);
            TimeEntry {
                append_ms: modified_ms,
                relative_offset: entry.relative_offset,
            }
            .encode(&mut time_bytes);
        }
        let index = self.replace_file("index", &index_bytes)?;
        let time = self.replace_file("timeindex", &time_bytes)?;
        Ok((index, time))
    }

    /// Writes `bytes` as the segment's `extension` file, via a temporary file and a rename so
    /// that a crash leaves the old or the new file whole, and maps it.
    fn replace_file(&self, extension: &str, bytes: &[u8]) -> Result<Bytes> {
        use std::io::Write;
        let path = self.path(extension);
        let temp = self.path(&format!(
            "{extension}.rebuild-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| Error::io("create", &temp, e))?;
        file.write_all(bytes)
            .map_err(|e| Error::io("write", &temp, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
        std::fs::rename(&temp, &path).map_err(|e| Error::io("rename", &temp, e))?;
        map_read_only(&file, bytes.len() as u64).map_err(|e| Error::io("mmap", &path, e))
    }

    /// Reads the batch prefix at `position`, checking that the batch fits below `end`.
    pub(crate) fn prefix_at(&self, log: &[u8], position: u64, end: u64) -> Result<BatchPrefix> {
        let available = end.saturating_sub(position);
        let prefix = log
            .get(position as usize..end as usize)
            .and_then(BatchPrefix::parse);
        match prefix {
            Some(prefix)
                if prefix.magic == MAGIC
                    && prefix.total_len >= HEADER_LEN as u64
                    && prefix.total_len <= available =>
            {
                Ok(prefix)
            }
            _ => Err(Error::Corrupt {
                path: self.path("log"),
                position,
                corruption: Corruption::BadHeader {
                    total_len: prefix.map_or(0, |p| p.total_len),
                    magic: prefix.map_or(0, |p| p.magic),
                    available,
                },
            }),
        }
    }

    /// Position of the batch that holds `offset`, walking from the nearest index entry; the
    /// segment's readable end if `offset` lies past it.
    pub(crate) fn locate(&self, files: &SegmentFiles, offset: u64) -> Result<u64> {
        let end = self.len().min(files.log.len() as u64);
        let entries = self.index_entries.load(Ordering::Acquire) as usize;
        let relative = u32::try_from(offset.saturating_sub(self.base_offset)).unwrap_or(u32::MAX);
        let mut position = index::floor_offset(&files.index, entries, relative)
            .map_or(0, |entry| u64::from(entry.position));
        while position < end {
            let prefix = self.prefix_at(&files.log, position, end)?;
            if prefix.next_offset() > offset {
                return Ok(position);
            }
            position += prefix.total_len;
        }
        Ok(end)
    }

    /// Whole batches from the one holding `offset`: as many as fit in `max_bytes` (at least
    /// one), none whose base offset is `limit` or more. `None` if there is none.
    pub(crate) fn read(
        &self,
        files: &SegmentFiles,
        offset: u64,
        max_bytes: u64,
        limit: u64,
    ) -> Result<Option<Bytes>> {
        let end = self.len().min(files.log.len() as u64);
        let start = self.locate(files, offset)?;
        let mut position = start;
        while position < end {
            let prefix = self.prefix_at(&files.log, position, end)?;
            if prefix.base_offset >= limit
                || (position > start && position - start + prefix.total_len > max_bytes)
            {
                break;
            }
            position += prefix.total_len;
        }
        if position == start {
            return Ok(None);
        }
        Ok(Some(files.log.slice(start as usize..position as usize)))
    }

    /// The first offset appended at or after `time_ms` in this segment (see `Log::offset_for_time`).
    pub(crate) fn find_time(
        &self,
        files: &SegmentFiles,
        time_ms: i64,
        limit: u64,
    ) -> Result<Option<u64>> {
        let times = index::time_count(
            &files.time,
            self.time_entries.load(Ordering::Acquire) as usize,
        );
        // (first batch to consider, whether that batch is known to be too old, next indexed
        // batch known to be appended at or after time_ms)
        let (start_offset, skip_start, stop_offset) = if times == 0 {
            // No entry readable yet (the appender buffers them): every batch is a candidate.
            (self.base_offset, false, None)
        } else {
            match index::last_before_time(&files.time, times, time_ms) {
                // The first entry, which is the segment's first batch, is at or after time_ms.
                None => return Ok(Some(self.base_offset).filter(|&o| o < limit)),
                Some(i) => {
                    let start = index::time_entry(&files.time, i);
                    let stop = (i + 1 < times).then(|| index::time_entry(&files.time, i + 1));
                    (
                        self.base_offset + u64::from(start.relative_offset),
                        true,
                        stop.map(|entry| self.base_offset + u64::from(entry.relative_offset)),
                    )
                }
            }
        };
        // Batches after the entry were appended in [entry time, next entry time]; among them
        // the records' own timestamps decide: the first batch whose max timestamp is at or
        // after time_ms is the answer, else the next indexed batch, known to be appended at or
        // after time_ms. Past the last entry of the active segment, nothing is known: `None`
        // sends the caller on to the next segment.
        let end = self.len().min(files.log.len() as u64);
        let mut position = self.locate(files, start_offset)?;
        while position < end {
            let prefix = self.prefix_at(&files.log, position, end)?;
            if prefix.base_offset >= limit {
                return Ok(None);
            }
            if stop_offset.is_some_and(|stop| prefix.base_offset >= stop)
                || ((!skip_start || prefix.base_offset > start_offset)
                    && prefix.max_timestamp >= time_ms)
            {
                return Ok(Some(prefix.base_offset));
            }
            position += prefix.total_len;
        }
        Ok(None)
    }
}

/// The newest append time in a time index, `i64::MIN` if empty.
fn last_time(time: &[u8]) -> i64 {
    match time.len() / TIME_ENTRY_LEN {
        0 => i64::MIN,
        n => index::time_entry(time, n - 1).append_ms,
    }
}

/// A file's modification time in ms since the epoch (now if unknown).
pub(crate) fn modified_ms(path: &Path) -> i64 {
    let since = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now())
        .duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as i64)
}

/// Where a walk of a segment's batches starts: a batch boundary, the offset expected there,
/// and the position of the index entry the walk continues from (for the indexing rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanFrom {
    pub position: u64,
    pub offset: u64,
    pub last_indexed: Option<u64>,
    /// Base offset of the batch before `position`, if known (carried into [`Scan`]).
    pub last_base: Option<u64>,
}

impl ScanFrom {
    /// The start of a segment.
    pub(crate) fn start(base_offset: u64) -> Self {
        Self {
            position: 0,
            offset: base_offset,
            last_indexed: None,
            last_base: None,
        }
    }
}

/// What a scan accepts between the end of one batch and the next batch's base offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetRule {
    /// Each batch starts where the previous one ended: the active segment, which only the
    /// appender writes. `base_offset` sits outside the CRC, so this is what catches a torn or
    /// flipped one in the unsynced tail.
    Dense,
    /// Gaps allowed, never backwards: a sealed segment, which compaction may have rewritten
    /// to keep only some offsets.
    Gaps,
}

/// Walks the batches of `log` from `from`, checking each (CRC and records too if `verify`)
/// and their offsets by `rule`, until the end, zero fill, or the first bad batch. Index entries
/// are produced by the appender's rule: the first batch of the segment, then the first batch
/// `index_interval_bytes` or more past the previous entry.
pub(crate) fn scan(
    log: &[u8],
    base_offset: u64,
    from: ScanFrom,
    index_interval_bytes: u32,
    verify: bool,
    rule: OffsetRule,
) -> Scan {
    let mut expected = from.offset;
    let mut last_indexed = from.last_indexed;
    let mut position = from.position;
    let mut index = Vec::new();
    let mut last_base = from.last_base;
    let end = log.len() as u64;
    let stop = loop {
        let rest = log.get(position as usize..).unwrap_or_default();
        if rest.is_empty() {
            break None;
        }
        let Some(prefix) = BatchPrefix::parse(rest) else {
            break (!rest.iter().all(|&b| b == 0)).then(|| {
                (
                    position,
                    Corruption::Truncated {
                        available: end - position,
                    },
                )
            });
        };
        if prefix.total_len == 12 && prefix.base_offset == 0 && prefix.magic == 0 {
            // Zero fill: the preallocated, never-written part of the file (or a write torn
            // before its first page reached the disk; either way the data ends here).
            break None;
        }
        if prefix.magic != MAGIC
            || prefix.total_len < HEADER_LEN as u64
            || prefix.total_len > end - position
        {
            break Some((
                position,
                Corruption::BadHeader {
                    total_len: prefix.total_len,
                    magic: prefix.magic,
                    available: end - position,
                },
            ));
        }
        let batch = &rest[..prefix.total_len as usize];
        if verify {
            // Only the appender writes the active segment, batches as producers sent them; a
            // sealed one may hold batches compaction thinned.
            let checked = match rule {
                OffsetRule::Dense => BatchView::new(batch, usize::MAX),
                OffsetRule::Gaps => BatchView::stored(batch),
            };
            if let Err(error) = checked {
                break Some((position, Corruption::Batch(error)));
            }
        }
        match rule {
            OffsetRule::Dense if prefix.base_offset != expected => {
                break Some((
                    position,
                    Corruption::OffsetGap {
                        expected,
                        found: prefix.base_offset,
                    },
                ));
            }
            OffsetRule::Gaps if prefix.base_offset < expected => {
                break Some((
                    position,
                    Corruption::OffsetBackwards {
                        expected_at_least: expected,
                        found: prefix.base_offset,
                    },
                ));
            }
            _ => {}
        }
        let relative = prefix.base_offset - base_offset;
        let due =
            last_indexed.is_none_or(|last| position >= last + u64::from(index_interval_bytes));
        if due && let Ok(relative_offset) = u32::try_from(relative) {
            index.push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            last_indexed = Some(position);
        }
        expected = prefix.next_offset();
        last_base = Some(prefix.base_offset);
        position += prefix.total_len;
    };
    Scan {
        valid_len: position,
        next_offset: expected,
        index,
        stop,
        last_base,
    }
}
