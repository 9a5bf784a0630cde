//! The client against an in-test broker: a small in-memory implementation of the `Log`,
//! `Admin` and `Groups` services on `127.0.0.1:0`, with switches to inject back pressure,
//! refusals and stalls. It validates batches with the storage crate's `BatchView::new`, as the
//! real broker does, so what the producer encodes is checked byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::partitioner::partition_for_key;
use sluice_client::{
    Consumer, ConsumerConfig, Error, OffsetReset, Partitioner, Producer, ProducerConfig,
    ProducerRecord, RecordMetadata, RetryPolicy, StartFrom,
};
use sluice_proto::v1::admin_server::{Admin, AdminServer};
use sluice_proto::v1::groups_server::{Groups, GroupsServer};
use sluice_proto::v1::log_server::{Log, LogServer};
use sluice_proto::v1::*;
use sluice_storage::format::{BatchPrefix, BatchView, stamp_base_offset};
use tokio::sync::Notify;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

#[derive(Default)]
struct PartitionLog {
    /// `(base_offset, next_offset, max_timestamp, batch)`.
    batches: Vec<(u64, u64, i64, Bytes)>,
    earliest: u64,
    next: u64,
}

#[derive(Default)]
struct Fake {
    topics: Mutex<HashMap<String, Vec<PartitionLog>>>,
    committed: Mutex<HashMap<(String, String, u32), u64>>,
    appended: Notify,
    /// Produce calls answered (any answer).
    produce_calls: AtomicU32,
    /// The next this many produce calls get RESOURCE_EXHAUSTED with `retry-after-ms: 60`.
    busy: AtomicU32,
    /// While set, produce calls fail with this status.
    refuse: Mutex<Option<Status>>,
    /// While set, produce calls wait.
    stalled: AtomicBool,
    unstalled: Notify,
    /// While set, each produce takes 2 ms, so overlapping produces would be seen.
    slow: AtomicBool,
    /// Produce calls running now, and the most seen at once.
    producing: AtomicU32,
    max_producing: AtomicU32,
}

const RETRY_AFTER_MS: u64 = 60;

impl Fake {
    /// Produce after the stall: back pressure, refusal, or a validated append.
    fn append(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        if self
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let mut status = Status::resource_exhausted("partition in-flight bytes at limit");
            status.metadata_mut().insert(
                "retry-after-ms",
                RETRY_AFTER_MS.to_string().parse().unwrap(),
            );
            return Err(status);
        }
        if let Some(status) = self.refuse.lock().unwrap().clone() {
            return Err(status);
        }
        let request = request.into_inner();
        let view = BatchView::new(&request.batch, 4 << 20)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let count = u64::from(view.record_count());
        let max_timestamp = view.max_timestamp();
        let mut topics = self.topics.lock().unwrap();
        let log = topics
            .get_mut(&request.topic)
            .and_then(|logs| logs.get_mut(request.partition as usize))
            .ok_or_else(|| not_found(&request.topic, request.partition))?;
        let base = log.next;
        let mut batch = request.batch.to_vec();
        stamp_base_offset(&mut batch, base);
        log.next += count;
        log.batches
            .push((base, log.next, max_timestamp, Bytes::from(batch)));
        drop(topics);
        self.appended.notify_waiters();
        Ok(Response::new(ProduceResponse {
            base_offset: base,
            last_offset: base + count - 1,
            append_time_ms: 1_700_000_000_000,
            duplicate: false,
        }))
    }

    fn create(&self, topic: &str, partitions: u32) {
        let logs = (0..partitions).map(|_| PartitionLog::default()).collect();
        self.topics.lock().unwrap().insert(topic.to_owned(), logs);
    }

    /// Drops whole batches below `offset`, as retention does.
    fn truncate(&self, topic: &str, partition: u32, offset: u64) {
        let mut topics = self.topics.lock().unwrap();
        let log = &mut topics.get_mut(topic).unwrap()[partition as usize];
        log.batches.retain(|(_, next, _, _)| *next > offset);
        log.earliest = log.batches.first().map_or(log.next, |b| b.0);
        assert_eq!(log.earliest, offset, "truncate at a batch boundary");
    }

    fn batch_count(&self, topic: &str, partition: u32) -> usize {
        self.topics.lock().unwrap()[topic][partition as usize]
            .batches
            .len()
    }
}

