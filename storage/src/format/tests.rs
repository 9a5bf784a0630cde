//! Tests of the batch format (design.md §2): proptest round trips through [`BatchBuilder`] and
//! [`BatchView`], corruption of every kind rejected without a panic, and hand-crafted batches that
//! each reach one check of [`BatchView::new`] and fail it with that check's typed error.
//!
//! Hand-crafted cases either edit a valid batch or assemble one from raw record bytes
//! ([`craft`]); both then recompute the CRC ([`fix_crc`]) so that the edit gets past the checksum
//! to the check it targets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Models and strategies
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct HeaderModel {
    key: String,
    value: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct RecordModel {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<HeaderModel>,
}

impl RecordModel {
    fn headers(&self) -> Vec<Header<'_>> {
        self.headers
            .iter()
            .map(|header| Header {
                key: &header.key,
                value: header.value.as_deref(),
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct BatchModel {
    records: Vec<RecordModel>,
    /// `(producer_id, producer_epoch, base_sequence)`; `None` leaves the builder's −1s.
    producer: Option<(i64, i16, i32)>,
    control: bool,
}

impl BatchModel {
    fn builder(&self) -> BatchBuilder {
        let mut builder = BatchBuilder::new();
        if let Some((id, epoch, sequence)) = self.producer {
            builder = builder.producer(id, epoch, sequence);
        }
        if self.control {
            builder = builder.control();
        }
        builder
    }

    /// Encodes the model; panics if the builder refuses it (the strategies stay encodable).
    fn encode(&self) -> BytesMut {
        let mut builder = self.builder();
        for record in &self.records {
            builder
                .push(
                    record.timestamp,
                    record.key.as_deref(),
                    record.value.as_deref(),
                    &record.headers(),
                )
                .unwrap();
        }
        builder.finish().unwrap()
    }
}

/// Null, empty, short and long (two-byte length varint) byte strings.
fn bytes_strategy() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        3 => vec(any::<u8>(), 1..40).prop_map(Some),
        1 => vec(any::<u8>(), 100..300).prop_map(Some),
    ]
}

/// Arbitrary UTF-8 keys (any `char`, empty included) with null, empty or other values.
fn header_strategy() -> impl Strategy<Value = HeaderModel> {
    (vec(any::<char>(), 0..12), bytes_strategy()).prop_map(|(key, value)| HeaderModel {
        key: key.into_iter().collect(),
        value,
    })
}

/// Offsets of record timestamps from the batch's base time: small, `i32`-wide and huge, of
/// either sign, so timestamp deltas are negative as often as positive and varints of every width
/// occur. Base ± delta stays within ±2^62, so every difference of two timestamps fits an `i64`.
fn timestamp_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        -100_i64..100,
        any::<i32>().prop_map(i64::from),
        -(1_i64 << 60)..(1_i64 << 60),
    ]
}

type RecordParts = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<HeaderModel>);

fn batch_strategy(max_records: usize) -> impl Strategy<Value = BatchModel> {
    let record = (
        timestamp_strategy(),
        bytes_strategy(),
        bytes_strategy(),
        vec(header_strategy(), 0..=4),
    );
    (
        -(1_i64 << 61)..(1_i64 << 61),
        vec(record, 1..=max_records),
        proptest::option::of((any::<i64>(), any::<i16>(), any::<i32>())),
        any::<bool>(),
    )
        .prop_map(|(base_time, records, producer, control)| BatchModel {
            records: records
                .into_iter()
                .map(|(delta, key, value, headers): RecordParts| RecordModel {
                    timestamp: base_time + delta,
                    key,
                    value,
                    headers,
                })
                .collect(),
            producer,
            control,
        })
}

