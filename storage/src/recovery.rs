//! Opening a log: find its segments, and make the last one whole before the log serves.
//!
//! After a clean close (the marker file is present) the active segment's files were cut to
//! their lengths and synced, so the log end is found by walking batch headers from the last
//! index entry. Otherwise the tail is recovered: the last index entry that points at a batch
//! that passes every check is found (entries past it may be torn or stale), batches are walked
//! and fully checked from there, and the segment is cut at the first one that fails — a torn
//! tail, which can only hold writes that were never acknowledged as durable. Indexes are
//! rebuilt for the walked part. Earlier segments were synced when they were sealed; their
//! indexes are checked, and rebuilt if needed, when they are first opened (`segment.rs`).
//! The marker is removed, durably, before the log accepts a write. First of all, a compaction
//! swap a crash interrupted is completed, or one that never committed rolled back (`swap.rs`),
//! clean shutdown or not.

use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::index::{self, OFFSET_ENTRY_LEN, OffsetEntry, TIME_ENTRY_LEN, TimeEntry};
use crate::io::sync_dir;
use crate::mmap::{Access, map_read_only_as};
use crate::segment::{self, CHECKPOINT, Checkpoint, OffsetRule, ScanFrom, Segment};
use crate::swap;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

/// Name of the file that says the log was closed cleanly.
pub(crate) const CLEAN_MARKER: &str = ".clean-shutdown";
/// The page size st_blocks is compared against (allocation is at least this granular).
const PAGE_BYTES: u64 = 4096;

/// What opening a log found and did, for the broker's recovery summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// The log was closed cleanly (no recovery scan).
    pub clean: bool,
    /// Bytes of torn or unacknowledged tail cut from the active segment.
    pub cut_bytes: u64,
    /// The active segment was fdatasynced (its tail was not known durable, or was cut).
    pub synced: bool,
    /// The active segment's index files were written (entries missing or wrong).
    pub index_rewritten: bool,
}

/// What recovery hands the log: its segments, the last one active, and where appends go on.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Segments in offset order; the last is the active one. Never empty.
    pub segments: Vec<Arc<Segment>>,
    /// The active segment's append state.
    pub tail: Tail,
    /// What recovery did.
    pub report: Report,
}

/// Where an active segment's appends go on: the appender's state, minus its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    /// Bytes of whole batches in the segment.
    pub position: u64,
    /// Preallocated size of the segment's log file.
    pub capacity: u64,
    /// The offset the next batch gets.
    pub next_offset: u64,
    /// Position of the last index entry, if any.
    pub last_indexed: Option<u64>,
    /// Base offset of the last batch in the segment, if any.
    pub last_batch: Option<u64>,
    /// Entries in the offset index file.
    pub index_entries: u64,
    /// Entries in the time index file.
    pub time_entries: u64,
    /// Newest append time, ms (the floor for the next one).
    pub last_append_ms: i64,
    /// Append time of the segment's first batch, for roll by age.
    pub first_append_ms: Option<i64>,
}

impl Tail {
    /// The state of an empty segment starting at `base_offset`.
    pub(crate) fn empty(base_offset: u64, capacity: u64, last_append_ms: i64) -> Self {
        Self {
            position: 0,
            capacity,
            next_offset: base_offset,
            last_indexed: None,
            last_batch: None,
            index_entries: 0,
            time_entries: 0,
            last_append_ms,
            first_append_ms: None,
        }
    }
}

/// Finds the segments of the log in `dir` (creating the directory and a first segment if
/// there are none) and makes the last one whole, recovering its tail if the log was not
/// closed cleanly. `now_ms` is the append-time floor of a new log.
pub(crate) fn recover(dir: &Arc<Path>, config: &LogConfig, now_ms: i64) -> Result<Recovered> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", &**dir, e))?;
    let dir = Arc::clone(dir);
    let mut bases = list_segments(&dir)?;
    if bases.swap_pending {
        // A compaction swap a crash interrupted is completed (or, never committed, rolled
        // back) before the segments are known.
        swap::recover(&dir)?;
        bases = list_segments(&dir)?;
    }
    let bases = bases.bases;
    let marker = dir.join(CLEAN_MARKER);
    let clean = marker.exists();

    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len().max(1));
    for (i, &base) in bases.iter().enumerate() {
        let segment = Segment::new(Arc::clone(&dir), base);
        if let Some(&next_base) = bases.get(i + 1) {
            // Sealed: its length is its file's; its indexes are checked when first opened.
            let path = segment.path("log");
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            segment.publish(len, next_base, 0, 0, i64::MIN);
            segment.set_sealed();
        }
        segments.push(Arc::new(segment));
    }
    let mut created = false;
    let (active, tail, report) = match segments.pop() {
        Some(active) => {
            let (tail, report) = recover_active(&active, clean, config)?;
            (active, tail, report)
        }
        None => {
            let active = Segment::create(
                Arc::clone(&dir),
                0,
                config.segment_bytes,
                config.index_capacity(),
            )?;
            created = true;
            (
                Arc::new(active),
                Tail::empty(0, config.segment_bytes, now_ms),
                Report::default(),
            )
        }
    };
    segments.push(active);
    if clean {
        std::fs::remove_file(&marker).map_err(|e| Error::io("unlink", &marker, e))?;
    }
    // The removed marker and a created segment must be on disk before the first write; an
    // unclean open that found everything in place changed no directory entry.
    if clean || created {
        sync_dir(&dir)?;
    }
    Ok(Recovered {
        segments,
        tail,
        report,
    })
}

