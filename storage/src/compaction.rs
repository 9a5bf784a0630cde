//! Compaction policy: which sealed segments a pass reads and rewrites, and which records it
//! keeps. Pure functions and small structures, tested without files; `log/compact.rs` carries
//! them out and `swap.rs` replaces the files (design.md §3).
//!
//! A compacted log keeps, per key, its latest record. Like Kafka's cleaner, a pass:
//! 1. finds the **cleanable** segments: the sealed ones wholly below the high watermark (never
//!    the active segment). Offsets below the log's [`Checkpoint`] (`cleaned_to`) are **clean**
//!    (a pass already kept one record per key there); the rest is **dirty**;
//! 2. runs when the dirty share of the cleanable bytes reaches `min_dirty_percent`, or a
//!    kept tombstone has expired ([`due`]);
//! 3. **maps** the dirty records: hash of the key → latest offset ([`OffsetMap`]), up to
//!    `max_map_entries` keys. A full map ends the pass's range at the last segment it mapped
//!    whole (or, if not even one fits, at the first record that did not: [`map_end`]); the
//!    next pass goes on from there;
//! 4. **rewrites** every cleanable segment below that end, from the log's start, in groups of
//!    consecutive segments that fit one segment ([`groups`]), keeping what [`verdict`] keeps:
//!    a record whose key has a later record in the map goes, a tombstone (null value) goes once
//!    expired, everything else stays — records without a key, control batches, and every
//!    record at or past the pass's end. Offsets and timestamps never change;
//! 5. records the new `cleaned_to` and the oldest tombstone kept in the [`Checkpoint`].
//!
//! **Tombstone time.** A tombstone expires `delete_retention` after its batch was appended,
//! by the broker's clock (the `now_ms` the caller passes): the append time of the batch, as the
//! segment's time index knows it — the first index entry at or after the batch
//! ([`TimeCeiling`]), never earlier than the true append time, so a tombstone is never dropped
//! early. Producer timestamps are not used: they may be anything.
//!
//! **Key hash.** The map holds a 128-bit hash of each key, two 64-bit SipHash-1-3 values
//! under one random key (std's `RandomState`), the input prefixed with 0 or 1 so the two are
//! independent: with a secret random key SipHash is a pseudo-random function, so two keys
//! collide with probability 2⁻¹²⁸ (Kafka's cleaner stores a 128-bit MD5 for the same reason).
//! The map lives for one pass, so the key need not be stable across processes; a collision
//! would drop a record whose key only shares the hash.
//!
//! **Checkpoint** (`compaction.checkpoint`, beside the segments; written through a temporary
//! file and renamed, not fsynced: it is written after the swaps it counts were committed
//! durably, so whatever of it a crash keeps never claims more than is clean):
//!
//! ```text
//! checkpoint = { u32 magic "SLCC" | u8 version | u64 cleaned_to | i64 oldest_tombstone_ms
//!              | u32 crc }                                        (25 bytes, little-endian)
//! ```
//!
//! | offset | size | field                 | notes                                          |
//! |-------:|-----:|-----------------------|------------------------------------------------|
//! |      0 |    4 | `magic`               | `"SLCC"`                                       |
//! |      4 |    1 | `version`             | [`CHECKPOINT_VERSION`]                         |
//! |      5 |    8 | `cleaned_to`          | offsets below this are clean                   |
//! |     13 |    8 | `oldest_tombstone_ms` | append time of the oldest tombstone kept below `cleaned_to`; `i64::MAX` if none |
//! |     21 |    4 | `crc`                 | CRC-32 (IEEE) of bytes 0..21                   |
//!
//! A missing or damaged checkpoint reads as "nothing clean, no tombstone known": the next
//! pass maps everything, which costs time but never a record. A stale one (a crash between a
//! swap and its write) only makes a pass map segments that are already clean.

use crate::error::{Error, Result};
use crate::format::{read_u32, read_u64};
use crate::index;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Limits on one compaction pass, set by the caller (the broker's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionLimits {
    /// Most distinct keys one pass maps: its memory bound, about 32 bytes a key (up to twice
    /// that while the map grows). A log with more keys in its dirty part is compacted over
    /// several passes. Default 1,000,000; at least 1.
    pub max_map_entries: usize,
    /// Share of the cleanable bytes that must be dirty before a pass runs, percent: 0 runs a
    /// pass whenever anything is dirty; 50 (the default, as Kafka's
    /// `min.cleanable.dirty.ratio`) keeps the rewrites of the clean part to about the bytes
    /// appended. 0..=100. An expired tombstone makes a pass due whatever this says.
    pub min_dirty_percent: u8,
}

