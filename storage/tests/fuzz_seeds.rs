//! Replays the checked-in fuzz seeds (`storage/fuzz/seeds/batch/`) through the fuzz target's own
//! checks (`storage/fuzz/check.rs`), so that plain `cargo test` on stable catches a regression
//! that the fuzzer once found or a seed exercises, without cargo-fuzz or nightly.
//!
//! Seeds named `valid-*` must pass `BatchView::new`, `invalid-*` must fail it, `compacted-*`
//! (batches as compaction leaves them in a log) must pass `BatchView::stored` and fail
//! `BatchView::new`; any other name (a crasher the fuzzer found, say) only has to pass the checks. The generated seeds come from
//! [`regenerate_seeds`]: `cargo test -p sluice-storage --test fuzz_seeds -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/check.rs"]
mod check;

use sluice_storage::format::{
    BatchBuilder, BatchView, HEADER_LEN, Header, MAGIC, Retained, layout, retain_records,
    stamp_base_offset, varint,
};
use std::path::{Path, PathBuf};

/// Seeds stay small so the folder stays cheap to check in and fast to replay.
const MAX_SEED_BYTES: usize = 8 * 1024;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/batch")
}

#[test]
fn seeds_pass_the_fuzz_checks() {
    let dir = seeds_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());

    let mut failed = Vec::new();
    let (mut valid, mut invalid, mut compacted) = (0, 0, 0);
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(path).unwrap();
        assert!(
            data.len() <= MAX_SEED_BYTES,
            "{name}: {} bytes, seeds stay under {MAX_SEED_BYTES}",
            data.len()
        );
        let checked = std::panic::catch_unwind(|| check::check_batch(&data));
        if checked.is_err() {
            failed.push(name.clone());
        }
        let result = BatchView::new(&data, usize::MAX);
        if name.starts_with("valid-") {
            assert!(result.is_ok(), "{name} should be valid: {result:?}");
            valid += 1;
        } else if name.starts_with("invalid-") {
            assert!(result.is_err(), "{name} should be invalid");
            invalid += 1;
        } else if name.starts_with("compacted-") {
            assert!(result.is_err(), "{name} should fail the producer's check");
            let stored = BatchView::stored(&data);
            assert!(
                stored.is_ok(),
                "{name} should be a valid stored batch: {stored:?}"
            );
            compacted += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "seeds failing the fuzz checks: {failed:?}"
    );
    assert!(
        valid > 0 && invalid > 0 && compacted > 0,
        "{valid} valid, {invalid} invalid, {compacted} compacted seeds"
    );
}

/// Writes the generated seeds (valid batches of various shapes, and a few invalid ones) into
/// `storage/fuzz/seeds/batch/`. Files of other names there (crashers) are left alone.
#[test]
#[ignore = "writes into the source tree; run by hand after a format change"]
fn regenerate_seeds() {
    let dir = seeds_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        assert!(bytes.len() <= MAX_SEED_BYTES, "{name}");
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        ("valid-one-null-record", build(&[(0, None, None, &[])])),
        (
            "valid-one-empty-record",
            build(&[(1_700_000_000_000, Some(b""), Some(b""), &[])]),
        ),
        ("valid-keys-values-headers", sample()),
        (
            "valid-negative-deltas",
            build(&[
                (1_000, Some(b"a"), Some(b"1"), &[]),
                (10, Some(b"b"), Some(b"2"), &[]),
                (2_000, None, Some(b"3"), &[]),
                (-5, Some(b"d"), None, &[]),
            ]),
        ),
        (
            "valid-extreme-timestamps",
            build(&[
                (i64::MIN, None, None, &[]),
                (-1, None, None, &[]),
                (i64::MIN + 5, None, None, &[]),
            ]),
        ),
        ("valid-many-headers", {
            let headers = [
                Header {
                    key: "sluice.deliver_at",
                    value: Some(&1_700_000_000_000_i64.to_le_bytes()[..]),
                },
                Header {
                    key: "",
                    value: None,
                },
                Header {
                    key: "ключ",
                    value: Some(b""),
                },
                Header {
                    key: "trace\0id",
                    value: Some(b"4bf92f3577b34da6"),
                },
            ];
            build(&[(5, Some(b"job-1"), Some(b"payload"), &headers)])
        }),
        ("valid-twenty-records", {
            let mut builder = BatchBuilder::new();
            for i in 0..20_u8 {
                let key = [b'k', i];
                let key = (i % 3 != 0).then_some(&key[..]);
                builder
                    .push(100 + i64::from(i % 7), key, Some(&[i; 3]), &[])
                    .unwrap();
            }
            builder.finish().unwrap().to_vec()
        }),
        ("valid-long-key-and-value", {
            let key = [b'K'; 200];
            let value = [b'V'; 300];
            let headers = [Header {
                key: "h",
                value: Some(&value[..150]),
            }];
            build(&[(1, Some(&key), Some(&value), &headers)])
        }),
        ("valid-idempotent", {
            let mut builder = BatchBuilder::new().producer(42, 3, 1_000);
            builder.push(7, Some(b"k"), Some(b"v1"), &[]).unwrap();
            builder.push(8, Some(b"k"), Some(b"v2"), &[]).unwrap();
            builder.finish().unwrap().to_vec()
        }),
        ("valid-control", {
            let mut builder = BatchBuilder::new().control();
            builder
                .push(9, Some(&[0, 0, 0, 1]), Some(&[0, 0]), &[])
                .unwrap();
            builder.finish().unwrap().to_vec()
        }),
        ("valid-stamped", {
            let mut batch = sample();
            stamp_base_offset(&mut batch, 1 << 40);
            batch[layout::LEADER_EPOCH].copy_from_slice(&7_u32.to_le_bytes());
            batch
        }),
        ("valid-last-offset-is-u64-max", {
            let mut batch = sample();
            stamp_base_offset(&mut batch, u64::MAX - 2);
            batch
        }),
        // A key length 0 written in two bytes: accepted, and re-encoded in one.
        (
            "valid-non-minimal-varint",
            craft(
                &record(&[&[0], &vi(0), &vi(0), &[0x80, 0x00], &vi(-1), &vi(0)]),
                1,
                3,
                3,
            ),
        ),
        // The first record's timestamp delta is not 0: its timestamp is 100 + 5.
        (
            "valid-first-delta-not-zero",
            craft(
                &record(&[&[0], &vi(5), &vi(0), &vi(-1), &vi(-1), &vi(0)]),
                1,
                100,
                105,
            ),
        ),
    ];

    // As compaction leaves batches: records removed, offset deltas with gaps.
    let twenty = seeds
        .iter()
        .find(|(name, _)| *name == "valid-twenty-records")
        .map(|(_, bytes)| bytes.clone())
        .unwrap();
    seeds.push((
        "compacted-every-third-kept",
        compact(&twenty, |delta| delta % 3 == 1),
    ));
    seeds.push((
        "compacted-last-record-gone",
        compact(&sample(), |delta| delta < 2),
    ));
    seeds.push((
        "compacted-only-the-last-kept",
        compact(&sample(), |delta| delta == 2),
    ));

    let mut flipped = sample();
    flipped[HEADER_LEN + 2] ^= 0x04;
    seeds.push(("invalid-bit-flip", flipped));
    let mut truncated = sample();
    truncated.truncate(truncated.len() - 3);
    seeds.push(("invalid-truncated", truncated));
    let mut compressed = sample();
    compressed[layout::ATTRIBUTES].copy_from_slice(&1_u16.to_le_bytes());
    fix_crc(&mut compressed);
    seeds.push(("invalid-compressed", compressed));
    let mut miscounted = sample();
    miscounted[layout::RECORD_COUNT].copy_from_slice(&4_u32.to_le_bytes());
    miscounted[layout::LAST_OFFSET_DELTA].copy_from_slice(&3_u32.to_le_bytes());
    fix_crc(&mut miscounted);
    seeds.push(("invalid-record-count", miscounted));
    let bad_key = record(&[
        &[0],
        &vi(0),
        &vi(0),
        &vi(-1),
        &vi(-1),
        &vi(1),
        &vi(1),
        &[0xff],
        &vi(-1),
    ]);
    seeds.push(("invalid-header-key-not-utf8", craft(&bad_key, 1, 0, 0)));
    seeds.push(("invalid-zeros", vec![0; sample().len()]));
    seeds
}