/// The segments a log directory holds.
struct Listing {
    /// Base offsets of the `.log` files, ascending.
    bases: Vec<u64>,
    /// Files of a compaction swap are present (see `swap.rs`).
    swap_pending: bool,
}

/// Lists the segments in `dir`, removing temporary files of interrupted index rebuilds.
fn list_segments(dir: &Path) -> Result<Listing> {
    let mut listing = Listing {
        bases: Vec::new(),
        swap_pending: false,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = segment::parse_log_name(name) {
            listing.bases.push(base);
        } else if name.contains(".rebuild-") {
            // A temporary index from an interrupted rebuild.
            let _ = std::fs::remove_file(entry.path());
        } else if swap::is_swap_file(name) {
            listing.swap_pending = true;
        }
    }
    listing.bases.sort_unstable();
    Ok(listing)
}

/// Makes the last segment whole and ready for appends; returns where appends go on.
fn recover_active(active: &Segment, clean: bool, config: &LogConfig) -> Result<(Tail, Report)> {
    let log_path = active.path("log");
    let log_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log_path)
        .map_err(|e| Error::io("open", &log_path, e))?;
    let file_len = log_file
        .metadata()
        .map_err(|e| Error::io("stat", &log_path, e))?
        .len();
    // st_blocks: what the file really holds (it is sparse past what was written).
    let allocated = log_file
        .metadata()
        .map_err(|e| Error::io("stat", &log_path, e))?
        .blocks()
        .saturating_mul(512);
    // Mapped, not read: the index files are preallocated (megabytes of holes), and only their
    // written prefix is looked at.
    let index_bytes = map_or_empty(&active.path("index"))?;
    let time_bytes = map_or_empty(&active.path("timeindex"))?;
    let log = map_read_only_as(&log_file, file_len, Access::Random)
        .map_err(|e| Error::io("mmap", &log_path, e))?;
    let mut report = Report {
        clean,
        ..Report::default()
    };

    // The active segment is dense: its first batch is at its base offset.
    let index_count = index::valid_offset_prefix(&index_bytes, file_len, 0);
    let entry = |i: usize| index::offset_entry(&index_bytes, i);
    let mut recovered = None;
    if clean && index_count > 0 {
        // Closed cleanly: the files were cut to their lengths and synced; walk headers from
        // the last entry to find the end.
        let last = entry(index_count - 1);
        let from = ScanFrom {
            position: u64::from(last.position),
            offset: active.base_offset + u64::from(last.relative_offset),
            last_indexed: Some(u64::from(last.position)),
            last_base: None,
        };
        let scan = segment::scan(
            &log,
            active.base_offset,
            from,
            config.index_interval_bytes,
            false,
            OffsetRule::Dense,
        );
        if scan.stop.is_none() && scan.valid_len == file_len {
            recovered = Some(((0..index_count).map(entry).collect(), scan));
        }
    }
    // Offsets below this were fdatasynced before the crash (or the close).
    let mut durable_position = None;
    let (offsets, scan): (Vec<OffsetEntry>, segment::Scan) = match recovered {
        Some(recovered) => {
            durable_position = Some(recovered.1.valid_len);
            recovered
        }
        None => {
            let checkpoint = std::fs::read(active.path(CHECKPOINT))
                .ok()
                .and_then(|bytes| Checkpoint::decode(&bytes))
                .filter(|c| c.position <= file_len && c.next_offset >= active.base_offset);
            let durable =
                recover_durable(&log, active, checkpoint, &index_bytes, index_count, config);
            if durable.is_some() {
                durable_position = checkpoint.map(|c| c.position);
            }
            let (mut offsets, from) =
                durable.unwrap_or_else(|| (Vec::new(), ScanFrom::start(active.base_offset)));
            // Past the durable point every batch is checked in full; the first that fails
            // is a torn write, cut with everything after it.
            let scan = segment::scan(
                &log,
                active.base_offset,
                from,
                config.index_interval_bytes,
                true,
                OffsetRule::Dense,
            );
            if let Some((position, corruption)) = &scan.stop {
                tracing::warn!(
                    segment = %log_path.display(),
                    position,
                    %corruption,
                    "cutting the torn tail of the active segment"
                );
            }
            offsets.extend(scan.index.iter().copied());
            let scan = segment::Scan {
                last_base: scan.last_base.or(from.last_base),
                ..scan
            };
            (offsets, scan)
        }
    };
    drop(log);

    // Time index: the kept entries that agree with the offset entries; the walked batches'
    // append times are unknown, so they get the file's modification time, which is never
    // earlier than the truth (a time search may start early, never late).
    let span = scan.next_offset - active.base_offset;
    let mut time_valid = index::valid_time_prefix(&time_bytes, span, 0);
    if !clean {
        time_valid = time_valid.min(offsets.len());
    }
    let mut times: Vec<TimeEntry> = (0..time_valid)
        .map(|i| index::time_entry(&time_bytes, i))
        .collect();
    let modified = segment::modified_ms(&log_path);
    let floor_ms = times.last().map_or(i64::MIN, |t| t.append_ms);
    let timed = times.last().map(|t| t.relative_offset);
    for entry in &offsets {
        if timed.is_none_or(|last| entry.relative_offset > last) {
            times.push(TimeEntry {
                append_ms: modified.max(floor_ms),
                relative_offset: entry.relative_offset,
            });
        }
    }
    let last_append_ms = times.last().map_or(modified, |t| t.append_ms.max(floor_ms));
    let first_append_ms = times.first().map(|t| t.append_ms);

    // Torn or unacknowledged bytes past the valid end (a batch that failed its checks, or
    // pages written after the end: st_blocks counts more than the valid data's pages) are cut
    // and the rest re-zeroed (re-extending a cut file reads as zeros), so no later recovery
    // can mistake them for data. An idle partition has none: nothing is cut or synced.
    let valid_len = scan.valid_len;
    let capacity = config.segment_bytes.max(valid_len);
    let written_beyond = allocated > valid_len.next_multiple_of(PAGE_BYTES);
    let cut = scan.stop.is_some() || (valid_len < file_len && written_beyond);
    if cut {
        log_file
            .set_len(valid_len)
            .map_err(|e| Error::io("truncate", &log_path, e))?;
        report.cut_bytes = file_len.min(allocated.max(valid_len)) - valid_len;
    }
    if cut || file_len < capacity {
        log_file
            .set_len(capacity)
            .map_err(|e| Error::io("preallocate", &log_path, e))?;
    }
    // What the log now serves must be durable: sync unless a sync before the crash (or the
    // clean close) already covered all of it; then record that in the checkpoint, so the next
    // unclean start need not sync again.
    let covered = valid_len == 0 || durable_position == Some(valid_len);
    if cut || !covered {
        log_file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", &log_path, e))?;
        report.synced = true;
        if valid_len > 0 && !clean {
            let checkpoint = Checkpoint {
                position: valid_len,
                next_offset: scan.next_offset,
            };
            let path = active.path(CHECKPOINT);
            std::fs::write(&path, checkpoint.encode()).map_err(|e| Error::io("write", &path, e))?;
        }
    }
    drop(log_file);

    let index_capacity = config.index_capacity().max(offsets.len() as u64 + 1);
    report.index_rewritten |= fix_index(
        &active.path("index"),
        index_bytes,
        &encode(&offsets, OffsetEntry::encode),
        OFFSET_ENTRY_LEN,
        index_capacity * OFFSET_ENTRY_LEN as u64,
    )?;
    report.index_rewritten |= fix_index(
        &active.path("timeindex"),
        time_bytes,
        &encode(&times, TimeEntry::encode),
        TIME_ENTRY_LEN,
        (index_capacity + 1) * TIME_ENTRY_LEN as u64,
    )?;
    if report.index_rewritten {
        tracing::info!(segment = %log_path.display(), entries = offsets.len(), "rebuilt the active segment's indexes");
    }

    let tail = Tail {
        position: scan.valid_len,
        capacity,
        next_offset: scan.next_offset,
        last_indexed: offsets.last().map(|e| u64::from(e.position)),
        last_batch: scan.last_base,
        index_entries: offsets.len() as u64,
        time_entries: times.len() as u64,
        last_append_ms,
        first_append_ms: if scan.valid_len > 0 {
            first_append_ms
        } else {
            None
        },
    };
    active.publish(
        tail.position,
        tail.next_offset,
        tail.index_entries,
        tail.time_entries,
        tail.last_append_ms,
    );
    Ok((tail, report))
}