/// Asserts that `view` holds exactly `model`, stamped with `base_offset`.
fn assert_view_matches(
    view: &BatchView<'_>,
    batch: &[u8],
    model: &BatchModel,
    base_offset: u64,
) -> Result<(), TestCaseError> {
    let count = model.records.len() as u32;
    let (producer_id, producer_epoch, base_sequence) = model.producer.unwrap_or((-1, -1, -1));
    let max_timestamp = model.records.iter().map(|r| r.timestamp).max().unwrap();

    prop_assert_eq!(view.as_bytes(), batch);
    prop_assert_eq!(view.len(), batch.len());
    prop_assert!(!view.is_empty());
    prop_assert_eq!(view.base_offset(), base_offset);
    prop_assert_eq!(view.last_offset(), base_offset + u64::from(count - 1));
    prop_assert_eq!(view.leader_epoch(), 0);
    prop_assert_eq!(view.magic(), MAGIC);
    prop_assert_eq!(view.crc(), crc32fast::hash(&batch[layout::CRC_START..]));
    let attributes = if model.control { ATTR_CONTROL } else { 0 };
    prop_assert_eq!(view.attributes(), attributes);
    prop_assert_eq!(view.is_control(), model.control);
    prop_assert_eq!(view.record_count(), count);
    prop_assert_eq!(view.last_offset_delta(), count - 1);
    prop_assert_eq!(view.first_timestamp(), model.records[0].timestamp);
    prop_assert_eq!(view.max_timestamp(), max_timestamp);
    prop_assert_eq!(view.producer_id(), producer_id);
    prop_assert_eq!(view.producer_epoch(), producer_epoch);
    prop_assert_eq!(view.base_sequence(), base_sequence);

    let prefix = BatchPrefix::parse(batch).unwrap();
    prop_assert_eq!(
        prefix,
        BatchPrefix {
            base_offset,
            total_len: batch.len() as u64,
            last_offset_delta: count - 1,
            max_timestamp,
            magic: MAGIC,
        }
    );
    prop_assert_eq!(prefix.next_offset(), base_offset + u64::from(count));

    prop_assert_eq!(view.records().count(), model.records.len());
    for (index, (record, expected)) in view.records().zip(&model.records).enumerate() {
        prop_assert_eq!(record.offset_delta, index as u32);
        prop_assert_eq!(record.offset, base_offset + index as u64);
        prop_assert_eq!(record.timestamp, expected.timestamp);
        prop_assert_eq!(record.key, expected.key.as_deref());
        prop_assert_eq!(record.value, expected.value.as_deref());
        prop_assert_eq!(record.attributes, 0);
        prop_assert_eq!(record.header_count(), expected.headers.len() as u64);
        let headers: Vec<Header<'_>> = record.headers().collect();
        prop_assert_eq!(headers, expected.headers());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn round_trip(model in batch_strategy(50), stamp in any::<u32>()) {
        let mut builder = model.builder();
        prop_assert!(builder.is_empty());
        prop_assert_eq!(builder.len(), HEADER_LEN);
        for record in &model.records {
            let headers = record.headers();
            let key = record.key.as_deref();
            let value = record.value.as_deref();
            let predicted = builder.encoded_len(record.timestamp, key, value, &headers);
            let before = builder.len();
            builder.push(record.timestamp, key, value, &headers).unwrap();
            prop_assert_eq!(builder.len() - before, predicted, "encoded_len of {:?}", record);
        }
        prop_assert_eq!(builder.record_count(), model.records.len() as u32);
        prop_assert!(!builder.is_empty());
        let len = builder.len();
        let mut batch = builder.finish().unwrap();
        prop_assert_eq!(batch.len(), len);

        // Exactly at the size limit is accepted; one byte under it is not.
        let view = BatchView::new(&batch, batch.len()).unwrap();
        assert_view_matches(&view, &batch, &model, 0)?;
        let err = BatchView::new(&batch, batch.len() - 1).unwrap_err();
        prop_assert!(
            matches!(err, FormatError::TooLarge { len, max } if len == batch.len() as u64 && max == len - 1),
            "{:?}", err
        );

        // The broker stamps base_offset outside the CRC: the batch stays valid, the bytes after
        // the offset do not change, and every record moves with it.
        let before_stamp = batch[layout::BATCH_LEN.start..].to_vec();
        let base_offset = u64::from(stamp) << 16;
        stamp_base_offset(&mut batch, base_offset);
        prop_assert_eq!(&batch[layout::BATCH_LEN.start..], &before_stamp[..]);
        let view = BatchView::new(&batch, usize::MAX).unwrap();
        assert_view_matches(&view, &batch, &model, base_offset)?;
    }

    #[test]
    fn any_bit_flip_in_the_crc_range_is_a_checksum_mismatch(
        model in batch_strategy(8),
        position in any::<prop::sample::Index>(),
        bit in 0_u8..8,
    ) {
        let mut batch = model.encode();
        let stored = read_u32(&batch, layout::CRC);
        let position = layout::CRC_START + position.index(batch.len() - layout::CRC_START);
        batch[position] ^= 1 << bit;
        // CRC-32 detects every single-bit error, and the CRC check runs before anything that
        // reads the CRC'd bytes, so the flip can only be a checksum mismatch.
        let err = BatchView::new(&batch, usize::MAX).unwrap_err();
        prop_assert!(
            matches!(err, FormatError::ChecksumMismatch { stored: s, computed }
                if s == stored && computed == crc32fast::hash(&batch[layout::CRC_START..])),
            "flip of bit {} at byte {}: {:?}", bit, position, err
        );
    }

    #[test]
    fn any_truncation_is_rejected(model in batch_strategy(8), cut in any::<prop::sample::Index>()) {
        let batch = model.encode();
        let cut = cut.index(batch.len());
        let err = BatchView::new(&batch[..cut], usize::MAX).unwrap_err();
        if cut < HEADER_LEN {
            prop_assert!(matches!(err, FormatError::TooShort { len } if len == cut), "{:?}", err);
        } else {
            prop_assert!(
                matches!(err, FormatError::LengthMismatch { declared, actual }
                    if declared == batch.len() as u64 && actual == cut),
                "{:?}", err
            );
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..1024)) {
        if let Ok(view) = BatchView::new(&bytes, usize::MAX) {
            touch_everything(&view);
        }
    }

    /// Random record bytes under a header that passes every batch-level check, so that the
    /// record walk (varints, lengths, header keys) sees arbitrary input.
    #[test]
    fn random_records_never_panic(
        records in vec(any::<u8>(), 0..512),
        record_count in 1_u32..8,
        first_timestamp in any::<i64>(),
        max_timestamp in any::<i64>(),
    ) {
        let batch = craft(&records, record_count, first_timestamp, max_timestamp);
        if let Ok(view) = BatchView::new(&batch, usize::MAX) {
            touch_everything(&view);
        }
    }

    /// Random records built from well-formed fields with random values, so that the walk gets
    /// past the varints more often than with raw random bytes.
    #[test]
    fn random_record_fields_never_panic(
        fields in vec(prop_oneof![
            (-3_i64..300).prop_map(vi),
            any::<i64>().prop_map(vi),
            vec(any::<u8>(), 0..8),
        ], 0..40),
        record_count in 1_u32..4,
        first_timestamp in -10_i64..10,
    ) {
        let batch = craft(&fields.concat(), record_count, first_timestamp, first_timestamp);
        if let Ok(view) = BatchView::new(&batch, usize::MAX) {
            touch_everything(&view);
        }
    }
}

/// Reads every field of every record and header of a validated batch.
fn touch_everything(view: &BatchView<'_>) {
    let mut records = 0_u64;
    for record in view.records() {
        assert_eq!(u64::from(record.offset_delta), records);
        assert!(record.timestamp <= view.max_timestamp());
        std::hint::black_box((record.offset, record.key, record.value, record.attributes));
        assert_eq!(record.headers().count() as u64, record.header_count());
        for header in record.headers() {
            std::hint::black_box((header.key, header.value));
        }
        records += 1;
    }
    assert_eq!(records, u64::from(view.record_count()));
}

// ---------------------------------------------------------------------------------------------
// Helpers for hand-crafted batches
// ---------------------------------------------------------------------------------------------

/// Recomputes the CRC after a test edited bytes in the CRC'd range, so that the edit reaches the
/// check it targets instead of failing the checksum.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32fast::hash(&batch[layout::CRC_START..]);
    batch[layout::CRC].copy_from_slice(&crc.to_le_bytes());
}

