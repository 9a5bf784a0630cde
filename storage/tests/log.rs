//! The partition log against its contract: offsets, reads, rolls, durability, time search,
//! retention, and clean reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{batch, records, small_config};
use sluice_storage::config::Clock;
use sluice_storage::{Durability, Error, LogConfig, Store, StoreConfig};

fn store(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::default()).unwrap()
}

/// A store whose clock moves only when the test stores a new time (ms) in the handle.
fn manual_store(
    dir: &std::path::Path,
    start_ms: i64,
) -> (Store, std::sync::Arc<std::sync::atomic::AtomicI64>) {
    let (clock, now) = Clock::manual(start_ms);
    let config = StoreConfig {
        clock,
        ..StoreConfig::default()
    };
    (Store::open(dir, config).unwrap(), now)
}

#[test]
fn append_assigns_dense_offsets_and_reads_back_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let log = store
        .open_log("t/0", small_config(Durability::Never))
        .unwrap();
    let mut expected = Vec::new();
    for tag in 0..50u64 {
        let mut b = batch(tag, 3, 100, 1_000 + tag as i64);
        let info = log.append(&mut b).unwrap();
        assert_eq!(info.base_offset, tag * 3);
        assert_eq!(info.last_offset, tag * 3 + 2);
        expected.push(b);
    }
    assert_eq!(log.high_watermark(), 150);
    // Read everything back, batch by batch, from every offset.
    for offset in 0..150u64 {
        let read = log.read(offset, 1).unwrap();
        let tag = offset / 3;
        assert_eq!(
            &read.batches[..],
            &expected[tag as usize][..],
            "offset {offset}"
        );
    }
    // A large read returns consecutive whole batches.
    let read = log.read(0, 1 << 20).unwrap();
    let all = records(&read.batches);
    assert!(!all.is_empty());
    for (i, (offset, _)) in all.iter().enumerate() {
        assert_eq!(*offset, i as u64);
    }
    // At the high watermark: empty; past it: out of range.
    assert!(log.read(150, 1024).unwrap().batches.is_empty());
    assert!(matches!(
        log.read(151, 1024),
        Err(Error::OffsetOutOfRange {
            offset: 151,
            earliest: 0,
            latest: 150
        })
    ));
    store.close().unwrap();
}

#[test]
fn rolls_segments_and_reads_across_them_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Never);
    let mut values = Vec::new();
    {
        let store = store(dir.path());
        let log = store.open_log("t/0", config.clone()).unwrap();
        for tag in 0..200u64 {
            let mut b = batch(tag, 4, 200, 1_000);
            log.append(&mut b).unwrap();
        }
        assert!(
            log.segment_count() >= 3,
            "segments: {}",
            log.segment_count()
        );
        let mut offset = 0;
        while offset < log.high_watermark() {
            let read = log.read(offset, 8192).unwrap();
            let got = records(&read.batches);
            offset = got.last().unwrap().0 + 1;
            values.extend(got);
        }
        store.close().unwrap();
    }
    assert_eq!(values.len(), 800);
    let store = store(dir.path());
    let log = store.open_log("t/0", config).unwrap();
    assert_eq!(log.high_watermark(), 800);
    let mut again = Vec::new();
    let mut offset = 0;
    while offset < log.high_watermark() {
        let read = log.read(offset, 8192).unwrap();
        let got = records(&read.batches);
        offset = got.last().unwrap().0 + 1;
        again.extend(got);
    }
    assert_eq!(values, again);
    // Appends continue at the next offset.
    let info = log.append(&mut batch(999, 1, 10, 5_000)).unwrap();
    assert_eq!(info.base_offset, 800);
}

#[test]
fn always_durability_hides_appends_until_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let log = store
        .open_log("t/0", small_config(Durability::Always))
        .unwrap();
    log.append(&mut batch(0, 2, 10, 1)).unwrap();
    assert_eq!(log.high_watermark(), 0);
    assert_eq!(log.log_end_offset(), 2);
    assert!(log.read(0, 1024).unwrap().batches.is_empty());
    assert_eq!(log.flush().unwrap(), 2);
    assert_eq!(log.high_watermark(), 2);
    assert_eq!(records(&log.read(0, 1024).unwrap().batches).len(), 2);
    assert_eq!(log.stats().syncs, 1);
    // Nothing new written: no second sync.
    log.flush().unwrap();
    assert_eq!(log.stats().syncs, 1);
}

#[test]
fn concurrent_flushes_coalesce() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let log = store
        .open_log("t/0", small_config(Durability::Always))
        .unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let info = log.append(&mut batch(t * 1000 + i, 1, 50, 1)).unwrap();
                    let durable = log.flush().unwrap();
                    assert!(durable > info.last_offset);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.high_watermark(), 400);
    assert!(log.stats().syncs <= 400);
}

