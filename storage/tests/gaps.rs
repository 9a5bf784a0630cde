//! Segments with offset gaps, as compaction will leave them: recovery scans them, their
//! indexes are rebuilt from them, and reads and time searches step over the gaps. Offsets that
//! go backwards are still refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use sluice_storage::format::{BatchBuilder, stamp_base_offset};
use sluice_storage::{Durability, Error, LogConfig, Store, StoreConfig};
use std::path::Path;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 64,
        max_batch_bytes: 32 * 1024,
        durability: Durability::Never,
        ..LogConfig::default()
    }
}

/// A batch of `count` records stamped with `base_offset`, record timestamps from `time_ms`.
fn stamped(base_offset: u64, count: u32, time_ms: i64) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let value = format!("value-{}", base_offset + u64::from(i));
        builder
            .push(
                time_ms + i64::from(i),
                Some(b"k"),
                Some(value.as_bytes()),
                &[],
            )
            .unwrap();
    }
    let mut batch = builder.finish().unwrap();
    stamp_base_offset(&mut batch, base_offset);
    batch.to_vec()
}

/// `(base_offset, count, time_ms)` batches written back to back as one segment file.
fn write_segment(dir: &Path, base: u64, batches: &Batches) -> Vec<Vec<u8>> {
    let encoded: Vec<Vec<u8>> = batches
        .iter()
        .map(|&(offset, count, time)| stamped(offset, count, time))
        .collect();
    std::fs::write(dir.join(format!("{base:020}.log")), encoded.concat()).unwrap();
    encoded
}

/// `(base_offset, record count, first timestamp)` of each batch of a segment.
type Batches = [(u64, u32, i64)];

/// Makes a log directory, then replaces its files with `segments`; the last one is active.
fn prepare(root: &Path, segments: &[(u64, &Batches)]) -> Vec<Vec<u8>> {
    let store = Store::open(root, StoreConfig::default()).unwrap();
    store.open_log("p", config()).unwrap();
    store.close().unwrap();
    let dir = root.join("p");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::remove_file(path).unwrap();
    }
    let mut all = Vec::new();
    for (base, batches) in segments {
        all.extend(write_segment(&dir, *base, batches));
    }
    all
}

const SEALED: &Batches = &[(0, 3, 1_000), (10, 2, 2_000), (25, 1, 3_000)];
/// An active segment as only a crash could leave one: with gaps.
const ACTIVE: &Batches = &[(30, 2, 4_000), (40, 1, 5_000), (47, 3, 6_000)];
/// An active segment as the appender writes one: dense.
const DENSE_ACTIVE: &Batches = &[(30, 2, 4_000), (32, 1, 5_000), (33, 3, 6_000)];

#[test]
fn a_sealed_segment_with_gaps_gets_its_indexes_rebuilt_and_reads_step_over_gaps() {
    let root = tempfile::tempdir().unwrap();
    let written = prepare(root.path(), &[(0, SEALED), (30, DENSE_ACTIVE)]);
    let store = Store::open(root.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", config()).unwrap();
    assert_eq!(log.earliest_offset(), 0);
    assert_eq!(log.log_end_offset(), 36);
    assert_eq!(log.high_watermark(), 36);

    // Each batch read back byte for byte, from its own offsets and from offsets in the gap
    // before it.
    for (offset, expect) in [
        (0, 0),
        (2, 0),
        (3, 1),
        (9, 1),
        (11, 1),
        (12, 2),
        (25, 2),
        (26, 3), // the gap at the end of the sealed segment: read on in the next one
        (29, 3),
        (30, 3),
        (31, 3),
        (32, 4),
        (35, 5),
    ] {
        let read = log.read(offset, 1).unwrap();
        assert_eq!(&read.batches[..], &written[expect][..], "offset {offset}");
    }
    assert!(log.read(36, 1).unwrap().batches.is_empty());

    // The sealed segment's indexes were rebuilt from the log: one entry per batch here.
    let index = std::fs::metadata(root.path().join("p/00000000000000000000.index")).unwrap();
    assert_eq!(index.len(), 3 * 8);

    // Time search: the rebuilt indexes know only the files' modification time as append
    // time, so a search before it starts at the segment's first batch (early, never late),
    // and one after every append finds nothing.
    assert_eq!(log.offset_for_time(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_time(2_001).unwrap(), Some(0));
    let future = i64::MAX / 2;
    assert_eq!(log.offset_for_time(future).unwrap(), None);

    // Appends continue after the last offset.
    let info = log.append(&mut common::batch(9, 2, 10, 7_000)).unwrap();
    assert_eq!(info.base_offset, 36);
    store.close().unwrap();
}

#[test]
fn the_active_segment_must_be_dense_so_a_gap_there_is_cut_as_a_torn_tail() {
    // Only the appender writes the active segment, always densely; `base_offset` is outside
    // the CRC, so a gap there means a damaged header, and recovery cuts from it.
    let root = tempfile::tempdir().unwrap();
    let written = prepare(root.path(), &[(0, SEALED), (30, ACTIVE)]);
    let store = Store::open(root.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", config()).unwrap();
    assert_eq!(log.log_end_offset(), 32);
    let read = log.read(30, 1 << 20).unwrap();
    assert_eq!(&read.batches[..], &written[3][..]);
    // The sealed segment's gaps are kept.
    assert_eq!(&log.read(26, 1).unwrap().batches[..], &written[3][..]);
    assert_eq!(&log.read(5, 1).unwrap().batches[..], &written[1][..]);
    store.close().unwrap();
}

#[test]
fn offsets_that_go_backwards_are_corrupt_in_a_sealed_segment() {
    const DENSE: &Batches = &[(30, 2, 4_000), (32, 1, 5_000), (33, 3, 6_000)];

    let root = tempfile::tempdir().unwrap();
    let bad_sealed: &Batches = &[(0, 3, 1_000), (10, 2, 2_000), (5, 1, 3_000)];
    prepare(root.path(), &[(0, bad_sealed), (30, DENSE)]);
    let store = Store::open(root.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", config()).unwrap();
    match log.read(0, 1) {
        Err(Error::Corrupt { corruption, .. }) => {
            assert!(corruption.to_string().contains("backwards"), "{corruption}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    drop(log);
    drop(store);
}
