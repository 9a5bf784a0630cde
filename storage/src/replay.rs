//! Rebuilding state from a log: the one way a log's owner (committed offsets, producer state,
//! group membership, queue state) gets its state back at start.
//!
//! The owner implements [`StateMachine`]. [`replay`] restores the newest usable snapshot the
//! owner wrote with [`write_snapshot`], if any, then hands it every batch from the snapshot's
//! offset (or the log's earliest) to the high watermark, in offset order, each batch checked
//! in full. raft-engine's `ReplayMachine` is the model; the snapshot is what lets an owner
//! drop the segments it covers (`Log::delete_before`) and keep replay short.
//!
//! A snapshot is a file beside the log's segments, written through a temporary file, fsynced
//! and renamed, so it is whole or absent:
//!
//! ```text
//! {next_offset:020}.snapshot = { u32 magic "SLSN" | u8 version | u64 next_offset
//!                              | u32 state_len | state | u32 crc }      (little-endian)
//! ```
//!
//! | offset | size | field         | notes                                              |
//! |-------:|-----:|---------------|----------------------------------------------------|
//! |      0 |    4 | `magic`       | `"SLSN"`                                           |
//! |      4 |    1 | `version`     | [`SNAPSHOT_VERSION`]                               |
//! |      5 |    8 | `next_offset` | the state covers every offset below this           |
//! |     13 |    4 | `state_len`   | bytes of `state`                                   |
//! |     17 |    … | `state`       | the owner's encoding                               |
//! |   17+n |    4 | `crc`         | CRC-32 (IEEE) of every byte before it              |
//!
//! A snapshot may only cover durable offsets (`next_offset <= Log::durable_offset`), so no
//! crash can leave a log shorter than its snapshot; one that claims more than the log holds,
//! or fails its CRC, is skipped with a warning and an older one is used. With none usable, a
//! full replay runs only if the log still starts at offset 0: otherwise the damaged snapshot
//! may be what let earlier segments go, and the replay fails rather than rebuild a state with
//! a hole in it ([`Error::SnapshotGap`]).

use crate::error::{Error, Result};
use crate::format::BatchView;
use crate::format::Batches;
use crate::io::{remove_if_exists, write_atomically};
use crate::log::Log;
use std::path::{Path, PathBuf};

/// Extension of snapshot files.
const SNAPSHOT_EXTENSION: &str = "snapshot";
/// The snapshot format version this crate writes and reads.
pub const SNAPSHOT_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"SLSN";
const HEADER_LEN: usize = 17;
const CRC_LEN: usize = 4;
const _: () = assert!(HEADER_LEN == 4 + 1 + 8 + 4);
/// Bytes read from the log per step of a replay.
const READ_BYTES: u64 = 1 << 20;

/// State rebuilt from a log.
pub trait StateMachine {
    /// The owner's error; storage errors convert into it.
    type Error: From<Error>;

    /// Replaces the state with the one a snapshot holds (the bytes the owner gave
    /// [`write_snapshot`]). Called at most once, before any batch.
    fn restore(&mut self, state: &[u8]) -> Result<(), Self::Error>;

