//! Compaction under SIGKILL (design.md §3, "crash-safe swap"): the real `sluice` binary
//! compacts a small-segment topic every 100 ms while it is killed with SIGKILL at pseudo-random
//! points, 50 times. After every restart the topic reads back exactly the acknowledged records'
//! latest value per key, with offsets strictly increasing and every record the one acknowledged
//! at its offset: a swap interrupted anywhere left the old segments or the new ones, never
//! neither and never both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_server::testing::ChildBroker;
use sluice_storage::format::{BatchBuilder, Batches};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const TOPIC: &str = "state";
const CYCLES: u64 = 50;
const BATCHES_PER_CYCLE: u64 = 8;
const RECORDS_PER_BATCH: u64 = 16;
/// Enough keys that the compacted topic spans a dozen segments: a pass rewrites several, so
/// many kills land inside one.
const KEYS: u64 = 400;
/// The seed of the kill points and the records.
const SEED: u64 = 0x5eed_c0de;
/// Hang guard for the whole test (not a performance threshold).
const HANG_GUARD: Duration = Duration::from_secs(300);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

/// splitmix64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// (key, value; `None` a tombstone).
type Record = (Vec<u8>, Option<Vec<u8>>);

/// Every record from the earliest offset to the high watermark, checked in full; offsets
/// strictly increase.
async fn replay(log: &mut pb::log_client::LogClient<Channel>) -> Vec<(u64, Record)> {
    let bounds = log
        .list_offsets(pb::ListOffsetsRequest {
            topic: TOPIC.into(),
            partition: 0,
            spec: pb::OffsetSpec::Earliest as i32,
            timestamp_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut offset = bounds.earliest_offset;
    let mut out: Vec<(u64, Record)> = Vec::new();
    while offset < bounds.high_watermark {
        let fetched = log
            .fetch(pb::FetchRequest {
                topic: TOPIC.into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!fetched.batches.is_empty(), "nothing at {offset}");
        for framed in Batches::new(&fetched.batches) {
            let framed = framed.unwrap();
            for record in framed.stored().unwrap().records() {
                if record.offset < offset {
                    continue;
                }
                assert!(
                    out.last().is_none_or(|last| record.offset > last.0),
                    "offsets not strictly increasing at {}",
                    record.offset
                );
                let key = record.key.expect("keyed").to_vec();
                out.push((record.offset, (key, record.value.map(<[u8]>::to_vec))));
            }
            offset = offset.max(framed.prefix.next_offset());
        }
    }
    out
}

fn latest(records: impl IntoIterator<Item = Record>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = BTreeMap::new();
    for (key, value) in records {
        match value {
            Some(value) => state.insert(key, value),
            None => state.remove(&key),
        };
    }
    state
}

/// Files in the partition's directory with a name ending in `suffix`.
fn files_ending(data: &Path, suffix: &str) -> usize {
    std::fs::read_dir(data.join("topics").join(TOPIC).join("0"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn sigkill_during_compaction_never_loses_or_doubles_a_key() {
    tokio::time::timeout(HANG_GUARD, kill_during_compaction())
        .await
        .expect("test finished within the hang guard");
}

async fn kill_during_compaction() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let config = logs.path().join("sluice.toml");
    std::fs::write(
        &config,
        "compaction_check_interval_ms = 100\ncompaction_min_dirty_percent = 0\n",
    )
    .unwrap();
    let extra = ["--config".to_owned(), config.display().to_string()];
    let mut broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &extra, &[]).await;
    pb::admin_client::AdminClient::new(broker.channel().await)
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 1,
            config: Some(pb::TopicConfig {
                cleanup: pb::CleanupPolicy::Compact as i32,
                segment_bytes: Some(4096),
                max_batch_bytes: Some(4096),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // Every acknowledged record, by offset.
    let mut acked: HashMap<u64, Record> = HashMap::new();
    let mut in_order: Vec<(u64, Record)> = Vec::new();
    // Kills that left an uncommitted swap (to roll back) or a committed one (to complete).
    let (mut uncommitted, mut committed) = (0, 0);
    for cycle in 0..CYCLES {
        let mut log = broker.log_client().await;
        for b in 0..BATCHES_PER_CYCLE {
            let mut builder = BatchBuilder::new();
            let mut records = Vec::new();
            for r in 0..RECORDS_PER_BATCH {
                let x = mix(SEED ^ (cycle << 32) ^ (b << 16) ^ r);
                let key = format!("key-{}", x % KEYS).into_bytes();
                let value = (x >> 32 & 7 != 0).then(|| {
                    let mut value = format!("c{cycle}b{b}r{r}:").into_bytes();
                    value.resize(100, b'.');
                    value
                });
                builder
                    .push(1_700_000_000_000, Some(&key), value.as_deref(), &[])
                    .unwrap();
                records.push((key, value));
            }
            let ack = log
                .produce(pb::ProduceRequest {
                    topic: TOPIC.into(),
                    partition: 0,
                    batch: builder.finish().unwrap().freeze(),
                })
                .await
                .unwrap()
                .into_inner();
            for (i, record) in records.into_iter().enumerate() {
                let offset = ack.base_offset + i as u64;
                acked.insert(offset, record.clone());
                in_order.push((offset, record));
            }
        }
        // Let compaction run for a pseudo-random while, then kill the broker wherever it is.
        let delay = Duration::from_millis(mix(SEED ^ cycle) % 250);
        tokio::time::sleep(delay).await;
        broker.kill_hard();
        if files_ending(data.path(), ".swap") > 0 {
            committed += 1;
        } else if files_ending(data.path(), ".cleaned") > 0 {
            uncommitted += 1;
        }
        broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &extra, &[]).await;

        let mut log = broker.log_client().await;
        let read = replay(&mut log).await;
        for (offset, record) in &read {
            assert_eq!(
                acked.get(offset),
                Some(record),
                "cycle {cycle}: the record at {offset} is not the one acknowledged there"
            );
        }
        assert_eq!(
            latest(read.into_iter().map(|(_, r)| r)),
            latest(in_order.iter().map(|(_, r)| r.clone())),
            "cycle {cycle}: the latest value per key"
        );
    }

    // Compaction did run: fewer records than were acknowledged are left.
    let mut log = broker.log_client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let left = loop {
        let left = replay(&mut log).await.len();
        if left < acked.len() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(left < acked.len(), "{left} of {} records left", acked.len());
    println!(
        "{CYCLES} kills: {uncommitted} before a swap's commit, {committed} after it; \
         {left} of {} records left",
        acked.len()
    );
    broker.terminate().await;
}