fn put_u32(batch: &mut [u8], field: std::ops::Range<usize>, value: u32) {
    batch[field].copy_from_slice(&value.to_le_bytes());
}

fn put_i64(batch: &mut [u8], field: std::ops::Range<usize>, value: i64) {
    batch[field].copy_from_slice(&value.to_le_bytes());
}

/// The zig-zag varint of `value`.
fn vi(value: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint::encode(value, &mut out);
    out
}

/// A record from raw fields: their bytes, prefixed with the length varint.
fn record(fields: &[&[u8]]) -> Vec<u8> {
    let body = fields.concat();
    let mut out = vi(body.len() as i64);
    out.extend_from_slice(&body);
    out
}

/// A well-formed record: no attributes, timestamp delta 0, null key and value, no headers.
fn plain_record(offset_delta: i64) -> Vec<u8> {
    record(&[&[0], &vi(0), &vi(offset_delta), &vi(-1), &vi(-1), &vi(0)])
}

/// A batch around raw `records` whose header passes every batch-level check for `record_count`
/// records (length, magic, CRC, attributes 0, `last_offset_delta`), producer fields −1.
fn craft(records: &[u8], record_count: u32, first_timestamp: i64, max_timestamp: i64) -> Vec<u8> {
    let mut batch = vec![0; HEADER_LEN];
    batch.extend_from_slice(records);
    let batch_len = u32::try_from(batch.len() - layout::LOG_OVERHEAD).unwrap();
    put_u32(&mut batch, layout::BATCH_LEN, batch_len);
    batch[layout::MAGIC] = MAGIC;
    put_u32(
        &mut batch,
        layout::LAST_OFFSET_DELTA,
        record_count.saturating_sub(1),
    );
    put_i64(&mut batch, layout::FIRST_TIMESTAMP, first_timestamp);
    put_i64(&mut batch, layout::MAX_TIMESTAMP, max_timestamp);
    put_i64(&mut batch, layout::PRODUCER_ID, -1);
    batch[layout::PRODUCER_EPOCH].copy_from_slice(&(-1_i16).to_le_bytes());
    put_u32(&mut batch, layout::BASE_SEQUENCE, u32::MAX);
    put_u32(&mut batch, layout::RECORD_COUNT, record_count);
    fix_crc(&mut batch);
    batch
}

/// A valid batch of three records with keys, values and headers.
fn sample() -> BytesMut {
    let mut builder = BatchBuilder::new();
    for i in 0..3_u8 {
        let headers = [Header {
            key: "i",
            value: Some(&[i][..]),
        }];
        builder
            .push(
                1_000 + i64::from(i),
                Some(&[b'k', i]),
                Some(b"value"),
                &headers,
            )
            .unwrap();
    }
    builder.finish().unwrap()
}

/// The error `BatchView::new` returns for `batch` with no size limit; panics if it accepts it.
fn err(batch: &[u8]) -> FormatError {
    BatchView::new(batch, usize::MAX).unwrap_err()
}

