//! [`retain_records`]: a stored batch with some of its records removed, as compaction writes
//! it (design.md §3; the format module doc, "Compacted batches").
//!
//! ```text
//! compacted = header' record{kept}        header' = header with record_count = kept,
//!                                                    batch_len and crc recomputed
//! ```
//!
//! Every other header field is kept as it was — `base_offset`, `leader_epoch`, `magic`,
//! `attributes`, `last_offset_delta`, `first_timestamp`, `max_timestamp` and the producer
//! fields — and each kept record is copied byte for byte, so its `offset_delta` and
//! `timestamp_delta`, and with them its offset and timestamp, do not change.

use super::{BatchView, HEADER_LEN, Record, layout};

/// What [`retain_records`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// Every record was kept: the batch stands as it is (nothing was written; copy its bytes).
    All,
    /// This many records were kept, fewer than the batch held: the rewritten batch was
    /// appended to the output.
    Some(u32),
    /// No record was kept: the batch goes (nothing was written).
    None,
}

/// Appends to `out` the batch `view` holding only the records `keep` selects, in order, and
/// says what it did. Nothing is written when every record or none is kept (see [`Retained`]):
/// the caller copies the original or drops it. `keep` sees every record once, in offset
/// order.
///
/// The result is a valid stored batch ([`BatchView::stored`]); it passes [`BatchView::new`]
/// only if it is the whole batch, because a producer's batch never has gaps.
pub fn retain_records<'a>(
    view: &BatchView<'a>,
    mut keep: impl FnMut(&Record<'a>) -> bool,
    out: &mut Vec<u8>,
) -> Retained {
    let batch = view.as_bytes();
    let start = out.len();
    let mut kept: u32 = 0;
    // Records are copied only once one is dropped: until then the kept ones are a prefix of
    // the batch, copied in one go.
    let mut rewriting = false;
    for record in view.records() {
        if keep(&record) {
            kept += 1;
            if rewriting {
                out.extend_from_slice(record.as_bytes());
            }
        } else if !rewriting {
            rewriting = true;
            out.extend_from_slice(&batch[..record.position()]);
        }
    }
    if !rewriting {
        return Retained::All;
    }
    if kept == 0 {
        out.truncate(start);
        return Retained::None;
    }
    let rewritten = &mut out[start..];
    debug_assert!(rewritten.len() >= HEADER_LEN && kept < view.record_count());
    // Fits: the rewritten batch is shorter than the original, whose batch_len is a u32.
    let batch_len = (rewritten.len() - layout::LOG_OVERHEAD) as u32;
    rewritten[layout::BATCH_LEN].copy_from_slice(&batch_len.to_le_bytes());
    rewritten[layout::RECORD_COUNT].copy_from_slice(&kept.to_le_bytes());
    let crc = crc32fast::hash(&rewritten[layout::CRC_START..]);
    rewritten[layout::CRC].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(
        BatchView::stored(rewritten).is_ok(),
        "a rewritten batch is a valid stored batch"
    );
    Retained::Some(kept)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::format::{BatchBuilder, FormatError, stamp_base_offset};

    fn batch(count: u32) -> Vec<u8> {
        let mut builder = BatchBuilder::new().producer(7, 2, 100);
        for i in 0..count {
            let key = format!("k{i}");
            builder
                .push(
                    1_000 + i64::from(i % 3) * 10,
                    Some(key.as_bytes()),
                    None,
                    &[],
                )
                .unwrap();
        }
        let mut batch = builder.finish().unwrap().to_vec();
        stamp_base_offset(&mut batch, 40);
        batch
    }

    #[test]
    fn keeps_the_header_and_the_kept_records_bytes() {
        let original = batch(5);
        let view = BatchView::new(&original, usize::MAX).unwrap();
        let mut out = vec![0xaa]; // appended after what is there
        let kept = retain_records(&view, |r| r.offset_delta % 2 == 1, &mut out);
        assert_eq!(kept, Retained::Some(2));
        assert_eq!(out[0], 0xaa);
        let rewritten = BatchView::stored(&out[1..]).unwrap();
        assert_eq!(rewritten.base_offset(), 40);
        assert_eq!(rewritten.last_offset_delta(), 4);
        assert_eq!(rewritten.last_offset(), 44);
        assert_eq!(rewritten.record_count(), 2);
        assert_eq!(rewritten.first_timestamp(), view.first_timestamp());
        assert_eq!(rewritten.max_timestamp(), view.max_timestamp());
        assert_eq!(
            (
                rewritten.producer_id(),
                rewritten.producer_epoch(),
                rewritten.base_sequence()
            ),
            (7, 2, 100)
        );
        let records: Vec<(u64, u32, i64, Option<&[u8]>)> = rewritten
            .records()
            .map(|r| (r.offset, r.offset_delta, r.timestamp, r.key))
            .collect();
        assert_eq!(
            records,
            [
                (41, 1, 1_010, Some(&b"k1"[..])),
                (43, 3, 1_000, Some(&b"k3"[..]))
            ]
        );
        // A producer's batch has no gaps: the strict check refuses it.
        assert!(matches!(
            BatchView::new(&out[1..], usize::MAX),
            Err(FormatError::LastOffsetDelta { .. })
        ));
    }

    #[test]
    fn all_or_nothing_writes_nothing() {
        let original = batch(3);
        let view = BatchView::new(&original, usize::MAX).unwrap();
        let mut out = Vec::new();
        assert_eq!(retain_records(&view, |_| true, &mut out), Retained::All);
        assert!(out.is_empty());
        assert_eq!(retain_records(&view, |_| false, &mut out), Retained::None);
        assert!(out.is_empty());
        // Keeping only a prefix still rewrites (the count shrinks).
        let kept = retain_records(&view, |r| r.offset_delta == 0, &mut out);
        assert_eq!(kept, Retained::Some(1));
        let rewritten = BatchView::stored(&out).unwrap();
        assert_eq!(rewritten.records().count(), 1);
        assert_eq!(rewritten.last_offset_delta(), 2);
    }

    #[test]
    fn a_compacted_batch_compacts_again() {
        let original = batch(6);
        let view = BatchView::new(&original, usize::MAX).unwrap();
        let mut once = Vec::new();
        retain_records(&view, |r| r.offset_delta != 2, &mut once);
        let view = BatchView::stored(&once).unwrap();
        let mut twice = Vec::new();
        assert_eq!(
            retain_records(&view, |r| r.offset_delta >= 4, &mut twice),
            Retained::Some(2)
        );
        let deltas: Vec<u32> = BatchView::stored(&twice)
            .unwrap()
            .records()
            .map(|r| r.offset_delta)
            .collect();
        assert_eq!(deltas, [4, 5]);
    }
}
