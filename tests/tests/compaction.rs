//! Compacted topics against a real broker on loopback (design.md §3): event sourcing rebuilt
//! from a compacted log, tombstones expiring by the broker's clock on paused tokio time (no
//! sleeps), and the requests a compacted topic refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_server::{Clock, Env};
use sluice_storage::format::{BatchBuilder, Batches};
use sluice_tests::{TestBroker, create_topic, expect_status, produce_request as produce};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// Wall-clock start of the tests' clock: 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;
const TOPIC: &str = "accounts";
const KEYS: u64 = 1_000;
const UPDATES: u64 = 100_000;
const TOMBSTONED: u64 = 100;
const RECORDS_PER_BATCH: u64 = 500;
/// How often the broker compacts in these tests (broker time).
const INTERVAL: Duration = Duration::from_secs(60);

/// splitmix64.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A record read back: offset, key, value (`None`: a tombstone).
type Read = (u64, Vec<u8>, Option<Vec<u8>>);

/// Every record of partition 0 from its earliest offset to the high watermark, each batch
/// checked in full as a stored batch; offsets strictly increase.
async fn replay(log: &mut pb::log_client::LogClient<Channel>) -> Vec<Read> {
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
    let mut out: Vec<Read> = Vec::new();
    while offset < bounds.high_watermark {
        let fetched = log
            .fetch(pb::FetchRequest {
                topic: TOPIC.into(),
                partition: 0,
                offset,
                max_bytes: 4 << 20,
                max_wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!fetched.batches.is_empty(), "nothing at {offset}");
        for framed in Batches::new(&fetched.batches) {
            let framed = framed.unwrap();
            let view = framed.stored().unwrap();
            for record in view.records() {
                if record.offset < offset {
                    continue;
                }
                assert!(out.last().is_none_or(|last| record.offset > last.0));
                out.push((
                    record.offset,
                    record.key.expect("every record has a key").to_vec(),
                    record.value.map(<[u8]>::to_vec),
                ));
            }
            offset = offset.max(framed.prefix.next_offset());
        }
    }
    out
}

/// The state event sourcing rebuilds: the last value of each key, tombstones deleting.
fn rebuild(records: &[Read]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = BTreeMap::new();
    for (_, key, value) in records {
        match value {
            Some(value) => state.insert(key.clone(), value.clone()),
            None => state.remove(key),
        };
    }
    state
}

fn account(key: u64) -> Vec<u8> {
    format!("account-{key:04}").into_bytes()
}

/// Records of the accounts (not the filler), and how many of them are tombstones.
fn accounts(records: &[Read]) -> (usize, usize) {
    let of_accounts: Vec<&Read> = records
        .iter()
        .filter(|r| r.1.starts_with(b"account-"))
        .collect();
    let tombstones = of_accounts.iter().filter(|r| r.2.is_none()).count();
    (of_accounts.len(), tombstones)
}

async fn describe(broker: &TestBroker) -> pb::PartitionDescription {
    broker
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest { name: TOPIC.into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap()
        .partitions[0]
}

/// Moves the broker's clock an interval at a time until `done` holds for what a replay reads
/// (at most 100 intervals: a hang guard, not a timing). Returns what it read last.
async fn advance_until(
    log: &mut pb::log_client::LogClient<Channel>,
    done: impl Fn(&[Read]) -> bool,
) -> Vec<Read> {
    for _ in 0..100 {
        tokio::time::advance(INTERVAL + Duration::from_secs(1)).await;
        let read = replay(log).await;
        if done(&read) {
            return read;
        }
    }
    panic!("compaction did not get there in 100 intervals");
}

#[tokio::test(start_paused = true)]
async fn event_sourcing_rebuilds_the_latest_state_from_a_compacted_topic() {
    let env = Env {
        clock: Clock::follow_tokio(START_MS),
        ..Env::default()
    };
    let broker = TestBroker::start_env(None, env, |c| {
        c.compaction_check_interval_ms = INTERVAL.as_millis() as u64;
    })
    .await;
    let retention = Duration::from_secs(3600);
    create_topic(
        &broker,
        TOPIC,
        1,
        pb::TopicConfig {
            cleanup: pb::CleanupPolicy::Compact as i32,
            delete_retention_ms: Some(retention.as_millis() as u64),
            segment_bytes: Some(64 << 10),
            fsync: pb::FsyncPolicy::Never as i32,
            ..Default::default()
        },
    )
    .await;
    let mut log = broker.log().await;

    // 100,000 updates over 1,000 accounts, in pseudo-random order; then tombstones for the
    // first 100; then filler under one key, so the tombstones are in a sealed segment.
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for first in (0..UPDATES).step_by(RECORDS_PER_BATCH as usize) {
        let mut builder = BatchBuilder::new();
        for sequence in first..first + RECORDS_PER_BATCH {
            let key = account(mix(sequence) % KEYS);
            let value = format!(
                "balance {} after update {sequence}",
                mix(!sequence) % 10_000
            );
            builder
                .push(START_MS, Some(&key), Some(value.as_bytes()), &[])
                .unwrap();
            expected.insert(key, value.into_bytes());
        }
        log.produce(produce(TOPIC, 0, builder.finish().unwrap().freeze()))
            .await
            .unwrap();
    }
    let mut builder = BatchBuilder::new();
    for key in 0..TOMBSTONED {
        builder
            .push(START_MS, Some(&account(key)), None, &[])
            .unwrap();
        expected.remove(&account(key));
    }
    log.produce(produce(TOPIC, 0, builder.finish().unwrap().freeze()))
        .await
        .unwrap();
    let filler = vec![b'.'; 16 << 10];
    for _ in 0..5 {
        let mut builder = BatchBuilder::new();
        builder
            .push(START_MS, Some(b"filler"), Some(&filler), &[])
            .unwrap();
        log.produce(produce(TOPIC, 0, builder.finish().unwrap().freeze()))
            .await
            .unwrap();
    }
    let before = describe(&broker).await;
    let all = replay(&mut log).await;
    assert_eq!(
        accounts(&all),
        ((UPDATES + TOMBSTONED) as usize, TOMBSTONED as usize)
    );
    assert_eq!(rebuild(&all), {
        let mut with_filler = expected.clone();
        with_filler.insert(b"filler".to_vec(), filler.clone());
        with_filler
    });

    // Compaction: one record per account is left, the tombstones among them (not yet an hour
    // old by the broker's clock).
    let compacted = advance_until(&mut log, |read| {
        accounts(read) == (KEYS as usize, TOMBSTONED as usize)
    })
    .await;
    let state = rebuild(&compacted);
    assert_eq!(state.get(&b"filler"[..]), Some(&filler));
    let accounts_state: BTreeMap<_, _> = state
        .into_iter()
        .filter(|(key, _)| key.starts_with(b"account-"))
        .collect();
    assert_eq!(accounts_state, expected);
    // Each record is the one appended at its offset: offsets kept, values unchanged.
    let originals: BTreeMap<u64, &Read> = all.iter().map(|r| (r.0, r)).collect();
    for record in &compacted {
        assert_eq!(
            originals.get(&record.0),
            Some(&record),
            "offset {}",
            record.0
        );
    }
    let after = describe(&broker).await;
    assert!(
        after.size_bytes < before.size_bytes / 10,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.earliest_offset, before.earliest_offset);
    assert_eq!(after.latest_offset, before.latest_offset);

    // An hour after the tombstones were appended they go too: the deleted accounts leave no
    // trace.
    tokio::time::advance(retention).await;
    let final_read = advance_until(&mut log, |read| {
        accounts(read) == ((KEYS - TOMBSTONED) as usize, 0)
    })
    .await;
    for key in 0..TOMBSTONED {
        assert!(
            final_read.iter().all(|r| r.1 != account(key)),
            "account {key} left"
        );
    }
    let accounts_state: BTreeMap<_, _> = rebuild(&final_read)
        .into_iter()
        .filter(|(key, _)| key.starts_with(b"account-"))
        .collect();
    assert_eq!(accounts_state, expected);
    assert!(describe(&broker).await.size_bytes < after.size_bytes);

    // The broker restarts on the compacted data and serves the same.
    let (dir, guard) = broker.stop_keeping_dir().await;
    let env = Env {
        clock: Clock::follow_tokio(START_MS + 2 * 3_600_000),
        ..Env::default()
    };
    let broker = TestBroker::start_env(Some(dir), env, |_| {}).await;
    let mut log = broker.log().await;
    assert_eq!(replay(&mut log).await, final_read);
    broker.stop().await;
    drop(guard);
}

#[tokio::test]
async fn compacted_topics_refuse_records_without_keys_and_bad_policies() {
    let broker = TestBroker::start().await;
    create_topic(
        &broker,
        TOPIC,
        1,
        pb::TopicConfig {
            cleanup: pb::CleanupPolicy::CompactDelete as i32,
            ..Default::default()
        },
    )
    .await;
    let mut log = broker.log().await;
    let mut builder = BatchBuilder::new();
    builder.push(START_MS, Some(b"a"), Some(b"1"), &[]).unwrap();
    builder.push(START_MS, Some(b"b"), None, &[]).unwrap();
    builder.push(START_MS, None, Some(b"3"), &[]).unwrap();
    let status = log
        .produce(produce(TOPIC, 0, builder.finish().unwrap().freeze()))
        .await
        .unwrap_err();
    expect_status(
        &status,
        Code::InvalidArgument,
        "compacted topic \"accounts\": record 2 has no key (compacted topics need a key on every record)",
    );
    // Nothing of it was written; keyed records and tombstones go in.
    let mut builder = BatchBuilder::new();
    builder.push(START_MS, Some(b"a"), Some(b"1"), &[]).unwrap();
    builder.push(START_MS, Some(b"b"), None, &[]).unwrap();
    let ack = log
        .produce(produce(TOPIC, 0, builder.finish().unwrap().freeze()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.base_offset, 0);

    // A plain topic takes records without keys.
    create_topic(&broker, "plain", 1, pb::TopicConfig::default()).await;
    let mut builder = BatchBuilder::new();
    builder.push(START_MS, None, Some(b"x"), &[]).unwrap();
    log.produce(produce("plain", 0, builder.finish().unwrap().freeze()))
        .await
        .unwrap();

    // An unknown policy is refused, naming the field and value.
    let status = broker
        .admin()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: "odd".into(),
            partitions: 1,
            config: Some(pb::TopicConfig {
                cleanup: 42,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "invalid cleanup \"42\"");

    // Both shown by describe.
    let config = broker
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest { name: TOPIC.into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap()
        .config
        .unwrap();
    assert_eq!(config.cleanup, pb::CleanupPolicy::CompactDelete as i32);
    assert_eq!(config.delete_retention_ms, Some(86_400_000));
    broker.stop().await;
}

#[tokio::test]
async fn a_topic_json_from_before_compaction_opens_as_delete() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "old", 1, pb::TopicConfig::default()).await;
    let (dir, guard) = broker.stop_keeping_dir().await;
    // topic.json as the first release wrote it: no cleanup, no delete_retention_ms.
    let meta = dir.join("topics/old/topic.json");
    let written = std::fs::read_to_string(&meta).unwrap();
    assert!(written.contains("\"cleanup\": \"delete\""), "{written}");
    let first_release = r#"{
  "name": "old",
  "partitions": 1,
  "settings": {
    "retention_bytes": null,
    "retention_ms": 604800000,
    "segment_bytes": 1073741824,
    "fsync": "always",
    "fsync_interval_ms": 1000,
    "max_batch_bytes": 4194304
  }
}"#;
    std::fs::write(&meta, first_release).unwrap();
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let config = broker
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest { name: "old".into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap()
        .config
        .unwrap();
    assert_eq!(config.cleanup, pb::CleanupPolicy::Delete as i32);
    assert_eq!(config.delete_retention_ms, Some(86_400_000));
    broker.stop().await;
    drop(guard);
}