/// The index entries and walk state for the part of an unclean active segment that the
/// checkpoint says is durable: index entries below the checkpoint that still land on the
/// batches they name are kept, and batch headers are walked from the last of them to the
/// checkpoint. `None` (scan the whole segment) if there is no checkpoint or the walk does not
/// end exactly at it.
fn recover_durable(
    log: &[u8],
    active: &Segment,
    checkpoint: Option<Checkpoint>,
    index_bytes: &[u8],
    index_count: usize,
    config: &LogConfig,
) -> Option<(Vec<OffsetEntry>, ScanFrom)> {
    let checkpoint = checkpoint?;
    let entry = |i: usize| index::offset_entry(index_bytes, i);
    let below = (0..index_count)
        .take_while(|&i| u64::from(entry(i).position) < checkpoint.position)
        .count();
    let mut kept: Vec<OffsetEntry> = (0..below).map(entry).collect();
    let lands = |e: &OffsetEntry| {
        log.get(e.position as usize..)
            .and_then(crate::format::BatchPrefix::parse)
            .is_some_and(|p| {
                p.base_offset == active.base_offset + u64::from(e.relative_offset)
                    && p.magic == crate::format::MAGIC
            })
    };
    if !kept.last().is_none_or(lands) {
        kept.clear();
    }
    let from = match kept.last() {
        Some(last) => ScanFrom {
            position: u64::from(last.position),
            offset: active.base_offset + u64::from(last.relative_offset),
            last_indexed: Some(u64::from(last.position)),
            last_base: None,
        },
        None => ScanFrom::start(active.base_offset),
    };
    let durable = log.get(..usize::try_from(checkpoint.position).ok()?)?;
    let walk = segment::scan(
        durable,
        active.base_offset,
        from,
        config.index_interval_bytes,
        false,
        OffsetRule::Dense,
    );
    if walk.stop.is_some()
        || walk.valid_len != checkpoint.position
        || walk.next_offset != checkpoint.next_offset
    {
        tracing::warn!(
            segment = %active.path("log").display(),
            "durable checkpoint disagrees with the log; scanning the whole segment"
        );
        return None;
    }
    kept.extend(walk.index.iter().copied());
    Some((
        kept.clone(),
        ScanFrom {
            position: walk.valid_len,
            offset: walk.next_offset,
            last_indexed: kept.last().map(|e| u64::from(e.position)),
            last_base: walk.last_base.or(from.last_base),
        },
    ))
}

