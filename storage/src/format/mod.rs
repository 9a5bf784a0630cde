//! The record batch: one format on the wire and on disk (design.md §2).
//!
//! Producers encode records into a batch with [`BatchBuilder`]; the broker checks it once with
//! [`BatchView::new`] and appends the same bytes, stamping only `base_offset` (and later
//! `leader_epoch`), which sit before the CRC'd range so that stamping never recomputes anything.
//! Readers iterate records of a validated batch with [`BatchView::records`], which borrows from
//! the batch and never allocates.
//!
//! ```text
//! batch  = { u64 base_offset | u32 batch_len | u32 leader_epoch | u8 magic | u32 crc
//!          | u16 attributes | u32 last_offset_delta | i64 first_timestamp | i64 max_timestamp
//!          | i64 producer_id | i16 producer_epoch | i32 base_sequence | u32 record_count }
//!          record*                                             (integers little-endian)
//! record = { varint length } { i8 attributes | varint timestamp_delta | varint offset_delta
//!          | varint key_len | key | varint value_len | value | varint header_count | header* }
//! header = { varint key_len | utf-8 key | varint value_len | value }   (varints zig-zag)
//! ```
//!
//! | offset | size | field               | notes                                               |
//! |-------:|-----:|---------------------|-----------------------------------------------------|
//! |      0 |    8 | `base_offset`       | stamped by the broker; producers send 0             |
//! |      8 |    4 | `batch_len`         | bytes after this field, to the end of the batch     |
//! |     12 |    4 | `leader_epoch`      | stamped by the broker; 0 until replication exists   |
//! |     16 |    1 | `magic`             | format version, [`MAGIC`]                           |
//! |     17 |    4 | `crc`               | CRC-32 (IEEE) of bytes `[21, 12 + batch_len)`       |
//! |     21 |    2 | `attributes`        | bits 0–2 compression, bit 4 transactional, bit 5 control |
//! |     23 |    4 | `last_offset_delta` | `record_count - 1` (compacted: at least that)       |
//! |     27 |    8 | `first_timestamp`   | producer create time of the first record, ms        |
//! |     35 |    8 | `max_timestamp`     | largest record timestamp, ms                        |
//! |     43 |    8 | `producer_id`       | −1: not idempotent                                  |
//! |     51 |    2 | `producer_epoch`    |                                                     |
//! |     53 |    4 | `base_sequence`     | −1: not idempotent                                  |
//! |     57 |    4 | `record_count`      |                                                     |
//! |     61 |    … | records             |                                                     |
//!
//! A record's `length` counts the bytes after the length varint; a key or value length of −1
//! means null; header keys are UTF-8 and never null. Null and empty are different values.
//!
//! **Compacted batches.** A producer's batch holds dense offsets: offset deltas `0..n` and
//! `last_offset_delta = record_count − 1` ([`BatchView::new`] insists). Compaction (design.md
//! §3) removes records from stored batches with [`retain_records`]: the rewritten batch keeps
//! every header field but two — `record_count` shrinks, `batch_len` and `crc` follow — and its
//! records keep their bytes, so their `offset_delta`, `timestamp_delta` and offsets are
//! unchanged. So in a compacted batch offset deltas increase strictly with gaps,
//! `last_offset_delta` still names the batch's last offset *before* compaction (the next batch
//! starts after it), `record_count <= last_offset_delta + 1`, and `max_timestamp` may exceed
//! every remaining record's. A batch left with no records is dropped whole, leaving a gap
//! between batches. [`BatchView::stored`] and [`BatchView::with_checksum`] accept both forms;
//! [`BatchView::new`] accepts only the producer's.

mod batches;
mod builder;
mod retain;
pub mod varint;
mod view;

#[cfg(test)]
mod tests;

pub use batches::{Batches, Framed};
pub use builder::BatchBuilder;
pub use retain::{Retained, retain_records};
pub use view::{BatchView, HeaderIter, Record, Records};

use std::ops::Range;

/// Offsets and sizes of the batch header fields, as byte ranges into the batch.
pub mod layout {
    use std::ops::Range;

    /// `u64` base offset, stamped by the broker.
    pub const BASE_OFFSET: Range<usize> = 0..8;
    /// `u32` bytes after this field.
    pub const BATCH_LEN: Range<usize> = 8..12;
    /// `u32` leader epoch, stamped by the broker.
    pub const LEADER_EPOCH: Range<usize> = 12..16;
    /// `u8` format version.
    pub const MAGIC: usize = 16;
    /// `u32` CRC-32 of `[CRC_START, end)`.
    pub const CRC: Range<usize> = 17..21;
    /// First byte covered by the CRC.
    pub const CRC_START: usize = 21;
    /// `u16` attribute bits.
    pub const ATTRIBUTES: Range<usize> = 21..23;
    /// `u32` `record_count - 1` (in a compacted batch, the last offset it held before).
    pub const LAST_OFFSET_DELTA: Range<usize> = 23..27;
    /// `i64` first record's timestamp, ms.
    pub const FIRST_TIMESTAMP: Range<usize> = 27..35;
    /// `i64` largest record timestamp, ms.
    pub const MAX_TIMESTAMP: Range<usize> = 35..43;
    /// `i64` idempotent producer id, −1 if none.
    pub const PRODUCER_ID: Range<usize> = 43..51;
    /// `i16` producer epoch.
    pub const PRODUCER_EPOCH: Range<usize> = 51..53;
    /// `i32` sequence number of the first record, −1 if none.
    pub const BASE_SEQUENCE: Range<usize> = 53..57;
    /// `u32` number of records.
    pub const RECORD_COUNT: Range<usize> = 57..61;
    /// Bytes before the first record.
    pub const HEADER_LEN: usize = 61;
    /// Bytes of the prefix a log reader needs to walk batches: offset and length.
    pub const LOG_OVERHEAD: usize = 12;
}

