//! The broker over gRPC on loopback: round trips, replay, tailing, errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_tests::{
    TestBroker, batch, create_topic, decode, expect_status, now_ms, produce_request as produce,
};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

/// The status of a CreateTopic that must fail.
async fn create_error(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    name: &str,
    partitions: u32,
) -> tonic::Status {
    admin
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: None,
        })
        .await
        .unwrap_err()
}

#[tokio::test]
async fn produce_fetch_round_trip_and_replay() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "events", 2, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let mut sent = Vec::new();
    for i in 0..10 {
        let b = batch(&format!("b{i}"), 5, 100, now_ms());
        let response = log
            .produce(produce("events", 1, b.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.base_offset, i * 5);
        assert_eq!(response.last_offset, i * 5 + 4);
        sent.push(b);
    }
    // Fetch everything from 0: whole batches, the bytes produced with offsets stamped.
    let fetched = log
        .fetch(pb::FetchRequest {
            topic: "events".into(),
            partition: 1,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.high_watermark, 50);
    let records = decode(&fetched.batches);
    assert_eq!(records.len(), 50);
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert!(value.starts_with(format!("b{}-{}", i / 5, i % 5).as_bytes()));
    }
    // Replay from the middle of a batch: that batch comes whole.
    let fetched = log
        .fetch(pb::FetchRequest {
            topic: "events".into(),
            partition: 1,
            offset: 23,
            max_bytes: 1,
            max_wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let records = decode(&fetched.batches);
    assert_eq!(records.first().map(|r| r.0), Some(20));
    assert_eq!(records.len(), 5);
    // The other partition is empty.
    let offsets = log
        .list_offsets(pb::ListOffsetsRequest {
            topic: "events".into(),
            partition: 0,
            spec: pb::OffsetSpec::Latest as i32,
            timestamp_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offsets.offset, Some(0));
    broker.stop().await;
}

#[tokio::test]
async fn replay_from_timestamp() {
    // The broker's clock moves only when the test moves it: no sleeping between appends.
    let (clock, time) = sluice_server::Clock::manual(1_767_225_600_000);
    let env = sluice_server::Env {
        clock,
        ..sluice_server::Env::default()
    };
    let broker = TestBroker::start_env(None, env, |_| {}).await;
    create_topic(&broker, "t", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    log.produce(produce("t", 0, batch("old", 3, 10, time.now_ms())))
        .await
        .unwrap();
    time.advance(Duration::from_millis(20));
    let cut = time.now_ms();
    time.advance(Duration::from_millis(5));
    let second = log
        .produce(produce("t", 0, batch("new", 2, 10, time.now_ms())))
        .await
        .unwrap();
    let at = log
        .list_offsets(pb::ListOffsetsRequest {
            topic: "t".into(),
            partition: 0,
            spec: pb::OffsetSpec::Timestamp as i32,
            timestamp_ms: cut,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at.offset, Some(second.into_inner().base_offset));
    let after = log
        .list_offsets(pb::ListOffsetsRequest {
            topic: "t".into(),
            partition: 0,
            spec: pb::OffsetSpec::Timestamp as i32,
            timestamp_ms: time.now_ms() + 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.offset, None);
    assert_eq!(after.high_watermark, 5);
    broker.stop().await;
}

#[tokio::test]
async fn fetch_long_polls_and_subscribe_tails() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "tail", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let mut stream = log
        .subscribe(pb::SubscribeRequest {
            topic: "tail".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // A long poll at the end of the log is answered when data arrives.
    let mut poller = broker.log().await;
    let poll = tokio::spawn(async move {
        poller
            .fetch(pb::FetchRequest {
                topic: "tail".into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
                max_wait_ms: 10_000,
            })
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..3 {
        log.produce(produce("tail", 0, batch(&format!("s{i}"), 2, 10, now_ms())))
            .await
            .unwrap();
    }
    let polled = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert!(!decode(&polled.batches).is_empty());
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("subscription delivers")
            .expect("stream open")
            .unwrap();
        seen.extend(decode(&message.batches));
    }
    let offsets: Vec<u64> = seen.iter().map(|r| r.0).collect();
    assert_eq!(offsets, (0..6).collect::<Vec<_>>());
    // A client that goes away mid-stream costs nothing: drop it and keep producing.
    drop(stream);
    log.produce(produce("tail", 0, batch("after", 1, 10, now_ms())))
        .await
        .unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn bad_requests_get_statuses_naming_the_problem() {
    let broker = TestBroker::start_with(|c| c.max_message_bytes = 2 << 20).await;
    create_topic(
        &broker,
        "t",
        1,
        pb::TopicConfig {
            max_batch_bytes: Some(64 * 1024),
            ..Default::default()
        },
    )
    .await;
    let mut log = broker.log().await;
    let mut admin = broker.admin().await;

    let status = log
        .produce(produce("nope", 0, batch("x", 1, 1, 1)))
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "unknown topic \"nope\"");

    let status = log
        .produce(produce("t", 3, batch("x", 1, 1, 1)))
        .await
        .unwrap_err();
    expect_status(&status, Code::NotFound, "unknown partition 3");

    let status = log
        .produce(produce("__consumer_offsets", 0, batch("x", 1, 1, 1)))
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "internal topics");

    let status = create_error(&mut admin, "bad/name", 1).await;
    expect_status(&status, Code::InvalidArgument, "invalid topic \"bad/name\"");

    let status = create_error(&mut admin, "t", 1).await;
    assert_eq!(status.code(), Code::AlreadyExists);

    let status = create_error(&mut admin, "zero", 0).await;
    expect_status(&status, Code::InvalidArgument, "partitions");

    // A corrupted batch: the check that failed is named, nothing is written.
    let mut corrupt = batch("x", 3, 20, 1);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    let status = log.produce(produce("t", 0, corrupt)).await.unwrap_err();
    expect_status(&status, Code::InvalidArgument, "checksum mismatch");

    let status = log
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            batch: bytes::Bytes::from_static(b"short"),
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "truncated");

    // Over the topic's max_batch_bytes.
    let status = log
        .produce(produce("t", 0, batch("big", 100, 1000, 1)))
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "too large");

    // Over the broker's message bound: refused by the transport, before any work, naming
    // the limit (not OUT_OF_RANGE, which means an offset here).
    let status = log
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            batch: bytes::Bytes::from(vec![0u8; 3 << 20]),
        })
        .await
        .unwrap_err();
    expect_status(
        &status,
        Code::InvalidArgument,
        "max_message_bytes (2097152 bytes)",
    );

    // Nothing of the bad batches was written.
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
    assert_eq!(fetched.high_watermark, 0);

    let status = log
        .fetch(pb::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::OutOfRange, "offset 5 out of range");

    let status = log
        .list_offsets(pb::ListOffsetsRequest {
            topic: "t".into(),
            partition: 0,
            spec: 0,
            timestamp_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("spec"), "{}", status.message());
    broker.stop().await;
}

#[tokio::test]
async fn topics_admin_and_group_offsets_survive_restart() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "orders", 3, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    log.produce(produce("orders", 2, batch("o", 4, 10, now_ms())))
        .await
        .unwrap();
    let mut groups = broker.groups().await;
    groups
        .commit_offsets(pb::CommitOffsetsRequest {
            member_id: String::new(),
            generation: 0,
            group: "billing".into(),
            topic: "orders".into(),
            offsets: vec![pb::PartitionOffset {
                partition: 2,
                offset: 3,
                metadata: "m".into(),
            }],
        })
        .await
        .unwrap();
    // The same partition twice in one commit: refused, naming it.
    let status = groups
        .commit_offsets(pb::CommitOffsetsRequest {
            member_id: String::new(),
            generation: 0,
            group: "billing".into(),
            topic: "orders".into(),
            offsets: vec![
                pb::PartitionOffset {
                    partition: 1,
                    offset: 0,
                    metadata: String::new(),
                };
                2
            ],
        })
        .await
        .unwrap_err();
    expect_status(&status, Code::InvalidArgument, "partition 1 twice");
    let (dir, keep) = broker.stop_keeping_dir().await;
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let topics = broker
        .admin()
        .await
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert_eq!(
        topics.len(),
        1,
        "internal topics are not listed: {topics:?}"
    );
    assert_eq!(topics[0].name, "orders");
    let described = broker
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(described.partitions.len(), 3);
    assert_eq!(described.partitions[2].latest_offset, 4);
    let committed = broker
        .groups()
        .await
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: "billing".into(),
            topic: "orders".into(),
            partitions: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(committed.len(), 3);
    assert_eq!(committed[2].offset, Some(3));
    assert_eq!(committed[2].metadata, "m");
    assert_eq!(committed[0].offset, None);
    // Delete and recreate: empty again.
    let mut admin = broker.admin().await;
    admin
        .delete_topic(pb::DeleteTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap();
    let status = admin
        .describe_topic(pb::DescribeTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    create_topic(&broker, "orders", 1, pb::TopicConfig::default()).await;
    broker.stop().await;
    drop(keep);
}

#[tokio::test(start_paused = true)]
async fn committed_offsets_are_compacted_and_survive_restart() {
    // On paused time with the broker's clock following it: the background pass runs when the
    // test advances time, not after a sleep.
    let env = sluice_server::Env {
        clock: sluice_server::Clock::follow_tokio(1_767_225_600_000),
        ..sluice_server::Env::default()
    };
    let broker = TestBroker::start_env(None, env, |c| {
        c.offsets_segment_bytes = 4096;
        c.compaction_check_interval_ms = 60_000;
    })
    .await;
    create_topic(&broker, "t", 4, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    for partition in 0..4 {
        log.produce(produce("t", partition, batch("x", 100, 1, now_ms())))
            .await
            .unwrap();
    }
    let mut groups = broker.groups().await;
    // A group that commits once, first: its only record sits in the oldest segment, at log
    // offset 0, and compaction must keep it there (the latest record of its key).
    groups
        .commit_offsets(pb::CommitOffsetsRequest {
            member_id: String::new(),
            generation: 0,
            group: "early".into(),
            topic: "t".into(),
            offsets: vec![pb::PartitionOffset {
                partition: 3,
                offset: 42,
                metadata: "once".into(),
            }],
        })
        .await
        .unwrap();
    let rounds = 60u64;
    for round in 0..rounds {
        for group in ["a", "b"] {
            groups
                .commit_offsets(pb::CommitOffsetsRequest {
                    member_id: String::new(),
                    generation: 0,
                    group: group.into(),
                    topic: "t".into(),
                    offsets: (0..4)
                        .map(|partition| pb::PartitionOffset {
                            partition,
                            offset: round + u64::from(partition),
                            metadata: format!("{group}-{round}"),
                        })
                        .collect(),
                })
                .await
                .unwrap();
        }
    }
    // 480 commits of ~40 bytes span several 4 KiB segments; compaction keeps the 9 latest
    // records of the sealed ones, on the next background pass.
    let mut admin = broker.admin().await;
    // The pass runs on real threads (blocking pool): bound the wait in real time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::advance(Duration::from_secs(60)).await;
        let internal = admin
            .describe_topic(pb::DescribeTopicRequest {
                name: "__consumer_offsets".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .topic
            .unwrap();
        let partition = &internal.partitions[0];
        // What is left: the 9 latest records of the sealed segments (each segment rewritten
        // in place: their sizes before the pass grouped them) and the active segment, at most
        // one segment's worth of the ~20 KiB committed.
        assert_eq!(
            internal.config.as_ref().map(|c| c.cleanup()),
            Some(pb::CleanupPolicy::Compact),
            "{internal:?}"
        );
        if partition.size_bytes <= 4096 {
            assert_eq!(partition.earliest_offset, 0, "the early commit stays");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "offsets never compacted: {partition:?}"
        );
    }
    let (dir, keep) = broker.stop_keeping_dir().await;
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let mut groups = broker.groups().await;
    for group in ["a", "b"] {
        let committed = groups
            .fetch_offsets(pb::FetchOffsetsRequest {
                group: group.into(),
                topic: "t".into(),
                partitions: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .offsets;
        for c in committed {
            assert_eq!(
                c.offset,
                Some(rounds - 1 + u64::from(c.partition)),
                "{group}"
            );
            assert_eq!(c.metadata, format!("{group}-{}", rounds - 1));
        }
    }
    let early = groups
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: "early".into(),
            topic: "t".into(),
            partitions: vec![3],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(early[0].offset, Some(42));
    assert_eq!(early[0].metadata, "once");
    broker.stop().await;
    drop(keep);
}

#[tokio::test]
async fn an_offsets_topic_made_before_internal_topics_were_compacted_is_switched_to_compaction() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "t", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    log.produce(produce("t", 0, batch("x", 10, 1, now_ms())))
        .await
        .unwrap();
    let commit = |offset| pb::CommitOffsetsRequest {
        member_id: String::new(),
        generation: 0,
        group: "g".into(),
        topic: "t".into(),
        offsets: vec![pb::PartitionOffset {
            partition: 0,
            offset,
            metadata: String::new(),
        }],
    };
    broker
        .groups()
        .await
        .commit_offsets(commit(7))
        .await
        .unwrap();
    let (dir, keep) = broker.stop_keeping_dir().await;
    // Write the metadata as a broker from before compaction did: no cleanup fields at all.
    let meta_path = dir.join("topics/__consumer_offsets/topic.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let settings = meta["settings"].as_object_mut().unwrap();
    assert_eq!(settings.remove("cleanup"), Some("compact".into()));
    settings.remove("delete_retention_ms");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();

    let broker = TestBroker::start_in(dir, |_| {}).await;
    let described = broker
        .admin()
        .await
        .describe_topic(pb::DescribeTopicRequest {
            name: "__consumer_offsets".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(
        described.config.map(|c| c.cleanup()),
        Some(pb::CleanupPolicy::Compact)
    );
    let stored = std::fs::read_to_string(&meta_path).unwrap();
    assert!(stored.contains("\"cleanup\": \"compact\""), "{stored}");
    let mut groups = broker.groups().await;
    let fetched = groups
        .fetch_offsets(pb::FetchOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            partitions: vec![0],
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(fetched[0].offset, Some(7));
    // And the switched topic takes commits as before.
    groups.commit_offsets(commit(8)).await.unwrap();
    broker.stop().await;
    drop(keep);
}

#[tokio::test]
async fn a_connection_beyond_the_bound_is_refused_at_once_and_served_once_one_closes() {
    let broker = TestBroker::start_with(|c| c.max_connections = 1).await;
    let mut first = broker.admin().await;
    first.list_topics(pb::ListTopicsRequest {}).await.unwrap();
    // A second connection is not left waiting: it is told the broker is at its limit...
    let second = tokio::time::timeout(Duration::from_secs(10), async {
        let channel = sluice_tests::endpoint(broker.addr).connect().await.unwrap();
        pb::admin_client::AdminClient::new(channel)
            .list_topics(pb::ListTopicsRequest {})
            .await
    })
    .await
    .expect("refused at once, not left hanging");
    expect_status(
        &second.unwrap_err(),
        Code::ResourceExhausted,
        "connection limit (1)",
    );
    // ...and is served once the first closes.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let channel = sluice_tests::endpoint(broker.addr).connect().await.unwrap();
        let answered = pb::admin_client::AdminClient::new(channel)
            .list_topics(pb::ListTopicsRequest {})
            .await;
        match answered {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "{status:?}");
                tokio::task::yield_now().await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    broker.stop().await;
}