impl Default for CompactionLimits {
    fn default() -> Self {
        Self {
            max_map_entries: 1_000_000,
            min_dirty_percent: 50,
        }
    }
}

impl CompactionLimits {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<()> {
        if self.max_map_entries == 0 {
            return Err(Error::config(
                "max_map_entries",
                self.max_map_entries,
                "must be at least 1",
            ));
        }
        if self.min_dirty_percent > 100 {
            return Err(Error::config(
                "min_dirty_percent",
                self.min_dirty_percent,
                "must be within 0..=100",
            ));
        }
        Ok(())
    }
}

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Whether a pass ran (false: nothing was due).
    pub ran: bool,
    /// Segments replaced by rewritten ones.
    pub segments_replaced: usize,
    /// Rewritten segments written in their place.
    pub segments_written: usize,
    /// Bytes of the replaced segments.
    pub bytes_before: u64,
    /// Bytes of the segments written in their place.
    pub bytes_after: u64,
    /// Records removed because a later record has their key.
    pub records_superseded: u64,
    /// Tombstones removed because they expired.
    pub tombstones_expired: u64,
    /// Keys the pass mapped.
    pub keys_mapped: usize,
    /// Offsets below this are clean now (the checkpoint).
    pub cleaned_to: u64,
    /// One past the last offset a pass may touch now (the end of the sealed segments below
    /// the high watermark); `cleaned_to` below it means dirty records are left for later.
    pub cleanable_end: u64,
}

// ---------------------------------------------------------------------------------------------
// Keys

/// A 128-bit hash of a record key (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyHash([u64; 2]);

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random: the table may use it as it is.
        state.write_u64(self.0[0]);
    }
}

/// Hands the map a [`KeyHash`]'s first word as its hash, rather than hashing it again.
#[derive(Debug, Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `KeyHash`); fold anything else in rather than lose it.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Hashes keys for one pass: two SipHash-1-3 values under one random key.
#[derive(Debug, Default)]
pub(crate) struct KeyHasher {
    state: RandomState,
}

impl KeyHasher {
    pub(crate) fn hash(&self, key: &[u8]) -> KeyHash {
        let half = |tag: u8| {
            let mut hasher = self.state.build_hasher();
            hasher.write_u8(tag);
            hasher.write(key);
            hasher.finish()
        };
        KeyHash([half(0), half(1)])
    }
}

/// Whether [`OffsetMap::insert`] took the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// Recorded (a new key, or a later offset of a known one).
    Yes,
    /// The map is full and the key is new: not recorded.
    Full,
}

/// The latest offset of each key seen, bounded to `capacity` keys.
#[derive(Debug)]
pub(crate) struct OffsetMap {
    hasher: KeyHasher,
    map: HashMap<KeyHash, u64, BuildHasherDefault<PassThrough>>,
    capacity: usize,
}

/// Keys a map reserves room for at first; it grows up to its capacity.
const INITIAL_MAP_KEYS: usize = 4096;

impl OffsetMap {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            hasher: KeyHasher::default(),
            map: HashMap::with_capacity_and_hasher(
                capacity.min(INITIAL_MAP_KEYS),
                BuildHasherDefault::default(),
            ),
            capacity,
        }
    }

    /// Records `offset` as `key`'s latest. Offsets must be given in increasing order.
    pub(crate) fn insert(&mut self, key: &[u8], offset: u64) -> Inserted {
        let hash = self.hasher.hash(key);
        if let Some(latest) = self.map.get_mut(&hash) {
            debug_assert!(*latest < offset, "offsets are mapped in order");
            *latest = offset;
            return Inserted::Yes;
        }
        if self.map.len() >= self.capacity {
            return Inserted::Full;
        }
        self.map.insert(hash, offset);
        Inserted::Yes
    }

    /// The latest offset mapped for `key`.
    pub(crate) fn latest(&self, key: &[u8]) -> Option<u64> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(&self.hasher.hash(key)).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Records

/// What a pass does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// A later record has the same key.
    Superseded,
    /// A tombstone past its retention.
    ExpiredTombstone,
}

/// One record as [`verdict`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub offset: u64,
    /// Whether the record has a key (records without one are always kept).
    pub keyed: bool,
    /// The latest offset the map holds for the record's key.
    pub latest: Option<u64>,
    /// Whether its value is null.
    pub tombstone: bool,
    /// Its batch's append time, ms ([`TimeCeiling`]).
    pub append_ms: i64,
}

