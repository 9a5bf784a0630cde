//! Crash consistency: appends, a simulated crash that cuts or damages the unsynced tail, and
//! a reopen. The durable prefix must survive byte for byte, nothing after a torn batch may be
//! served, and offsets must stay dense (redb tests/crash_consistency.rs is the model).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::BytesMut;
use common::{batch, small_config};
use proptest::prelude::*;
use sluice_storage::{Durability, Error, LogConfig, Store, StoreConfig};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// How the crash damages the bytes written after the last sync.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The file ends at the cut (the OS lost the rest).
    Truncate,
    /// The bytes from the cut on read as zeros (pages never written back).
    Zero,
    /// One byte at the cut is flipped and the rest is kept (a torn sector).
    Flip,
}

fn active_segment(dir: &Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

fn damage(path: &Path, cut: u64, written: u64, how: Damage) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    use std::os::unix::fs::FileExt;
    match how {
        Damage::Truncate => file.set_len(cut).unwrap(),
        Damage::Zero => {
            let zeros = vec![0u8; (written - cut) as usize];
            file.write_all_at(&zeros, cut).unwrap();
        }
        Damage::Flip => {
            if cut < written {
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, cut).unwrap();
                file.write_all_at(&[byte[0] ^ 0x5a], cut).unwrap();
            }
        }
    }
}