fn not_found(topic: &str, partition: u32) -> Status {
    Status::not_found(format!("no partition {topic}/{partition}"))
}

#[tonic::async_trait]
impl Log for Fake {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        loop {
            let notified = self.unstalled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.stalled.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
        self.produce_calls.fetch_add(1, Ordering::SeqCst);
        let now = self.producing.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_producing.fetch_max(now, Ordering::SeqCst);
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let answer = self.append(request);
        self.producing.fetch_sub(1, Ordering::SeqCst);
        answer
    }

    async fn init_producer(
        &self,
        _: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        Err(Status::unimplemented(
            "the fake broker has no idempotent producers",
        ))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let request = request.into_inner();
        let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let topics = self.topics.lock().unwrap();
                let log = topics
                    .get(&request.topic)
                    .and_then(|logs| logs.get(request.partition as usize))
                    .ok_or_else(|| not_found(&request.topic, request.partition))?;
                if request.offset < log.earliest || request.offset > log.next {
                    return Err(Status::out_of_range(format!(
                        "offset {} outside [{}, {})",
                        request.offset, log.earliest, log.next
                    )));
                }
                let mut out = Vec::new();
                for (_, next, _, batch) in &log.batches {
                    if *next <= request.offset {
                        continue;
                    }
                    if !out.is_empty() && out.len() + batch.len() > request.max_bytes as usize {
                        break;
                    }
                    out.extend_from_slice(batch);
                }
                if !out.is_empty() || Instant::now() >= deadline {
                    return Ok(Response::new(FetchResponse {
                        batches: Bytes::from(out),
                        high_watermark: log.next,
                        earliest_offset: log.earliest,
                    }));
                }
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    type SubscribeStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<FetchResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("subscribe"))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let request = request.into_inner();
        let topics = self.topics.lock().unwrap();
        let log = topics
            .get(&request.topic)
            .and_then(|logs| logs.get(request.partition as usize))
            .ok_or_else(|| not_found(&request.topic, request.partition))?;
        let offset = match OffsetSpec::try_from(request.spec) {
            Ok(OffsetSpec::Earliest) => Some(log.earliest),
            Ok(OffsetSpec::Latest) => Some(log.next),
            Ok(OffsetSpec::Timestamp) => log
                .batches
                .iter()
                .find(|(_, _, max_timestamp, _)| *max_timestamp >= request.timestamp_ms)
                .map(|(base, ..)| *base),
            _ => return Err(Status::invalid_argument("spec")),
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            high_watermark: log.next,
            earliest_offset: log.earliest,
        }))
    }
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn list_groups(
        &self,
        _: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no groups"))
    }

    async fn describe_group(
        &self,
        _: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no groups"))
    }

    async fn reset_group_offsets(
        &self,
        _: Request<ResetGroupOffsetsRequest>,
    ) -> Result<Response<ResetGroupOffsetsResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no groups"))
    }

    async fn delete_group(
        &self,
        _: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no groups"))
    }

    async fn alter_topic(
        &self,
        _: Request<sluice_proto::v1::AlterTopicRequest>,
    ) -> Result<Response<sluice_proto::v1::AlterTopicResponse>, Status> {
        Err(Status::unimplemented("the fake broker alters no topics"))
    }

    async fn create_topic(
        &self,
        _request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        Err(Status::unimplemented("create_topic"))
    }

    async fn delete_topic(
        &self,
        _request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("delete_topic"))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        Err(Status::unimplemented("list_topics"))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        let topics = self.topics.lock().unwrap();
        let logs = topics
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("no topic {name:?}")))?;
        let partitions = (0u32..)
            .zip(logs)
            .map(|(partition, log)| PartitionDescription {
                partition,
                earliest_offset: log.earliest,
                latest_offset: log.next,
                log_end_offset: log.next,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(DescribeTopicResponse {
            topic: Some(TopicDescription {
                name,
                config: Some(TopicConfig {
                    max_batch_bytes: Some(4 << 20),
                    ..Default::default()
                }),
                partitions,
            }),
        }))
    }
}

