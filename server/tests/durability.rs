//! Crash and restart of the real `sluice` binary under produce load (design.md §3
//! "Durability", "Recovery").
//!
//! The broker runs as a child process on loopback ports with a topic under `fsync = always`;
//! producers on their own connections record every batch they send and every acknowledgement.
//! Mid-load the broker is killed with SIGKILL (or stopped with SIGTERM), restarted on the same
//! data directory, and every partition is read back from offset 0: every acknowledged batch is
//! there byte for byte at its acknowledged offset (base offset stamped), offsets are dense, any
//! batch that was not acknowledged is the one its producer had in flight, and produce works again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_server::testing::ChildBroker;

use bytes::{Bytes, BytesMut};
use sluice_proto::v1 as pb;
use sluice_storage::format::{BatchBuilder, BatchPrefix, Batches};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const TOPIC: &str = "durable";
const PARTITIONS: u32 = 3;
const PRODUCERS: u32 = 6;
/// Acknowledged batches to wait for before stopping the broker mid-load.
const ACKS_BEFORE_STOP: u64 = 1_000;
/// Most batches one producer sends (bounds the test if the broker never gets stopped).
const MAX_BATCHES_PER_PRODUCER: u32 = 5_000;
/// Small segments so the load rolls several and recovery crosses segment boundaries.
const SEGMENT_BYTES: u64 = 64 << 10;
const MAX_BATCH_BYTES: u32 = 16 << 10;
/// Hang guard for a whole test (not a performance threshold).
const HANG_GUARD: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// The load.

/// splitmix64: deterministic pseudo-random sizes and bytes.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Batch `sequence` of `producer`: 1 to 8 records of 1 to 1500 pseudo-random bytes, the first
/// bytes naming producer, sequence and record.
fn make_batch(producer: u32, sequence: u32) -> Bytes {
    let seed = mix((u64::from(producer) << 32) | u64::from(sequence));
    let records = 1 + seed % 8;
    let mut builder = BatchBuilder::new();
    for index in 0..records {
        let r = mix(seed ^ index);
        let mut value = format!("p{producer}/s{sequence}/r{index}|").into_bytes();
        let len = value.len() + (r % 1500) as usize;
        let mut x = r;
        while value.len() < len {
            x = mix(x);
            value.extend_from_slice(&x.to_le_bytes());
        }
        value.truncate(len);
        builder
            .push(
                1_700_000_000_000 + i64::from(sequence),
                Some(format!("p{producer}").as_bytes()),
                Some(&value),
                &[],
            )
            .unwrap();
    }
    builder.finish().unwrap().freeze()
}

/// One batch a producer sent, and its acknowledgement if it got one.
#[derive(Debug, Clone)]
struct Sent {
    producer: u32,
    sequence: u32,
    partition: u32,
    batch: Bytes,
    /// (base_offset, last_offset) from the ack.
    ack: Option<(u64, u64)>,
}

