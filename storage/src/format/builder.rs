//! [`BatchBuilder`]: encodes records into one batch, ready to send and to append as it is.

use super::{
    FormatError, HEADER_LEN, Header, MAGIC, layout, varint,
    varint::{encode, encoded_len},
};
use bytes::BytesMut;

/// Encodes records (key, value, headers, timestamp) into a batch of design.md §2.
///
/// Records are encoded as they are pushed; [`finish`](Self::finish) writes the header and the
/// CRC. The producer fields default to "not idempotent" (−1).
///
/// ```
/// use sluice_storage::format::{BatchBuilder, BatchView, Header};
/// let mut builder = BatchBuilder::new();
/// builder.push(1_700_000_000_000, Some(b"user-1"), Some(b"signed up"), &[])?;
/// builder.push(1_700_000_000_005, None, Some(b"ping"), &[Header { key: "trace", value: None }])?;
/// let batch = builder.finish()?;
/// let view = BatchView::new(&batch, u32::MAX as usize)?;
/// assert_eq!(view.record_count(), 2);
/// # Ok::<(), sluice_storage::format::FormatError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: u16,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::with_capacity(HEADER_LEN + 256)
    }

    /// An empty builder whose buffer holds `bytes` before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        Self {
            buf,
            record_count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
        }
    }

    /// Marks the batch as from an idempotent producer: its id, epoch and first sequence number.
    #[must_use]
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as a control batch (written by the broker, not by applications).
    #[must_use]
    pub fn control(mut self) -> Self {
        self.attributes |= super::ATTR_CONTROL;
        self
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Whether no record was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes the batch would have if finished now.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes that pushing this record would add, so a producer can keep a batch under a limit.
    pub fn encoded_len(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) -> usize {
        let body = self.body_len(timestamp, key, value, headers);
        encoded_len(body as i64) + body
    }

    fn body_len(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) -> usize {
        let timestamp_delta = if self.record_count == 0 {
            0
        } else {
            timestamp.wrapping_sub(self.first_timestamp)
        };
        let mut len = 1
            + encoded_len(timestamp_delta)
            + encoded_len(i64::from(self.record_count))
            + bytes_len(key)
            + bytes_len(value)
            + encoded_len(headers.len() as i64);
        for header in headers {
            len += bytes_len(Some(header.key.as_bytes())) + bytes_len(header.value);
        }
        len
    }

    /// Appends a record with its create time `timestamp` (ms since the epoch).
    ///
    /// Fails only if the record or batch would exceed what the format can describe.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) -> Result<(), FormatError> {
        if self.record_count == u32::MAX {
            return Err(FormatError::Unencodable {
                what: "more than u32::MAX records",
            });
        }
        let body = self.body_len(timestamp, key, value, headers);
        if body > i32::MAX as usize {
            return Err(FormatError::Unencodable {
                what: "a record longer than i32::MAX bytes",
            });
        }
        if self.record_count == 0 {
            self.first_timestamp = timestamp;
        }
        let timestamp_delta =
            timestamp
                .checked_sub(self.first_timestamp)
                .ok_or(FormatError::Unencodable {
                    what: "a timestamp delta outside i64",
                })?;
        let start = self.buf.len();
        self.buf.reserve(encoded_len(body as i64) + body);
        encode(body as i64, &mut self.buf);
        self.buf.push(0); // record attributes: none defined yet
        encode(timestamp_delta, &mut self.buf);
        encode(i64::from(self.record_count), &mut self.buf);
        put_bytes(key, &mut self.buf);
        put_bytes(value, &mut self.buf);
        encode(headers.len() as i64, &mut self.buf);
        for header in headers {
            put_bytes(Some(header.key.as_bytes()), &mut self.buf);
            put_bytes(header.value, &mut self.buf);
        }
        debug_assert_eq!(self.buf.len() - start, encoded_len(body as i64) + body);
        self.record_count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
        Ok(())
    }

    /// Writes the header and CRC and returns the batch, `base_offset` 0, ready to send.
    pub fn finish(self) -> Result<BytesMut, FormatError> {
        let mut buf = self.buf;
        if self.record_count == 0 {
            return Err(FormatError::Empty);
        }
        let batch_len = u32::try_from(buf.len() - layout::LOG_OVERHEAD).map_err(|_| {
            FormatError::Unencodable {
                what: "a batch longer than u32::MAX bytes",
            }
        })?;
        buf[layout::BASE_OFFSET].copy_from_slice(&0u64.to_le_bytes());
        buf[layout::BATCH_LEN].copy_from_slice(&batch_len.to_le_bytes());
        buf[layout::LEADER_EPOCH].copy_from_slice(&0u32.to_le_bytes());
        buf[layout::MAGIC] = MAGIC;
        buf[layout::ATTRIBUTES].copy_from_slice(&self.attributes.to_le_bytes());
        buf[layout::LAST_OFFSET_DELTA].copy_from_slice(&(self.record_count - 1).to_le_bytes());
        buf[layout::FIRST_TIMESTAMP].copy_from_slice(&self.first_timestamp.to_le_bytes());
        buf[layout::MAX_TIMESTAMP].copy_from_slice(&self.max_timestamp.to_le_bytes());
        buf[layout::PRODUCER_ID].copy_from_slice(&self.producer_id.to_le_bytes());
        buf[layout::PRODUCER_EPOCH].copy_from_slice(&self.producer_epoch.to_le_bytes());
        buf[layout::BASE_SEQUENCE].copy_from_slice(&self.base_sequence.to_le_bytes());
        buf[layout::RECORD_COUNT].copy_from_slice(&self.record_count.to_le_bytes());
        let crc = crc32fast::hash(&buf[layout::CRC_START..]);
        buf[layout::CRC].copy_from_slice(&crc.to_le_bytes());
        Ok(BytesMut::from(&buf[..]))
    }
}

fn bytes_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => encoded_len(-1),
        Some(bytes) => encoded_len(bytes.len() as i64) + bytes.len(),
    }
}

fn put_bytes(bytes: Option<&[u8]>, out: &mut Vec<u8>) {
    match bytes {
        None => varint::encode(-1, out),
        Some(bytes) => {
            varint::encode(bytes.len() as i64, out);
            out.extend_from_slice(bytes);
        }
    }
}