const _: () = assert!(layout::HEADER_LEN == 61);
const _: () = assert!(layout::RECORD_COUNT.end == layout::HEADER_LEN);
const _: () = assert!(layout::CRC.end == layout::CRC_START);

/// Bytes before the first record of a batch.
pub const HEADER_LEN: usize = layout::HEADER_LEN;
/// The batch format version this crate writes and reads.
pub const MAGIC: u8 = 1;
/// Largest batch the format can describe (`batch_len` is a `u32`).
pub const MAX_BATCH_LEN: usize = u32::MAX as usize + layout::LOG_OVERHEAD;

/// Attribute bits 0–2: compression codec; 0 is none, the only one supported so far.
pub const ATTR_COMPRESSION_MASK: u16 = 0b111;
/// Attribute bit 4: part of a transaction (reserved until transactions exist).
pub const ATTR_TRANSACTIONAL: u16 = 1 << 4;
/// Attribute bit 5: a control batch (markers written by the broker itself).
pub const ATTR_CONTROL: u16 = 1 << 5;
/// Bits a batch may set today; anything else is rejected so that later versions can use them.
pub const ATTR_KNOWN: u16 = ATTR_CONTROL;

/// Rewrites the producer fields of an encoded batch (id, epoch, base sequence) and its CRC, so
/// an idempotent producer can renumber a batch it built but could not send under its old
/// sequence. Checks only what it needs: the header is there and `batch_len` covers the buffer.
pub fn restamp_producer(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), FormatError> {
    check_frame(batch)?;
    batch[layout::PRODUCER_ID].copy_from_slice(&producer_id.to_le_bytes());
    batch[layout::PRODUCER_EPOCH].copy_from_slice(&producer_epoch.to_le_bytes());
    batch[layout::BASE_SEQUENCE].copy_from_slice(&base_sequence.to_le_bytes());
    let crc = crc32fast::hash(&batch[layout::CRC_START..]);
    batch[layout::CRC].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The first two checks of a batch: a whole header, and `batch_len` covering exactly `buf`.
pub(crate) fn check_frame(buf: &[u8]) -> Result<(), FormatError> {
    if buf.len() < layout::HEADER_LEN {
        return Err(FormatError::TooShort { len: buf.len() });
    }
    let declared = u64::from(read_u32(buf, layout::BATCH_LEN)) + layout::LOG_OVERHEAD as u64;
    if declared != buf.len() as u64 {
        return Err(FormatError::LengthMismatch {
            declared,
            actual: buf.len(),
        });
    }
    Ok(())
}

/// A record header: a UTF-8 key and an optional value (design.md §2 reserves keys `sluice.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header name.
    pub key: &'a str,
    /// Header value; `None` is null, distinct from empty.
    pub value: Option<&'a [u8]>,
}

/// What is wrong inside one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordProblem {
    /// A varint ran past the record or was longer than ten bytes.
    BadVarint,
    /// A length was negative (other than −1 for null) or larger than the bytes left.
    BadLength,
    /// The record's fields did not use exactly the `length` bytes it declared.
    LengthMismatch,
    /// A header key was null or not UTF-8.
    BadHeaderKey,
    /// The timestamp delta overflows the batch's first timestamp.
    TimestampOverflow,
}

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BadVarint => "malformed varint",
            Self::BadLength => "length out of bounds",
            Self::LengthMismatch => "fields do not fill the declared record length",
            Self::BadHeaderKey => "header key null or not UTF-8",
            Self::TimestampOverflow => "timestamp delta overflows",
        })
    }
}

