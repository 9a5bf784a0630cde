//! The replay hook: a state machine rebuilt from a log, with and without a snapshot, against a
//! model that saw every append.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::small_config;
use proptest::prelude::*;
use sluice_storage::format::{BatchBuilder, BatchView};
use sluice_storage::replay::{self, Replayed, StateMachine};
use sluice_storage::{Durability, Error, Log, Store, StoreConfig};
use std::collections::BTreeMap;

/// Key → (offset, value) of its latest record.
type Values = BTreeMap<Vec<u8>, (u64, Vec<u8>)>;

/// The latest value per key, and how many records were seen: a small compacted-topic state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Latest {
    values: Values,
    records: u64,
    restored: bool,
}

impl Latest {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.records.to_le_bytes().to_vec();
        for (key, (offset, value)) in &self.values {
            for part in [key.as_slice(), value.as_slice()] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out
    }
}

impl StateMachine for Latest {
    type Error = Error;

    fn restore(&mut self, mut state: &[u8]) -> Result<(), Error> {
        let take = |state: &mut &[u8], n: usize| -> Vec<u8> {
            let (head, rest) = state.split_at(n);
            *state = rest;
            head.to_vec()
        };
        let u32_at = |state: &mut &[u8]| u32::from_le_bytes(take(state, 4).try_into().unwrap());
        self.records = u64::from_le_bytes(take(&mut state, 8).try_into().unwrap());
        while !state.is_empty() {
            let key_len = u32_at(&mut state) as usize;
            let key = take(&mut state, key_len);
            let value_len = u32_at(&mut state) as usize;
            let value = take(&mut state, value_len);
            let offset = u64::from_le_bytes(take(&mut state, 8).try_into().unwrap());
            self.values.insert(key, (offset, value));
        }
        self.restored = true;
        Ok(())
    }

    fn apply(&mut self, batch: &BatchView<'_>) -> Result<(), Error> {
        for record in batch.records() {
            let key = record.key.unwrap_or_default().to_vec();
            let value = record.value.unwrap_or_default().to_vec();
            self.values.insert(key, (record.offset, value));
            self.records += 1;
        }
        Ok(())
    }
}

fn append(log: &Log, model: &mut Latest, key: u8, count: u32) {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let value = format!("{key}-{i}-{}", model.records);
        builder
            .push(1, Some(&[key]), Some(value.as_bytes()), &[])
            .unwrap();
    }
    let mut batch = builder.finish().unwrap();
    let info = log.append(&mut batch).unwrap();
    let view = BatchView::new(&batch, usize::MAX).unwrap();
    model.apply(&view).unwrap();
    assert_eq!(info.base_offset + u64::from(count), log.log_end_offset());
}

fn state(machine: &Latest) -> (Values, u64) {
    (machine.values.clone(), machine.records)
}

#[test]
fn replays_everything_then_from_a_snapshot_after_old_segments_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let config = sluice_storage::LogConfig {
        segment_bytes: 4096,
        max_batch_bytes: 4096,
        index_interval_bytes: 64,
        ..small_config(Durability::Always)
    };
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("state", config.clone()).unwrap();
    let mut model = Latest::default();
    for i in 0..200u32 {
        append(&log, &mut model, (i % 7) as u8, 1 + i % 4);
    }
    log.flush().unwrap();

    let mut full = Latest::default();
    let replayed = replay::replay(&log, &mut full).unwrap();
    assert_eq!(state(&full), state(&model));
    assert_eq!(replayed.snapshot, None);
    assert_eq!(replayed.next_offset, log.high_watermark());
    assert_eq!(replayed.records, model.records);

    // Snapshot at the durable end, drop every segment below it, append some more.
    let at = log.durable_offset();
    replay::write_snapshot(&log, at, &model.encode()).unwrap();
    assert!(log.delete_before(at).unwrap() > 0);
    for i in 0..30u32 {
        append(&log, &mut model, (i % 3) as u8, 2);
    }
    log.flush().unwrap();
    store.close().unwrap();

    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("state", config).unwrap();
    let mut from_snapshot = Latest::default();
    let replayed: Replayed = replay::replay(&log, &mut from_snapshot).unwrap();
    assert!(from_snapshot.restored);
    assert_eq!(replayed.snapshot, Some(at));
    assert_eq!(replayed.batches, 30);
    assert_eq!(state(&from_snapshot), state(&model));

    // A damaged snapshot is skipped; with segments before it gone, the replay says so rather
    // than rebuild a state with a hole in it.
    let snapshot = dir.path().join(format!("state/{at:020}.snapshot"));
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&snapshot, bytes).unwrap();
    let mut damaged = Latest::default();
    match replay::replay(&log, &mut damaged) {
        Err(Error::SnapshotGap {
            snapshot, earliest, ..
        }) => {
            assert_eq!(snapshot, at);
            assert_eq!(earliest, log.earliest_offset());
        }
        other => panic!("expected SnapshotGap, got {other:?}"),
    }
    assert!(!damaged.restored);
    store.close().unwrap();
}

