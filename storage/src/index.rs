//! Sparse segment indexes: fixed-width little-endian entries and their search.
//!
//! ```text
//! .index     = entry*   entry = { u32 relative_offset | u32 position }        (8 bytes)
//! .timeindex = entry*   entry = { i64 append_time_ms | u32 relative_offset }  (12 bytes)
//! ```
//!
//! `relative_offset` is a batch's base offset minus the segment's base offset and `position`
//! is the batch's byte position in the `.log` file. An entry is written for the first batch of
//! a segment and then for the first batch at least `index_interval_bytes` after the previous
//! entry, so both indexes have the same entries; when a segment is sealed the time index gets
//! one more entry, for its last batch, so its last entry is the segment's newest append time.
//! The first entry is for the segment's first batch, at position 0: its relative offset is 0,
//! but in a compacted segment whose first records were removed (and in an empty compacted
//! segment, which has no entries).
//! Entries increase strictly (offsets and positions) and append times never decrease. Index
//! files hold nothing that cannot be rebuilt from the log; they carry no header and are
//! checked and rebuilt rather than trusted.

/// Bytes of an offset-index entry.
pub(crate) const OFFSET_ENTRY_LEN: usize = 8;
/// Bytes of a time-index entry.
pub(crate) const TIME_ENTRY_LEN: usize = 12;

/// Where a batch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    /// Batch base offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the segment.
    pub position: u32,
}

/// When a batch was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    /// Broker append time, ms since the epoch.
    pub append_ms: i64,
    /// Batch base offset minus the segment's base offset.
    pub relative_offset: u32,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

/// Entry `i` of an offset index; `buf` holds at least `i + 1` entries.
pub(crate) fn offset_entry(buf: &[u8], i: usize) -> OffsetEntry {
    let at = i * OFFSET_ENTRY_LEN;
    OffsetEntry {
        relative_offset: u32_at(buf, at),
        position: u32_at(buf, at + 4),
    }
}

/// Entry `i` of a time index; `buf` holds at least `i + 1` entries.
pub(crate) fn time_entry(buf: &[u8], i: usize) -> TimeEntry {
    let at = i * TIME_ENTRY_LEN;
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&buf[at..at + 8]);
    TimeEntry {
        append_ms: i64::from_le_bytes(ms),
        relative_offset: u32_at(buf, at + 8),
    }
}

impl OffsetEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.relative_offset.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
    }
}

impl TimeEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.append_ms.to_le_bytes());
        out.extend_from_slice(&self.relative_offset.to_le_bytes());
    }
}

/// Entries in `buf` that can be read, never more than `limit`.
pub(crate) fn offset_count(buf: &[u8], limit: usize) -> usize {
    (buf.len() / OFFSET_ENTRY_LEN).min(limit)
}

/// Entries in `buf` that can be read, never more than `limit`.
pub(crate) fn time_count(buf: &[u8], limit: usize) -> usize {
    (buf.len() / TIME_ENTRY_LEN).min(limit)
}

/// The last of the first `count` entries whose relative offset is at most `target`.
pub(crate) fn floor_offset(buf: &[u8], count: usize, target: u32) -> Option<OffsetEntry> {
    let count = offset_count(buf, count);
    // Entries increase, so the ones <= target form a prefix: find its length.
    let prefix = partition_point(count, |i| offset_entry(buf, i).relative_offset <= target);
    prefix.checked_sub(1).map(|i| offset_entry(buf, i))
}

/// Index of the last of the first `count` time entries appended strictly before `time_ms`.
pub(crate) fn last_before_time(buf: &[u8], count: usize, time_ms: i64) -> Option<usize> {
    let count = time_count(buf, count);
    let prefix = partition_point(count, |i| time_entry(buf, i).append_ms < time_ms);
    prefix.checked_sub(1)
}

/// Number of leading entries of an offset index that increase strictly and point inside a
/// log of `log_len` bytes, the first at position 0 for relative offset `first_relative` (the
/// segment's first batch: 0 but in a compacted segment, whose first batches may be gone): the
/// part of a possibly torn or stale index that may be trusted.
pub(crate) fn valid_offset_prefix(buf: &[u8], log_len: u64, first_relative: u32) -> usize {
    let count = offset_count(buf, usize::MAX);
    let mut previous: Option<OffsetEntry> = None;
    for i in 0..count {
        let entry = offset_entry(buf, i);
        let increasing = match previous {
            None => entry.relative_offset == first_relative && entry.position == 0,
            Some(prev) => {
                entry.relative_offset > prev.relative_offset && entry.position > prev.position
            }
        };
        if !increasing || u64::from(entry.position) >= log_len {
            return i;
        }
        previous = Some(entry);
    }
    count
}