/// `batch` with only the records whose offset delta `keep` selects (at least one, not all).
fn compact(batch: &[u8], keep: impl Fn(u32) -> bool) -> Vec<u8> {
    let view = BatchView::new(batch, usize::MAX).unwrap();
    let mut out = Vec::new();
    let retained = retain_records(&view, |r| keep(r.offset_delta), &mut out);
    assert!(matches!(retained, Retained::Some(_)), "{retained:?}");
    out
}

type Push<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>, &'a [Header<'a>]);

fn build(records: &[Push<'_>]) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for &(timestamp, key, value, headers) in records {
        builder.push(timestamp, key, value, headers).unwrap();
    }
    builder.finish().unwrap().to_vec()
}

/// Three records with keys, values and a header each.
fn sample() -> Vec<u8> {
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
    builder.finish().unwrap().to_vec()
}

/// Recomputes the CRC after an edit in the CRC'd range.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32fast::hash(&batch[layout::CRC_START..]);
    batch[layout::CRC].copy_from_slice(&crc.to_le_bytes());
}

fn vi(value: i64) -> Vec<u8> {
    let mut out = Vec::new();
    varint::encode(value, &mut out);
    out
}

/// A record from raw fields, prefixed with its length.
fn record(fields: &[&[u8]]) -> Vec<u8> {
    let body = fields.concat();
    let mut out = vi(body.len() as i64);
    out.extend_from_slice(&body);
    out
}

/// A batch around raw `records` whose header passes the batch-level checks.
fn craft(records: &[u8], record_count: u32, first_timestamp: i64, max_timestamp: i64) -> Vec<u8> {
    let mut batch = vec![0; HEADER_LEN];
    batch.extend_from_slice(records);
    let batch_len = u32::try_from(batch.len() - layout::LOG_OVERHEAD).unwrap();
    batch[layout::BATCH_LEN].copy_from_slice(&batch_len.to_le_bytes());
    batch[layout::MAGIC] = MAGIC;
    batch[layout::LAST_OFFSET_DELTA].copy_from_slice(&(record_count - 1).to_le_bytes());
    batch[layout::FIRST_TIMESTAMP].copy_from_slice(&first_timestamp.to_le_bytes());
    batch[layout::MAX_TIMESTAMP].copy_from_slice(&max_timestamp.to_le_bytes());
    batch[layout::PRODUCER_ID].copy_from_slice(&(-1_i64).to_le_bytes());
    batch[layout::PRODUCER_EPOCH].copy_from_slice(&(-1_i16).to_le_bytes());
    batch[layout::BASE_SEQUENCE].copy_from_slice(&(-1_i32).to_le_bytes());
    batch[layout::RECORD_COUNT].copy_from_slice(&record_count.to_le_bytes());
    fix_crc(&mut batch);
    batch
}