#[test]
fn offset_for_time_finds_first_batch_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let (store, now) = manual_store(dir.path(), 10_000);
    let config = LogConfig {
        index_interval_bytes: 64,
        ..small_config(Durability::Never)
    };
    let log = store.open_log("t/0", config).unwrap();
    // One batch per 10 ms of broker time, record timestamps equal to append time.
    for i in 0..100i64 {
        now.store(10_000 + i * 10, std::sync::atomic::Ordering::Relaxed);
        log.append(&mut batch(i as u64, 1, 20, 10_000 + i * 10))
            .unwrap();
    }
    assert_eq!(log.offset_for_time(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_time(10_000).unwrap(), Some(0));
    assert_eq!(log.offset_for_time(10_001).unwrap(), Some(1));
    assert_eq!(log.offset_for_time(10_500).unwrap(), Some(50));
    assert_eq!(log.offset_for_time(10_990).unwrap(), Some(99));
    assert_eq!(log.offset_for_time(10_991).unwrap(), None);
}

#[test]
fn retention_by_bytes_and_age_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (store, now) = manual_store(dir.path(), 1_000_000);
    let config = LogConfig {
        retention_bytes: Some(128 * 1024),
        retention_age: Some(std::time::Duration::from_secs(60)),
        ..small_config(Durability::Never)
    };
    let log = store.open_log("t/0", config).unwrap();
    for tag in 0..400u64 {
        log.append(&mut batch(tag, 2, 300, 1)).unwrap();
    }
    let before = log.segment_count();
    assert!(log.size_bytes() > 128 * 1024);
    let deleted = log.enforce_retention().unwrap();
    assert!(deleted > 0);
    assert_eq!(log.segment_count(), before - deleted);
    assert!(log.size_bytes() - 64 * 1024 < 128 * 1024);
    let earliest = log.earliest_offset();
    assert!(earliest > 0);
    assert!(matches!(
        log.read(0, 100),
        Err(Error::OffsetOutOfRange { offset: 0, .. })
    ));
    assert!(!log.read(earliest, 100).unwrap().batches.is_empty());
    // Age: two minutes later every sealed segment is too old; the active one stays.
    now.store(1_000_000 + 120_000, std::sync::atomic::Ordering::Relaxed);
    log.enforce_retention().unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.high_watermark(), 800);
}

#[test]
fn rejects_invalid_batches_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let log = store
        .open_log("t/0", small_config(Durability::Never))
        .unwrap();
    let mut b = batch(0, 2, 10, 1);
    let last = b.len() - 1;
    b[last] ^= 0xff;
    assert!(matches!(
        log.append(&mut b),
        Err(Error::InvalidBatch(
            sluice_storage::format::FormatError::ChecksumMismatch { .. }
        ))
    ));
    let mut big = batch(0, 200, 200, 1);
    assert!(matches!(
        log.append(&mut big),
        Err(Error::InvalidBatch(
            sluice_storage::format::FormatError::TooLarge { .. }
        ))
    ));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.append(&mut batch(1, 1, 1, 1)).unwrap().base_offset, 0);
}

#[test]
fn store_is_locked_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    assert!(matches!(
        Store::open(dir.path(), StoreConfig::default()),
        Err(Error::Locked { .. })
    ));
    for bad in ["", "../x", "/abs", "a/../b"] {
        assert!(matches!(
            store.open_log(bad, LogConfig::default()),
            Err(Error::InvalidConfig { .. })
        ));
    }
    let _log = store.open_log("t/0", LogConfig::default()).unwrap();
    assert!(matches!(
        store.open_log("t/0", LogConfig::default()),
        Err(Error::InvalidConfig { .. })
    ));
}

#[test]
fn rolls_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let (store, now) = manual_store(dir.path(), 1_000);
    let config = LogConfig {
        segment_age: std::time::Duration::from_secs(10),
        ..small_config(Durability::Never)
    };
    let log = store.open_log("t/0", config).unwrap();
    log.append(&mut batch(0, 1, 10, 1)).unwrap();
    now.store(10_999, std::sync::atomic::Ordering::Relaxed);
    log.append(&mut batch(1, 1, 10, 1)).unwrap();
    assert_eq!(log.segment_count(), 1);
    now.store(11_000, std::sync::atomic::Ordering::Relaxed);
    log.append(&mut batch(2, 1, 10, 1)).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.stats().rolled_segments, 1);
    // The new segment starts at the offset of the batch that rolled it.
    assert!(dir.path().join(format!("t/0/{:020}.log", 2)).exists());
    // Its files were cut to their lengths.
    let sealed = std::fs::metadata(dir.path().join(format!("t/0/{:020}.log", 0))).unwrap();
    assert_eq!(sealed.len(), (batch(0, 1, 10, 1).len() * 2) as u64);
}

