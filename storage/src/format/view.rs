//! [`BatchView`]: a batch checked once, then read without further checks or allocation.
//!
//! Two rules for a batch's offsets, by where the batch comes from:
//! - **produced** ([`BatchView::new`]): a producer's batch holds offsets `0..n`: offset deltas
//!   are exactly the record indexes and `last_offset_delta == record_count − 1`;
//! - **stored** ([`BatchView::stored`], [`BatchView::with_checksum`]): a batch read back from
//!   a log may have been compacted (design.md §3): records were removed, the rest kept their
//!   offset deltas and timestamps, so deltas increase strictly and stay `<= last_offset_delta`,
//!   `record_count <= last_offset_delta + 1`, and `max_timestamp` is at least (no longer
//!   exactly) the largest record timestamp. Every produced batch is a valid stored batch.

use super::{
    ATTR_KNOWN, FormatError, HEADER_LEN, Header, MAGIC, RecordProblem, layout, read_u32, read_u64,
    varint,
};

/// A batch that passed every check of design.md §2; its accessors and record iterator borrow
/// from the bytes and never fail.
///
/// [`BatchView::new`] runs, in order: length bounds (header present, `batch_len` matching the
/// bytes, under `max_batch_bytes`), magic, CRC, attributes, `record_count` and
/// `last_offset_delta`, then walks every record: well-formed varints and lengths, offset deltas
/// `0..n`, UTF-8 header keys, `record_count` agreeing with the records walked, and
/// `max_timestamp` agreeing with the records. The first failed check is the error.
///
/// [`BatchView::stored`] runs the same checks under the stored rule (see the module doc): for a
/// batch read back from a log, which compaction may have thinned. [`BatchView::with_checksum`]
/// runs the stored rule's header checks and the CRC but not the record walk: for batches a
/// broker already checked in full (fetched batches), whose CRC proves they are those bytes.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    buf: &'a [u8],
    /// Whether every record was walked and found well-formed.
    records_checked: bool,
}

/// Which offsets a batch may hold (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OffsetRule {
    /// A producer's batch: offset deltas exactly `0..record_count`.
    Produced,
    /// A batch read back from a log: deltas strictly increasing, at most `last_offset_delta`.
    Stored,
}

impl<'a> BatchView<'a> {
    /// Checks `buf` as exactly one batch of at most `max_batch_bytes` bytes, as a producer
    /// sends it: every check, offsets dense.
    pub fn new(buf: &'a [u8], max_batch_bytes: usize) -> Result<Self, FormatError> {
        Self::check(buf, max_batch_bytes, OffsetRule::Produced)
    }

    /// Checks `buf` as exactly one batch read back from a log: every check, under the stored
    /// rule, which accepts compacted batches (records removed, offset deltas with gaps; see the
    /// module doc). No size limit: the batch was held to one when it was appended.
    pub fn stored(buf: &'a [u8]) -> Result<Self, FormatError> {
        Self::check(buf, usize::MAX, OffsetRule::Stored)
    }

    fn check(buf: &'a [u8], max_batch_bytes: usize, rule: OffsetRule) -> Result<Self, FormatError> {
        let mut view = Self::check_header(buf, max_batch_bytes, rule)?;
        view.check_records(rule)?;
        view.records_checked = true;
        Ok(view)
    }

    /// Checks the header (stored rule) and the CRC of `buf` but does not walk its records:
    /// the consumer's check of a batch that the broker validated in full on produce (and may
    /// have compacted since). Iterating the records of such a view never panics; should a
    /// record be malformed after all (a broker that did not validate), iteration ends there
    /// and [`Records::error`] says why.
    pub fn with_checksum(buf: &'a [u8]) -> Result<Self, FormatError> {
        Self::check_header(buf, usize::MAX, OffsetRule::Stored)
    }

