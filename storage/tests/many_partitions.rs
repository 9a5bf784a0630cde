//! 10,000 partitions in one store with a small bound on open segments: open files and maps
//! stay within the bound however many logs are written and read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{batch, records};
use sluice_storage::{Durability, LogConfig, Store, StoreConfig};

const PARTITIONS: usize = 10_000;
const MAX_OPEN: usize = 16;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mapped_segment_files(dir: &std::path::Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    maps.lines().filter(|line| line.contains(dir)).count()
}

#[test]
fn ten_thousand_partitions_stay_within_the_open_bound() {
    let dir = tempfile::tempdir().unwrap();
    let baseline_fds = open_fds();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            max_open_segments: MAX_OPEN,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 1024,
        max_batch_bytes: 4096,
        durability: Durability::Never,
        ..LogConfig::default()
    };
    // Each active segment holds four descriptors (log, two indexes, checkpoint) and three
    // maps; the store itself holds its lock file. Allow a few for the test harness.
    let fd_bound = baseline_fds + 1 + MAX_OPEN * 4 + 8;
    let map_bound = MAX_OPEN * 3;
    let mut logs = Vec::with_capacity(PARTITIONS);
    for p in 0..PARTITIONS {
        let log = store.open_log(&format!("t/{p}"), config.clone()).unwrap();
        log.append(&mut batch(p as u64, 2, 16, 1)).unwrap();
        if p % 1000 == 999 {
            assert!(store.open_segments() <= MAX_OPEN);
            assert!(open_fds() <= fd_bound, "fds {} > {fd_bound}", open_fds());
            assert!(mapped_segment_files(dir.path()) <= map_bound);
        }
        logs.push(log);
    }
    // Read every partition back, in an order that defeats the LRU.
    for p in (0..PARTITIONS).step_by(7).chain((1..PARTITIONS).step_by(7)) {
        let read = logs[p].read(0, 4096).unwrap();
        let got = records(&read.batches);
        assert_eq!(got.len(), 2);
        assert!(got[0].1.starts_with(format!("value-{p}-0").as_bytes()));
    }
    assert!(store.open_segments() <= MAX_OPEN);
    assert!(open_fds() <= fd_bound, "fds {} > {fd_bound}", open_fds());
    assert!(mapped_segment_files(dir.path()) <= map_bound);
    drop(logs);
    store.close().unwrap();
    assert_eq!(mapped_segment_files(dir.path()), 0);
}