/// Appends `sizes` (records per batch), syncing after batch `synced_upto` (exclusive count),
/// crashes, damages the last segment's unsynced tail at `cut_frac`, reopens and checks.
fn crash_and_recover(
    sizes: &[u32],
    synced: usize,
    cut_frac: f64,
    how: Damage,
    config: LogConfig,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut written: Vec<(u64, BytesMut)> = Vec::new();
    let (durable_offset, segment_path, segment_base_position) = {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let log = store.open_log("p", config.clone()).unwrap();
        let mut durable = 0;
        for (i, &count) in sizes.iter().enumerate() {
            let mut b = batch(i as u64, count, 40 + (i % 7) * 30, 1_000 + i as i64);
            let info = log.append(&mut b).unwrap();
            written.push((info.base_offset, b));
            if i + 1 == synced {
                durable = log.flush().unwrap();
            }
        }
        let path = active_segment(&dir.path().join("p"));
        // The active segment's base offset is in its name; its bytes start at position 0.
        let base: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        // Crash: no close, no clean marker. (Dropping the store unlocks the directory.)
        drop(log);
        drop(store);
        (durable, path, base)
    };
    // Positions of the batches in the active segment.
    let mut position = 0u64;
    let mut in_active = Vec::new();
    for (base, bytes) in &written {
        if *base >= segment_base_position {
            in_active.push((position, *base, bytes.len() as u64));
            position += bytes.len() as u64;
        }
    }
    let written_len = position;
    let durable_len: u64 = in_active
        .iter()
        .filter(|(_, base, _)| *base < durable_offset)
        .map(|(_, _, len)| len)
        .sum();
    let mut cut = durable_len + ((written_len - durable_len) as f64 * cut_frac) as u64;
    if let Damage::Flip = how {
        // leader_epoch (bytes 12..16 of a batch) sits outside the CRC by design (the broker
        // stamps it in place, as Kafka's partitionLeaderEpoch) and is not checked until
        // replication gives it meaning: move a flip there to the magic byte after it.
        if let Some((pos, _, _)) = in_active
            .iter()
            .find(|(pos, _, len)| (*pos..pos + len).contains(&cut))
            && (pos + 12..pos + 16).contains(&cut)
        {
            cut = pos + 16;
        }
    }
    damage(&segment_path, cut, written_len, how);
    if let Damage::Zero = how {
        // Zeroing bytes that were zero changes nothing: the damage starts at the first
        // byte that was not.
        let active_bytes: Vec<u8> = written
            .iter()
            .filter(|(base, _)| *base >= segment_base_position)
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        cut = (cut..written_len)
            .find(|&at| active_bytes[at as usize] != 0)
            .unwrap_or(written_len);
    }

    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", config).unwrap();
    let recovered = log.high_watermark();
    // Everything durable survives.
    prop_assert!(
        recovered >= durable_offset,
        "recovered {recovered} < durable {durable_offset}"
    );
    // Nothing past the damage is served: the recovered end is the end of a whole batch that
    // lies entirely before the cut (or before the flipped byte).
    let intact_end = in_active
        .iter()
        .filter(|(pos, _, len)| pos + len <= cut)
        .map(|(_, base, _)| *base)
        .max();
    let expected_end = match intact_end {
        Some(last_base) => {
            let (_, b) = written.iter().find(|(base, _)| *base == last_base).unwrap();
            let view = sluice_storage::format::BatchView::new(b, usize::MAX).unwrap();
            view.last_offset() + 1
        }
        None => segment_base_position,
    };
    let expected_end = match how {
        // Damage past the written bytes changes nothing.
        _ if cut >= written_len => written
            .iter()
            .map(|(base, b)| {
                base + u64::from(
                    sluice_storage::format::BatchView::new(b, usize::MAX)
                        .unwrap()
                        .record_count(),
                )
            })
            .max()
            .unwrap_or(0),
        _ => expected_end,
    };
    prop_assert_eq!(recovered, expected_end);
    // Byte for byte, batch by batch, offsets dense.
    let mut offset = 0;
    for (base, bytes) in &written {
        if *base >= recovered {
            break;
        }
        prop_assert_eq!(*base, offset);
        let read = log.read(*base, 1).unwrap();
        prop_assert_eq!(&read.batches[..], &bytes[..]);
        let view = sluice_storage::format::BatchView::new(bytes, usize::MAX).unwrap();
        offset = view.last_offset() + 1;
    }
    prop_assert_eq!(offset, recovered);
    // The log takes appends again, right after the recovered end.
    let info = log.append(&mut batch(10_000, 2, 10, 9)).unwrap();
    prop_assert_eq!(info.base_offset, recovered);
    log.flush().unwrap();
    let read = log.read(recovered, 1 << 20).unwrap();
    prop_assert_eq!(common::records(&read.batches).len(), 2);
    // And a second crash-free reopen agrees.
    drop(log);
    store.close().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", LogConfig::default()).unwrap();
    prop_assert_eq!(log.high_watermark(), recovered + 2);
    Ok(())
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::Truncate),
        Just(Damage::Zero),
        Just(Damage::Flip)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn crash_keeps_durable_prefix_one_segment(
        sizes in proptest::collection::vec(1u32..6, 1..40),
        synced_frac in 0.0f64..1.0,
        cut_frac in 0.0f64..1.0,
        how in damage_strategy(),
    ) {
        let synced = (sizes.len() as f64 * synced_frac) as usize;
        let config = LogConfig { index_interval_bytes: 256, ..small_config(Durability::Always) };
        crash_and_recover(&sizes, synced, cut_frac, how, config)?;
    }

    #[test]
    fn crash_keeps_durable_prefix_many_segments(
        sizes in proptest::collection::vec(1u32..20, 20..120),
        synced_frac in 0.0f64..1.0,
        cut_frac in 0.0f64..1.0,
        how in damage_strategy(),
    ) {
        let synced = (sizes.len() as f64 * synced_frac) as usize;
        let config = LogConfig {
            segment_bytes: 16 * 1024,
            index_interval_bytes: 512,
            max_batch_bytes: 16 * 1024,
            ..small_config(Durability::Always)
        };
        crash_and_recover(&sizes, synced, cut_frac, how, config)?;
    }
}

/// Cuts the last segment at every byte of its last batch: each reopen serves exactly the
/// batches before it.
#[test]
fn cut_at_every_byte_of_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Never);
    let (first, last) = {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let log = store.open_log("p", config.clone()).unwrap();
        let mut first = batch(0, 3, 50, 1);
        log.append(&mut first).unwrap();
        let mut last = batch(1, 2, 30, 2);
        log.append(&mut last).unwrap();
        store.close().unwrap();
        (first, last)
    };
    let path = active_segment(&dir.path().join("p"));
    let pristine = std::fs::read(&path).unwrap();
    let start = first.len();
    for cut in start..start + last.len() {
        std::fs::write(&path, &pristine[..cut]).unwrap();
        // The clean marker would skip the scan; a crash leaves none.
        let _ = std::fs::remove_file(dir.path().join("p/.clean-shutdown"));
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let log = store.open_log("p", config.clone()).unwrap();
        assert_eq!(log.high_watermark(), 3, "cut at {cut}");
        assert_eq!(&log.read(0, 1 << 20).unwrap().batches[..], &first[..]);
        drop(log);
        drop(store);
    }
}

