//! `sluice bench`: a load generator against a running broker.
//!
//! Producers send batches of `--record-size` records, up to `--inflight` requests each at a
//! time, round robin over the topic's partitions; every record's value starts with its send
//! time, so consumers (each tailing a share of the partitions) measure end-to-end latency.
//! The summary gives throughput and produce-ack (per request) and end-to-end (per record)
//! latency percentiles; `--json` prints it as one JSON object.

use super::{BrokerArgs, parse_fsync};
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use sluice_client::admin::{FsyncPolicy, TopicConfig};
use sluice_client::{
    BatchBuilder, Consumer, ConsumerConfig, Producer, ProducerConfig, RetryPolicy, StartFrom,
};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// Attempts a bench request gets: back pressure is part of the load, so keep retrying.
const BENCH_ATTEMPTS: u32 = 1000;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Topic to load (created if missing).
    #[arg(long, default_value = "sluice-bench")]
    topic: String,
    /// Partitions when the topic is created.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Durability when the topic is created: always, interval or never.
    #[arg(long, value_parser = parse_fsync, default_value = "always")]
    fsync: FsyncPolicy,
    /// Concurrent producers (each its own connection).
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Concurrent consumers (each its own connection); 0 measures produce only.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Bytes of each record's value (at least 8: the send time).
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Bytes per batch (one Produce request).
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Produce requests in flight per producer.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Send as an idempotent producer: each batch carries the producer id, epoch and its
    /// partition's next sequence, so the broker runs the sequence check (and requests in
    /// flight to one partition may overtake each other and wait for their predecessors).
    #[arg(long)]
    idempotent: bool,
    /// Records to produce in all (unless --duration is given).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Produce for this long instead of a count, e.g. "10s".
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// What to load: `log` (produce and consume) or `queue` (enqueue, lease, ack; see
    /// bench_queue.rs).
    #[arg(long, default_value = "log", value_parser = ["log", "queue"])]
    mode: String,
    /// Queue mode: worker connections.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Queue mode: jobs each worker leases and handles at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// Shared counters and histograms.
struct Stats {
    records_produced: AtomicU64,
    bytes_produced: AtomicU64,
    records_consumed: AtomicU64,
    refused: AtomicU64,
    ack_us: Mutex<Histogram<u64>>,
    e2e_us: Mutex<Histogram<u64>>,
}

/// A batch of `records` values of `record_size` bytes starting with the send time, stamped
/// with an idempotent producer's id, epoch and base sequence if given.
fn build_batch(
    records: usize,
    record_size: usize,
    producer: Option<(i64, i16, i32)>,
) -> anyhow::Result<Bytes> {
    let mut builder = BatchBuilder::with_capacity(records * (record_size + 16) + 128);
    if let Some((id, epoch, sequence)) = producer {
        builder = builder.producer(id, epoch, sequence);
    }
    let stamp = now_ns().to_le_bytes();
    let mut value = vec![b'x'; record_size.max(8)];
    value[..8].copy_from_slice(&stamp);
    let timestamp = (now_ns() / 1_000_000) as i64;
    for _ in 0..records {
        builder.push(timestamp, None, Some(&value), &[])?;
    }
    Ok(builder.finish()?.freeze())
}