#[tonic::async_trait]
impl Groups for Fake {
    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no membership"))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no membership"))
    }

    async fn leave(&self, _: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        Err(Status::unimplemented("the fake broker has no membership"))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let request = request.into_inner();
        let mut committed = self.committed.lock().unwrap();
        for offset in request.offsets {
            committed.insert(
                (
                    request.group.clone(),
                    request.topic.clone(),
                    offset.partition,
                ),
                offset.offset,
            );
        }
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let request = request.into_inner();
        let committed = self.committed.lock().unwrap();
        let offsets = request
            .partitions
            .iter()
            .map(|&partition| CommittedOffset {
                partition,
                offset: committed
                    .get(&(request.group.clone(), request.topic.clone(), partition))
                    .copied(),
                metadata: String::new(),
            })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }
}

async fn start(fake: Arc<Fake>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .add_service(LogServer::from_arc(fake.clone()))
        .add_service(AdminServer::from_arc(fake.clone()))
        .add_service(GroupsServer::from_arc(fake))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    address
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::new()
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(50))
        .max_attempts(5)
}

/// A producer of the plain (not idempotent) kind, one request in flight per partition: the
/// fake broker keeps no producer state (the idempotent producer is tested against the real
/// broker in `tests/tests/idempotence.rs`).
async fn producer(address: SocketAddr, config: ProducerConfig) -> Producer {
    let config = config.idempotence(false).max_in_flight(1);
    Producer::connect(config.broker(address.to_string()).retry(fast_retry()))
        .await
        .unwrap()
}

async fn consumer(address: SocketAddr, group: Option<&str>) -> Consumer {
    let mut config = ConsumerConfig::new()
        .broker(address.to_string())
        .max_wait(Duration::from_millis(50))
        .retry(fast_retry());
    if let Some(group) = group {
        config = config.group(group);
    }
    Consumer::connect(config).await.unwrap()
}

/// Sends `values` as keyless records, flushes, and returns where they were appended.
async fn send_values(
    producer: &Producer,
    topic: &str,
    values: impl IntoIterator<Item = String>,
) -> Vec<RecordMetadata> {
    let mut deliveries = Vec::new();
    for value in values {
        deliveries.push(
            producer
                .send(topic, ProducerRecord::new(value))
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    let mut appended = Vec::new();
    for delivery in deliveries {
        appended.push(delivery.await.unwrap());
    }
    appended
}

async fn poll_until(consumer: &mut Consumer, count: usize) -> Vec<sluice_client::ConsumedRecord> {
    let mut records = Vec::new();
    for _ in 0..100 {
        records.extend(consumer.poll().await.unwrap());
        if records.len() >= count {
            break;
        }
    }
    assert_eq!(records.len(), count);
    records
}

#[tokio::test]
async fn produce_then_consume_every_partition() {
    let fake = Arc::new(Fake::default());
    fake.create("orders", 3);
    let address = start(fake.clone()).await;
    let producer = producer(address, ProducerConfig::new()).await;

    let mut deliveries = Vec::new();
    for i in 0..300u32 {
        let record = if i.is_multiple_of(3) {
            ProducerRecord::new(format!("value-{i}"))
        } else {
            ProducerRecord::with_key(format!("user-{}", i % 10), format!("value-{i}"))
        }
        .header("seq", Some(Bytes::from(i.to_string())))
        .timestamp_ms(1_000 + i64::from(i));
        deliveries.push((i, producer.send("orders", record).await.unwrap()));
    }
    let mut sent: HashMap<u32, Vec<(u64, u32)>> = HashMap::new();
    for (i, delivery) in deliveries {
        let metadata = delivery.await.unwrap();
        assert_eq!(&*metadata.topic, "orders");
        assert_eq!(metadata.append_time_ms, 1_700_000_000_000);
        if !i.is_multiple_of(3) {
            let key = format!("user-{}", i % 10);
            assert_eq!(metadata.partition, partition_for_key(key.as_bytes(), 3));
        }
        sent.entry(metadata.partition)
            .or_default()
            .push((metadata.offset, i));
    }
    // Offsets per partition are contiguous from 0, in send order.
    for (partition, records) in &sent {
        let offsets: Vec<u64> = records.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..records.len() as u64).collect::<Vec<_>>(),
            "partition {partition}"
        );
        let order: Vec<u32> = records.iter().map(|(_, i)| *i).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "partition {partition} keeps send order");
    }
    // Batching happened: far fewer produce calls than records.
    let calls = fake.produce_calls.load(Ordering::SeqCst);
    assert!(calls < 100, "{calls} produce calls for 300 records");

    let mut consumer = consumer(address, None).await;
    for partition in 0..3 {
        assert_eq!(
            consumer
                .assign("orders", partition, StartFrom::Earliest)
                .await
                .unwrap(),
            0
        );
    }
    let records = poll_until(&mut consumer, 300).await;
    for record in &records {
        let i: u32 = std::str::from_utf8(record.headers[0].1.as_deref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            record.value.as_deref(),
            Some(format!("value-{i}").as_bytes())
        );
        assert_eq!(record.timestamp_ms, 1_000 + i64::from(i));
        assert_eq!(record.key.is_none(), i.is_multiple_of(3));
        assert!(sent[&record.partition].contains(&(record.offset, i)));
    }
    for partition in 0..3 {
        assert_eq!(
            consumer.position("orders", partition),
            Some(sent[&partition].len() as u64)
        );
    }
    producer.close().await;
}