/// Number of leading entries of a time index whose offsets increase (the last may repeat the
/// one before it: the seal entry of a segment whose last batch is also indexed) and whose times
/// never decrease, the first for relative offset `first_relative` (as for the offset index),
/// with offsets below `offset_limit`.
pub(crate) fn valid_time_prefix(buf: &[u8], offset_limit: u64, first_relative: u32) -> usize {
    let count = time_count(buf, usize::MAX);
    let mut previous: Option<TimeEntry> = None;
    for i in 0..count {
        let entry = time_entry(buf, i);
        let ordered = match previous {
            None => entry.relative_offset == first_relative,
            Some(prev) => {
                entry.relative_offset >= prev.relative_offset && entry.append_ms >= prev.append_ms
            }
        };
        if !ordered || u64::from(entry.relative_offset) >= offset_limit {
            return i;
        }
        previous = Some(entry);
    }
    count
}

/// Smallest `i` in `0..count` for which `pred(i)` is false, given that `pred` is true on a
/// prefix and false after it.
fn partition_point(count: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, count);
    while low < high {
        let mid = low + (high - low) / 2;
        if pred(mid) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(relative_offset, position) in entries {
            OffsetEntry {
                relative_offset,
                position,
            }
            .encode(&mut out);
        }
        out
    }

    #[test]
    fn floor_finds_the_entry_at_or_before() {
        let buf = offsets(&[(0, 0), (10, 4096), (25, 8200)]);
        let at = |target| floor_offset(&buf, 3, target).map(|e| e.position);
        assert_eq!(at(0), Some(0));
        assert_eq!(at(9), Some(0));
        assert_eq!(at(10), Some(4096));
        assert_eq!(at(24), Some(4096));
        assert_eq!(at(1000), Some(8200));
        // Only the published entries count.
        assert_eq!(floor_offset(&buf, 1, 1000).map(|e| e.position), Some(0));
        assert_eq!(floor_offset(&buf, 0, 1000), None);
    }

    #[test]
    fn time_search_is_strictly_before() {
        let mut buf = Vec::new();
        for (append_ms, relative_offset) in [(100, 0), (100, 5), (200, 9), (300, 12)] {
            TimeEntry {
                append_ms,
                relative_offset,
            }
            .encode(&mut buf);
        }
        assert_eq!(last_before_time(&buf, 4, 100), None);
        assert_eq!(last_before_time(&buf, 4, 101), Some(1));
        assert_eq!(last_before_time(&buf, 4, 200), Some(1));
        assert_eq!(last_before_time(&buf, 4, 1000), Some(3));
        assert_eq!(valid_time_prefix(&buf, 13, 0), 4);
        assert_eq!(valid_time_prefix(&buf, 12, 0), 3);
        // A compacted segment's first batch may start past its base offset.
        assert_eq!(valid_time_prefix(&buf, 13, 5), 0);
    }

    #[test]
    fn valid_prefix_stops_at_torn_or_stale_entries() {
        // Zero fill after two entries: a preallocated index.
        let mut buf = offsets(&[(0, 0), (10, 4096)]);
        buf.extend_from_slice(&[0; 16]);
        assert_eq!(valid_offset_prefix(&buf, 10_000, 0), 2);
        // An entry pointing past the log.
        assert_eq!(valid_offset_prefix(&buf, 4096, 0), 1);
        // The first entry must name the first batch: at position 0, for the offset expected.
        assert_eq!(valid_offset_prefix(&buf, 10_000, 3), 0);
        let compacted = offsets(&[(3, 0), (10, 4096)]);
        assert_eq!(valid_offset_prefix(&compacted, 10_000, 3), 2);
        assert_eq!(valid_offset_prefix(&compacted, 10_000, 0), 0);
        // A torn last entry (partial bytes) is not counted.
        let mut torn = offsets(&[(0, 0), (10, 4096)]);
        torn.extend_from_slice(&[1, 2, 3]);
        assert_eq!(valid_offset_prefix(&torn, 10_000, 0), 2);
        assert_eq!(valid_offset_prefix(&[], 10_000, 0), 0);
    }
}
