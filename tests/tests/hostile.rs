//! The broker tried as a stranger and an attacker would (issue "Tried as a stranger…"): waits
//! that must end, reserved bits, oversized input, long names, small segments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_storage::format::BatchBuilder;
use sluice_tests::{
    TestBroker, batch, create_topic, expect_status, now_ms, produce_request as produce,
};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn subscriptions_and_long_polls_end_with_not_found_when_their_topic_is_deleted() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "doomed", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    log.produce(produce("doomed", 0, batch("a", 2, 8, now_ms()).freeze()))
        .await
        .unwrap();
    let mut stream = log
        .subscribe(pb::SubscribeRequest {
            topic: "doomed".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // The existing records arrive first.
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.batches.is_empty());
    // A long poll at the end of the log, with a wait far longer than the test.
    let mut poller = broker.log().await;
    let poll = tokio::spawn(async move {
        poller
            .fetch(pb::FetchRequest {
                topic: "doomed".into(),
                partition: 0,
                offset: 2,
                max_bytes: 0,
                max_wait_ms: 30_000,
            })
            .await
    });
    broker
        .admin()
        .await
        .delete_topic(pb::DeleteTopicRequest {
            name: "doomed".into(),
        })
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the subscription ends")
        .expect("with a status");
    expect_status(
        &ended.unwrap_err(),
        Code::NotFound,
        "\"doomed\" was deleted",
    );
    let polled = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll ends")
        .unwrap();
    expect_status(&polled.unwrap_err(), Code::NotFound, "\"doomed\"");
    // A re-created topic of the same name is a new log: a new subscription reads it.
    create_topic(&broker, "doomed", 1, pb::TopicConfig::default()).await;
    log.produce(produce("doomed", 0, batch("b", 1, 8, now_ms()).freeze()))
        .await
        .unwrap();
    let mut again = log
        .subscribe(pb::SubscribeRequest {
            topic: "doomed".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let fresh = tokio::time::timeout(Duration::from_secs(10), again.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        sluice_tests::decode(&fresh.batches)[0].1,
        b"b-0.....".to_vec()
    );
    broker.stop().await;
}

#[tokio::test]
async fn control_and_transactional_bits_are_refused_from_producers() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "t", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let mut builder = BatchBuilder::new().control();
    builder.push(now_ms(), None, Some(b"marker"), &[]).unwrap();
    let control = builder.finish().unwrap().freeze();
    let refused = log.produce(produce("t", 0, control)).await.unwrap_err();
    expect_status(&refused, Code::InvalidArgument, "0x0020");
    assert!(
        refused.message().contains("reserved"),
        "{}",
        refused.message()
    );

    // The transactional bit (with a recomputed CRC, so only the bit is wrong).
    let mut transactional = batch("x", 1, 8, now_ms());
    let attributes = 0x10u16.to_le_bytes();
    transactional[21..23].copy_from_slice(&attributes);
    let crc = crc32fast::hash(&transactional[21..]);
    transactional[17..21].copy_from_slice(&crc.to_le_bytes());
    let refused = log
        .produce(produce("t", 0, transactional.freeze()))
        .await
        .unwrap_err();
    expect_status(&refused, Code::InvalidArgument, "attributes 0x0010");
    // Nothing was written.
    let end = log
        .list_offsets(pb::ListOffsetsRequest {
            topic: "t".into(),
            partition: 0,
            spec: pb::OffsetSpec::Latest as i32,
            timestamp_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(end.offset, Some(0));

    // The broker stamps base_offset and leader_epoch (outside the CRC): nothing a producer
    // puts there is stored.
    let mut stamped = batch("y", 1, 8, now_ms());
    stamped[0..8].copy_from_slice(&77u64.to_le_bytes());
    stamped[12..16].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    log.produce(produce("t", 0, stamped.freeze()))
        .await
        .unwrap();
    let fetched = log
        .fetch(pb::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.batches[0..8], 0u64.to_le_bytes());
    assert_eq!(fetched.batches[12..16], 0u32.to_le_bytes());
    broker.stop().await;
}

#[tokio::test]
async fn long_input_is_echoed_cut_so_statuses_stay_small() {
    let broker = TestBroker::start().await;
    let long = "t".repeat(10_000);
    let mut log = broker.log().await;
    let missing = log
        .produce(produce(&long, 0, batch("x", 1, 8, now_ms()).freeze()))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().len() < 300, "{}", missing.message().len());
    assert!(
        missing.message().contains("(10000 bytes)"),
        "{}",
        missing.message()
    );
    let bad = broker
        .admin()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: long.clone(),
            partitions: 1,
            config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().len() < 300, "{}", bad.message().len());
    let group = broker
        .groups()
        .await
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: "g".repeat(10_000),
            topic: long,
            partitions: vec![],
        })
        .await
        .unwrap_err();
    assert!(group.message().len() < 300, "{}", group.message().len());
    broker.stop().await;
}

#[tokio::test]
async fn a_request_over_the_message_limit_is_invalid_argument_naming_the_limit() {
    let broker = TestBroker::start_with(|c| c.max_message_bytes = 1 << 20).await;
    create_topic(&broker, "big", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let huge = batch("x", 3, 1 << 20, now_ms()).freeze();
    let refused = log.produce(produce("big", 0, huge)).await.unwrap_err();
    expect_status(
        &refused,
        Code::InvalidArgument,
        "max_message_bytes (1048576 bytes)",
    );
    assert!(
        refused.message().starts_with("request of "),
        "{}",
        refused.message()
    );
    // The connection is still good.
    log.produce(produce("big", 0, batch("y", 1, 8, now_ms()).freeze()))
        .await
        .unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn small_segments_get_a_batch_limit_that_fits_them() {
    let broker = TestBroker::start().await;
    let created = broker
        .admin()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: "small".into(),
            partitions: 1,
            config: Some(pb::TopicConfig {
                segment_bytes: Some(1 << 20),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(created.config.unwrap().max_batch_bytes, Some(1 << 20));
    // Larger segments keep the 4 MiB default; an explicit limit above the segment is refused.
    let refused = broker
        .admin()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: "small2".into(),
            partitions: 1,
            config: Some(pb::TopicConfig {
                segment_bytes: Some(1 << 20),
                max_batch_bytes: Some(2 << 20),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    expect_status(&refused, Code::InvalidArgument, "max_batch_bytes");
    broker.stop().await;
}
