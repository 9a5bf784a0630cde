//! sluice-client's Producer and Consumer against a real broker on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use sluice_client::{
    Consumer, ConsumerConfig, OffsetReset, Partitioner, Producer, ProducerConfig, ProducerRecord,
    StartFrom,
};
use sluice_proto::v1 as pb;
use sluice_tests::{TestBroker, create_topic};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn producer_batches_keys_and_consumer_reads_them_back() {
    let broker = TestBroker::start().await;
    create_topic(&broker, "orders", 3, pb::TopicConfig::default()).await;
    let producer = Producer::connect(
        ProducerConfig::new()
            .broker(broker.addr.to_string())
            .linger(Duration::from_millis(2))
            .partitioner(Partitioner::KeyHash),
    )
    .await
    .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..300u32 {
        let key = format!("customer-{}", i % 7);
        let record = ProducerRecord::with_key(key.clone(), format!("order-{i}"))
            .header("source", Some(Bytes::from_static(b"test")));
        deliveries.push((key, i, producer.send("orders", record).await.unwrap()));
    }
    producer.flush().await;
    let mut acked: HashMap<(u32, u64), (String, u32)> = HashMap::new();
    let mut partition_of_key: HashMap<String, u32> = HashMap::new();
    for (key, i, delivery) in deliveries {
        let meta = delivery.await.unwrap();
        // One key, one partition.
        let partition = *partition_of_key
            .entry(key.clone())
            .or_insert(meta.partition);
        assert_eq!(partition, meta.partition, "key {key} moved partitions");
        assert!(
            acked
                .insert((meta.partition, meta.offset), (key, i))
                .is_none()
        );
    }
    producer.close().await;

    let mut consumer = Consumer::connect(
        ConsumerConfig::new()
            .broker(broker.addr.to_string())
            .group("auditors"),
    )
    .await
    .unwrap();
    for partition in 0..3 {
        consumer
            .assign("orders", partition, StartFrom::Earliest)
            .await
            .unwrap();
    }
    let mut seen = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer stalled at {}",
            seen.len()
        );
        for record in consumer.poll().await.unwrap() {
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            let key = String::from_utf8(record.key.unwrap().to_vec()).unwrap();
            assert_eq!(record.headers[0].0, "source");
            assert!(
                seen.insert((record.partition, record.offset), (key, value))
                    .is_none()
            );
        }
    }
    // Exactly what was acknowledged, where it was acknowledged, in send order per key.
    let mut last_per_key: HashMap<String, u32> = HashMap::new();
    let mut positions: Vec<_> = seen.keys().copied().collect();
    positions.sort();
    for position in positions {
        let (key, value) = &seen[&position];
        let (acked_key, i) = &acked[&position];
        assert_eq!(key, acked_key);
        assert_eq!(value, &format!("order-{i}"));
        if let Some(previous) = last_per_key.insert(key.clone(), *i) {
            assert!(previous < *i, "key {key}: {previous} after {i}");
        }
    }
    // Commit, then a new consumer of the group resumes at the end.
    consumer.commit().await.unwrap();
    let mut resumed = Consumer::connect(
        ConsumerConfig::new()
            .broker(broker.addr.to_string())
            .group("auditors"),
    )
    .await
    .unwrap();
    for partition in 0..3 {
        let position = resumed
            .assign(
                "orders",
                partition,
                StartFrom::Committed {
                    fallback: OffsetReset::Earliest,
                },
            )
            .await
            .unwrap();
        assert_eq!(position, consumer.position("orders", partition).unwrap());
    }
    broker.stop().await;
}

#[tokio::test]
async fn producer_reports_broker_errors_per_record() {
    let broker = TestBroker::start().await;
    create_topic(
        &broker,
        "small",
        1,
        pb::TopicConfig {
            max_batch_bytes: Some(4096),
            ..Default::default()
        },
    )
    .await;
    let producer = Producer::connect(ProducerConfig::new().broker(broker.addr.to_string()))
        .await
        .unwrap();
    // Unknown topic: the error names it.
    let error = match producer.send("missing", ProducerRecord::new("x")).await {
        Ok(delivery) => delivery.await.unwrap_err(),
        Err(error) => error,
    };
    assert!(error.to_string().contains("missing"), "{error}");
    // A record too large for the topic's batches is refused, the next one goes through.
    let big = producer
        .send("small", ProducerRecord::new(vec![b'x'; 10_000]))
        .await;
    let big = match big {
        Ok(delivery) => delivery.await,
        Err(error) => Err(error),
    };
    assert!(big.is_err(), "a 10 kB record fit a 4 kB batch limit");
    let ok = producer
        .send("small", ProducerRecord::new("fits"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ok.partition, 0);
    producer.close().await;
    broker.stop().await;
}
