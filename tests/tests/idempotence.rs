//! Idempotent producers against a real broker on loopback: the sequence check (raw gRPC),
//! producer state across restarts, and the pipelined client producer through a proxy that
//! loses responses and cuts connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use sluice_client::{Producer, ProducerConfig, ProducerRecord, RetryPolicy};
use sluice_proto::v1 as pb;
use sluice_storage::format::BatchBuilder;
use sluice_tests::{
    CutProxy, TestBroker, create_topic, decode, expect_status, fetch_request, produce_request,
};
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// A batch of an idempotent producer: `count` records valued `"{tag}-{i}"`.
fn idempotent_batch(producer: (i64, i16), sequence: i32, tag: &str, count: u32) -> Bytes {
    let mut builder = BatchBuilder::new().producer(producer.0, producer.1, sequence);
    for i in 0..count {
        builder
            .push(1_000, None, Some(format!("{tag}-{i}").as_bytes()), &[])
            .unwrap();
    }
    builder.finish().unwrap().freeze()
}

async fn init(
    broker_log: &mut pb::log_client::LogClient<tonic::transport::Channel>,
    id: Option<&str>,
) -> (i64, i16) {
    let response = broker_log
        .init_producer(pb::InitProducerRequest {
            transactional_id: id.map(str::to_owned),
        })
        .await
        .unwrap()
        .into_inner();
    (response.producer_id, response.producer_epoch as i16)
}

/// Every (offset, value) of a partition, read straight from the broker.
async fn read_all(addr: std::net::SocketAddr, topic: &str, partition: u32) -> Vec<(u64, String)> {
    let mut log = pb::log_client::LogClient::new(sluice_tests::connect(addr).await)
        .max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let response = log
            .fetch(fetch_request(topic, partition, offset))
            .await
            .unwrap()
            .into_inner();
        let records = decode(&response.batches);
        let Some(last) = records.last() else {
            return out;
        };
        offset = last.0 + 1;
        out.extend(
            records
                .into_iter()
                .map(|(o, v)| (o, String::from_utf8(v).unwrap())),
        );
        if offset >= response.high_watermark {
            return out;
        }
    }
}