/// The problem of the `Record` error for `batch`, checking that it names `index` at `position`.
fn record_problem(batch: &[u8], index: u32, position: usize) -> RecordProblem {
    match err(batch) {
        FormatError::Record {
            index: i,
            position: p,
            problem,
        } if i == index && p == position => problem,
        other => panic!("expected a record error at {index}/{position}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers against the builder
// ---------------------------------------------------------------------------------------------

/// Version 1 pinned byte for byte: a change here is a format change (style.md "Formats").
#[test]
fn builder_output_is_pinned() {
    let mut builder = BatchBuilder::new().producer(7, 2, 100);
    builder
        .push(
            1_000,
            Some(b"k"),
            Some(b"v"),
            &[Header {
                key: "h",
                value: None,
            }],
        )
        .unwrap();
    builder.push(999, None, Some(b""), &[]).unwrap();
    let batch = builder.finish().unwrap();
    #[rustfmt::skip]
    let mut expected: Vec<u8> = vec![
        0, 0, 0, 0, 0, 0, 0, 0,         // base_offset 0
        68, 0, 0, 0,                    // batch_len: 80 bytes in all, minus 12
        0, 0, 0, 0,                     // leader_epoch 0
        1,                              // magic
        0, 0, 0, 0,                     // crc, filled in below
        0, 0,                           // attributes
        1, 0, 0, 0,                     // last_offset_delta
        0xe8, 0x03, 0, 0, 0, 0, 0, 0,   // first_timestamp 1000
        0xe8, 0x03, 0, 0, 0, 0, 0, 0,   // max_timestamp 1000
        7, 0, 0, 0, 0, 0, 0, 0,         // producer_id 7
        2, 0,                           // producer_epoch 2
        100, 0, 0, 0,                   // base_sequence 100
        2, 0, 0, 0,                     // record_count 2
        // record 0: length 11, attributes, timestamp delta 0, offset delta 0, key "k",
        // value "v", 1 header: key "h", value null
        22, 0, 0, 0, 2, b'k', 2, b'v', 2, 2, b'h', 1,
        // record 1: length 6, attributes, timestamp delta -1, offset delta 1, key null,
        // value empty, 0 headers
        12, 0, 1, 2, 1, 0, 0,
    ];
    fix_crc(&mut expected);
    assert_eq!(&batch[..], &expected[..]);
    // The test helper `craft` writes the same header, producer fields aside.
    let mut crafted = craft(&expected[HEADER_LEN..], 2, 1_000, 1_000);
    put_i64(&mut crafted, layout::PRODUCER_ID, 7);
    crafted[layout::PRODUCER_EPOCH].copy_from_slice(&2_i16.to_le_bytes());
    put_u32(&mut crafted, layout::BASE_SEQUENCE, 100);
    fix_crc(&mut crafted);
    assert_eq!(crafted, expected);
}

#[test]
fn crafted_plain_records_are_valid() {
    let records = [plain_record(0), plain_record(1)].concat();
    let batch = craft(&records, 2, 5, 5);
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    assert_eq!(view.record_count(), 2);
    touch_everything(&view);
    // The builder writes the same bytes for the same records.
    let mut builder = BatchBuilder::new();
    builder.push(5, None, None, &[]).unwrap();
    builder.push(5, None, None, &[]).unwrap();
    assert_eq!(&builder.finish().unwrap()[..], &batch[..]);
}

#[test]
fn builder_refuses_empty_batches_and_unencodable_timestamps() {
    assert!(matches!(
        BatchBuilder::new().finish(),
        Err(FormatError::Empty)
    ));
    let mut builder = BatchBuilder::new();
    builder.push(i64::MIN, None, None, &[]).unwrap();
    let len = builder.len();
    let refused = builder.push(i64::MAX, None, Some(b"x"), &[]);
    assert!(
        matches!(refused, Err(FormatError::Unencodable { .. })),
        "{refused:?}"
    );
    // A refused push leaves the builder as it was.
    assert_eq!(builder.len(), len);
    assert_eq!(builder.record_count(), 1);
    let batch = builder.finish().unwrap();
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    assert_eq!(view.record_count(), 1);
    assert_eq!(view.max_timestamp(), i64::MIN);
}

#[test]
fn extreme_timestamps_round_trip() {
    for (first, second) in [(i64::MIN, -1), (0, i64::MAX), (i64::MAX, 0), (-1, i64::MIN)] {
        let mut builder = BatchBuilder::new();
        builder.push(first, None, None, &[]).unwrap();
        builder.push(second, None, None, &[]).unwrap();
        let batch = builder.finish().unwrap();
        let view = BatchView::new(&batch, usize::MAX).unwrap();
        let timestamps: Vec<i64> = view.records().map(|r| r.timestamp).collect();
        assert_eq!(timestamps, [first, second]);
        assert_eq!(view.max_timestamp(), first.max(second));
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input: each check of BatchView::new, reached and failed
// ---------------------------------------------------------------------------------------------

#[test]
fn shorter_than_a_header_is_too_short() {
    let batch = sample();
    for len in [0, 1, 12, HEADER_LEN - 1] {
        let e = err(&batch[..len]);
        assert!(
            matches!(e, FormatError::TooShort { len: l } if l == len),
            "{e:?}"
        );
    }
}

#[test]
fn header_intact_but_body_cut_or_padded_is_a_length_mismatch() {
    let batch = sample();
    let declared = batch.len() as u64;
    for len in [HEADER_LEN, HEADER_LEN + 1, batch.len() - 1] {
        let e = err(&batch[..len]);
        assert!(
            matches!(e, FormatError::LengthMismatch { declared: d, actual } if d == declared && actual == len),
            "{e:?}"
        );
    }
    let mut padded = batch.to_vec();
    padded.push(0);
    let e = err(&padded);
    assert!(
        matches!(e, FormatError::LengthMismatch { declared: d, actual } if d == declared && actual == padded.len()),
        "{e:?}"
    );
}

#[test]
fn a_flipped_bit_is_a_checksum_mismatch_with_both_crcs() {
    let mut batch = sample();
    let stored = read_u32(&batch, layout::CRC);
    let last = batch.len() - 1;
    batch[last] ^= 0x10;
    let computed = crc32fast::hash(&batch[layout::CRC_START..]);
    assert_ne!(stored, computed);
    let e = err(&batch);
    assert!(
        matches!(e, FormatError::ChecksumMismatch { stored: s, computed: c } if s == stored && c == computed),
        "{e:?}"
    );

    // A flip in the stored CRC itself.
    let mut batch = sample();
    let computed = crc32fast::hash(&batch[layout::CRC_START..]);
    batch[layout::CRC.start] ^= 1;
    let e = err(&batch);
    assert!(
        matches!(e, FormatError::ChecksumMismatch { stored: s, computed: c } if s == computed ^ 1 && c == computed),
        "{e:?}"
    );
}

/// Every bit of every byte of a batch, flipped one at a time: what each region of the header is
/// protected by. Only the broker-stamped fields before the CRC may change and stay valid.
#[test]
fn every_single_bit_flip_is_caught_except_in_the_stamped_fields() {
    let batch = sample();
    for position in 0..batch.len() {
        for bit in 0..8 {
            let mut flipped = batch.to_vec();
            flipped[position] ^= 1 << bit;
            let result = BatchView::new(&flipped, usize::MAX);
            let ok = match position {
                p if layout::BASE_OFFSET.contains(&p) || layout::LEADER_EPOCH.contains(&p) => {
                    result.is_ok()
                }
                p if layout::BATCH_LEN.contains(&p) => {
                    matches!(result, Err(FormatError::LengthMismatch { .. }))
                }
                layout::MAGIC => matches!(result, Err(FormatError::BadMagic { .. })),
                _ => matches!(result, Err(FormatError::ChecksumMismatch { .. })),
            };
            assert!(ok, "bit {bit} of byte {position}: {result:?}");
        }
    }
}

/// All zeros of a batch's length (a preallocated, never written region of a segment): the first
/// check that reads anything is the length, and a zero `batch_len` declares a 12-byte batch, so
/// the error is `LengthMismatch { declared: 12, .. }`. Zeros shorter than a header are
/// `TooShort`; zeros whose `batch_len` alone was written get as far as the magic (0).
#[test]
fn zero_filled_is_a_length_mismatch() {
    let len = sample().len();
    let zeros = vec![0_u8; len];
    let e = err(&zeros);
    assert!(
        matches!(e, FormatError::LengthMismatch { declared: 12, actual } if actual == len),
        "{e:?}"
    );
    let e = err(&zeros[..HEADER_LEN - 1]);
    assert!(matches!(e, FormatError::TooShort { .. }), "{e:?}");
    let mut length_only = zeros;
    put_u32(&mut length_only, layout::BATCH_LEN, (len - 12) as u32);
    let e = err(&length_only);
    assert!(matches!(e, FormatError::BadMagic { found: 0 }), "{e:?}");
}

#[test]
fn over_the_limit_is_too_large() {
    let batch = sample();
    let len = batch.len();
    assert!(BatchView::new(&batch, len).is_ok());
    for max in [0, HEADER_LEN, len - 1] {
        let e = BatchView::new(&batch, max).unwrap_err();
        assert!(
            matches!(e, FormatError::TooLarge { len: l, max: m } if l == len as u64 && m == max as u64),
            "{e:?}"
        );
    }
    // The length check comes first: a cut batch over the limit is a length mismatch.
    let e = BatchView::new(&batch[..len - 1], 10).unwrap_err();
    assert!(matches!(e, FormatError::LengthMismatch { .. }), "{e:?}");
}

#[test]
fn another_magic_is_bad_magic_and_the_crc_does_not_cover_it() {
    for magic in [0, 2, 0xff] {
        let mut batch = sample();
        batch[layout::MAGIC] = magic;
        // No CRC fix: the magic is outside the CRC'd range, and checked before the CRC.
        let e = err(&batch);
        assert!(
            matches!(e, FormatError::BadMagic { found } if found == magic),
            "{e:?}"
        );
    }
}

#[test]
fn compression_transactional_and_unknown_attribute_bits_are_unsupported() {
    let unsupported = [
        1, // gzip-like codec 1
        2, // codec 2
        ATTR_COMPRESSION_MASK,
        ATTR_TRANSACTIONAL, // reserved until transactions exist
        1 << 3,
        1 << 6,
        1 << 15,
        ATTR_CONTROL | 1, // control is fine, the codec is not
    ];
    for attributes in unsupported {
        let mut batch = sample();
        batch[layout::ATTRIBUTES].copy_from_slice(&attributes.to_le_bytes());
        // The attributes are CRC'd: without a fix the edit is a checksum mismatch.
        let e = err(&batch);
        assert!(matches!(e, FormatError::ChecksumMismatch { .. }), "{e:?}");
        fix_crc(&mut batch);
        let e = err(&batch);
        assert!(
            matches!(e, FormatError::UnsupportedAttributes { attributes: a } if a == attributes),
            "{attributes:#x}: {e:?}"
        );
    }
    let mut control = sample();
    control[layout::ATTRIBUTES].copy_from_slice(&ATTR_CONTROL.to_le_bytes());
    fix_crc(&mut control);
    assert!(BatchView::new(&control, usize::MAX).unwrap().is_control());
}

#[test]
fn a_record_count_of_zero_is_empty() {
    let mut batch = sample();
    put_u32(&mut batch, layout::RECORD_COUNT, 0);
    fix_crc(&mut batch);
    let e = err(&batch);
    assert!(matches!(e, FormatError::Empty), "{e:?}");
}

#[test]
fn last_offset_delta_must_be_record_count_minus_one() {
    for last_offset_delta in [0, 1, 3, u32::MAX] {
        let mut batch = sample(); // 3 records
        put_u32(&mut batch, layout::LAST_OFFSET_DELTA, last_offset_delta);
        fix_crc(&mut batch);
        let e = err(&batch);
        assert!(
            matches!(e, FormatError::LastOffsetDelta { last_offset_delta: l, record_count: 3 } if l == last_offset_delta),
            "{e:?}"
        );
    }
}

#[test]
fn record_count_must_match_the_records_walked() {
    // Declared more than the bytes hold.
    let mut batch = sample();
    put_u32(&mut batch, layout::RECORD_COUNT, 5);
    put_u32(&mut batch, layout::LAST_OFFSET_DELTA, 4);
    fix_crc(&mut batch);
    let e = err(&batch);
    assert!(
        matches!(
            e,
            FormatError::RecordCount {
                declared: 5,
                walked: 3
            }
        ),
        "{e:?}"
    );

    // Declared fewer: the walk stops one record past the declared count.
    let mut batch = sample();
    put_u32(&mut batch, layout::RECORD_COUNT, 2);
    put_u32(&mut batch, layout::LAST_OFFSET_DELTA, 1);
    fix_crc(&mut batch);
    let e = err(&batch);
    assert!(
        matches!(
            e,
            FormatError::RecordCount {
                declared: 2,
                walked: 3
            }
        ),
        "{e:?}"
    );
}

#[test]
fn offset_deltas_must_be_the_record_index() {
    // Edited in a builder batch: record 0's offset delta is its fourth byte (length,
    // attributes, timestamp delta 0, offset delta 0).
    let mut batch = sample();
    let position = HEADER_LEN + 3;
    assert_eq!(batch[position], 0);
    batch[position] = vi(1)[0];
    fix_crc(&mut batch);
    let e = err(&batch);
    assert!(
        matches!(e, FormatError::OffsetDelta { index: 0, found: 1 }),
        "{e:?}"
    );

    for found in [-1, 0, 2, i64::MAX] {
        let records = [plain_record(0), plain_record(found)].concat();
        let e = err(&craft(&records, 2, 0, 0));
        assert!(
            matches!(e, FormatError::OffsetDelta { index: 1, found: f } if f == found),
            "{e:?}"
        );
    }
}

#[test]
fn max_timestamp_must_be_the_largest_record_timestamp() {
    for declared in [1_001, 1_003, i64::MIN, i64::MAX] {
        let mut batch = sample(); // timestamps 1000, 1001, 1002
        put_i64(&mut batch, layout::MAX_TIMESTAMP, declared);
        fix_crc(&mut batch);
        let e = err(&batch);
        assert!(
            matches!(e, FormatError::MaxTimestamp { declared: d, actual: 1_002 } if d == declared),
            "{e:?}"
        );
    }
}

#[test]
fn malformed_varints_are_bad_varints() {
    // The record length: eleven continuation bytes.
    let batch = craft(&[0xff; 11], 1, 0, 0);
    assert_eq!(
        record_problem(&batch, 0, HEADER_LEN),
        RecordProblem::BadVarint
    );
    // The record length: the batch ends inside it.
    let batch = craft(&[0x80, 0x80], 1, 0, 0);
    assert_eq!(
        record_problem(&batch, 0, HEADER_LEN),
        RecordProblem::BadVarint
    );
    // Inside the record: the timestamp delta runs to the record's end.
    let batch = craft(&record(&[&[0], &[0x80, 0x80]]), 1, 0, 0);
    assert_eq!(
        record_problem(&batch, 0, HEADER_LEN),
        RecordProblem::BadVarint
    );
    // A tenth byte with bits past the 64th.
    let mut overlong = vec![0xff_u8; 9];
    overlong.push(0x02);
    let batch = craft(&record(&[&[0], &vi(0), &overlong]), 1, 0, 0);
    assert_eq!(
        record_problem(&batch, 0, HEADER_LEN),
        RecordProblem::BadVarint
    );
    // In the second record: the error names it and its position.
    let first = plain_record(0);
    let batch = craft(&[&first[..], &record(&[&[0], &[0xff]])].concat(), 2, 0, 0);
    assert_eq!(
        record_problem(&batch, 1, HEADER_LEN + first.len()),
        RecordProblem::BadVarint
    );
}

#[test]
fn lengths_past_the_end_or_negative_are_bad_lengths() {
    let attrs: &[u8] = &[0];
    let cases: Vec<Vec<u8>> = vec![
        // The record's length runs past the batch.
        [vi(100), vec![0; 6]].concat(),
        // A negative record length.
        [vi(-1), vec![0; 6]].concat(),
        // An empty record: not even the attributes byte.
        record(&[]),
        // The key runs past the record (the batch has more bytes after it, unused).
        [
            record(&[attrs, &vi(0), &vi(0), &vi(50), &[1, 2]]),
            vec![0; 60],
        ]
        .concat(),
        // A key length below −1.
        record(&[attrs, &vi(0), &vi(0), &vi(-2), &vi(-1), &vi(0)]),
        // The value runs past the record.
        record(&[attrs, &vi(0), &vi(0), &vi(-1), &vi(3), &[1]]),
        // A negative header count.
        record(&[attrs, &vi(0), &vi(0), &vi(-1), &vi(-1), &vi(-1)]),
    ];
    for records in cases {
        let batch = craft(&records, 1, 0, 0);
        assert_eq!(
            record_problem(&batch, 0, HEADER_LEN),
            RecordProblem::BadLength,
            "{records:?}"
        );
    }
}

#[test]
fn header_keys_must_be_present_and_utf8() {
    let attrs: &[u8] = &[0];
    let null = vi(-1);
    let header_record = |key: &[u8]| {
        record(&[
            attrs,
            &vi(0),
            &vi(0),
            &null,
            &null,
            &vi(1),
            key,
            &vi(-1), // header value null
        ])
    };
    // Not UTF-8: a lone continuation byte, an overlong encoding, a surrogate.
    for key in [
        &[0x80][..],
        &[0xc0, 0x80],
        &[0xed, 0xa0, 0x80],
        &[b'a', 0xff],
    ] {
        let key = [vi(key.len() as i64), key.to_vec()].concat();
        let batch = craft(&header_record(&key), 1, 0, 0);
        assert_eq!(
            record_problem(&batch, 0, HEADER_LEN),
            RecordProblem::BadHeaderKey,
            "{key:?}"
        );
    }
    // A null key.
    let batch = craft(&header_record(&null), 1, 0, 0);
    assert_eq!(
        record_problem(&batch, 0, HEADER_LEN),
        RecordProblem::BadHeaderKey
    );
    // A valid key passes: the cases above fail on the key alone.
    let key = [vi(3), "é!".as_bytes().to_vec()].concat();
    let batch = craft(&header_record(&key), 1, 0, 0);
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    let record = view.records().next().unwrap();
    let headers: Vec<Header<'_>> = record.headers().collect();
    assert_eq!(
        headers,
        [Header {
            key: "é!",
            value: None
        }]
    );
}

/// Malformed header bytes other than the key name their own problem: a value length past the
/// end of the record is `BadLength`, a header missing from `header_count` is `BadVarint`.
#[test]
fn other_header_problems_name_their_own_problem() {
    let attrs: &[u8] = &[0];
    let null = vi(-1);
    let cases: Vec<Vec<u8>> = vec![
        // The header value runs past the record.
        record(&[
            attrs,
            &vi(0),
            &vi(0),
            &null,
            &null,
            &vi(1),
            &vi(1),
            b"k",
            &vi(9),
            b"v",
        ]),
        // Two headers declared, one present.
        record(&[
            attrs,
            &vi(0),
            &vi(0),
            &null,
            &null,
            &vi(2),
            &vi(1),
            b"k",
            &null,
        ]),
    ];
    let expected = [RecordProblem::BadLength, RecordProblem::BadVarint];
    for (records, expected) in cases.into_iter().zip(expected) {
        let batch = craft(&records, 1, 0, 0);
        assert_eq!(
            record_problem(&batch, 0, HEADER_LEN),
            expected,
            "{records:?}"
        );
    }
}

#[test]
fn bytes_left_over_in_a_record_are_a_length_mismatch() {
    let attrs: &[u8] = &[0];
    let null = vi(-1);
    for extra in [&[0][..], &[1, 2, 3]] {
        let batch = craft(
            &record(&[attrs, &vi(0), &vi(0), &null, &null, &vi(0), extra]),
            1,
            0,
            0,
        );
        assert_eq!(
            record_problem(&batch, 0, HEADER_LEN),
            RecordProblem::LengthMismatch
        );
    }
}

#[test]
fn a_timestamp_delta_past_i64_is_an_overflow() {
    let records = record(&[&[0], &vi(1), &vi(0), &vi(-1), &vi(-1), &vi(0)]);
    let batch = craft(&records, 1, i64::MAX, i64::MAX);
    assert_eq!(
        record_problem(&batch, 0, HEADER_LEN),
        RecordProblem::TimestampOverflow
    );
}

// ---------------------------------------------------------------------------------------------
// Broker-stamped fields
// ---------------------------------------------------------------------------------------------

#[test]
fn stamping_base_offset_and_leader_epoch_keeps_the_batch_valid() {
    let mut batch = sample();
    let crc = read_u32(&batch, layout::CRC);
    stamp_base_offset(&mut batch, 1 << 40);
    put_u32(&mut batch, layout::LEADER_EPOCH, 9);
    assert_eq!(read_u32(&batch, layout::CRC), crc);
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    assert_eq!(view.base_offset(), 1 << 40);
    assert_eq!(view.leader_epoch(), 9);
    assert_eq!(view.last_offset(), (1 << 40) + 2);
    let offsets: Vec<u64> = view.records().map(|r| r.offset).collect();
    assert_eq!(offsets, [1 << 40, (1 << 40) + 1, (1 << 40) + 2]);
    let prefix = BatchPrefix::parse(&batch).unwrap();
    assert_eq!(prefix.base_offset, 1 << 40);
    assert_eq!(prefix.next_offset(), (1 << 40) + 3);

    // The last offsets a u64 can hold.
    stamp_base_offset(&mut batch, u64::MAX - 2);
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    assert_eq!(view.last_offset(), u64::MAX);
    let offsets: Vec<u64> = view.records().map(|r| r.offset).collect();
    assert_eq!(offsets, [u64::MAX - 2, u64::MAX - 1, u64::MAX]);
}

// ---------------------------------------------------------------------------------------------
// Compacted (stored) batches
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Removing any subset of a batch's records gives a valid stored batch holding exactly
    /// the kept records at their original offsets and timestamps, under the original header.
    #[test]
    fn retained_records_keep_offsets_timestamps_and_header(
        model in batch_strategy(30),
        mask in vec(any::<bool>(), 30),
        stamp in any::<u32>(),
    ) {
        let mut batch = model.encode();
        let base_offset = u64::from(stamp) << 8;
        stamp_base_offset(&mut batch, base_offset);
        let view = BatchView::new(&batch, usize::MAX).unwrap();
        // Every produced batch is a valid stored batch, read the same.
        let stored = BatchView::stored(&batch).unwrap();
        assert_view_matches(&stored, &batch, &model, base_offset)?;

        let keep = |i: usize| mask[i % mask.len()];
        let kept: Vec<(usize, &RecordModel)> =
            model.records.iter().enumerate().filter(|(i, _)| keep(*i)).collect();
        let mut out = Vec::new();
        let retained = retain_records(&view, |r| keep(r.offset_delta as usize), &mut out);
        if kept.len() == model.records.len() {
            prop_assert_eq!(retained, Retained::All);
            prop_assert!(out.is_empty());
            return Ok(());
        }
        if kept.is_empty() {
            prop_assert_eq!(retained, Retained::None);
            prop_assert!(out.is_empty());
            return Ok(());
        }
        prop_assert_eq!(retained, Retained::Some(kept.len() as u32));
        let compacted = BatchView::stored(&out).unwrap();
        // The strict check refuses it: a producer's batch has no gaps.
        let strict = BatchView::new(&out, usize::MAX).unwrap_err();
        prop_assert!(matches!(strict, FormatError::LastOffsetDelta { .. }), "{:?}", strict);
        // The header's fields, but the count, length and CRC, are the original's.
        let same = |range: std::ops::Range<usize>| out[range.clone()] == batch[range];
        for field in [
            layout::BASE_OFFSET, layout::LEADER_EPOCH, layout::ATTRIBUTES,
            layout::LAST_OFFSET_DELTA, layout::FIRST_TIMESTAMP, layout::MAX_TIMESTAMP,
            layout::PRODUCER_ID, layout::PRODUCER_EPOCH, layout::BASE_SEQUENCE,
        ] {
            prop_assert!(same(field.clone()), "field {:?} changed", field);
        }
        prop_assert_eq!(out[layout::MAGIC], MAGIC);
        prop_assert_eq!(compacted.record_count(), kept.len() as u32);
        prop_assert_eq!(compacted.last_offset(), view.last_offset());
        prop_assert_eq!(
            BatchPrefix::parse(&out).unwrap().next_offset(),
            BatchPrefix::parse(&batch).unwrap().next_offset()
        );
        prop_assert_eq!(compacted.records().count(), kept.len());
        for (record, (index, expected)) in compacted.records().zip(&kept) {
            prop_assert_eq!(record.offset_delta, *index as u32);
            prop_assert_eq!(record.offset, base_offset + *index as u64);
            prop_assert_eq!(record.timestamp, expected.timestamp);
            prop_assert_eq!(record.key, expected.key.as_deref());
            prop_assert_eq!(record.value, expected.value.as_deref());
            let headers: Vec<Header<'_>> = record.headers().collect();
            prop_assert_eq!(headers, expected.headers());
        }
        // A consumer's check (header and CRC) accepts it and reads the same records.
        let checked = BatchView::with_checksum(&out).unwrap();
        prop_assert!(checked.records().map(|r| r.offset).eq(compacted.records().map(|r| r.offset)));
    }

    #[test]
    fn random_bytes_never_panic_as_stored_batches(
        records in vec(any::<u8>(), 0..512),
        record_count in 1_u32..8,
        spare in 0_u32..4,
        first_timestamp in any::<i64>(),
    ) {
        let mut batch = craft(&records, record_count, first_timestamp, i64::MAX);
        put_u32(&mut batch, layout::LAST_OFFSET_DELTA, record_count - 1 + spare);
        fix_crc(&mut batch);
        if let Ok(view) = BatchView::stored(&batch) {
            let mut previous = None;
            for record in view.records() {
                prop_assert!(previous.is_none_or(|p| record.offset_delta > p));
                prop_assert!(record.offset_delta <= view.last_offset_delta());
                prop_assert!(record.timestamp <= view.max_timestamp());
                previous = Some(record.offset_delta);
            }
        }
    }
}

/// Records with offset deltas `deltas`, null key and value, under a header of
/// `last_offset_delta`.
fn gappy(deltas: &[i64], last_offset_delta: u32) -> Vec<u8> {
    let records: Vec<u8> = deltas.iter().flat_map(|&d| plain_record(d)).collect();
    let mut batch = craft(&records, deltas.len() as u32, 0, 0);
    put_u32(&mut batch, layout::LAST_OFFSET_DELTA, last_offset_delta);
    fix_crc(&mut batch);
    batch
}

#[test]
fn stored_batches_may_have_gaps_but_not_disorder() {
    let batch = gappy(&[1, 4, 9], 10);
    let view = BatchView::stored(&batch).unwrap();
    assert_eq!(
        view.records().map(|r| r.offset_delta).collect::<Vec<_>>(),
        [1, 4, 9]
    );
    assert!(BatchView::with_checksum(&batch).is_ok());
    assert!(matches!(
        err(&batch),
        FormatError::LastOffsetDelta {
            last_offset_delta: 10,
            record_count: 3
        }
    ));

    // More records than offsets.
    let batch = gappy(&[0, 1, 2], 1);
    for e in [
        BatchView::stored(&batch).unwrap_err(),
        BatchView::with_checksum(&batch).unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                FormatError::RecordCountOverSpan {
                    last_offset_delta: 1,
                    record_count: 3
                }
            ),
            "{e:?}"
        );
    }
    // Deltas repeating, going back, negative, or past last_offset_delta.
    for (deltas, index, found, previous) in [
        (&[1, 1][..], 1, 1, 1),
        (&[3, 2][..], 1, 2, 3),
        (&[-1, 2][..], 0, -1, -1),
        (&[0, 11][..], 1, 11, 0),
    ] {
        let e = BatchView::stored(&gappy(deltas, 10)).unwrap_err();
        assert!(
            matches!(e, FormatError::StoredOffsetDelta { index: i, found: f, previous: p, last_offset_delta: 10 }
                if i == index && f == found && p == previous),
            "{deltas:?}: {e:?}"
        );
    }
}

#[test]
fn a_stored_max_timestamp_may_exceed_but_not_fall_below_the_records() {
    let mut batch = sample(); // timestamps 1000, 1001, 1002
    put_i64(&mut batch, layout::MAX_TIMESTAMP, 5_000);
    fix_crc(&mut batch);
    assert!(BatchView::stored(&batch).is_ok());
    assert!(matches!(err(&batch), FormatError::MaxTimestamp { .. }));
    put_i64(&mut batch, layout::MAX_TIMESTAMP, 1_001);
    fix_crc(&mut batch);
    assert!(matches!(
        BatchView::stored(&batch),
        Err(FormatError::MaxTimestamp {
            declared: 1_001,
            actual: 1_002
        })
    ));
}

/// A compacted batch as version 1 stores it, pinned byte for byte: the builder's pinned batch
/// of `builder_output_is_pinned` stamped at offset 42 with record 0 removed. A change here is a
/// format change (style.md "Formats").
#[test]
fn compacted_batch_is_pinned() {
    let mut builder = BatchBuilder::new().producer(7, 2, 100);
    let headers = [Header {
        key: "h",
        value: None,
    }];
    builder
        .push(1_000, Some(b"k"), Some(b"v"), &headers)
        .unwrap();
    builder.push(999, None, Some(b""), &[]).unwrap();
    let mut batch = builder.finish().unwrap();
    stamp_base_offset(&mut batch, 42);
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        retain_records(&view, |r| r.offset_delta == 1, &mut out),
        Retained::Some(1)
    );
    let expected: [u8; 68] = [
        0x2a, 0, 0, 0, 0, 0, 0, 0, // base_offset 42
        0x38, 0, 0, 0, // batch_len 56
        0, 0, 0, 0,    // leader_epoch
        0x01, // magic
        0x24, 0x09, 0x53, 0xd8, // crc 0xd8530924
        0, 0, // attributes
        0x01, 0, 0, 0, // last_offset_delta 1, as before
        0xe8, 0x03, 0, 0, 0, 0, 0, 0, // first_timestamp 1000
        0xe8, 0x03, 0, 0, 0, 0, 0, 0, // max_timestamp 1000, though record 0 is gone
        0x07, 0, 0, 0, 0, 0, 0, 0, // producer_id 7
        0x02, 0, // producer_epoch 2
        0x64, 0, 0, 0, // base_sequence 100
        0x01, 0, 0, 0, // record_count 1
        // Record 1 as it was: length 6, attributes 0, timestamp delta -1, offset delta 1,
        // null key, empty value, no headers.
        0x0c, 0x00, 0x01, 0x02, 0x01, 0x00, 0x00,
    ];
    assert_eq!(
        out[..],
        expected[..],
        "crc {:#010x}",
        crc32fast::hash(&out[layout::CRC_START..])
    );
    let read = BatchView::stored(&out).unwrap();
    let record = read.records().next().unwrap();
    assert_eq!(
        (record.offset, record.timestamp, record.key, record.value),
        (43, 999, None, Some(&b""[..]))
    );
    assert_eq!(read.records().count(), 1);
}

#[test]
fn restamped_producer_fields_pass_every_check() {
    let mut builder = BatchBuilder::new().producer(7, 1, 40);
    builder.push(1_000, Some(b"k"), Some(b"v"), &[]).unwrap();
    builder.push(1_001, None, Some(b"w"), &[]).unwrap();
    let mut batch = builder.finish().unwrap();
    restamp_producer(&mut batch, 9, 2, 0).unwrap();
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    assert_eq!(
        (
            view.producer_id(),
            view.producer_epoch(),
            view.base_sequence()
        ),
        (9, 2, 0)
    );
    assert_eq!(view.record_count(), 2);
    assert!(matches!(
        restamp_producer(&mut batch[..HEADER_LEN - 1], 1, 1, 1),
        Err(FormatError::TooShort { .. })
    ));
    let len = batch.len();
    assert!(matches!(
        restamp_producer(&mut batch[..len - 1], 1, 1, 1),
        Err(FormatError::LengthMismatch { .. })
    ));
}