    fn check_header(
        buf: &'a [u8],
        max_batch_bytes: usize,
        rule: OffsetRule,
    ) -> Result<Self, FormatError> {
        super::check_frame(buf)?;
        if buf.len() > max_batch_bytes {
            return Err(FormatError::TooLarge {
                len: buf.len() as u64,
                max: max_batch_bytes as u64,
            });
        }
        let view = Self {
            buf,
            records_checked: false,
        };
        if view.magic() != MAGIC {
            return Err(FormatError::BadMagic {
                found: view.magic(),
            });
        }
        let computed = crc32fast::hash(&buf[layout::CRC_START..]);
        if computed != view.crc() {
            return Err(FormatError::ChecksumMismatch {
                stored: view.crc(),
                computed,
            });
        }
        if view.attributes() & !ATTR_KNOWN != 0 {
            return Err(FormatError::UnsupportedAttributes {
                attributes: view.attributes(),
            });
        }
        let record_count = view.record_count();
        if record_count == 0 {
            return Err(FormatError::Empty);
        }
        match rule {
            OffsetRule::Produced if view.last_offset_delta() != record_count - 1 => {
                return Err(FormatError::LastOffsetDelta {
                    last_offset_delta: view.last_offset_delta(),
                    record_count,
                });
            }
            OffsetRule::Stored if view.last_offset_delta() < record_count - 1 => {
                return Err(FormatError::RecordCountOverSpan {
                    last_offset_delta: view.last_offset_delta(),
                    record_count,
                });
            }
            _ => {}
        }
        Ok(view)
    }

    fn check_records(&self, rule: OffsetRule) -> Result<(), FormatError> {
        let declared = self.record_count();
        let last_offset_delta = i64::from(self.last_offset_delta());
        let mut previous_delta: i64 = -1;
        let first_timestamp = self.first_timestamp();
        let mut position = HEADER_LEN;
        let mut index: u32 = 0;
        let mut max_timestamp = i64::MIN;
        while position < self.buf.len() {
            if index == declared {
                return Err(FormatError::RecordCount {
                    declared,
                    walked: u64::from(declared) + 1,
                });
            }
            let record_error = |problem| FormatError::Record {
                index,
                position,
                problem,
            };
            let (record, next) =
                decode_record(self.buf, position, first_timestamp).map_err(record_error)?;
            // Walk the headers now so that iteration never meets a malformed one.
            let mut headers = record.headers();
            for _ in 0..record.header_count {
                match headers.next_checked() {
                    Ok(Some(_)) => {}
                    // Fewer headers than header_count: the next one's varint is missing.
                    Ok(None) => return Err(record_error(RecordProblem::BadVarint)),
                    Err(problem) => return Err(record_error(problem)),
                }
            }
            if !headers.rest.is_empty() {
                return Err(record_error(RecordProblem::LengthMismatch));
            }
            let found = record.raw_offset_delta;
            match rule {
                OffsetRule::Produced if found != i64::from(index) => {
                    return Err(FormatError::OffsetDelta { index, found });
                }
                OffsetRule::Stored if found <= previous_delta || found > last_offset_delta => {
                    return Err(FormatError::StoredOffsetDelta {
                        index,
                        found,
                        previous: previous_delta,
                        last_offset_delta: self.last_offset_delta(),
                    });
                }
                _ => {}
            }
            previous_delta = found;
            max_timestamp = max_timestamp.max(record.timestamp);
            position = next;
            index += 1;
        }
        if index != declared {
            return Err(FormatError::RecordCount {
                declared,
                walked: u64::from(index),
            });
        }
        // A compacted batch keeps its header's max_timestamp, which its largest record may
        // have taken away with it.
        let matches = match rule {
            OffsetRule::Produced => max_timestamp == self.max_timestamp(),
            OffsetRule::Stored => max_timestamp <= self.max_timestamp(),
        };
        if !matches {
            return Err(FormatError::MaxTimestamp {
                declared: self.max_timestamp(),
                actual: max_timestamp,
            });
        }
        Ok(())
    }

    /// The whole batch.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Bytes in the batch, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Always false: a valid batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Offset of the first record (0 until the broker stamps it).
    pub fn base_offset(&self) -> u64 {
        read_u64(self.buf, layout::BASE_OFFSET)
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset()
            .saturating_add(u64::from(self.last_offset_delta()))
    }

    /// Leader epoch stamped by the broker.
    pub fn leader_epoch(&self) -> u32 {
        read_u32(self.buf, layout::LEADER_EPOCH)
    }

    /// Format version.
    pub fn magic(&self) -> u8 {
        self.buf[layout::MAGIC]
    }

