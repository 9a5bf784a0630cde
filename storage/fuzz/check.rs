//! The checks the `batch` fuzz target runs on every input. Shared, with `#[path]`, by
//! `fuzz_targets/batch.rs` and `storage/tests/fuzz_seeds.rs`, so the checked-in seeds replay the
//! fuzzer's exact checks under plain `cargo test` on stable.
//!
//! Each input is checked twice: as given, and with its `batch_len`, magic and CRC repaired so that
//! mutations get past the checksum. For any bytes, `BatchView::new` returns without panicking.
//! For bytes it accepts:
//! - the header agrees with itself and with `BatchPrefix`: magic, a control bit at most,
//!   `last_offset_delta == record_count - 1`, and the size limit is exactly the batch's length;
//! - iterating yields exactly `record_count` records, offset deltas `0..n`, offsets dense from
//!   `base_offset` (saturating at `u64::MAX`, as `Records` documents), every timestamp
//!   `<= max_timestamp` and the largest equal to it, and exactly `header_count` headers each;
//! - stamping another `base_offset` keeps it valid;
//! - re-encoding the decoded records with `BatchBuilder` gives a valid batch that decodes to the
//!   same records (the input may use non-minimal varints or a non-zero first timestamp delta,
//!   so the bytes themselves may differ).
//!
//! The same bytes are checked as a batch read back from a log (`BatchView::stored`, which
//! accepts compacted batches): it accepts everything `new` accepts and reads it the same; for
//! bytes it accepts, offset deltas increase strictly up to `last_offset_delta`, `record_count`
//! fits the span, timestamps stay `<= max_timestamp`, `with_checksum` agrees, and removing
//! records with `retain_records` gives a valid stored batch of exactly the kept records, header
//! fields unchanged but the count.

use sluice_storage::format::{
    ATTR_CONTROL, BatchBuilder, BatchPrefix, BatchView, FormatError, HEADER_LEN, Header, MAGIC,
    Retained, layout, retain_records, stamp_base_offset,
};

/// Runs every check on one input, as given and with its frame repaired (see [`reframe`]);
/// panics, the fuzzer's crash, when an invariant fails.
pub fn check_batch(data: &[u8]) {
    check_one(data);
    if let Some(framed) = reframe(data) {
        check_one(&framed);
    }
}

/// `data` with `batch_len`, magic and CRC rewritten to match it, or `None` if it is shorter than a
/// header. Nearly every mutation of a valid batch breaks its CRC, so on raw inputs the fuzzer
/// would mostly exercise the checksum; the repaired copy lets its mutations reach the checks
/// after it (attributes, counts, the record walk).
fn reframe(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let batch_len = u32::try_from(data.len() - layout::LOG_OVERHEAD).ok()?;
    let mut framed = data.to_vec();
    framed[layout::BATCH_LEN].copy_from_slice(&batch_len.to_le_bytes());
    framed[layout::MAGIC] = MAGIC;
    let crc = crc32fast::hash(&framed[layout::CRC_START..]);
    framed[layout::CRC].copy_from_slice(&crc.to_le_bytes());
    Some(framed)
}

fn check_one(data: &[u8]) {
    check_stored(data);
    let view = match BatchView::new(data, usize::MAX) {
        Ok(view) => view,
        Err(error) => {
            // The message is what the broker sends back: rendering it must not panic either.
            std::hint::black_box(error.to_string());
            return;
        }
    };
    match BatchView::stored(data) {
        Ok(stored) => assert!(
            stored
                .records()
                .map(|r| (r.offset, r.timestamp, r.key, r.value))
                .eq(view
                    .records()
                    .map(|r| (r.offset, r.timestamp, r.key, r.value))),
            "a produced batch reads differently as a stored one"
        ),
        Err(error) => panic!("a produced batch is not a valid stored batch: {error}"),
    }
    check_header(&view, data);
    check_records(&view);
    check_stamp(data, view.base_offset());
    check_reencode(&view);
}