/// What a pass removes: superseded records below `clean_end`, and tombstones appended at or
/// before `tombstones_until_ms` (`now − delete_retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Horizon {
    pub clean_end: u64,
    pub tombstones_until_ms: i64,
}

pub(crate) fn verdict(record: Seen, horizon: Horizon) -> Verdict {
    if record.offset >= horizon.clean_end || !record.keyed {
        return Verdict::Keep;
    }
    if record.latest.is_some_and(|latest| latest > record.offset) {
        return Verdict::Superseded;
    }
    if record.tombstone && record.append_ms <= horizon.tombstones_until_ms {
        return Verdict::ExpiredTombstone;
    }
    Verdict::Keep
}

/// The append time of a segment's batches from its time index: the first entry at or after
/// the batch, else the segment's newest append time. Never earlier than the truth, since
/// append times never decrease. Batches must be asked for in offset order.
#[derive(Debug)]
pub(crate) struct TimeCeiling<'a> {
    time: &'a [u8],
    count: usize,
    next: usize,
    base_offset: u64,
    last_append_ms: i64,
}

impl<'a> TimeCeiling<'a> {
    pub(crate) fn new(time: &'a [u8], base_offset: u64, last_append_ms: i64) -> Self {
        Self {
            count: index::time_count(time, usize::MAX),
            time,
            next: 0,
            base_offset,
            last_append_ms,
        }
    }

    pub(crate) fn at(&mut self, batch_base: u64) -> i64 {
        let relative = batch_base.saturating_sub(self.base_offset);
        while self.next < self.count {
            let entry = index::time_entry(self.time, self.next);
            if u64::from(entry.relative_offset) >= relative {
                return entry.append_ms;
            }
            self.next += 1;
        }
        self.last_append_ms
    }
}

// ---------------------------------------------------------------------------------------------
// Segments

/// A segment as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentStat {
    pub base_offset: u64,
    /// One past its last offset (for a sealed segment, the next segment's base).
    pub next_offset: u64,
    /// Bytes in its log file.
    pub len: u64,
    pub sealed: bool,
}

/// How many of the oldest `segments` a pass may touch: the sealed ones wholly below the high
/// watermark, never the last (the active segment).
pub(crate) fn cleanable(segments: &[SegmentStat], high_watermark: u64) -> usize {
    segments
        .iter()
        .take(segments.len().saturating_sub(1))
        .take_while(|s| s.sealed && s.next_offset <= high_watermark)
        .count()
}

/// The clean and dirty parts of the cleanable segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dirt {
    /// The first offset to map.
    pub dirty_start: u64,
    /// Bytes of segments wholly below `cleaned_to`.
    pub clean_bytes: u64,
    /// Bytes of the others (a segment `cleaned_to` falls inside counts as dirty).
    pub dirty_bytes: u64,
}

/// Splits `cleanable` segments at `cleaned_to`.
pub(crate) fn dirt(cleanable: &[SegmentStat], cleaned_to: u64) -> Dirt {
    let start = cleanable.first().map_or(0, |s| s.base_offset);
    let mut dirt = Dirt {
        dirty_start: cleaned_to.max(start),
        clean_bytes: 0,
        dirty_bytes: 0,
    };
    for segment in cleanable {
        if segment.next_offset <= cleaned_to {
            dirt.clean_bytes += segment.len;
        } else {
            dirt.dirty_bytes += segment.len;
        }
    }
    dirt
}

/// Whether a pass should run: enough of the cleanable bytes are dirty, or a kept tombstone
/// expired.
pub(crate) fn due(dirt: Dirt, min_dirty_percent: u8, tombstone_expired: bool) -> bool {
    let total = dirt.clean_bytes + dirt.dirty_bytes;
    let dirty_enough = dirt.dirty_bytes > 0
        && u128::from(dirt.dirty_bytes) * 100 >= u128::from(min_dirty_percent) * u128::from(total);
    dirty_enough || tombstone_expired
}

/// Where a pass's range ends, given where mapping stopped (`None`: every dirty record was
/// mapped): at the start of the segment mapping stopped in, if a whole segment was mapped
/// before it; else at the record that did not fit (a pass always makes progress).
pub(crate) fn map_end(cleanable: &[SegmentStat], dirty_start: u64, stopped_at: Option<u64>) -> u64 {
    let end = cleanable.last().map_or(dirty_start, |s| s.next_offset);
    let Some(stopped) = stopped_at else {
        return end;
    };
    cleanable
        .iter()
        .map(|s| s.base_offset)
        .filter(|&base| base > dirty_start && base <= stopped)
        .max()
        .unwrap_or(stopped)
}