    /// Stored CRC.
    pub fn crc(&self) -> u32 {
        read_u32(self.buf, layout::CRC)
    }

    /// Attribute bits.
    pub fn attributes(&self) -> u16 {
        u16::from_le_bytes([
            self.buf[layout::ATTRIBUTES.start],
            self.buf[layout::ATTRIBUTES.start + 1],
        ])
    }

    /// Whether this is a control batch.
    pub fn is_control(&self) -> bool {
        self.attributes() & super::ATTR_CONTROL != 0
    }

    /// `record_count - 1`.
    pub fn last_offset_delta(&self) -> u32 {
        read_u32(self.buf, layout::LAST_OFFSET_DELTA)
    }

    /// Timestamp of the first record, ms.
    pub fn first_timestamp(&self) -> i64 {
        read_u64(self.buf, layout::FIRST_TIMESTAMP) as i64
    }

    /// Largest record timestamp, ms.
    pub fn max_timestamp(&self) -> i64 {
        read_u64(self.buf, layout::MAX_TIMESTAMP) as i64
    }

    /// Idempotent producer id, −1 if none.
    pub fn producer_id(&self) -> i64 {
        read_u64(self.buf, layout::PRODUCER_ID) as i64
    }

    /// Producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        i16::from_le_bytes([
            self.buf[layout::PRODUCER_EPOCH.start],
            self.buf[layout::PRODUCER_EPOCH.start + 1],
        ])
    }

    /// Sequence number of the first record, −1 if none.
    pub fn base_sequence(&self) -> i32 {
        read_u32(self.buf, layout::BASE_SEQUENCE) as i32
    }

    /// Records in the batch.
    pub fn record_count(&self) -> u32 {
        read_u32(self.buf, layout::RECORD_COUNT)
    }

    /// The records, in offset order, borrowed from the batch.
    pub fn records(&self) -> Records<'a> {
        Records {
            buf: self.buf,
            position: HEADER_LEN,
            base_offset: self.base_offset(),
            first_timestamp: self.first_timestamp(),
            checked: self.records_checked,
            index: 0,
            error: None,
        }
    }
}

/// One record of a [`BatchView`], borrowed from the batch.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Absolute offset (the batch's base offset plus the record's delta).
    pub offset: u64,
    /// Offset relative to the batch's base offset: the record's index `0..record_count` in a
    /// produced batch; in a compacted one, with gaps where records were removed.
    pub offset_delta: u32,
    /// Create time, ms since the epoch.
    pub timestamp: i64,
    /// Key; `None` is null.
    pub key: Option<&'a [u8]>,
    /// Value; `None` is null (a tombstone in compacted topics).
    pub value: Option<&'a [u8]>,
    /// Record attribute byte (none defined yet).
    pub attributes: i8,
    /// The record's encoded bytes, its length varint included.
    bytes: &'a [u8],
    /// Byte position of the record in its batch.
    position: usize,
    header_count: u64,
    header_bytes: &'a [u8],
    raw_offset_delta: i64,
    checked: bool,
}

impl<'a> Record<'a> {
    /// The record's headers, in the order they were written.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            rest: self.header_bytes,
            remaining: self.header_count,
            checked: self.checked,
        }
    }

    /// Number of headers.
    pub fn header_count(&self) -> u64 {
        self.header_count
    }

    /// The record exactly as encoded in its batch, its `length` varint included: what a
    /// rewritten batch copies to keep the record (compaction keeps records byte for byte).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Byte position of the record in its batch.
    pub fn position(&self) -> usize {
        self.position
    }
}

/// Iterator over the records of a [`BatchView`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    position: usize,
    base_offset: u64,
    first_timestamp: i64,
    checked: bool,
    index: u32,
    error: Option<FormatError>,
}