/// A batch failed a check; each variant names the check, with the values that failed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than a batch header.
    #[error("batch truncated: {len} bytes, a batch header alone is {HEADER_LEN}")]
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// `batch_len` disagrees with the bytes given.
    #[error("batch length mismatch: header says {declared} bytes in all, {actual} given")]
    LengthMismatch {
        /// `12 + batch_len` from the header.
        declared: u64,
        /// Bytes given.
        actual: usize,
    },
    /// Larger than the limit in force (the topic's `max_batch_bytes`).
    #[error("batch too large: {len} bytes, limit {max}")]
    TooLarge {
        /// Batch size in bytes.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Unknown format version.
    #[error("unsupported batch magic {found}, expected {MAGIC}")]
    BadMagic {
        /// The magic byte found.
        found: u8,
    },
    /// The CRC over `[21, end)` does not match the stored one.
    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Attribute bits this version does not support (compression, transactions, unknown bits).
    #[error("unsupported batch attributes {attributes:#06x}")]
    UnsupportedAttributes {
        /// The attribute field.
        attributes: u16,
    },
    /// `record_count` is zero.
    #[error("empty batch: record_count is 0")]
    Empty,
    /// `last_offset_delta` is not `record_count - 1`.
    #[error("last_offset_delta {last_offset_delta} does not match record_count {record_count}")]
    LastOffsetDelta {
        /// From the header.
        last_offset_delta: u32,
        /// From the header.
        record_count: u32,
    },
    /// The records walked are not as many as `record_count` says.
    #[error("record count mismatch: header says {declared}, batch holds {walked}")]
    RecordCount {
        /// From the header.
        declared: u32,
        /// Records found in the bytes (counting stops one past `declared`).
        walked: u64,
    },
    /// A record's offset delta is not its index in the batch.
    #[error("record {index}: offset delta {found}, expected {index}")]
    OffsetDelta {
        /// Record index in the batch.
        index: u32,
        /// Offset delta found.
        found: i64,
    },
    /// A stored (possibly compacted) batch declares more records than its offsets span.
    #[error(
        "record_count {record_count} exceeds the offsets last_offset_delta {last_offset_delta} spans"
    )]
    RecordCountOverSpan {
        /// From the header.
        last_offset_delta: u32,
        /// From the header.
        record_count: u32,
    },
    /// In a stored (possibly compacted) batch, a record's offset delta does not increase past
    /// the previous record's or exceeds `last_offset_delta`.
    #[error(
        "record {index}: offset delta {found}, expected above {previous} and at most {last_offset_delta}"
    )]
    StoredOffsetDelta {
        /// Record index in the batch.
        index: u32,
        /// Offset delta found.
        found: i64,
        /// The previous record's offset delta (−1 before the first record).
        previous: i64,
        /// From the header.
        last_offset_delta: u32,
    },
    /// `max_timestamp` is not the largest record timestamp.
    #[error("max_timestamp {declared} does not match the largest record timestamp {actual}")]
    MaxTimestamp {
        /// From the header.
        declared: i64,
        /// Computed from the records.
        actual: i64,
    },
    /// A record could not be decoded.
    #[error("record {index} at byte {position}: {problem}")]
    Record {
        /// Record index in the batch.
        index: u32,
        /// Byte offset of the record in the batch.
        position: usize,
        /// What is wrong.
        problem: RecordProblem,
    },
    /// A builder was asked for a record or batch the format cannot hold.
    #[error("cannot encode: {what}")]
    Unencodable {
        /// What exceeded the format.
        what: &'static str,
    },
}

/// Reads a little-endian integer field; the caller has checked that `range` lies within `buf`.
pub(crate) fn read_u32(buf: &[u8], range: Range<usize>) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[range]);
    u32::from_le_bytes(bytes)
}

pub(crate) fn read_u64(buf: &[u8], range: Range<usize>) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[range]);
    u64::from_le_bytes(bytes)
}

/// The fields a log reader needs from the front of a batch, without validating the rest.
///
/// Segments walk batches by these: `base_offset`, then `batch_len` to find the next batch, and
/// `last_offset_delta` to know which offsets a batch holds. `None` if `buf` is too short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPrefix {
    /// First offset of the batch.
    pub base_offset: u64,
    /// Total bytes of the batch (`12 + batch_len`).
    pub total_len: u64,
    /// `record_count - 1`, read from the (CRC'd) header.
    pub last_offset_delta: u32,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Magic byte.
    pub magic: u8,
}

impl BatchPrefix {
    /// Reads the prefix at the start of `buf`, which must hold at least [`HEADER_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        Some(Self {
            base_offset: read_u64(buf, layout::BASE_OFFSET),
            total_len: u64::from(read_u32(buf, layout::BATCH_LEN)) + layout::LOG_OVERHEAD as u64,
            last_offset_delta: read_u32(buf, layout::LAST_OFFSET_DELTA),
            max_timestamp: read_u64(buf, layout::MAX_TIMESTAMP) as i64,
            magic: buf[layout::MAGIC],
        })
    }

    /// One past the last offset of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset
            .saturating_add(u64::from(self.last_offset_delta))
            .saturating_add(1)
    }
}

/// Writes `base_offset` into a batch's header in place.
///
/// # Panics
/// If `batch` is shorter than a header; callers stamp only validated batches.
pub fn stamp_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[layout::BASE_OFFSET].copy_from_slice(&base_offset.to_le_bytes());
}

/// Writes the broker's `leader_epoch` into a batch's header in place, over whatever the
/// producer sent (it is outside the CRC). With [`stamp_base_offset`], the broker's only change
/// to a batch.
///
/// # Panics
/// If `batch` is shorter than a header; callers stamp only validated batches.
pub fn stamp_leader_epoch(batch: &mut [u8], leader_epoch: u32) {
    batch[layout::LEADER_EPOCH].copy_from_slice(&leader_epoch.to_le_bytes());
}