pub async fn run(args: BenchArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    if args.mode == "queue" {
        let bench = super::bench_queue::QueueBench {
            topic: args.topic,
            partitions: args.partitions,
            fsync: args.fsync,
            producers: args.producers,
            workers: args.workers,
            concurrency: args.concurrency,
            record_size: args.record_size,
            count: args.count,
            json: args.json,
        };
        return super::bench_queue::run(bench, broker).await;
    }
    anyhow::ensure!(
        args.record_size >= 8,
        "--record-size must be at least 8 (the send time)"
    );
    anyhow::ensure!(args.producers >= 1, "--producers must be at least 1");
    anyhow::ensure!(args.inflight >= 1, "--inflight must be at least 1");
    let records_per_batch = (args.batch_bytes / (args.record_size + 8)).max(1);
    let admin = broker.admin().await?;
    let topic = match admin.describe_topic(&args.topic).await {
        Ok(described) => described,
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            let config = TopicConfig {
                fsync: args.fsync as i32,
                max_batch_bytes: Some((args.batch_bytes as u32).max(4 << 20)),
                ..TopicConfig::default()
            };
            admin
                .create_topic(&args.topic, args.partitions, config)
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    let partitions: Vec<(u32, u64)> = topic
        .partitions
        .iter()
        .map(|p| (p.partition, p.latest_offset))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic has no partitions");

    let stats = Arc::new(Stats {
        records_produced: AtomicU64::new(0),
        bytes_produced: AtomicU64::new(0),
        records_consumed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        ack_us: Mutex::new(histogram()?),
        e2e_us: Mutex::new(histogram()?),
    });
    let started = Instant::now();
    let deadline = args.duration.map(|d| started + d);
    let target = if deadline.is_some() {
        u64::MAX
    } else {
        args.count
    };
    // Records still to send; each request claims up to a batch of them.
    let records_to_send = Arc::new(AtomicU64::new(target));

    // Consumers first, from each partition's current end.
    let consumers_done = Arc::new(AtomicU64::new(0));
    let mut consumer_tasks = Vec::new();
    let produced_total = Arc::new(AtomicU64::new(u64::MAX));
    for c in 0..args.consumers {
        let mine: Vec<(u32, u64)> = partitions
            .iter()
            .copied()
            .filter(|(p, _)| p % args.consumers == c)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let config = ConsumerConfig::new()
            .connection(broker.connection())
            .max_bytes(4 << 20)
            .max_wait(Duration::from_millis(100))
            .retry(RetryPolicy::new().max_attempts(BENCH_ATTEMPTS));
        let mut consumer = Consumer::connect(config).await?;
        for &(partition, offset) in &mine {
            consumer
                .assign(&args.topic, partition, StartFrom::Offset(offset))
                .await?;
        }
        let stats = Arc::clone(&stats);
        let produced_total = Arc::clone(&produced_total);
        let done = Arc::clone(&consumers_done);
        consumer_tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let total = produced_total.load(Ordering::Acquire);
                if stats.records_consumed.load(Ordering::Acquire) >= total {
                    break;
                }
                let records = consumer.poll().await?;
                let arrived = now_ns();
                latencies.clear();
                for record in &records {
                    if let Some(stamp) = record.value.as_ref().and_then(|v| v.get(..8)) {
                        let mut le = [0u8; 8];
                        le.copy_from_slice(stamp);
                        let sent = u64::from_le_bytes(le);
                        latencies.push(arrived.saturating_sub(sent) / 1000);
                    }
                }
                if !latencies.is_empty() {
                    stats
                        .records_consumed
                        .fetch_add(latencies.len() as u64, Ordering::AcqRel);
                    let mut e2e = stats.e2e_us.lock().await;
                    for &us in &latencies {
                        let _ = e2e.record(us.max(1));
                    }
                }
            }
            done.fetch_add(1, Ordering::AcqRel);
            anyhow::Ok(())
        }));
    }

    let mut producer_tasks = Vec::new();
    for p in 0..args.producers {
        let producer = Producer::connect(
            ProducerConfig::new()
                .connection(broker.connection())
                .retry(RetryPolicy::new().max_attempts(BENCH_ATTEMPTS))
                .idempotence(args.idempotent),
        )
        .await?;
        let identity = producer.identity();
        let topic = args.topic.clone();
        let stats = Arc::clone(&stats);
        let records_to_send = Arc::clone(&records_to_send);
        let partitions: Vec<u32> = partitions.iter().map(|(id, _)| *id).collect();
        let (inflight, record_size) = (args.inflight, args.record_size);
        producer_tasks.push(tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(inflight));
            let mut next = p as usize;
            let mut sequences = vec![0i32; partitions.len()];
            let mut requests = tokio::task::JoinSet::new();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let per_batch = records_per_batch as u64;
                let claimed =
                    records_to_send.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n > 0).then(|| n - per_batch.min(n))
                    });
                let records = match claimed {
                    Ok(before) => per_batch.min(before) as usize,
                    Err(_) => break,
                };
                let permit = Arc::clone(&slots).acquire_owned().await?;
                let slot = next % partitions.len();
                let partition = partitions[slot];
                next += 1;
                let stamp = identity.map(|(id, epoch)| {
                    let sequence = sequences[slot];
                    sequences[slot] =
                        ((i64::from(sequence) + records as i64) % (i64::from(i32::MAX) + 1)) as i32;
                    (id, epoch, sequence)
                });
                let batch = build_batch(records, record_size, stamp)?;
                let producer = producer.clone();
                let topic = topic.clone();
                let stats = Arc::clone(&stats);
                requests.spawn(async move {
                    let _permit = permit;
                    let sent = Instant::now();
                    let appended = producer.send_batch(&topic, partition, batch).await?;
                    // Time to the ack, back-pressure retries included.
                    let us = sent.elapsed().as_micros() as u64;
                    let _ = stats.ack_us.lock().await.record(us.max(1));
                    stats
                        .refused
                        .fetch_add(u64::from(appended.attempts - 1), Ordering::AcqRel);
                    stats
                        .records_produced
                        .fetch_add(records as u64, Ordering::AcqRel);
                    stats
                        .bytes_produced
                        .fetch_add((records * record_size) as u64, Ordering::AcqRel);
                    anyhow::Ok(())
                });
                while let Some(done) = requests.try_join_next() {
                    done??;
                }
            }
            while let Some(done) = requests.join_next().await {
                done??;
            }
            producer.close().await;
            anyhow::Ok(())
        }));
    }

    // Progress on a terminal.
    let progress = std::io::stderr().is_terminal() && !args.json;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut producers_left = producer_tasks.len();
    let mut producer_results = Vec::new();
    let mut producer_handles = producer_tasks.into_iter();
    let mut current = producer_handles.next();
    while let Some(handle) = current.as_mut() {
        tokio::select! {
            result = handle => {
                producer_results.push(result);
                producers_left -= 1;
                current = producer_handles.next();
            }
            _ = ticker.tick(), if progress => {
                let produced = stats.records_produced.load(Ordering::Acquire);
                let seconds = started.elapsed().as_secs_f64().max(1e-9);
                let fraction = match deadline {
                    Some(d) => (started.elapsed().as_secs_f64() / (d - started).as_secs_f64()).min(1.0),
                    None => produced as f64 / args.count.max(1) as f64,
                };
                let filled = (fraction * 30.0) as usize;
                eprint!(
                    "\r[{}{}] {:>5.1}% {:>10.1} MB/s {:>12.0} msgs/s ",
                    "#".repeat(filled),
                    "-".repeat(30 - filled.min(30)),
                    fraction * 100.0,
                    stats.bytes_produced.load(Ordering::Acquire) as f64 / seconds / 1e6,
                    produced as f64 / seconds,
                );
            }
        }
    }
    let _ = producers_left;
    let produce_elapsed = started.elapsed();
    if progress {
        eprintln!();
    }
    for result in producer_results {
        result.context("producer task")??;
    }
    produced_total.store(
        stats.records_produced.load(Ordering::Acquire),
        Ordering::Release,
    );
    // Consumers drain what was produced (bounded wait).
    for task in consumer_tasks {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(result) => result.context("consumer task")??,
            Err(_) => anyhow::bail!("consumers did not catch up within 60 s"),
        }
    }
    let total_elapsed = started.elapsed();

    let records = stats.records_produced.load(Ordering::Acquire);
    let bytes = stats.bytes_produced.load(Ordering::Acquire);
    let seconds = produce_elapsed.as_secs_f64().max(1e-9);
    let ack = stats.ack_us.lock().await;
    let e2e = stats.e2e_us.lock().await;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let summary = serde_json::json!({
        "topic": args.topic,
        "partitions": partitions.len(),
        "producers": args.producers,
        "consumers": args.consumers,
        "record_size": args.record_size,
        "records_per_batch": records_per_batch,
        "records": records,
        "bytes": bytes,
        "seconds": seconds,
        "mb_per_s": bytes as f64 / seconds / 1e6,
        "msgs_per_s": records as f64 / seconds,
        "refused_requests": stats.refused.load(Ordering::Acquire),
        "produce_ack_ms": { "p50": ms(&ack, 0.5), "p99": ms(&ack, 0.99), "p999": ms(&ack, 0.999), "max": ack.max() as f64 / 1000.0 },
        "consumed": stats.records_consumed.load(Ordering::Acquire),
        "end_to_end_ms": { "p50": ms(&e2e, 0.5), "p99": ms(&e2e, 0.99), "p999": ms(&e2e, 0.999), "max": e2e.max() as f64 / 1000.0 },
        "total_seconds": total_elapsed.as_secs_f64(),
    });
    if args.json {
        writeln!(std::io::stdout().lock(), "{summary}")?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "produced {records} records ({:.1} MB) in {seconds:.2} s: {:.1} MB/s, {:.0} msgs/s",
            bytes as f64 / 1e6,
            bytes as f64 / seconds / 1e6,
            records as f64 / seconds
        )?;
        writeln!(
            out,
            "produce-ack latency per request (ms): p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
            ms(&ack, 0.5),
            ms(&ack, 0.99),
            ms(&ack, 0.999),
            ack.max() as f64 / 1000.0
        )?;
        if args.consumers > 0 {
            writeln!(
                out,
                "end-to-end latency per record (ms): p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
                ms(&e2e, 0.5),
                ms(&e2e, 0.99),
                ms(&e2e, 0.999),
                e2e.max() as f64 / 1000.0
            )?;
        }
        writeln!(
            out,
            "retried (back pressure or reconnect): {}",
            stats.refused.load(Ordering::Acquire)
        )?;
    }
    Ok(())
}