impl Records<'_> {
    /// Why iteration ended early, if it did: only possible for a view made by
    /// [`BatchView::with_checksum`] over a batch with a malformed record.
    pub fn error(&self) -> Option<&FormatError> {
        self.error.as_ref()
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    #[inline]
    fn next(&mut self) -> Option<Record<'a>> {
        if self.position >= self.buf.len() {
            return None;
        }
        match decode_record(self.buf, self.position, self.first_timestamp) {
            Ok((mut record, next)) => {
                self.position = next;
                self.index = self.index.saturating_add(1);
                record.offset = self
                    .base_offset
                    .saturating_add(u64::from(record.offset_delta));
                record.checked = self.checked;
                Some(record)
            }
            Err(problem) => {
                // After BatchView::new this is unreachable; stop rather than panic if it is.
                debug_assert!(
                    !self.checked,
                    "record of a validated batch failed to decode"
                );
                self.error = Some(FormatError::Record {
                    index: self.index,
                    position: self.position,
                    problem,
                });
                self.position = self.buf.len();
                None
            }
        }
    }
}

/// Iterator over a record's headers.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    remaining: u64,
    checked: bool,
}

impl<'a> HeaderIter<'a> {
    #[inline]
    fn next_checked(&mut self) -> Result<Option<Header<'a>>, RecordProblem> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let mut cursor = Cursor {
            buf: self.rest,
            position: 0,
        };
        let key = cursor.bytes()?.ok_or(RecordProblem::BadHeaderKey)?;
        let key = std::str::from_utf8(key).map_err(|_| RecordProblem::BadHeaderKey)?;
        let value = cursor.bytes()?;
        self.rest = &self.rest[cursor.position..];
        self.remaining -= 1;
        Ok(Some(Header { key, value }))
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Header<'a>;

    #[inline]
    fn next(&mut self) -> Option<Header<'a>> {
        match self.next_checked() {
            Ok(header) => header,
            Err(_) => {
                debug_assert!(
                    !self.checked,
                    "header of a validated batch failed to decode"
                );
                self.remaining = 0;
                None
            }
        }
    }
}

/// Reads fields from a byte slice, never past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    fn varint(&mut self) -> Result<i64, RecordProblem> {
        let rest = self.buf.get(self.position..).unwrap_or_default();
        let (value, used) = varint::decode(rest).map_err(|_| RecordProblem::BadVarint)?;
        self.position += used;
        Ok(value)
    }

    #[inline(always)]
    fn byte(&mut self) -> Result<u8, RecordProblem> {
        let byte = *self
            .buf
            .get(self.position)
            .ok_or(RecordProblem::BadLength)?;
        self.position += 1;
        Ok(byte)
    }

    /// A length-prefixed byte string; −1 is null.
    #[inline(always)]
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, RecordProblem> {
        let len = self.varint()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| RecordProblem::BadLength)?;
        let end = self
            .position
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or(RecordProblem::BadLength)?;
        let bytes = &self.buf[self.position..end];
        self.position = end;
        Ok(Some(bytes))
    }
}

/// Decodes the record at `position` of `batch`; returns it and the position of the next one.
/// Headers are left undecoded (a slice and a count).
#[inline]
fn decode_record(
    batch: &[u8],
    position: usize,
    first_timestamp: i64,
) -> Result<(Record<'_>, usize), RecordProblem> {
    let mut outer = Cursor {
        buf: batch,
        position,
    };
    let len = outer.varint()?;
    let len = usize::try_from(len).map_err(|_| RecordProblem::BadLength)?;
    let end = outer
        .position
        .checked_add(len)
        .filter(|&end| end <= batch.len())
        .ok_or(RecordProblem::BadLength)?;
    let mut cursor = Cursor {
        buf: &batch[outer.position..end],
        position: 0,
    };
    let attributes = cursor.byte()? as i8;
    let timestamp_delta = cursor.varint()?;
    let timestamp = first_timestamp
        .checked_add(timestamp_delta)
        .ok_or(RecordProblem::TimestampOverflow)?;
    let raw_offset_delta = cursor.varint()?;
    let key = cursor.bytes()?;
    let value = cursor.bytes()?;
    let header_count = cursor.varint()?;
    let header_count = u64::try_from(header_count).map_err(|_| RecordProblem::BadLength)?;
    let header_bytes = &cursor.buf[cursor.position..];
    Ok((
        Record {
            offset: 0,
            offset_delta: u32::try_from(raw_offset_delta).unwrap_or(u32::MAX),
            timestamp,
            key,
            value,
            attributes,
            bytes: &batch[position..end],
            position,
            header_count,
            header_bytes,
            raw_offset_delta,
            checked: true,
        },
        end,
    ))
}