    /// Applies one batch, in offset order. The batch passed every check of
    /// `BatchView::stored` (on a compacted log it may have gaps: read each record's
    /// `offset`, never count); its records below the replay's start offset (only possible in a
    /// snapshot's first batch, if the snapshot was not taken at a batch boundary) should be
    /// skipped by the caller.
    fn apply(&mut self, batch: &BatchView<'_>) -> Result<(), Self::Error>;
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    /// The offset of the snapshot restored, if one was.
    pub snapshot: Option<u64>,
    /// Batches applied.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// One past the last offset applied (where the state now stands).
    pub next_offset: u64,
}

/// Restores `machine` from `log`'s newest usable snapshot, then applies every batch from there
/// to the high watermark as it was when the replay began (blocking).
pub fn replay<M: StateMachine>(log: &Log, machine: &mut M) -> Result<Replayed, M::Error> {
    let high_watermark = log.high_watermark();
    let mut replayed = Replayed::default();
    let mut from = log.earliest_offset();
    let (usable, skipped) = newest_snapshot(log.dir(), high_watermark)?;
    if let (None, Some(damaged)) = (&usable, skipped)
        && from > 0
    {
        // The snapshot may be what let segments below `from` go: without it the state would
        // silently miss their records.
        return Err(Error::SnapshotGap {
            dir: log.dir().to_path_buf(),
            snapshot: damaged,
            earliest: from,
        }
        .into());
    }
    if let Some((offset, state)) = usable {
        if offset < from {
            return Err(Error::SnapshotGap {
                dir: log.dir().to_path_buf(),
                snapshot: offset,
                earliest: from,
            }
            .into());
        }
        machine.restore(&state)?;
        replayed.snapshot = Some(offset);
        from = offset;
    }
    apply_from(log, machine, from, high_watermark, &mut replayed)?;
    Ok(replayed)
}

/// [`replay`] for state that only caches what the log's tail says (an idempotent producer's
/// last sequences): a missing, damaged or stale snapshot is not an error. A snapshot at or
/// above the earliest offset is used as `replay` uses it; otherwise the newest one that decodes
/// (if any) is restored anyway and the batches from `max(earliest, floor)` are applied, so the
/// replay reads a bounded tail. The machine should then forget what its records say about
/// offsets below the earliest (`Replayed::snapshot` tells whether it got one).
pub fn replay_tail<M: StateMachine>(
    log: &Log,
    machine: &mut M,
    floor: u64,
) -> Result<Replayed, M::Error> {
    let high_watermark = log.high_watermark();
    let earliest = log.earliest_offset();
    let mut replayed = Replayed::default();
    let (usable, _) = newest_snapshot(log.dir(), high_watermark)?;
    let from = match usable {
        Some((offset, state)) => {
            machine.restore(&state)?;
            replayed.snapshot = Some(offset);
            if offset >= earliest {
                offset
            } else {
                earliest.max(floor)
            }
        }
        None => earliest.max(floor),
    };
    apply_from(log, machine, from, high_watermark, &mut replayed)?;
    Ok(replayed)
}

/// Hands `machine` every batch from `from` to `high_watermark`.
fn apply_from<M: StateMachine>(
    log: &Log,
    machine: &mut M,
    from: u64,
    high_watermark: u64,
    replayed: &mut Replayed,
) -> Result<(), M::Error> {
    replayed.next_offset = from;
    let mut offset = from;
    while offset < high_watermark {
        let read = log.read(offset, READ_BYTES)?;
        if read.batches.is_empty() {
            break;
        }
        for framed in Batches::new(&read.batches) {
            let corrupt = |error| Error::BadStoredBatch {
                dir: log.dir().to_path_buf(),
                offset,
                error,
            };
            let framed = framed.map_err(corrupt)?;
            if framed.prefix.base_offset >= high_watermark {
                break;
            }
            // Stored batches: compaction may have removed records from them.
            let view = framed.stored().map_err(corrupt)?;
            offset = framed.prefix.next_offset();
            if offset <= from {
                continue;
            }
            machine.apply(&view)?;
            replayed.batches += 1;
            replayed.records += u64::from(view.record_count());
            replayed.next_offset = offset;
        }
    }
    Ok(())
}

/// Writes `state` as `log`'s snapshot covering every offset below `next_offset`, durably, and
/// removes older snapshots (blocking). `next_offset` must not pass the durable offset: a
/// snapshot of data a crash may lose would make replay skip a cut tail.
pub fn write_snapshot(log: &Log, next_offset: u64, state: &[u8]) -> Result<()> {
    let durable = log.durable_offset();
    if next_offset > durable || next_offset < log.earliest_offset() {
        return Err(Error::config(
            "snapshot next_offset",
            next_offset,
            "must be within the log's earliest and durable offsets",
        ));
    }
    let state_len = u32::try_from(state.len())
        .map_err(|_| Error::config("snapshot state", state.len(), "must be under 4 GiB"))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + state.len() + CRC_LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.push(SNAPSHOT_VERSION);
    bytes.extend_from_slice(&next_offset.to_le_bytes());
    bytes.extend_from_slice(&state_len.to_le_bytes());
    bytes.extend_from_slice(state);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let path = snapshot_path(log.dir(), next_offset);
    write_atomically(&path, &bytes)?;
    for (offset, older) in list_snapshots(log.dir())? {
        if offset < next_offset {
            remove_if_exists(&older)?;
        }
    }
    Ok(())
}

fn snapshot_path(dir: &Path, next_offset: u64) -> PathBuf {
    dir.join(format!("{next_offset:020}.{SNAPSHOT_EXTENSION}"))
}

/// Snapshot files in `dir` with the offsets their names give, newest first.
fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(digits) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".snapshot"))
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(offset) = digits.parse::<u64>() {
            found.push((offset, entry.path()));
        }
    }
    found.sort_unstable_by_key(|&(offset, _)| std::cmp::Reverse(offset));
    Ok(found)
}

/// The newest snapshot that decodes and covers no more than `high_watermark`, and the offset
/// of the newest one skipped before it, if any.
type Found = (Option<(u64, Vec<u8>)>, Option<u64>);

fn newest_snapshot(dir: &Path, high_watermark: u64) -> Result<Found> {
    let mut skipped = None;
    for (named, path) in list_snapshots(dir)? {
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        match decode(&bytes) {
            Some((offset, state)) if offset == named && offset <= high_watermark => {
                return Ok((Some((offset, state.to_vec())), skipped));
            }
            _ => {
                tracing::warn!(
                    snapshot = %path.display(),
                    high_watermark,
                    "skipping a snapshot that is damaged or claims more than the log holds"
                );
                skipped.get_or_insert(named);
            }
        }
    }
    Ok((None, skipped))
}

/// `(next_offset, state)` of a whole snapshot with a matching CRC and a known version.
fn decode(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let body_len = bytes.len().checked_sub(CRC_LEN)?;
    if body_len < HEADER_LEN || bytes[0..4] != MAGIC || bytes[4] != SNAPSHOT_VERSION {
        return None;
    }
    let (body, crc) = bytes.split_at(body_len);
    if crc32fast::hash(body) != crate::format::read_u32(crc, 0..4) {
        return None;
    }
    let next_offset = crate::format::read_u64(body, 5..13);
    let state_len = crate::format::read_u32(body, 13..17) as usize;
    let state = body.get(HEADER_LEN..)?;
    (state.len() == state_len).then_some((next_offset, state))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn snapshot_bytes_round_trip_and_damage_is_refused() {
        let state = b"some state".to_vec();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.push(SNAPSHOT_VERSION);
        bytes.extend_from_slice(&42u64.to_le_bytes());
        bytes.extend_from_slice(&(state.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&state);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Some((42, &state[..])));
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            assert_eq!(decode(&flipped), None, "bit flip at {i}");
        }
        for len in 0..bytes.len() {
            assert_eq!(decode(&bytes[..len]), None, "cut at {len}");
        }
    }
}