#[tokio::test]
async fn back_pressure_is_retried_after_the_hint() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 1);
    let address = start(fake.clone()).await;
    let producer = producer(address, ProducerConfig::new()).await;
    fake.busy.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let delivery = producer.send("t", ProducerRecord::new("x")).await.unwrap();
    let metadata = delivery.await.unwrap();
    assert_eq!(metadata.offset, 0);
    assert_eq!(fake.produce_calls.load(Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= Duration::from_millis(2 * RETRY_AFTER_MS),
        "retried after {:?}, before the broker's hint",
        started.elapsed()
    );
    // Busy for longer than the policy's attempts: the records fail with the broker's status.
    fake.busy.store(100, Ordering::SeqCst);
    let delivery = producer.send("t", ProducerRecord::new("y")).await.unwrap();
    let error = delivery.await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Broker {
                code: Code::ResourceExhausted,
                attempts: 5,
                ..
            }
        ),
        "{error}"
    );
    producer.close().await;
}

#[tokio::test]
async fn one_produce_in_flight_per_partition_keeps_order_under_retries() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 1);
    let address = start(fake.clone()).await;
    let config = ProducerConfig::new()
        .batch_bytes(1024)
        .linger(Duration::ZERO);
    let producer = producer(address, config).await;
    fake.slow.store(true, Ordering::SeqCst);
    fake.busy.store(3, Ordering::SeqCst);
    let mut deliveries = Vec::new();
    for i in 0..60u32 {
        let record = ProducerRecord::new(format!("{i:0>100}"));
        deliveries.push(producer.send("t", record).await.unwrap());
    }
    for (i, delivery) in (0u64..).zip(deliveries) {
        assert_eq!(
            delivery.await.unwrap().offset,
            i,
            "send order is offset order"
        );
    }
    assert!(
        fake.batch_count("t", 0) >= 6,
        "{} batches",
        fake.batch_count("t", 0)
    );
    assert_eq!(fake.max_producing.load(Ordering::SeqCst), 1);
    producer.close().await;
}

#[tokio::test]
async fn a_refused_batch_fails_each_of_its_records_and_order_holds() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 1);
    let address = start(fake.clone()).await;
    let producer = producer(
        address,
        ProducerConfig::new().linger(Duration::from_millis(50)),
    )
    .await;
    *fake.refuse.lock().unwrap() = Some(Status::invalid_argument("batch too large: 9 bytes"));
    let mut deliveries = Vec::new();
    for i in 0..5 {
        deliveries.push(
            producer
                .send("t", ProducerRecord::new(format!("{i}")))
                .await
                .unwrap(),
        );
    }
    producer.flush().await;
    assert_eq!(
        fake.produce_calls.load(Ordering::SeqCst),
        1,
        "one batch, not retried"
    );
    for delivery in deliveries {
        let error = delivery.await.unwrap_err();
        assert_eq!(error.code(), Some(Code::InvalidArgument));
        assert!(
            error.to_string().contains("batch too large: 9 bytes"),
            "{error}"
        );
        assert!(error.to_string().contains("produce to t/0"), "{error}");
    }
    *fake.refuse.lock().unwrap() = None;
    let delivery = producer
        .send("t", ProducerRecord::new("after"))
        .await
        .unwrap();
    assert_eq!(delivery.await.unwrap().offset, 0);

    // Unknown topics and partitions fail at send.
    let error = producer
        .send("nope", ProducerRecord::new("x"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::NotFound));
    let error = producer
        .send("t", ProducerRecord::new("x").partition(1))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        Error::UnknownPartition {
            partition: 1,
            partitions: 1,
            ..
        }
    ));
    producer.close().await;
    let error = producer
        .send("t", ProducerRecord::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Closed));
}