/// The groups of consecutive cleanable segments a pass rewrites, each into one segment: every
/// segment that starts below `clean_end`, from the first, grouped while their bytes fit
/// `max_segment_bytes` and their offsets a segment's `u32` relative offsets.
pub(crate) fn groups(
    cleanable: &[SegmentStat],
    clean_end: u64,
    max_segment_bytes: u64,
) -> Vec<Range<usize>> {
    let last = cleanable
        .iter()
        .take_while(|s| s.base_offset < clean_end)
        .count();
    let mut groups = Vec::new();
    let mut start = 0;
    while start < last {
        let base = cleanable[start].base_offset;
        let mut bytes = 0;
        let mut end = start;
        while end < last {
            let segment = cleanable[end];
            let fits = bytes + segment.len <= max_segment_bytes
                && segment.next_offset - base <= u64::from(u32::MAX);
            if end > start && !fits {
                break;
            }
            bytes += segment.len;
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

/// Name of the checkpoint file in a log's directory.
pub(crate) const CHECKPOINT_FILE: &str = "compaction.checkpoint";
/// The checkpoint format version this crate writes and reads.
pub const CHECKPOINT_VERSION: u8 = 1;
const CHECKPOINT_MAGIC: [u8; 4] = *b"SLCC";
const CHECKPOINT_LEN: usize = 25;
const _: () = assert!(CHECKPOINT_LEN == 4 + 1 + 8 + 8 + 4);

/// How far a log is compacted (see the module doc for the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub cleaned_to: u64,
    pub oldest_tombstone_ms: i64,
}

impl Default for Checkpoint {
    /// Nothing clean, no tombstone known.
    fn default() -> Self {
        Self {
            cleaned_to: 0,
            oldest_tombstone_ms: i64::MAX,
        }
    }
}

impl Checkpoint {
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(CHECKPOINT_FILE)
    }

    pub(crate) fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut out = [0u8; CHECKPOINT_LEN];
        out[0..4].copy_from_slice(&CHECKPOINT_MAGIC);
        out[4] = CHECKPOINT_VERSION;
        out[5..13].copy_from_slice(&self.cleaned_to.to_le_bytes());
        out[13..21].copy_from_slice(&self.oldest_tombstone_ms.to_le_bytes());
        let crc = crc32fast::hash(&out[..21]);
        out[21..25].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` unless `bytes` is exactly a checkpoint of this version with a matching CRC.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != CHECKPOINT_LEN
            || bytes[0..4] != CHECKPOINT_MAGIC
            || bytes[4] != CHECKPOINT_VERSION
            || read_u32(bytes, 21..25) != crc32fast::hash(&bytes[..21])
        {
            return None;
        }
        Some(Self {
            cleaned_to: read_u64(bytes, 5..13),
            oldest_tombstone_ms: read_u64(bytes, 13..21) as i64,
        })
    }

    /// The log's checkpoint; the default if there is none or it is damaged (with a warning).
    pub(crate) fn read(dir: &Path) -> Self {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(file = %path.display(), "damaged compaction checkpoint: compacting from the start");
                Self::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read the compaction checkpoint: compacting from the start");
                Self::default()
            }
        }
    }

    /// Writes the checkpoint whole or not at all (temporary file, rename). Not fsynced: a
    /// crash may keep an older checkpoint (more work for the next pass) or a torn one (read
    /// as the default), never one ahead of the swaps, which were committed durably before.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, self.encode()).map_err(|e| Error::io("write", &temp, e))?;
        std::fs::rename(&temp, &path).map_err(|e| Error::io("rename", &temp, e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn stats(segments: &[(u64, u64)]) -> Vec<SegmentStat> {
        // (base, len); the next one's base is the next offset; the last is active.
        segments
            .iter()
            .enumerate()
            .map(|(i, &(base, len))| SegmentStat {
                base_offset: base,
                next_offset: segments.get(i + 1).map_or(base + 10, |s| s.0),
                len,
                sealed: i + 1 < segments.len(),
            })
            .collect()
    }

    #[test]
    fn the_key_hash_is_stable_in_a_pass_and_has_no_collisions_in_a_million_keys() {
        let hasher = KeyHasher::default();
        assert_eq!(hasher.hash(b"k"), hasher.hash(b"k"));
        assert_ne!(hasher.hash(b"k"), hasher.hash(b"k\0"));
        assert_ne!(hasher.hash(b""), hasher.hash(b"\0"));
        let mut seen = std::collections::HashSet::new();
        let mut halves = std::collections::HashSet::new();
        for i in 0..1_000_000_u32 {
            let hash = hasher.hash(&i.to_le_bytes());
            assert!(seen.insert(hash), "collision at {i}");
            // The two halves are independent values, not one value twice.
            assert_ne!(hash.0[0], hash.0[1]);
            halves.insert(hash.0[0] & 0xffff);
        }
        // The first word, which the table uses, spreads over every low 16-bit value.
        assert_eq!(halves.len(), 1 << 16);
        // Another pass hashes with another key.
        assert_ne!(KeyHasher::default().hash(b"k"), hasher.hash(b"k"));
    }

    #[test]
    fn the_map_keeps_the_latest_offset_and_refuses_new_keys_when_full() {
        let mut map = OffsetMap::new(2);
        assert_eq!(map.latest(b"a"), None);
        assert_eq!(map.insert(b"a", 1), Inserted::Yes);
        assert_eq!(map.insert(b"b", 2), Inserted::Yes);
        assert_eq!(map.insert(b"a", 3), Inserted::Yes);
        assert_eq!(map.insert(b"c", 4), Inserted::Full);
        // Known keys still move on when full.
        assert_eq!(map.insert(b"b", 5), Inserted::Yes);
        assert_eq!(map.len(), 2);
        assert_eq!(
            (map.latest(b"a"), map.latest(b"b"), map.latest(b"c")),
            (Some(3), Some(5), None)
        );
    }

    #[test]
    fn verdicts() {
        let horizon = Horizon {
            clean_end: 100,
            tombstones_until_ms: 1_000,
        };
        let record = Seen {
            offset: 10,
            keyed: true,
            latest: Some(10),
            tombstone: false,
            append_ms: 500,
        };
        let judge = |change: fn(&mut Seen)| {
            let mut seen = record;
            change(&mut seen);
            verdict(seen, horizon)
        };
        assert_eq!(judge(|_| {}), Verdict::Keep);
        assert_eq!(judge(|r| r.latest = Some(11)), Verdict::Superseded);
        // Not in the map: its key's only record below the clean end.
        assert_eq!(judge(|r| r.latest = None), Verdict::Keep);
        // Records without a key stay.
        assert_eq!(
            judge(|r| {
                r.keyed = false;
                r.latest = Some(50);
            }),
            Verdict::Keep
        );
        // At or past the pass's end: not looked at.
        assert_eq!(
            judge(|r| {
                r.offset = 100;
                r.latest = Some(200);
            }),
            Verdict::Keep
        );
        // Tombstones: expired at the horizon, not one ms before; superseded ones go anyway.
        assert_eq!(judge(|r| r.tombstone = true), Verdict::ExpiredTombstone);
        assert_eq!(
            judge(|r| {
                r.tombstone = true;
                r.append_ms = 1_000;
            }),
            Verdict::ExpiredTombstone
        );
        assert_eq!(
            judge(|r| {
                r.tombstone = true;
                r.append_ms = 1_001;
            }),
            Verdict::Keep
        );
        assert_eq!(
            judge(|r| {
                r.tombstone = true;
                r.append_ms = 5_000;
                r.latest = Some(20);
            }),
            Verdict::Superseded
        );
    }

    #[test]
    fn time_ceiling_is_the_entry_at_or_after_the_batch() {
        let mut time = Vec::new();
        for (append_ms, relative_offset) in [(100, 0), (200, 10), (300, 20), (350, 25)] {
            index::TimeEntry {
                append_ms,
                relative_offset,
            }
            .encode(&mut time);
        }
        let mut ceiling = TimeCeiling::new(&time, 1_000, 400);
        assert_eq!(ceiling.at(1_000), 100);
        assert_eq!(ceiling.at(1_005), 200);
        assert_eq!(ceiling.at(1_010), 200);
        assert_eq!(ceiling.at(1_011), 300);
        assert_eq!(ceiling.at(1_025), 350);
        // Past the last entry (an index rebuilt without a seal entry): the newest time.
        assert_eq!(ceiling.at(1_026), 400);
        assert_eq!(TimeCeiling::new(&[], 0, 7).at(3), 7);
    }

    #[test]
    fn only_sealed_segments_below_the_high_watermark_are_cleanable() {
        let all = stats(&[(0, 10), (10, 10), (20, 10), (30, 5)]);
        assert_eq!(cleanable(&all, 40), 3);
        assert_eq!(cleanable(&all, 25), 2);
        assert_eq!(cleanable(&all, 5), 0);
        assert_eq!(cleanable(&all[3..], 100), 0, "the active segment alone");
    }

    #[test]
    fn dirt_and_due() {
        let all = stats(&[(0, 100), (10, 100), (20, 200), (30, 0)]);
        let cleanable = &all[..3];
        let d = dirt(cleanable, 20);
        assert_eq!(
            d,
            Dirt {
                dirty_start: 20,
                clean_bytes: 200,
                dirty_bytes: 200
            }
        );
        assert!(due(d, 50, false));
        assert!(!due(d, 51, false));
        assert!(due(d, 51, true));
        // A checkpoint inside a segment: that segment counts as dirty.
        assert_eq!(dirt(cleanable, 15).dirty_bytes, 300);
        // Nothing dirty: only an expired tombstone makes a pass due, even at 0%.
        let clean = dirt(cleanable, 30);
        assert_eq!(clean.dirty_bytes, 0);
        assert!(!due(clean, 0, false));
        assert!(due(clean, 0, true));
        // A checkpoint below the log's start (retention dropped segments).
        assert_eq!(dirt(&cleanable[1..], 0).dirty_start, 10);
    }

    #[test]
    fn a_full_map_ends_the_range_at_the_last_whole_segment() {
        let all = stats(&[(0, 10), (10, 10), (20, 10), (30, 10), (40, 0)]);
        let cleanable = &all[..4];
        assert_eq!(map_end(cleanable, 0, None), 40);
        assert_eq!(map_end(cleanable, 0, Some(25)), 20);
        assert_eq!(map_end(cleanable, 0, Some(20)), 20);
        assert_eq!(map_end(cleanable, 12, Some(35)), 30);
        // Not one whole segment fitted: end at the record that did not.
        assert_eq!(map_end(cleanable, 12, Some(17)), 17);
        assert_eq!(map_end(cleanable, 0, Some(7)), 7);
    }

    #[test]
    fn groups_fill_a_segment_and_start_at_the_log_start() {
        let all = stats(&[(0, 40), (10, 30), (20, 50), (30, 10), (40, 10), (50, 0)]);
        let cleanable = &all[..5];
        assert_eq!(groups(cleanable, 50, 100), [0..2, 2..5]);
        assert_eq!(groups(cleanable, 25, 100), [0..2, 2..3]);
        assert_eq!(groups(cleanable, 50, 10), [0..1, 1..2, 2..3, 3..4, 4..5]);
        assert!(groups(cleanable, 0, 100).is_empty());
        // Offsets beyond a u32 apart never share a segment.
        let far = stats(&[(0, 1), (1 << 32, 1), ((1 << 32) + 5, 0)]);
        assert_eq!(groups(&far[..2], u64::MAX, 100), [0..1, 1..2]);
    }

    #[test]
    fn checkpoint_round_trips_and_damage_reads_as_default() {
        let checkpoint = Checkpoint {
            cleaned_to: 12_345,
            oldest_tombstone_ms: -7,
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(checkpoint));
        for i in 0..bytes.len() {
            let mut flipped = bytes;
            flipped[i] ^= 0x10;
            assert_eq!(Checkpoint::decode(&flipped), None, "flip at {i}");
        }
        for len in 0..bytes.len() {
            assert_eq!(Checkpoint::decode(&bytes[..len]), None);
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()), Checkpoint::default());
        checkpoint.write(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()), checkpoint);
        std::fs::write(Checkpoint::path(dir.path()), b"junk").unwrap();
        assert_eq!(Checkpoint::read(dir.path()), Checkpoint::default());
    }

    #[test]
    fn checkpoint_bytes_are_pinned() {
        let bytes = Checkpoint {
            cleaned_to: 0x0102,
            oldest_tombstone_ms: i64::MAX,
        }
        .encode();
        assert_eq!(
            &bytes[..21],
            &[
                b'S', b'L', b'C', b'C', 1, 0x02, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0xff, 0x7f
            ]
        );
        assert_eq!(read_u32(&bytes, 21..25), crc32fast::hash(&bytes[..21]));
    }
}