fn three_sealed_segments(dir: &Path) -> (LogConfig, Vec<BytesMut>) {
    let config = LogConfig {
        segment_bytes: 8 * 1024,
        index_interval_bytes: 256,
        max_batch_bytes: 8 * 1024,
        ..small_config(Durability::Never)
    };
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let log = store.open_log("p", config.clone()).unwrap();
    let mut batches = Vec::new();
    while log.segment_count() < 4 {
        let mut b = batch(batches.len() as u64, 2, 100, 1);
        log.append(&mut b).unwrap();
        batches.push(b);
    }
    store.close().unwrap();
    (config, batches)
}

fn read_all(log: &sluice_storage::Log) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut offset = log.earliest_offset();
    while offset < log.high_watermark() {
        let read = log.read(offset, 4096)?;
        let records = common::records(&read.batches);
        offset = records.last().map_or(offset, |r| r.0 + 1);
        out.extend_from_slice(&read.batches);
    }
    Ok(out)
}

#[test]
fn missing_and_corrupt_indexes_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (config, batches) = three_sealed_segments(dir.path());
    let expected: Vec<u8> = batches.iter().flat_map(|b| b.iter().copied()).collect();
    let part = dir.path().join("p");
    let mut sealed: Vec<PathBuf> = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    sealed.sort();
    sealed.pop(); // keep the active one intact
    // First sealed: both indexes gone. Second: garbage. Third: index cut mid-entry.
    std::fs::remove_file(sealed[0].with_extension("index")).unwrap();
    std::fs::remove_file(sealed[0].with_extension("timeindex")).unwrap();
    std::fs::write(sealed[1].with_extension("index"), [0xab; 40]).unwrap();
    let third = sealed[2].with_extension("index");
    let len = std::fs::metadata(&third).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&third)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", config).unwrap();
    assert_eq!(read_all(&log).unwrap(), expected);
    assert!(sealed[0].with_extension("index").exists());
    assert_eq!(
        std::fs::metadata(&third).unwrap().len() % 8,
        0,
        "rebuilt index holds whole entries"
    );
    // Time search still works over rebuilt time indexes.
    assert_eq!(log.offset_for_time(0).unwrap(), Some(0));
}

#[test]
fn garbage_in_a_sealed_segment_is_a_typed_error_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let (config, batches) = three_sealed_segments(dir.path());
    let part = dir.path().join("p");
    let first = part.join(format!("{:020}.log", 0));
    // Overwrite the length field of the second batch with garbage, and drop the index so the
    // rebuild has to walk across it.
    let position = batches[0].len() as u64;
    {
        use std::os::unix::fs::FileExt;
        let file = OpenOptions::new().write(true).open(&first).unwrap();
        file.write_all_at(&[0xff, 0xff, 0xff, 0x7f], position + 8)
            .unwrap();
    }
    std::fs::remove_file(first.with_extension("index")).unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", config).unwrap();
    match log.read(0, 1) {
        Err(Error::Corrupt {
            path, position: at, ..
        }) => {
            assert_eq!(path, first);
            assert_eq!(at, position);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Other segments still serve.
    let second_base = {
        let mut names: Vec<String> = std::fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names[1].trim_end_matches(".log").parse::<u64>().unwrap()
    };
    assert!(!log.read(second_base, 1).unwrap().batches.is_empty());
}

#[test]
fn corrupt_active_index_is_rebuilt_on_unclean_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 128,
        ..small_config(Durability::Never)
    };
    let mut expected = Vec::new();
    {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let log = store.open_log("p", config.clone()).unwrap();
        for i in 0..40 {
            let mut b = batch(i, 2, 60, 1);
            log.append(&mut b).unwrap();
            expected.extend_from_slice(&b);
        }
        drop(log);
        drop(store);
    }
    let active = active_segment(&dir.path().join("p"));
    // Entries that point into the middle of batches.
    let mut garbage = Vec::new();
    for i in 0..10u32 {
        garbage.extend_from_slice(&(i * 3).to_le_bytes());
        garbage.extend_from_slice(&(i * 97).to_le_bytes());
    }
    std::fs::write(active.with_extension("index"), &garbage).unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("p", config).unwrap();
    assert_eq!(log.high_watermark(), 80);
    assert_eq!(read_all(&log).unwrap(), expected);
    for offset in 0..80 {
        let read = log.read(offset, 1).unwrap();
        let first = common::records(&read.batches)[0].0;
        assert_eq!(first, offset - offset % 2);
    }
}