#[test]
fn snapshots_must_cover_only_durable_retained_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store
        .open_log("s", small_config(Durability::Never))
        .unwrap();
    let mut model = Latest::default();
    append(&log, &mut model, 1, 5);
    // Readable, not yet durable: a snapshot there could outlive the data after a crash.
    assert!(matches!(
        replay::write_snapshot(&log, 5, b"x"),
        Err(Error::InvalidConfig { .. })
    ));
    log.flush().unwrap();
    replay::write_snapshot(&log, 5, &model.encode()).unwrap();
    // A newer snapshot replaces the older.
    append(&log, &mut model, 2, 1);
    log.flush().unwrap();
    replay::write_snapshot(&log, 6, &model.encode()).unwrap();
    let snapshots: Vec<_> = std::fs::read_dir(dir.path().join("s"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".snapshot").then_some(name)
        })
        .collect();
    assert_eq!(snapshots, [format!("{:020}.snapshot", 6)]);
    store.close().unwrap();
}

/// A log of 4 KiB segments with one record, a snapshot of it at offset 1, then `batches`
/// batches of 3 records, all durable.
fn snapshot_then_appends(
    batches: usize,
) -> (tempfile::TempDir, Store, std::sync::Arc<Log>, Latest) {
    let dir = tempfile::tempdir().unwrap();
    let config = sluice_storage::LogConfig {
        segment_bytes: 4096,
        max_batch_bytes: 4096,
        ..small_config(Durability::Always)
    };
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("g", config).unwrap();
    let mut model = Latest::default();
    append(&log, &mut model, 1, 1);
    log.flush().unwrap();
    replay::write_snapshot(&log, 1, &model.encode()).unwrap();
    for _ in 0..batches {
        append(&log, &mut model, 2, 3);
    }
    log.flush().unwrap();
    (dir, store, log, model)
}

#[test]
fn a_snapshot_older_than_the_earliest_offset_is_an_error_naming_both() {
    let (_dir, store, log, _model) = snapshot_then_appends(100);
    // Segments past the snapshot dropped: records between them are gone.
    assert!(log.delete_before(log.high_watermark()).unwrap() > 0);
    let mut machine = Latest::default();
    match replay::replay(&log, &mut machine) {
        Err(Error::SnapshotGap {
            snapshot, earliest, ..
        }) => {
            assert_eq!(snapshot, 1);
            assert_eq!(earliest, log.earliest_offset());
        }
        other => panic!("expected SnapshotGap, got {other:?}"),
    }
    store.close().unwrap();
}

#[test]
fn a_tail_replay_restores_a_stale_snapshot_and_reads_only_from_the_floor() {
    let (_dir, store, log, mut model) = snapshot_then_appends(400);
    assert!(log.delete_before(log.high_watermark() / 2).unwrap() > 0);
    let earliest = log.earliest_offset();
    let bases = log.segment_bases();
    let floor = bases[bases.len() - 2];
    assert!(floor > earliest);

    // The stale snapshot is restored, and only batches from the floor are applied.
    let mut machine = Latest::default();
    let replayed = replay::replay_tail(&log, &mut machine, floor).unwrap();
    assert!(machine.restored);
    assert_eq!(replayed.snapshot, Some(1));
    assert_eq!(replayed.next_offset, log.high_watermark());
    let records_from_floor = log.high_watermark() - floor;
    assert_eq!(machine.records, 1 + records_from_floor);
    assert_eq!(replayed.records, records_from_floor);

    // Without any snapshot it starts at the floor too.
    for entry in std::fs::read_dir(log.dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "snapshot") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let mut machine = Latest::default();
    let replayed = replay::replay_tail(&log, &mut machine, floor).unwrap();
    assert!(!machine.restored);
    assert_eq!(replayed.snapshot, None);
    assert_eq!(machine.records, records_from_floor);

    // A fresh snapshot above the earliest offset is used as replay uses it.
    let end = log.high_watermark();
    replay::write_snapshot(&log, end, &model.encode()).unwrap();
    append(&log, &mut model, 3, 2);
    log.flush().unwrap();
    let mut machine = Latest::default();
    let replayed = replay::replay_tail(&log, &mut machine, floor).unwrap();
    assert_eq!(replayed.snapshot, Some(end));
    assert_eq!(replayed.records, 2);
    assert_eq!(state(&machine), state(&model));
    store.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of appends, with a snapshot taken at any durable point, replays to the
    /// model's state.
    #[test]
    fn replay_with_or_without_a_snapshot_matches_the_model(
        batches in prop::collection::vec((0u8..5, 1u32..6), 1..60),
        snapshot_after in prop::option::of(0usize..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let log = store.open_log("m", small_config(Durability::Always)).unwrap();
        let mut model = Latest::default();
        for (i, (key, count)) in batches.iter().enumerate() {
            append(&log, &mut model, *key, *count);
            if snapshot_after == Some(i) {
                log.flush().unwrap();
                replay::write_snapshot(&log, log.durable_offset(), &model.encode()).unwrap();
            }
        }
        log.flush().unwrap();
        let mut replayed = Latest::default();
        let outcome = replay::replay(&log, &mut replayed).unwrap();
        prop_assert_eq!(state(&replayed), state(&model));
        prop_assert_eq!(outcome.next_offset, log.high_watermark());
        prop_assert_eq!(outcome.snapshot.is_some(), snapshot_after.is_some_and(|i| i < batches.len()));
        store.close().unwrap();
    }
}