fn check_header(view: &BatchView<'_>, data: &[u8]) {
    assert_eq!(view.as_bytes(), data);
    assert_eq!(view.len(), data.len());
    assert!(!view.is_empty());
    assert_eq!(view.magic(), MAGIC);
    assert_eq!(view.attributes() & !ATTR_CONTROL, 0);
    assert_eq!(view.is_control(), view.attributes() == ATTR_CONTROL);
    let count = view.record_count();
    assert!(count >= 1);
    assert_eq!(view.last_offset_delta(), count - 1);
    assert_eq!(
        view.last_offset(),
        view.base_offset()
            .saturating_add(u64::from(view.last_offset_delta()))
    );
    std::hint::black_box((
        view.leader_epoch(),
        view.crc(),
        view.first_timestamp(),
        view.producer_id(),
        view.producer_epoch(),
        view.base_sequence(),
    ));

    let Some(prefix) = BatchPrefix::parse(data) else {
        panic!("a valid batch has no prefix");
    };
    assert_eq!(prefix.base_offset, view.base_offset());
    assert_eq!(prefix.total_len, data.len() as u64);
    assert_eq!(prefix.last_offset_delta, view.last_offset_delta());
    assert_eq!(prefix.max_timestamp, view.max_timestamp());
    assert_eq!(prefix.magic, MAGIC);
    assert_eq!(prefix.next_offset(), view.last_offset().saturating_add(1));

    // The size limit is inclusive: exactly the batch's length passes, one byte less does not.
    assert!(BatchView::new(data, data.len()).is_ok());
    assert!(matches!(
        BatchView::new(data, data.len() - 1),
        Err(FormatError::TooLarge { .. })
    ));
}

fn check_records(view: &BatchView<'_>) {
    let base_offset = view.base_offset();
    let mut walked: u64 = 0;
    let mut max_timestamp = i64::MIN;
    for record in view.records() {
        assert_eq!(u64::from(record.offset_delta), walked);
        // Dense from base_offset; offsets past u64::MAX saturate (base_offset is outside the CRC).
        let expected = base_offset.saturating_add(walked);
        assert_eq!(record.offset, expected);
        assert!(record.timestamp <= view.max_timestamp());
        max_timestamp = max_timestamp.max(record.timestamp);
        std::hint::black_box((record.key, record.value, record.attributes));
        let mut headers: u64 = 0;
        for header in record.headers() {
            std::hint::black_box((header.key.len(), header.value));
            headers += 1;
        }
        assert_eq!(headers, record.header_count());
        walked += 1;
    }
    assert_eq!(walked, u64::from(view.record_count()));
    assert_eq!(max_timestamp, view.max_timestamp());
}

/// The broker stamps `base_offset` in place; that never invalidates a batch.
fn check_stamp(data: &[u8], base_offset: u64) {
    let mut stamped = data.to_vec();
    let new_base_offset = !base_offset;
    stamp_base_offset(&mut stamped, new_base_offset);
    match BatchView::new(&stamped, usize::MAX) {
        Ok(view) => assert_eq!(view.base_offset(), new_base_offset),
        Err(error) => panic!("stamping base_offset invalidated the batch: {error}"),
    }
}