#[test]
fn interval_durability_is_synced_by_the_flusher() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let config = small_config(Durability::Interval(std::time::Duration::from_millis(5)));
    let log = store.open_log("t/0", config).unwrap();
    log.append(&mut batch(0, 3, 10, 1)).unwrap();
    // Readable at once.
    assert_eq!(log.high_watermark(), 3);
    // The store's flusher syncs within a few intervals (bounded wait, no fixed sleep).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.stats().syncs == 0 {
        assert!(std::time::Instant::now() < deadline, "flusher never synced");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    store.close().unwrap();
}

#[test]
fn readers_run_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let config = LogConfig {
        segment_bytes: 32 * 1024,
        index_interval_bytes: 512,
        max_batch_bytes: 8 * 1024,
        ..small_config(Durability::Always)
    };
    let log = store.open_log("t/0", config).unwrap();
    const BATCHES: u64 = 600;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let log = log.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut offset = 0u64;
                let mut seen = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire)
                    || offset < log.high_watermark()
                {
                    let read = log.read(offset, 2048 + r * 1024).unwrap();
                    assert!(read.high_watermark >= offset);
                    for (o, value) in records(&read.batches) {
                        // Every record is the one written at that offset, in order.
                        assert_eq!(o, offset, "reader {r}");
                        let tag = o / 2;
                        let i = o % 2;
                        assert!(value.starts_with(format!("value-{tag}-{i}-").as_bytes()));
                        offset += 1;
                        seen += 1;
                    }
                }
                seen
            })
        })
        .collect();
    for tag in 0..BATCHES {
        log.append(&mut batch(tag, 2, 100, 1)).unwrap();
        if tag % 5 == 0 {
            log.flush().unwrap();
        }
    }
    log.flush().unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        assert_eq!(reader.join().unwrap(), BATCHES * 2);
    }
    assert!(log.segment_count() > 3);
}

#[test]
fn listener_hears_every_high_watermark_advance() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    for durability in [Durability::Never, Durability::Always] {
        let log = store
            .open_log(&format!("t/{durability:?}"), small_config(durability))
            .unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        assert!(log.on_high_watermark(Box::new(move |hw| sink.lock().unwrap().push(hw))));
        assert!(
            !log.on_high_watermark(Box::new(|_| {})),
            "one listener per log"
        );
        log.append(&mut batch(0, 2, 10, 1)).unwrap();
        log.append(&mut batch(1, 3, 10, 1)).unwrap();
        log.flush().unwrap();
        let expected = match durability {
            Durability::Always => vec![5],
            _ => vec![2, 5],
        };
        assert_eq!(*heard.lock().unwrap(), expected, "{durability:?}");
    }
}

#[test]
fn offset_for_time_before_index_entries_are_written() {
    // Entries are buffered: with two small batches none is readable yet, and the search must
    // still tell the batches apart by their timestamps.
    let dir = tempfile::tempdir().unwrap();
    let (store, now) = manual_store(dir.path(), 100);
    let log = store
        .open_log("t/0", small_config(Durability::Never))
        .unwrap();
    log.append(&mut batch(0, 3, 10, 100)).unwrap();
    now.store(200, std::sync::atomic::Ordering::Relaxed);
    log.append(&mut batch(1, 2, 10, 200)).unwrap();
    assert_eq!(log.offset_for_time(50).unwrap(), Some(0));
    assert_eq!(log.offset_for_time(150).unwrap(), Some(3));
    assert_eq!(log.offset_for_time(200).unwrap(), Some(3));
    // Nothing was appended after 200 ms (broker time), whatever the records' own clocks say.
    assert_eq!(log.offset_for_time(201).unwrap(), None);
}

#[test]
fn delete_before_removes_whole_segments_below_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let log = store
        .open_log("t/0", small_config(Durability::Never))
        .unwrap();
    for tag in 0..300u64 {
        log.append(&mut batch(tag, 2, 300, 1)).unwrap();
    }
    let bases = log.segment_bases();
    assert!(bases.len() >= 3, "{bases:?}");
    // Nothing below the first segment's end: nothing deleted.
    assert_eq!(log.delete_before(bases[1] - 1).unwrap(), 0);
    assert_eq!(log.delete_before(bases[2]).unwrap(), 2);
    assert_eq!(log.earliest_offset(), bases[2]);
    assert_eq!(log.segment_bases()[0], bases[2]);
    // Never the active segment, whatever the offset.
    log.delete_before(u64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.high_watermark(), 600);
}
