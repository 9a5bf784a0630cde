//! The write path's contracts: the pre-append check is atomic with offset assignment, the
//! durable offset is its own, and a failed write or fsync (injected with `Faults`) is never
//! acknowledged, poisons the log, and is recovered from by reopening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{batch, small_config};
use sluice_storage::{
    Durability, Error, FaultOp, Faults, LogConfig, Store, StoreConfig, format::BatchView,
};
use std::sync::{Arc, Mutex};

fn store_with(dir: &std::path::Path, faults: &Faults) -> Store {
    Store::open(
        dir,
        StoreConfig {
            faults: faults.clone(),
            ..StoreConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn the_check_sees_the_offset_the_batch_gets_and_can_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store
        .open_log("p", small_config(Durability::Never))
        .unwrap();
    log.append(&mut batch(0, 3, 10, 1)).unwrap();
    let (info, seen) = log
        .append_with(&mut batch(1, 2, 10, 1), |view: &BatchView<'_>, next| {
            Ok::<_, Error>((next, view.record_count()))
        })
        .unwrap();
    assert_eq!(seen, (3, 2));
    assert_eq!(info.base_offset, 3);

    // A refusal writes nothing: the log end stays, the next append gets the same offset.
    #[derive(Debug)]
    enum Refused {
        No,
        Storage(#[allow(dead_code)] Error),
    }
    impl From<Error> for Refused {
        fn from(e: Error) -> Self {
            Self::Storage(e)
        }
    }
    let refused = log.append_with(&mut batch(2, 1, 10, 1), |_, _| Err::<(), _>(Refused::No));
    assert!(matches!(refused, Err(Refused::No)));
    assert_eq!(log.log_end_offset(), 5);
    // A bad batch fails validation before the check runs.
    let mut bad = batch(3, 1, 10, 1);
    bad[30] ^= 1;
    let ran = std::cell::Cell::new(false);
    let invalid = log.append_with(&mut bad, |_, _| {
        ran.set(true);
        Ok::<_, Error>(())
    });
    assert!(matches!(invalid, Err(Error::InvalidBatch(_))));
    assert!(!ran.get());
    assert_eq!(log.append(&mut batch(4, 1, 10, 1)).unwrap().base_offset, 5);
    store.close().unwrap();
}

#[test]
fn concurrent_checks_see_every_offset_once_and_in_order() {
    // A per-log "next sequence" kept by the check alone: if the check were not atomic with
    // offset assignment, two appenders would read the same expected offset.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store
        .open_log("p", small_config(Durability::Never))
        .unwrap();
    let expected = Arc::new(Mutex::new(0u64));
    std::thread::scope(|scope| {
        for t in 0..4 {
            let log = &log;
            let expected = Arc::clone(&expected);
            scope.spawn(move || {
                for i in 0..200 {
                    let count = 1 + (t + i) % 3;
                    log.append_with(&mut batch(i as u64, count, 8, 1), |view, next| {
                        let mut expected = expected.lock().unwrap();
                        assert_eq!(next, *expected, "check raced another append");
                        *expected += u64::from(view.record_count());
                        Ok::<_, Error>(())
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(*expected.lock().unwrap(), log.log_end_offset());
    store.close().unwrap();
}

#[test]
fn durable_offset_is_its_own_under_never_and_the_watermark_under_always() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let never = store
        .open_log("never", small_config(Durability::Never))
        .unwrap();
    never.append(&mut batch(0, 4, 10, 1)).unwrap();
    assert_eq!(never.high_watermark(), 4, "readable at once");
    assert_eq!(never.durable_offset(), 0, "not yet synced");
    never.flush().unwrap();
    assert_eq!(never.durable_offset(), 4);

    let always = store
        .open_log("always", small_config(Durability::Always))
        .unwrap();
    always.append(&mut batch(0, 4, 10, 1)).unwrap();
    assert_eq!((always.high_watermark(), always.durable_offset()), (0, 0));
    always.flush().unwrap();
    assert_eq!((always.high_watermark(), always.durable_offset()), (4, 4));
    store.close().unwrap();
}

#[test]
fn a_failed_fsync_is_never_acknowledged_poisons_the_log_and_a_reopen_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::armed();
    let config = small_config(Durability::Always);
    let store = store_with(dir.path(), &faults);
    let log = store.open_log("orders/0", config.clone()).unwrap();
    log.append(&mut batch(0, 3, 10, 1)).unwrap();
    log.flush().unwrap();
    let acknowledged = log.read(0, 1 << 20).unwrap().batches;

    faults.fail(FaultOp::Sync, "orders/0", 1);
    log.append(&mut batch(1, 2, 10, 1)).unwrap();
    match log.flush() {
        Err(Error::Io { op, source, .. }) => {
            assert_eq!(op, "fdatasync");
            assert_eq!(source.raw_os_error(), Some(5), "EIO");
        }
        other => panic!("expected the fdatasync error, got {other:?}"),
    }
    // Not acknowledged: readers never see it.
    assert_eq!(log.high_watermark(), 3);
    assert_eq!(log.durable_offset(), 3);
    assert!(log.is_poisoned());
    // Every later write and flush is refused, naming the log; fsync is not retried.
    assert!(matches!(
        log.append(&mut batch(2, 1, 10, 1)),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(log.flush(), Err(Error::Poisoned { .. })));
    // A poisoned log does not close cleanly: the next open recovers its tail.
    assert!(store.close().is_err());
    let dir_text = dir.path().join("orders/0");
    assert!(!dir_text.join(".clean-shutdown").exists());

    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store.open_log("orders/0", config).unwrap();
    assert!(!log.is_poisoned());
    let read = log.read(0, 1 << 20).unwrap().batches;
    assert_eq!(
        &read[..acknowledged.len()],
        &acknowledged[..],
        "acknowledged data kept"
    );
    let next = log.log_end_offset();
    assert!(
        next == 3 || next == 5,
        "the unacknowledged batch may or may not survive"
    );
    let info = log.append(&mut batch(3, 1, 10, 1)).unwrap();
    assert_eq!(info.base_offset, next);
    log.flush().unwrap();
    store.close().unwrap();
}

#[test]
fn a_failed_write_poisons_the_log_before_anything_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::armed();
    let store = store_with(dir.path(), &faults);
    let log = store
        .open_log("p", small_config(Durability::Never))
        .unwrap();
    log.append(&mut batch(0, 2, 10, 1)).unwrap();
    faults.fail(FaultOp::Write, "p/", 1);
    assert!(matches!(
        log.append(&mut batch(1, 2, 10, 1)),
        Err(Error::Io { op: "write", .. })
    ));
    assert_eq!((log.log_end_offset(), log.high_watermark()), (2, 2));
    assert!(matches!(
        log.append(&mut batch(2, 2, 10, 1)),
        Err(Error::Poisoned { .. })
    ));
    drop(log);
    drop(store);
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store
        .open_log("p", small_config(Durability::Never))
        .unwrap();
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(
        common::records(&log.read(0, 1 << 20).unwrap().batches).len(),
        2
    );
    store.close().unwrap();
}

#[test]
fn a_failed_seal_on_roll_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::armed();
    let store = store_with(dir.path(), &faults);
    let config = LogConfig {
        segment_bytes: 4096,
        max_batch_bytes: 4096,
        index_interval_bytes: 64,
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let log = store.open_log("p", config).unwrap();
    log.append(&mut batch(0, 10, 200, 1)).unwrap();
    faults.fail(FaultOp::Sync, "p/", 1);
    // This one does not fit: the roll seals (fsyncs) the full segment, which fails.
    let rolled = log.append(&mut batch(1, 10, 200, 1));
    assert!(
        matches!(rolled, Err(Error::Io { op: "fsync", .. })),
        "{rolled:?}"
    );
    assert!(log.is_poisoned());
    assert_eq!(log.segment_count(), 1);
    drop(log);
    drop(store);
}

#[test]
fn a_discarded_log_refuses_writes_and_leaves_no_clean_marker() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let log = store
        .open_log("doomed", small_config(Durability::Always))
        .unwrap();
    log.append(&mut batch(0, 2, 10, 1)).unwrap();
    log.flush().unwrap();
    log.discard();
    assert!(matches!(
        log.append(&mut batch(1, 1, 10, 1)),
        Err(Error::Closed { .. })
    ));
    // What was readable stays readable while its slices live; no sync or marker was spent.
    assert_eq!(
        common::records(&log.read(0, 1 << 20).unwrap().batches).len(),
        2
    );
    assert!(!dir.path().join("doomed/.clean-shutdown").exists());
    drop(log);
    store.close().unwrap();
}
