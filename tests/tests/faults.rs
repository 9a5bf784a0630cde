//! I/O failures injected into a real broker's storage (`Env::faults`): a failed fsync is never
//! acknowledged, the partition then refuses writes with a clear status while the others go on,
//! and a restart recovers it with every acknowledged record intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_server::{Env, FaultOp, Faults};
use sluice_tests::{
    TestBroker, batch, create_topic, decode, expect_status, now_ms, produce_request as produce,
};
use tonic::Code;

async fn read_all(broker: &TestBroker, topic: &str, partition: u32) -> Vec<(u64, Vec<u8>)> {
    let fetched = broker
        .log()
        .await
        .fetch(pb::FetchRequest {
            topic: topic.into(),
            partition,
            offset: 0,
            max_bytes: 16 << 20,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    decode(&fetched.batches)
}

#[tokio::test]
async fn a_failed_fsync_is_not_acknowledged_and_a_restart_recovers_the_partition() {
    let faults = Faults::armed();
    let env = Env {
        faults: faults.clone(),
        ..Env::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_env(Some(dir.path().to_path_buf()), env, |_| {}).await;
    create_topic(&broker, "orders", 2, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let acked = log
        .produce(produce("orders", 0, batch("before", 3, 10, now_ms())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((acked.base_offset, acked.last_offset), (0, 2));

    // The next fdatasync of partition 0 fails: the produce waiting on it is refused.
    faults.fail(FaultOp::Sync, "orders/0/", 1);
    let failed = log
        .produce(produce("orders", 0, batch("lost", 2, 10, now_ms())))
        .await
        .unwrap_err();
    expect_status(&failed, Code::Internal, "fdatasync");
    // Readers never see it, and every later write to the partition is refused, naming why.
    assert_eq!(read_all(&broker, "orders", 0).await.len(), 3);
    let refused = log
        .produce(produce("orders", 0, batch("after", 1, 10, now_ms())))
        .await
        .unwrap_err();
    expect_status(
        &refused,
        Code::Internal,
        "refuses writes after an earlier I/O failure",
    );
    // The other partition goes on.
    log.produce(produce("orders", 1, batch("other", 2, 10, now_ms())))
        .await
        .unwrap();
    // Committed offsets (another partition of another topic) are unaffected too.
    broker
        .groups()
        .await
        .commit_offsets(pb::CommitOffsetsRequest {
            member_id: String::new(),
            generation: 0,
            group: "g".into(),
            topic: "orders".into(),
            offsets: vec![pb::PartitionOffset {
                partition: 0,
                offset: 3,
                metadata: String::new(),
            }],
        })
        .await
        .unwrap();

    // The poisoned partition cannot close cleanly (the error is logged; the others close).
    let stopped = broker.stop_result().await;
    assert!(stopped.is_ok(), "{stopped:?}");
    let partition = dir.path().join("topics/orders");
    assert!(
        !partition.join("0/.clean-shutdown").exists(),
        "recovered on the next start"
    );
    assert!(partition.join("1/.clean-shutdown").exists());

    let broker = TestBroker::start_in(dir.path().to_path_buf(), |_| {}).await;
    let records = read_all(&broker, "orders", 0).await;
    assert_eq!(
        records[..3],
        [
            (0, b"before-0..".to_vec()),
            (1, b"before-1..".to_vec()),
            (2, b"before-2..".to_vec())
        ]
    );
    // The unacknowledged batch may have reached the disk before the failed sync; nothing else.
    assert!(records.len() == 3 || records.len() == 5, "{records:?}");
    let next = broker
        .log()
        .await
        .produce(produce("orders", 0, batch("again", 1, 10, now_ms())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.base_offset, records.len() as u64);
    assert_eq!(read_all(&broker, "orders", 1).await.len(), 2);
    let committed = broker
        .groups()
        .await
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: "g".into(),
            topic: "orders".into(),
            partitions: vec![0],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(committed[0].offset, Some(3));
    broker.stop().await;
}

#[tokio::test]
async fn a_topic_creation_that_fails_leaves_nothing_behind() {
    let faults = Faults::armed();
    let env = Env {
        faults: faults.clone(),
        ..Env::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_env(Some(dir.path().to_path_buf()), env, |_| {}).await;
    // The third partition cannot be created (as on a full disk).
    faults.fail(FaultOp::Create, "topics/events/2", 1);
    let failed = broker
        .admin()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: "events".into(),
            partitions: 4,
            config: None,
        })
        .await
        .unwrap_err();
    expect_status(&failed, Code::Internal, "create log");
    let left: Vec<String> = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("__"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The name is free again, and a restart finds no half-made topic.
    create_topic(&broker, "events", 4, pb::TopicConfig::default()).await;
    broker.stop().await;
    // A creation cut short by a crash (its temporary directory) is swept at start.
    let ghost = dir.path().join("topics/~creating~ghost");
    std::fs::create_dir_all(ghost.join("0")).unwrap();
    std::fs::write(ghost.join("topic.json"), b"{}").unwrap();
    let broker = TestBroker::start_in(dir.path().to_path_buf(), |_| {}).await;
    let described = broker
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest {
            name: "events".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(described.partitions.len(), 4);
    assert!(!ghost.exists(), "swept once the broker serves");
    broker.stop().await;
}