/// Produces to partitions round robin until an error (the broker went away), `stop`, or the
/// batch bound. Returns everything sent, acknowledged or not, in order.
async fn produce_until_error(
    mut log: pb::log_client::LogClient<Channel>,
    producer: u32,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (Vec<Sent>, Option<tonic::Status>) {
    let mut sent = Vec::new();
    for sequence in 0..MAX_BATCHES_PER_PRODUCER {
        if stop.load(Ordering::Relaxed) {
            return (sent, None);
        }
        let partition = (producer + sequence) % PARTITIONS;
        let batch = make_batch(producer, sequence);
        sent.push(Sent {
            producer,
            sequence,
            partition,
            batch: batch.clone(),
            ack: None,
        });
        let request = pb::ProduceRequest {
            topic: TOPIC.into(),
            partition,
            batch,
        };
        match log.produce(request).await {
            Ok(response) => {
                let response = response.into_inner();
                sent.last_mut().expect("just pushed").ack =
                    Some((response.base_offset, response.last_offset));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => return (sent, Some(status)),
        }
    }
    (sent, None)
}

/// The batch with its base offset stamped, as the broker stores it.
fn stamped(batch: &Bytes, base_offset: u64) -> BytesMut {
    let mut stamped = BytesMut::from(&batch[..]);
    stamped[..8].copy_from_slice(&base_offset.to_le_bytes());
    stamped
}

/// Every batch of a partition from offset 0 to the high watermark, as (base offset, bytes),
/// checking CRCs and that offsets are dense.
async fn read_all(
    log: &mut pb::log_client::LogClient<Channel>,
    partition: u32,
) -> (Vec<(u64, Bytes)>, u64) {
    let mut batches = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = log
            .fetch(pb::FetchRequest {
                topic: TOPIC.into(),
                partition,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            })
            .await
            .unwrap_or_else(|status| panic!("fetch partition {partition} at {offset}: {status:?}"))
            .into_inner();
        for framed in Batches::new(&fetched.batches) {
            let framed = framed.expect("whole batches");
            let prefix = framed.prefix;
            assert_eq!(
                prefix.base_offset, offset,
                "partition {partition}: offsets not dense (expected a batch at {offset})"
            );
            framed
                .validated(usize::MAX)
                .unwrap_or_else(|e| panic!("partition {partition} batch at {offset}: {e}"));
            offset = prefix.next_offset();
            batches.push((prefix.base_offset, fetched.batches.slice_ref(framed.bytes)));
        }
        if offset >= fetched.high_watermark {
            assert_eq!(offset, fetched.high_watermark, "partition {partition}");
            return (batches, fetched.high_watermark);
        }
        assert!(
            !fetched.batches.is_empty(),
            "partition {partition}: fetch at {offset} below high watermark {} returned nothing",
            fetched.high_watermark
        );
    }
}

/// Checks the restarted broker against what was sent: every acknowledged batch at its offset
/// byte for byte, dense offsets, and nothing but batches that were sent — the unacknowledged
/// ones only the last each producer had in flight. Returns (acked, recovered-but-unacked).
async fn verify(broker: &ChildBroker, sent: &[Vec<Sent>]) -> (usize, usize) {
    let mut log = broker.log_client().await;
    let mut by_content: HashMap<Bytes, &Sent> = HashMap::new();
    for one in sent.iter().flatten() {
        assert!(
            by_content.insert(one.batch.clone(), one).is_none(),
            "two sent batches are identical"
        );
    }
    let mut acked_count = 0;
    let mut unacked_present = 0;
    for partition in 0..PARTITIONS {
        let (batches, high_watermark) = read_all(&mut log, partition).await;
        let at: HashMap<u64, &Bytes> = batches.iter().map(|(o, b)| (*o, b)).collect();
        for one in sent.iter().flatten().filter(|s| s.partition == partition) {
            let Some((base, last)) = one.ack else {
                continue;
            };
            acked_count += 1;
            let expected = stamped(&one.batch, base);
            let found = at.get(&base).unwrap_or_else(|| {
                panic!(
                    "partition {partition}: acknowledged batch p{} s{} at {base}..={last} is \
                     missing (high watermark {high_watermark})",
                    one.producer, one.sequence
                )
            });
            assert!(
                found[..] == expected[..],
                "partition {partition}: bytes at {base} differ from acknowledged batch p{} s{}",
                one.producer,
                one.sequence
            );
            let prefix = BatchPrefix::parse(found).expect("prefix");
            assert_eq!(
                prefix.next_offset() - 1,
                last,
                "last offset of the batch at {base}"
            );
        }
        for (base, bytes) in &batches {
            let mut unstamped = BytesMut::from(&bytes[..]);
            unstamped[..8].copy_from_slice(&0u64.to_le_bytes());
            let one = by_content
                .get(&unstamped.freeze())
                .unwrap_or_else(|| panic!("partition {partition}: batch at {base} was never sent"));
            assert_eq!(
                one.partition, partition,
                "batch at {base} sent to another partition"
            );
            match one.ack {
                Some((acked_base, _)) => assert_eq!(
                    acked_base, *base,
                    "partition {partition}: p{} s{} acknowledged at {acked_base} found at {base}",
                    one.producer, one.sequence
                ),
                None => {
                    // Not acknowledged yet durable: must be the batch the producer had in flight.
                    let last = sent[one.producer as usize].last().expect("sent something");
                    assert_eq!(
                        (last.sequence, last.ack),
                        (one.sequence, None),
                        "partition {partition}: unacknowledged p{} s{} at {base} was not in flight",
                        one.producer,
                        one.sequence
                    );
                    unacked_present += 1;
                }
            }
        }
    }
    assert_eq!(
        acked_count,
        sent.iter().flatten().filter(|s| s.ack.is_some()).count()
    );
    (acked_count, unacked_present)
}

/// Produce works again on every partition, at the high watermark, and reads back.
async fn produce_again(broker: &ChildBroker) {
    let mut log = broker.log_client().await;
    for partition in 0..PARTITIONS {
        let latest = log
            .list_offsets(pb::ListOffsetsRequest {
                topic: TOPIC.into(),
                partition,
                spec: pb::OffsetSpec::Latest as i32,
                timestamp_ms: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .high_watermark;
        let batch = make_batch(1000 + partition, 0);
        let response = log
            .produce(pb::ProduceRequest {
                topic: TOPIC.into(),
                partition,
                batch: batch.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("produce after restart to partition {partition}: {s:?}"))
            .into_inner();
        assert_eq!(response.base_offset, latest, "partition {partition}");
        let (batches, _) = read_all(&mut log, partition).await;
        let (base, last) = batches.last().expect("the new batch");
        assert_eq!(*base, latest);
        assert!(
            last[..] == stamped(&batch, latest)[..],
            "partition {partition}"
        );
    }
}

async fn create_topic(broker: &ChildBroker) {
    pb::admin_client::AdminClient::new(broker.channel().await)
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            config: Some(pb::TopicConfig {
                fsync: pb::FsyncPolicy::Always as i32,
                segment_bytes: Some(SEGMENT_BYTES),
                max_batch_bytes: Some(MAX_BATCH_BYTES),
                ..Default::default()
            }),
        })
        .await
        .expect("create topic");
}

/// Partition directories of the topic.
fn partition_dirs(data_dir: &Path) -> Vec<PathBuf> {
    (0..PARTITIONS)
        .map(|p| data_dir.join("topics").join(TOPIC).join(p.to_string()))
        .collect()
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("list partition dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL.
    Kill,
    /// SIGTERM, a graceful shutdown.
    Term,
}

/// Loads the broker, stops it mid-load as `how` says, and hands back what each producer sent
/// and the broker's exit status.
async fn load_then_stop(broker: &mut ChildBroker, how: Stop) -> (Vec<Vec<Sent>>, ExitStatus) {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let log = broker.log_client().await;
        producers.push(tokio::spawn(produce_until_error(
            log,
            producer,
            Arc::clone(&acked),
            Arc::clone(&stop),
        )));
    }
    let started = Instant::now();
    while acked.load(Ordering::Relaxed) < ACKS_BEFORE_STOP {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} acks within 60 s:\n{}",
            acked.load(Ordering::Relaxed),
            broker.log_text()
        );
        assert!(
            producers.iter().all(|p| !p.is_finished()),
            "a producer stopped before the broker did"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_stop = acked.load(Ordering::Relaxed);
    let status = match how {
        Stop::Kill => broker.kill_hard(),
        Stop::Term => broker.terminate().await,
    };
    let load_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    let mut errors = Vec::new();
    for producer in producers {
        let (one, error) = tokio::time::timeout(Duration::from_secs(60), producer)
            .await
            .expect("producer ends once the broker is gone")
            .expect("producer task");
        sent.push(one);
        errors.extend(error.map(|s| format!("{:?}: {}", s.code(), s.message())));
    }
    let total_acked = sent.iter().flatten().filter(|s| s.ack.is_some()).count();
    let in_flight = sent.iter().flatten().filter(|s| s.ack.is_none()).count();
    println!(
        "{how:?} after {load_time:?}: {at_stop} acks when signalled, {total_acked} in all, \
         {in_flight} sent without ack; producer errors {errors:?}"
    );
    (sent, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_batch() {
    tokio::time::timeout(HANG_GUARD, sigkill_mid_load())
        .await
        .expect("test finished within the hang guard");
}

async fn sigkill_mid_load() {
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &[], &[]).await;
    create_topic(&broker).await;
    let (sent, status) = load_then_stop(&mut broker, Stop::Kill).await;
    assert!(!status.success(), "SIGKILL exits unsuccessfully: {status}");
    for dir in partition_dirs(data.path()) {
        assert!(
            !dir.join(".clean-shutdown").exists(),
            "{} has a clean-shutdown marker after SIGKILL",
            dir.display()
        );
        assert!(
            segment_count(&dir) > 1,
            "{}: the load rolled segments",
            dir.display()
        );
    }
    drop(broker);

    let mut broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &[], &[]).await;
    let (acked, unacked) = verify(&broker, &sent).await;
    produce_again(&broker).await;
    // The recovered broker also stops cleanly.
    let status = broker.terminate().await;
    assert!(
        status.success(),
        "SIGTERM after recovery: {status}\n{}",
        broker.log_text()
    );
    println!(
        "SIGKILL: {acked} acknowledged batches all present after restart, {unacked} \
         unacknowledged ones recovered too; test took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_closes_cleanly_and_restarts_clean() {
    tokio::time::timeout(HANG_GUARD, sigterm_mid_load())
        .await
        .expect("test finished within the hang guard");
}

async fn sigterm_mid_load() {
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &[], &[]).await;
    create_topic(&broker).await;
    let (sent, status) = load_then_stop(&mut broker, Stop::Term).await;
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status}\n{}",
        broker.log_text()
    );
    // The log went to a file: plain text, no colour codes.
    assert!(
        !broker.log_text().contains('\u{1b}'),
        "ANSI codes in a log file"
    );
    for dir in partition_dirs(data.path()) {
        assert!(
            dir.join(".clean-shutdown").exists(),
            "{} has no clean-shutdown marker after SIGTERM:\n{}",
            dir.display(),
            broker.log_text()
        );
    }
    drop(broker);

    let mut broker = ChildBroker::start(sluice_bin(), data.path(), logs.path(), &[], &[]).await;
    // Opening consumed the markers: the next crash will not be mistaken for a clean stop.
    for dir in partition_dirs(data.path()) {
        assert!(
            !dir.join(".clean-shutdown").exists(),
            "{} kept its marker after reopening",
            dir.display()
        );
    }
    let (acked, unacked) = verify(&broker, &sent).await;
    produce_again(&broker).await;
    let status = broker.terminate().await;
    assert!(
        status.success(),
        "second SIGTERM: {status}\n{}",
        broker.log_text()
    );
    println!(
        "SIGTERM: {acked} acknowledged batches all present after a clean restart, {unacked} \
         unacknowledged ones present too; test took {:?}",
        started.elapsed()
    );
}

/// The `sluice` binary this package built.
fn sluice_bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_sluice"))
}