#[tokio::test]
async fn a_full_buffer_blocks_send_then_fails_after_max_block() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 1);
    let address = start(fake.clone()).await;
    let config = ProducerConfig::new()
        .batch_bytes(1024)
        .buffer_bytes(2048)
        .linger(Duration::ZERO)
        .max_block(Duration::from_millis(100));
    let producer = producer(address, config).await;
    fake.stalled.store(true, Ordering::SeqCst);
    let value = vec![7u8; 900];
    let first = producer
        .send("t", ProducerRecord::new(value.clone()))
        .await
        .unwrap();
    let second = producer
        .send("t", ProducerRecord::new(value.clone()))
        .await
        .unwrap();
    let started = Instant::now();
    let error = producer
        .send("t", ProducerRecord::new(value.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::BufferFull {
                buffer_bytes: 2048,
                ..
            }
        ),
        "{error}"
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    // A record larger than the whole buffer is refused at once.
    let error = producer
        .send("t", ProducerRecord::new(vec![0u8; 4096]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::RecordTooLarge {
                limit: "buffer_bytes",
                ..
            }
        ),
        "{error}"
    );

    // Once the broker answers, space frees and sends go through.
    let blocked = {
        let producer = producer.clone();
        let value = value.clone();
        tokio::spawn(async move { producer.send("t", ProducerRecord::new(value)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    fake.stalled.store(false, Ordering::SeqCst);
    fake.unstalled.notify_waiters();
    assert_eq!(first.await.unwrap().offset, 0);
    assert_eq!(second.await.unwrap().offset, 1);
    let third = blocked.await.unwrap().unwrap();
    assert_eq!(third.await.unwrap().offset, 2);
    // Each 900-byte record went in its own batch (two do not fit 1 KiB).
    assert_eq!(fake.batch_count("t", 0), 3);
    producer.close().await;
}

#[tokio::test]
async fn retention_below_the_position_is_an_error_naming_offsets() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 1);
    let address = start(fake.clone()).await;
    let producer = producer(address, ProducerConfig::new()).await;
    for round in 0..2 {
        send_values(
            &producer,
            "t",
            (round * 5..round * 5 + 5).map(|i| i.to_string()),
        )
        .await;
    }
    assert_eq!(fake.batch_count("t", 0), 2);

    // Starting in the middle of a batch skips the records before the offset.
    let mut consumer = consumer(address, None).await;
    consumer.assign("t", 0, StartFrom::Offset(3)).await.unwrap();
    let records = poll_until(&mut consumer, 7).await;
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (3..10).collect::<Vec<_>>());
    assert_eq!(records[0].value.as_deref(), Some(&b"3"[..]));

    fake.truncate("t", 0, 5);
    consumer.seek("t", 0, StartFrom::Offset(0)).await.unwrap();
    let error = consumer.poll().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::OffsetOutOfRange {
                offset: 0,
                earliest: 5,
                high_watermark: 10,
                partition: 0,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(
        consumer.position("t", 0),
        Some(0),
        "a failed poll moves nothing"
    );
    assert_eq!(consumer.seek("t", 0, StartFrom::Earliest).await.unwrap(), 5);
    let records = poll_until(&mut consumer, 5).await;
    assert_eq!(records[0].offset, 5);
    assert_eq!(consumer.seek("t", 0, StartFrom::Latest).await.unwrap(), 10);
    assert_eq!(
        consumer
            .seek("t", 0, StartFrom::Timestamp(i64::MAX))
            .await
            .unwrap(),
        10
    );
    let error = consumer
        .seek("t", 1, StartFrom::Earliest)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotAssigned { partition: 1, .. }));
    producer.close().await;
}

