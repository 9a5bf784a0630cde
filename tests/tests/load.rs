//! Load on one topic from many producers at once (log aggregation): 50 producers, each on its
//! own connection, produce batches to a 4-partition topic, awaiting every ack. Reading every
//! partition back from offset 0 must give dense offsets, every acknowledged record exactly once
//! at the offset its ack named, and each producer's records in the order it sent them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use sluice_storage::format::{BatchBuilder, Batches};
use sluice_tests::{TestBroker, create_topic, now_ms};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

const TOPIC: &str = "logs";
const PARTITIONS: u32 = 4;
const PRODUCERS: u32 = 50;
/// Batches each producer sends (awaiting each ack before the next).
const BATCHES_PER_PRODUCER: u32 = 40;
/// The whole test, connects to final read, must finish within this (a hang guard, not a
/// performance threshold).
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Which record this is: who sent it, in which of its batches, at which position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Tag {
    producer: u32,
    sequence: u32,
    index: u32,
}

impl Tag {
    fn key(self) -> Vec<u8> {
        format!("producer-{}", self.producer).into_bytes()
    }

    /// The value names the tag and pads to a length that varies with it, so batches differ
    /// in size and a record misplaced within a batch is caught.
    fn value(self) -> Vec<u8> {
        let mut value =
            format!("p={} s={} i={};", self.producer, self.sequence, self.index).into_bytes();
        let pad = 20 + ((self.producer * 7 + self.sequence * 13 + self.index * 3) % 200) as usize;
        value.extend(std::iter::repeat_n(b'a' + (self.index % 26) as u8, pad));
        value
    }

    fn parse(value: &[u8]) -> Tag {
        let text = std::str::from_utf8(value).expect("utf-8 value");
        let head = text.split(';').next().expect("tag");
        let mut fields = head.split(' ').map(|field| {
            field
                .split_once('=')
                .and_then(|(_, v)| v.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("bad tag field in {head:?}"))
        });
        let tag = Tag {
            producer: fields.next().expect("producer"),
            sequence: fields.next().expect("sequence"),
            index: fields.next().expect("index"),
        };
        assert_eq!(value, tag.value().as_slice(), "value bytes of {tag:?}");
        tag
    }
}

/// Records in a producer's `sequence`-th batch: 1 to 5, varying.
fn records_in(producer: u32, sequence: u32) -> u32 {
    1 + (producer + sequence) % 5
}

/// Round robin from the producer's id: every producer writes to every partition, and every
/// partition has producers writing to it at the same time.
fn partition_of(producer: u32, sequence: u32) -> u32 {
    (producer + sequence) % PARTITIONS
}

/// One acknowledged produce.
#[derive(Debug, Clone, Copy)]
struct Ack {
    producer: u32,
    sequence: u32,
    partition: u32,
    records: u32,
    base_offset: u64,
    last_offset: u64,
}

async fn run_producer(
    broker_log: pb::log_client::LogClient<tonic::transport::Channel>,
    producer: u32,
    start: Arc<Barrier>,
) -> Vec<Ack> {
    let mut log = broker_log;
    start.wait().await;
    let mut acks = Vec::with_capacity(BATCHES_PER_PRODUCER as usize);
    for sequence in 0..BATCHES_PER_PRODUCER {
        let records = records_in(producer, sequence);
        let mut builder = BatchBuilder::new();
        let timestamp = now_ms();
        for index in 0..records {
            let tag = Tag {
                producer,
                sequence,
                index,
            };
            builder
                .push(timestamp, Some(&tag.key()), Some(&tag.value()), &[])
                .unwrap();
        }
        let partition = partition_of(producer, sequence);
        let response = log
            .produce(pb::ProduceRequest {
                topic: TOPIC.into(),
                partition,
                batch: builder.finish().unwrap().freeze(),
            })
            .await
            .unwrap_or_else(|status| {
                panic!("producer {producer} batch {sequence} to partition {partition}: {status:?}")
            })
            .into_inner();
        assert_eq!(
            response.last_offset,
            response.base_offset + u64::from(records) - 1,
            "ack of producer {producer} batch {sequence} of {records} records: {response:?}"
        );
        acks.push(Ack {
            producer,
            sequence,
            partition,
            records,
            base_offset: response.base_offset,
            last_offset: response.last_offset,
        });
    }
    acks
}