/// Re-encodes the decoded records and checks they decode the same.
fn check_reencode(view: &BatchView<'_>) {
    let mut builder = BatchBuilder::new().producer(
        view.producer_id(),
        view.producer_epoch(),
        view.base_sequence(),
    );
    if view.is_control() {
        builder = builder.control();
    }
    let mut headers: Vec<Header<'_>> = Vec::new();
    let mut first_timestamp = None;
    for record in view.records() {
        headers.clear();
        headers.extend(record.headers());
        let first = *first_timestamp.get_or_insert(record.timestamp);
        let predicted = builder.encoded_len(record.timestamp, record.key, record.value, &headers);
        let before = builder.len();
        match builder.push(record.timestamp, record.key, record.value, &headers) {
            Ok(()) => assert_eq!(builder.len() - before, predicted),
            // The input's deltas are relative to its header's first_timestamp; the builder's
            // are relative to the first record's timestamp, and two i64 timestamps can be
            // further apart than an i64 delta holds. Such a batch cannot be re-encoded.
            Err(FormatError::Unencodable { .. })
                if record.timestamp.checked_sub(first).is_none() =>
            {
                return;
            }
            Err(error) => panic!("a decoded record failed to re-encode: {error}"),
        }
    }
    let batch = match builder.finish() {
        Ok(batch) => batch,
        Err(error) => panic!("re-encoded batch failed to finish: {error}"),
    };
    let again = match BatchView::new(&batch, usize::MAX) {
        Ok(again) => again,
        Err(error) => panic!("re-encoded batch is invalid: {error}"),
    };
    assert_eq!(again.record_count(), view.record_count());
    assert_eq!(again.max_timestamp(), view.max_timestamp());
    assert_eq!(again.producer_id(), view.producer_id());
    assert_eq!(again.producer_epoch(), view.producer_epoch());
    assert_eq!(again.base_sequence(), view.base_sequence());
    assert_eq!(again.is_control(), view.is_control());
    assert_eq!(Some(again.first_timestamp()), first_timestamp);
    let mut originals = view.records();
    for copy in again.records() {
        let Some(original) = originals.next() else {
            panic!("re-encoded batch has more records");
        };
        assert_eq!(copy.offset_delta, original.offset_delta);
        assert_eq!(copy.timestamp, original.timestamp);
        assert_eq!(copy.key, original.key);
        assert_eq!(copy.value, original.value);
        assert!(copy.headers().eq(original.headers()));
    }
    assert!(originals.next().is_none());
}

/// The stored rule (compacted batches): what it accepts, and compacting what it accepts.
fn check_stored(data: &[u8]) {
    let view = match BatchView::stored(data) {
        Ok(view) => view,
        Err(error) => {
            std::hint::black_box(error.to_string());
            return;
        }
    };
    let checked = match BatchView::with_checksum(data) {
        Ok(checked) => checked,
        Err(error) => panic!("with_checksum refused a valid stored batch: {error}"),
    };
    let count = view.record_count();
    assert!(count >= 1);
    assert!(count - 1 <= view.last_offset_delta());
    let mut previous: Option<u32> = None;
    let mut walked: u32 = 0;
    for record in view.records() {
        assert!(previous.is_none_or(|p| record.offset_delta > p));
        assert!(record.offset_delta <= view.last_offset_delta());
        assert_eq!(
            record.offset,
            view.base_offset()
                .saturating_add(u64::from(record.offset_delta))
        );
        assert!(record.timestamp <= view.max_timestamp());
        assert_eq!(
            &data[record.position()..][..record.as_bytes().len()],
            record.as_bytes()
        );
        previous = Some(record.offset_delta);
        walked += 1;
    }
    assert_eq!(walked, count);
    assert!(
        checked
            .records()
            .map(|r| r.offset)
            .eq(view.records().map(|r| r.offset))
    );

    // Keep every other record: a valid stored batch of exactly those.
    let mut out = Vec::new();
    let retained = retain_records(&view, |r| r.offset_delta % 2 == 0, &mut out);
    let expected: Vec<u32> = view
        .records()
        .map(|r| r.offset_delta)
        .filter(|d| d % 2 == 0)
        .collect();
    match retained {
        Retained::All => {
            assert_eq!(expected.len() as u32, count);
            assert!(out.is_empty());
        }
        Retained::None => {
            assert!(expected.is_empty());
            assert!(out.is_empty());
        }
        Retained::Some(kept) => {
            assert_eq!(kept as usize, expected.len());
            let compacted = match BatchView::stored(&out) {
                Ok(compacted) => compacted,
                Err(error) => panic!("a compacted batch is invalid: {error}"),
            };
            assert_eq!(compacted.record_count(), kept);
            assert!(compacted.records().map(|r| r.offset_delta).eq(expected));
            for field in [
                layout::BASE_OFFSET,
                layout::LEADER_EPOCH,
                layout::ATTRIBUTES,
                layout::LAST_OFFSET_DELTA,
                layout::FIRST_TIMESTAMP,
                layout::MAX_TIMESTAMP,
                layout::PRODUCER_ID,
                layout::PRODUCER_EPOCH,
                layout::BASE_SEQUENCE,
            ] {
                assert_eq!(out[field.clone()], data[field]);
            }
        }
    }
}