#[tokio::test]
async fn long_poll_returns_when_records_arrive() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 2);
    let address = start(fake.clone()).await;
    let producer = producer(address, ProducerConfig::new()).await;
    let config = ConsumerConfig::new()
        .broker(address.to_string())
        .max_wait(Duration::from_secs(5));
    let mut consumer = Consumer::connect(config).await.unwrap();
    consumer.assign("t", 0, StartFrom::Latest).await.unwrap();
    consumer.assign("t", 1, StartFrom::Latest).await.unwrap();
    let late = {
        let producer = producer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let record = ProducerRecord::new("late").partition(1);
            producer.send("t", record).await.unwrap().await.unwrap()
        })
    };
    let started = Instant::now();
    let records = consumer.poll().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].partition, records[0].offset), (1, 0));
    assert_eq!(late.await.unwrap().offset, 0);
    assert_eq!(consumer.position("t", 1), Some(1));
    assert_eq!(consumer.position("t", 0), Some(0));
    producer.close().await;
}

#[tokio::test]
async fn group_offsets_commit_and_resume() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 2);
    let address = start(fake.clone()).await;
    let producer = producer(
        address,
        ProducerConfig::new().partitioner(Partitioner::RoundRobin),
    )
    .await;
    send_values(&producer, "t", (0..10).map(|i| i.to_string())).await;

    let mut consumer = consumer(address, Some("billing")).await;
    let start = StartFrom::Committed {
        fallback: OffsetReset::Earliest,
    };
    assert_eq!(consumer.assign("t", 0, start).await.unwrap(), 0);
    let later = StartFrom::Committed {
        fallback: OffsetReset::Latest,
    };
    assert_eq!(consumer.assign("t", 1, later).await.unwrap(), 5);
    assert_eq!(
        consumer.committed("t", &[0, 1]).await.unwrap(),
        [(0, None), (1, None)]
    );
    let records = poll_until(&mut consumer, 5).await;
    assert!(records.iter().all(|r| r.partition == 0));
    consumer.commit().await.unwrap();
    assert_eq!(
        consumer.committed("t", &[0, 1]).await.unwrap(),
        [(0, Some(5)), (1, Some(5))]
    );
    let mut resumed = self::consumer(address, Some("billing")).await;
    assert_eq!(resumed.assign("t", 0, start).await.unwrap(), 5);
    assert!(resumed.poll().await.unwrap().is_empty());

    let plain = self::consumer(address, None).await;
    let error = plain.commit().await.unwrap_err();
    assert!(matches!(
        error,
        Error::NoGroup {
            operation: "commit"
        }
    ));
    let error = plain.committed("t", &[0]).await.unwrap_err();
    assert!(matches!(
        error,
        Error::NoGroup {
            operation: "committed"
        }
    ));
    producer.close().await;
}

#[tokio::test]
async fn connect_fails_fast_on_a_closed_port() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let error = Producer::connect(ProducerConfig::new().broker(address.to_string()))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    let error = Producer::connect(ProducerConfig::new().batch_bytes(0))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        Error::InvalidConfig {
            field: "batch_bytes",
            ..
        }
    ));
}

/// Batches the fake stored are whole, checksummed and stamped, as a real log would keep them.
#[tokio::test]
async fn stored_batches_are_valid_and_stamped() {
    let fake = Arc::new(Fake::default());
    fake.create("t", 1);
    let address = start(fake.clone()).await;
    let producer = producer(address, ProducerConfig::new()).await;
    for i in 0..3 {
        let sent = send_values(&producer, "t", [i.to_string()]).await;
        assert_eq!(sent[0].offset, i);
    }
    let batches = fake.topics.lock().unwrap()["t"][0].batches.clone();
    assert_eq!(batches.len(), 3);
    for (base, next, _, batch) in &batches {
        let prefix = BatchPrefix::parse(batch).unwrap();
        assert_eq!(prefix.base_offset, *base);
        assert_eq!(prefix.next_offset(), *next);
        assert!(BatchView::new(batch, usize::MAX).is_ok());
    }
    producer.close().await;
}