/// Every record of a partition from offset 0 to its high watermark: (offset, tag), plus the
/// batches as (base offset, last offset).
async fn read_partition(
    log: &mut pb::log_client::LogClient<tonic::transport::Channel>,
    partition: u32,
) -> (Vec<(u64, Tag)>, Vec<(u64, u64)>, u64) {
    let mut records = Vec::new();
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = log
            .fetch(pb::FetchRequest {
                topic: TOPIC.into(),
                partition,
                offset,
                max_bytes: 256 << 10,
                max_wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for framed in Batches::new(&fetched.batches) {
            let framed = framed.expect("whole batches");
            let view = framed.validated(usize::MAX).expect("valid batch read back");
            batches.push((view.base_offset(), view.last_offset()));
            let mut walk = view.records();
            for record in walk.by_ref() {
                let tag = Tag::parse(record.value.expect("value"));
                assert_eq!(record.key, Some(tag.key().as_slice()), "key of {tag:?}");
                records.push((record.offset, tag));
            }
            assert!(
                walk.error().is_none(),
                "records of batch at {}: {:?}",
                view.base_offset(),
                walk.error()
            );
            offset = framed.prefix.next_offset();
        }
        if offset >= fetched.high_watermark {
            return (records, batches, fetched.high_watermark);
        }
        assert!(
            !fetched.batches.is_empty(),
            "fetch at {offset} below high watermark {} returned nothing",
            fetched.high_watermark
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_producers_on_one_topic() {
    tokio::time::timeout(HANG_GUARD, fifty_producers())
        .await
        .expect("load test finished within the hang guard");
}

async fn fifty_producers() {
    let started = Instant::now();
    let broker = TestBroker::start().await;
    create_topic(&broker, TOPIC, PARTITIONS, pb::TopicConfig::default()).await;

    // Connect everyone first, then release all producers at once.
    let start = Arc::new(Barrier::new(PRODUCERS as usize));
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let log = broker.log().await;
        tasks.push(tokio::spawn(run_producer(
            log,
            producer,
            Arc::clone(&start),
        )));
    }
    let load_started = Instant::now();
    let mut acks = Vec::new();
    for task in tasks {
        acks.extend(task.await.expect("producer task"));
    }
    let load_time = load_started.elapsed();
    assert_eq!(acks.len(), (PRODUCERS * BATCHES_PER_PRODUCER) as usize);

    let mut log = broker.log().await;
    let mut total_records = 0u64;
    for partition in 0..PARTITIONS {
        let (records, batches, high_watermark) = read_partition(&mut log, partition).await;
        let acked: Vec<&Ack> = acks.iter().filter(|a| a.partition == partition).collect();
        let acked_records: u64 = acked.iter().map(|a| u64::from(a.records)).sum();

        // Dense from 0: no gaps, no duplicates, and exactly what was acknowledged.
        let offsets: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(
            offsets,
            (0..acked_records).collect::<Vec<_>>(),
            "partition {partition}: offsets not dense from 0"
        );
        assert_eq!(high_watermark, acked_records, "partition {partition}");

        // Every acked record is there once, at the offset its ack named.
        let by_offset: HashMap<u64, Tag> = records.iter().copied().collect();
        let mut seen = HashMap::new();
        for (offset, tag) in &records {
            if let Some(previous) = seen.insert(*tag, *offset) {
                panic!("partition {partition}: {tag:?} at {previous} and again at {offset}");
            }
        }
        let batch_at: HashMap<u64, u64> = batches.iter().copied().collect();
        for ack in &acked {
            assert_eq!(
                batch_at.get(&ack.base_offset),
                Some(&ack.last_offset),
                "partition {partition}: no batch {}..={} as acked for {ack:?}",
                ack.base_offset,
                ack.last_offset
            );
            for index in 0..ack.records {
                let expected = Tag {
                    producer: ack.producer,
                    sequence: ack.sequence,
                    index,
                };
                let offset = ack.base_offset + u64::from(index);
                assert_eq!(
                    by_offset.get(&offset),
                    Some(&expected),
                    "partition {partition} offset {offset} (ack {ack:?})"
                );
            }
        }

        // Per producer, its records in this partition are in the order it sent them.
        let mut per_producer: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
        for (_, tag) in &records {
            per_producer
                .entry(tag.producer)
                .or_default()
                .push((tag.sequence, tag.index));
        }
        for (producer, sent) in &per_producer {
            let mut sorted = sent.clone();
            sorted.sort_unstable();
            assert_eq!(
                sent, &sorted,
                "partition {partition}: producer {producer}'s records out of order"
            );
            let expected: Vec<(u32, u32)> = (0..BATCHES_PER_PRODUCER)
                .filter(|&s| partition_of(*producer, s) == partition)
                .flat_map(|s| (0..records_in(*producer, s)).map(move |i| (s, i)))
                .collect();
            assert_eq!(
                sent, &expected,
                "partition {partition}: producer {producer}'s records"
            );
        }
        assert_eq!(
            per_producer.len(),
            PRODUCERS as usize,
            "partition {partition}: every producer wrote to it"
        );
        total_records += acked_records;
    }
    println!(
        "{PRODUCERS} producers x {BATCHES_PER_PRODUCER} batches: {} batches, {total_records} records \
         acked over {PARTITIONS} partitions in {load_time:?} (whole test {:?})",
        acks.len(),
        started.elapsed()
    );
    broker.stop().await;
}
