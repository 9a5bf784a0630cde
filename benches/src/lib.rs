//! Shared helpers for Sluice's criterion benches (`benches/benches/*.rs`).
//!
//! Benches build their input once, outside the timed loop, with these helpers, so that every
//! bench measures the same bytes: batches of ~1 KiB records with 16-byte keys and
//! pseudo-random values, no headers, one timestamp.

use bytes::BytesMut;
use sluice_storage::format::{BatchBuilder, FormatError, HEADER_LEN};

/// Create time of every bench record, ms since the epoch. One value for all records, so each
/// timestamp delta is a one-byte varint.
pub const BENCH_TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// Bytes of every record key (`key-{index:012}`).
pub const KEY_LEN: usize = 16;

/// A batch of `batch_bytes` bytes whose records encode to `record_bytes` bytes each,
/// except the last two, which share what is left (so a 16 KiB batch of 1 KiB records holds 16
/// records and a 1 MiB batch 1024). The length is exact unless a varint boundary leaves the
/// last record a byte or two short; callers use `len()` of the result, not `batch_bytes`.
///
/// Keys are `key-{index:012}`, values pseudo-random bytes (a fixed seed: every call returns the
/// same batch), no headers. `base_offset` is 0, as a producer sends it.
///
/// # Panics
/// If `record_bytes` is too small to hold a record with its key (under 64 bytes), or
/// `batch_bytes` is not at least the header plus two records.
pub fn batch_of(batch_bytes: usize, record_bytes: usize) -> Result<BytesMut, FormatError> {
    assert!(
        record_bytes >= 64,
        "record_bytes {record_bytes} is under 64"
    );
    assert!(
        batch_bytes >= HEADER_LEN + 2 * record_bytes,
        "batch_bytes {batch_bytes} cannot hold two records of {record_bytes} bytes"
    );
    let values = pseudo_random_bytes(2 * record_bytes, 0x5eed_5eed_5eed_5eed);
    let mut builder = BatchBuilder::with_capacity(batch_bytes);
    loop {
        let remaining = batch_bytes - builder.len();
        let want = if remaining >= 2 * record_bytes {
            record_bytes
        } else if remaining > record_bytes {
            // Split the rest in two so neither of the last records is tiny.
            remaining / 2
        } else {
            remaining
        };
        let key = format!("key-{:012}", builder.record_count());
        debug_assert_eq!(key.len(), KEY_LEN);
        // The encoded length grows with the value's; take the longest value that fits `want`.
        // None only when even an empty value does not fit: the batch ends a little short of
        // `batch_bytes` (a varint boundary; not at the sizes the benches use).
        let Some(value_len) = (0..=want).rev().find(|&len| {
            builder.encoded_len(
                BENCH_TIMESTAMP_MS,
                Some(key.as_bytes()),
                Some(&values[..len]),
                &[],
            ) <= want
        }) else {
            break;
        };
        builder.push(
            BENCH_TIMESTAMP_MS,
            Some(key.as_bytes()),
            Some(&values[..value_len]),
            &[],
        )?;
        if builder.len() == batch_bytes {
            break;
        }
    }
    builder.finish()
}

/// `len` bytes from a xorshift64 generator seeded with `seed` (never 0).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use sluice_storage::format::BatchView;

    #[test]
    fn batches_have_the_exact_size_and_about_one_kib_records() {
        for (batch_bytes, records) in [(16 << 10, 16), (64 << 10, 64), (1 << 20, 1024)] {
            let batch = batch_of(batch_bytes, 1024).unwrap();
            assert_eq!(batch.len(), batch_bytes);
            let view = BatchView::new(&batch, batch_bytes).unwrap();
            assert_eq!(view.record_count(), records);
            for record in view.records() {
                assert_eq!(record.key.map(<[u8]>::len), Some(KEY_LEN));
                assert!(record.value.is_some_and(|v| v.len() > 900));
            }
        }
    }
}