/// `path` mapped read-only, or empty if it does not exist.
fn map_or_empty(path: &Path) -> Result<Bytes> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::new()),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    map_read_only_as(&file, len, Access::Random).map_err(|e| Error::io("mmap", path, e))
}

fn encode<T>(entries: &[T], put: fn(&T, &mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        put(entry, &mut out);
    }
    out
}

/// Makes an index file hold exactly `entries` (encoded, `entry_len` bytes each) followed by
/// zeros up to `capacity`, touching it as little as it can: nothing if it already does; the
/// missing entries written after a matching prefix (entries the appender had buffered when the
/// process died); else a rewrite. `current` is the file's map, dropped before any change.
/// Returns whether it wrote anything.
fn fix_index(
    path: &Path,
    current: Bytes,
    entries: &[u8],
    entry_len: usize,
    capacity: u64,
) -> Result<bool> {
    let capacity = capacity.max(entries.len() as u64);
    let file_len = current.len() as u64;
    let matching = current
        .chunks_exact(entry_len)
        .zip(entries.chunks_exact(entry_len))
        .take_while(|(a, b)| a == b)
        .count()
        * entry_len;
    // Past the matching prefix, the file must be zero wherever the new entries (and one more,
    // which readers and recovery may look at) go.
    let check_end = (entries.len() + entry_len).min(current.len());
    let zero_after = current
        .get(matching..check_end)
        .is_none_or(|rest| rest.iter().all(|&b| b == 0));
    drop(current);
    if matching == entries.len() && zero_after && file_len >= capacity {
        return Ok(false);
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let from = if zero_after {
        matching
    } else {
        file.set_len(0)
            .map_err(|e| Error::io("truncate", path, e))?;
        0
    };
    file.write_all_at(&entries[from..], from as u64)
        .map_err(|e| Error::io("write", path, e))?;
    if file_len.max(entries.len() as u64) < capacity || from == 0 {
        file.set_len(capacity)
            .map_err(|e| Error::io("preallocate", path, e))?;
    }
    Ok(from < entries.len() || !zero_after)
}
