//! [`Accumulator`]: the pure part of a producer's partition task — records into one batch at a
//! time, sealed when the next record would pass `batch_bytes` or when `linger` runs out. No
//! I/O and no clock of its own: the task passes `now`.

use std::time::Duration;

use bytes::Bytes;
use sluice_storage::format::{BatchBuilder, FormatError, Header};
use tokio::time::Instant;

use crate::producer::ProducerRecord;

/// Accumulates records into one batch at a time: the pure part of a partition task.
///
/// `T` is what travels with each record (its pending reply in the producer).
pub(crate) struct Accumulator<T> {
    batch_bytes: usize,
    linger: Duration,
    builder: BatchBuilder,
    tickets: Vec<T>,
    /// When the open batch must be sent: its first record's arrival plus `linger`.
    deadline: Option<Instant>,
    /// Size of the last sealed batch, to size the next builder.
    last_len: usize,
    /// An idempotent producer's id, epoch and next sequence, stamped on each sealed batch.
    producer: Option<Stamp>,
}

/// An idempotent producer's fields for the next sealed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) next_sequence: i32,
}

impl Stamp {
    /// Takes the sequences of `records` records: answers the first, advances past the last
    /// (wrapping past `i32::MAX` to 0, as the broker counts).
    pub(crate) fn take(&mut self, records: usize) -> i32 {
        let first = self.next_sequence;
        let space = i64::from(i32::MAX) + 1;
        self.next_sequence = ((i64::from(first) + records as i64) % space) as i32;
        first
    }
}

/// A finished batch and the tickets of its records, in order.
pub(crate) struct Sealed<T> {
    pub(crate) batch: std::result::Result<Bytes, FormatError>,
    pub(crate) tickets: Vec<T>,
}

impl<T> Accumulator<T> {
    pub(crate) fn new(batch_bytes: usize, linger: Duration) -> Self {
        Self {
            batch_bytes,
            linger,
            builder: BatchBuilder::with_capacity(4096.min(batch_bytes)),
            tickets: Vec::new(),
            deadline: None,
            last_len: 4096,
            producer: None,
        }
    }

    /// Stamps every batch sealed from now on with `stamp`, advancing its sequence.
    pub(crate) fn set_producer(&mut self, stamp: Stamp) {
        self.producer = Some(stamp);
    }

    /// The stamp the next sealed batch gets, if the producer is idempotent.
    pub(crate) fn producer(&self) -> Option<Stamp> {
        self.producer
    }

    /// Adds a record. Returns the batch it closed if the record did not fit in the open one
    /// (the record then opens the next batch), or the record's ticket with the error if the
    /// format cannot encode it. A record larger than `batch_bytes` goes alone in a batch.
    pub(crate) fn push(
        &mut self,
        now: Instant,
        timestamp_ms: i64,
        record: &ProducerRecord,
        ticket: T,
    ) -> (Option<Sealed<T>>, Option<(FormatError, T)>) {
        let headers: Vec<Header<'_>> = record
            .headers
            .iter()
            .map(|(key, value)| Header {
                key,
                value: value.as_deref(),
            })
            .collect();
        let key = record.key.as_deref();
        let value = record.value.as_deref();
        let len = self.builder.encoded_len(timestamp_ms, key, value, &headers);
        let sealed = if !self.builder.is_empty() && self.builder.len() + len > self.batch_bytes {
            self.seal()
        } else {
            None
        };
        match self.builder.push(timestamp_ms, key, value, &headers) {
            Ok(()) => {
                self.tickets.push(ticket);
                if self.deadline.is_none() {
                    self.deadline = Some(now + self.linger);
                }
                (sealed, None)
            }
            Err(error) => (sealed, Some((error, ticket))),
        }
    }

    /// Whether the open batch reached `batch_bytes` and should go without waiting.
    pub(crate) fn is_full(&self) -> bool {
        self.builder.len() >= self.batch_bytes
    }

    /// When the open batch must be sent; `None` if no batch is open.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Records in the open batch.
    pub(crate) fn record_count(&self) -> usize {
        self.tickets.len()
    }