fn kind(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(sluice_proto::ERROR_KIND)
        .and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn sequences_append_once_refuse_gaps_and_fence_older_epochs() {
    let broker = TestBroker::start_with(|c| c.producer_reorder_wait_ms = 50).await;
    create_topic(&broker, "events", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let first = init(&mut log, None).await;
    let second = init(&mut log, None).await;
    assert_ne!(first.0, second.0, "each producer gets its own id");
    assert_eq!((first.1, second.1), (0, 0));

    let log_for_produce = log.clone();
    let produce = |batch: Bytes| {
        let mut log = log_for_produce.clone();
        async move { log.produce(produce_request("events", 0, batch)).await }
    };
    let appended = produce(idempotent_batch(first, 0, "a", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            appended.base_offset,
            appended.last_offset,
            appended.duplicate
        ),
        (0, 2, false)
    );
    // The same batch again (a retry): the original's offsets, nothing appended.
    let again = produce(idempotent_batch(first, 0, "a", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.base_offset, again.last_offset, again.duplicate),
        (0, 2, true)
    );
    assert_eq!(again.append_time_ms, appended.append_time_ms);
    let next = produce(idempotent_batch(first, 3, "b", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (next.base_offset, next.last_offset, next.duplicate),
        (3, 4, false)
    );

    // A gap: refused after the reorder wait, naming both sequences.
    let gap = produce(idempotent_batch(first, 10, "c", 1))
        .await
        .unwrap_err();
    expect_status(
        &gap,
        Code::FailedPrecondition,
        "expected base_sequence 5, received 10",
    );
    assert_eq!(kind(&gap), Some("out-of-order-sequence"));
    // An old batch that is not one of the last five kept is out of order too.
    let stale = produce(idempotent_batch(first, 1, "a", 2))
        .await
        .unwrap_err();
    expect_status(&stale, Code::FailedPrecondition, "received 1");

    // A transactional id keeps its producer id and bumps the epoch; the older is fenced.
    let old = init(&mut log, Some("billing")).await;
    let new = init(&mut log, Some("billing")).await;
    assert_eq!((new.0, new.1), (old.0, old.1 + 1));
    produce(idempotent_batch(old, 0, "old", 1)).await.unwrap();
    produce(idempotent_batch(new, 0, "new", 1)).await.unwrap();
    let fenced = produce(idempotent_batch(old, 1, "old", 1))
        .await
        .unwrap_err();
    expect_status(&fenced, Code::FailedPrecondition, "is fenced");
    assert!(
        fenced.message().contains(&format!("epoch {}", new.1)),
        "{fenced:?}"
    );
    assert_eq!(kind(&fenced), Some("producer-fenced"));

    // Ids the broker never issued, negative sequences and bad transactional ids are refused.
    let unknown = produce(idempotent_batch((first.0 + 1000, 0), 0, "x", 1))
        .await
        .unwrap_err();
    expect_status(
        &unknown,
        Code::InvalidArgument,
        "was not issued by this broker",
    );
    let negative = produce(idempotent_batch((-7, 0), 0, "x", 1))
        .await
        .unwrap_err();
    expect_status(&negative, Code::InvalidArgument, "producer_id");
    let bad_sequence = produce(idempotent_batch(second, -3, "x", 1))
        .await
        .unwrap_err();
    expect_status(&bad_sequence, Code::InvalidArgument, "must not be negative");
    let bad_id = log
        .init_producer(pb::InitProducerRequest {
            transactional_id: Some(String::new()),
        })
        .await
        .unwrap_err();
    expect_status(&bad_id, Code::InvalidArgument, "transactional_id");

    assert_eq!(
        values(&broker, 0).await,
        ["a-0", "a-1", "a-2", "b-0", "b-1", "old-0", "new-0"]
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_batch_that_overtakes_its_predecessor_waits_for_it() {
    let broker = TestBroker::start_with(|c| c.producer_reorder_wait_ms = 30_000).await;
    create_topic(&broker, "events", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let producer = init(&mut log, None).await;
    // The second batch goes first: it must wait for the first, then land after it.
    let second = tokio::spawn({
        let mut log = log.clone();
        async move {
            log.produce(produce_request(
                "events",
                0,
                idempotent_batch(producer, 5, "second", 2),
            ))
            .await
        }
    });
    tokio::task::yield_now().await;
    let first = log
        .produce(produce_request(
            "events",
            0,
            idempotent_batch(producer, 0, "first", 5),
        ))
        .await
        .unwrap()
        .into_inner();
    let second = second.await.unwrap().unwrap().into_inner();
    assert_eq!((first.base_offset, second.base_offset), (0, 5));
    broker.stop().await;
}

fn remove_snapshots(dir: &Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            removed += remove_snapshots(&path);
        } else if path.extension().is_some_and(|e| e == "snapshot") {
            std::fs::remove_file(&path).unwrap();
            removed += 1;
        }
    }
    removed
}

#[tokio::test]
async fn producer_state_survives_restarts_from_its_snapshot_and_from_the_log() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "events", 1, pb::TopicConfig::default()).await;
    let mut log = broker.log().await;
    let producer = init(&mut log, None).await;
    let batch = idempotent_batch(producer, 0, "a", 4);
    let appended = log
        .produce(produce_request("events", 0, batch.clone()))
        .await
        .unwrap()
        .into_inner();

    // A clean restart snapshots the state; the retry is answered from it.
    let broker = broker.restart(Default::default(), |_| {}).await;
    let mut log = broker.log().await;
    let retried = log
        .produce(produce_request("events", 0, batch.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.duplicate);
    assert_eq!(
        (retried.base_offset, retried.last_offset),
        (appended.base_offset, appended.last_offset)
    );
    // A new producer id after the restart is not one issued before it.
    let other = init(&mut log, None).await;
    assert!(other.0 > producer.0);
    let next = idempotent_batch(producer, 4, "b", 1);
    log.produce(produce_request("events", 0, next.clone()))
        .await
        .unwrap();

    // Without any snapshot the state is replayed from the log's tail.
    let (dir, keep) = broker.stop_keeping_dir().await;
    assert!(
        remove_snapshots(&dir) > 0,
        "the clean stop wrote a producer snapshot"
    );
    let broker = TestBroker::start_in(dir, |_| {}).await;
    let mut log = broker.log().await;
    let retried = log
        .produce(produce_request("events", 0, next))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.duplicate);
    assert_eq!(retried.base_offset, 4);
    let gap = log
        .produce(produce_request(
            "events",
            0,
            idempotent_batch(producer, 9, "c", 1),
        ))
        .await;
    assert!(gap.is_err());
    assert_eq!(read_all(broker.addr, "events", 0).await.len(), 5);
    broker.stop().await;
    drop(keep);
}

fn patient_retry() -> RetryPolicy {
    RetryPolicy::default()
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(50))
        .max_attempts(200)
}

async fn producer_via(proxy: &CutProxy, config: ProducerConfig) -> Producer {
    Producer::connect(
        config
            .broker(proxy.addr.to_string())
            .retry(patient_retry())
            .request_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap()
}

/// Sends `value` to `events` and waits for its acknowledgement.
async fn deliver(producer: &Producer, value: &'static str) -> sluice_client::RecordMetadata {
    producer
        .send("events", ProducerRecord::new(value))
        .await
        .unwrap()
        .await
        .unwrap()
}

/// The values of `events`/`partition`, in offset order.
async fn values(broker: &TestBroker, partition: u32) -> Vec<String> {
    read_all(broker.addr, "events", partition)
        .await
        .into_iter()
        .map(|r| r.1)
        .collect()
}

#[tokio::test]
async fn a_lost_response_is_retried_and_appended_once() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "events", 1, pb::TopicConfig::default()).await;
    let proxy = CutProxy::start(broker.addr).await;
    let producer = producer_via(&proxy, ProducerConfig::new().linger(Duration::ZERO)).await;
    deliver(&producer, "warm-up").await;
    proxy.cut_next_responses(1);
    let delivered = deliver(&producer, "once").await;
    assert_eq!(proxy.responses_cut(), 1, "the response was lost on its way");
    assert_eq!(delivered.offset, 1);
    assert_eq!(values(&broker, 0).await, ["warm-up", "once"]);
    producer.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_lost_response_and_a_broker_restart_before_the_retry_still_append_once() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "events", 1, pb::TopicConfig::default()).await;
    let proxy = CutProxy::start(broker.addr).await;
    let producer = producer_via(&proxy, ProducerConfig::new().linger(Duration::ZERO)).await;
    deliver(&producer, "warm-up").await;
    // The response is lost and the broker looks down until it has restarted.
    proxy.set_refusing(true);
    proxy.cut_next_responses(1);
    let delivery = producer
        .send("events", ProducerRecord::new("once"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while proxy.responses_cut() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the produce never reached the broker"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let broker = broker.restart(Default::default(), |_| {}).await;
    proxy.set_refusing(false);
    let delivered = delivery.await.unwrap();
    assert_eq!(delivered.offset, 1);
    assert_eq!(values(&broker, 0).await, ["warm-up", "once"]);
    producer.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn five_in_flight_with_random_connection_cuts_keep_each_record_once_in_order() {
    const RECORDS: usize = 4000;
    let broker = TestBroker::start_with(|c| c.producer_reorder_wait_ms = 500).await;
    create_topic(&broker, "events", 2, pb::TopicConfig::default()).await;
    let proxy = CutProxy::start(broker.addr).await;
    let producer = producer_via(
        &proxy,
        ProducerConfig::new()
            .linger(Duration::ZERO)
            .batch_bytes(1024)
            .max_in_flight(5),
    )
    .await;
    let mut deliveries = Vec::with_capacity(RECORDS);
    let mut cuts = 0;
    for i in 0..RECORDS {
        let record = ProducerRecord::new(format!("{i:05}")).partition((i % 2) as u32);
        deliveries.push(producer.send("events", record).await.unwrap());
        // Cut every connection now and then, whatever is in flight on it.
        if i % 97 == 50 {
            proxy.cut_all();
            cuts += 1;
        }
        if i % 250 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    assert!(cuts > 30);
    for partition in 0..2u32 {
        let values = values(&broker, partition).await;
        let expected: Vec<String> = (0..RECORDS)
            .filter(|i| (i % 2) as u32 == partition)
            .map(|i| format!("{i:05}"))
            .collect();
        assert_eq!(
            values.len(),
            expected.len(),
            "partition {partition}: each record once"
        );
        assert_eq!(
            values, expected,
            "partition {partition}: in the producer's order"
        );
    }
    producer.close().await;
    broker.stop().await;
}