    /// Closes the open batch, if any, and returns it.
    pub(crate) fn seal(&mut self) -> Option<Sealed<T>> {
        if self.tickets.is_empty() {
            return None;
        }
        let capacity = self.last_len.max(self.builder.len()).min(self.batch_bytes);
        let mut builder =
            std::mem::replace(&mut self.builder, BatchBuilder::with_capacity(capacity));
        self.last_len = builder.len();
        if let Some(stamp) = &mut self.producer {
            let first = stamp.take(self.tickets.len());
            builder = builder.producer(stamp.producer_id, stamp.epoch, first);
        }
        self.deadline = None;
        Some(Sealed {
            batch: builder.finish().map(bytes::BytesMut::freeze),
            tickets: std::mem::take(&mut self.tickets),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::format::BatchView;

    fn record(key: &str, value_len: usize) -> ProducerRecord {
        ProducerRecord::with_key(key.to_owned(), vec![b'v'; value_len])
    }

    fn records_of(sealed: &Sealed<u32>) -> Vec<(u64, Vec<u8>)> {
        let batch = match &sealed.batch {
            Ok(batch) => batch.clone(),
            Err(error) => panic!("batch failed to encode: {error}"),
        };
        let view = match BatchView::new(&batch, usize::MAX) {
            Ok(view) => view,
            Err(error) => panic!("invalid batch: {error}"),
        };
        view.records()
            .map(|r| (r.offset, r.key.unwrap_or_default().to_vec()))
            .collect()
    }

    #[test]
    fn accumulates_until_batch_bytes() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1024, Duration::from_millis(5));
        assert_eq!(acc.deadline(), None);
        let mut sealed = Vec::new();
        for i in 0..20u32 {
            let (closed, rejected) =
                acc.push(now, 1_000 + i64::from(i), &record(&format!("k{i}"), 100), i);
            assert!(rejected.is_none());
            sealed.extend(closed);
            assert!(acc.deadline().is_some());
        }
        // ~110 bytes a record: 8 fit a 1 KiB batch with its 61-byte header.
        assert!(sealed.len() >= 2, "{} batches", sealed.len());
        let mut next = 0u32;
        for batch in &sealed {
            let len = batch.batch.as_ref().map_or(0, Bytes::len);
            assert!(len <= 1024, "batch of {len} bytes");
            for ticket in &batch.tickets {
                assert_eq!(*ticket, next, "tickets keep send order");
                next += 1;
            }
            let records = records_of(batch);
            assert_eq!(records.len(), batch.tickets.len());
            assert_eq!(records[0].0, 0, "base offset 0 until the broker stamps it");
        }
        let rest = acc.seal();
        assert!(rest.is_some());
        assert_eq!(acc.record_count(), 0);
        assert_eq!(acc.deadline(), None);
        assert!(acc.seal().is_none(), "nothing to seal twice");
        let total: usize = sealed
            .iter()
            .chain(rest.iter())
            .map(|s| s.tickets.len())
            .sum();
        assert_eq!(total, 20);
    }

    #[test]
    fn deadline_is_first_record_plus_linger() {
        let start = Instant::now();
        let mut acc = Accumulator::new(1 << 20, Duration::from_millis(5));
        let _ = acc.push(start, 0, &record("a", 1), 0u32);
        let _ = acc.push(start + Duration::from_millis(3), 0, &record("b", 1), 1);
        assert_eq!(acc.deadline(), Some(start + Duration::from_millis(5)));
        assert!(!acc.is_full());
        let _ = acc.seal();
        let later = start + Duration::from_millis(9);
        let _ = acc.push(later, 0, &record("c", 1), 2);
        assert_eq!(acc.deadline(), Some(later + Duration::from_millis(5)));
    }

    #[test]
    fn oversized_record_goes_alone() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1024, Duration::ZERO);
        let (closed, _) = acc.push(now, 0, &record("small", 10), 0u32);
        assert!(closed.is_none());
        let (closed, rejected) = acc.push(now, 0, &record("big", 5000), 1);
        assert!(rejected.is_none());
        let closed = closed.map(|s| s.tickets);
        assert_eq!(closed, Some(vec![0]), "the open batch closes first");
        assert!(acc.is_full(), "the big record fills its own batch");
        let big = acc.seal();
        assert!(matches!(&big, Some(s) if s.tickets == [1]));
        if let Some(big) = big {
            let len = big.batch.as_ref().map_or(0, Bytes::len);
            assert!(len > 5000);
            assert_eq!(records_of(&big), vec![(0, b"big".to_vec())]);
        }
        // A record that just fits stays in the open batch.
        let mut acc = Accumulator::new(1024, Duration::ZERO);
        let _ = acc.push(now, 0, &record("a", 400), 0u32);
        let (closed, _) = acc.push(now, 0, &record("b", 400), 1);
        assert!(closed.is_none());
        assert_eq!(acc.record_count(), 2);
    }

    #[test]
    fn unencodable_record_is_rejected_alone() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1024, Duration::ZERO);
        let _ = acc.push(now, i64::MAX, &record("a", 1), 0u32);
        // Its timestamp delta from the first record overflows i64.
        let (closed, rejected) = acc.push(now, -10, &record("b", 1), 1);
        assert!(closed.is_none());
        assert!(matches!(
            rejected,
            Some((FormatError::Unencodable { .. }, 1))
        ));
        assert_eq!(acc.record_count(), 1, "the open batch is untouched");
        let sealed = acc.seal();
        assert!(matches!(&sealed, Some(s) if s.batch.is_ok()));
    }

    #[test]
    fn headers_and_nulls_round_trip() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1 << 20, Duration::ZERO);
        let rec = ProducerRecord::default()
            .header("trace", Some(Bytes::from_static(b"abc")))
            .header("sluice.priority", None)
            .timestamp_ms(42);
        assert_eq!(rec.key, None);
        assert_eq!(rec.value, None);
        let _ = acc.push(now, 42, &rec, 0u32);
        let sealed = acc.seal();
        let batch = match sealed.map(|s| s.batch) {
            Some(Ok(batch)) => batch,
            _ => panic!("no batch"),
        };
        let view = BatchView::new(&batch, usize::MAX);
        assert!(view.is_ok());
        if let Ok(view) = view {
            let records: Vec<_> = view.records().collect();
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].key, None);
            assert_eq!(records[0].value, None);
            assert_eq!(records[0].timestamp, 42);
            let headers: Vec<_> = records[0].headers().map(|h| (h.key, h.value)).collect();
            assert_eq!(
                headers,
                vec![("trace", Some(&b"abc"[..])), ("sluice.priority", None)]
            );
        }
    }
}
