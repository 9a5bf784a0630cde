//! `sluice bench --mode queue`: jobs through a queue group, closed loop.
//!
//! Producers enqueue jobs (each value starts with its send time) while at most
//! `2 × workers × concurrency` jobs are outstanding (enqueued and not yet acknowledged), so
//! the queue runs at its steady state instead of growing a backlog; `workers` connections each
//! lease up to `concurrency` jobs per call, run a no-op handler, and acknowledge all of them on
//! their next Lease (every job acked, durably, in the same append as the next leases). The summary gives jobs/s and
//! produce→ack latency (from the send time to the Ack's answer) percentiles.
//!
//! Each run uses a fresh topic (`TOPIC-<ms>`), deleted at the end.

use super::BrokerArgs;
use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_client::admin::{FsyncPolicy, TopicConfig};
use sluice_client::{BatchBuilder, Producer, ProducerConfig, Queue, RetryPolicy};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Semaphore};

/// What a queue bench runs.
#[derive(Debug, Clone)]
pub struct QueueBench {
    /// Topic name prefix.
    pub topic: String,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Its durability.
    pub fsync: FsyncPolicy,
    /// Enqueuing connections.
    pub producers: u32,
    /// Worker connections.
    pub workers: u32,
    /// Jobs leased (and handled) at once per worker.
    pub concurrency: u32,
    /// Bytes of each job's value.
    pub record_size: usize,
    /// Jobs in all.
    pub count: u64,
    /// Print JSON.
    pub json: bool,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Jobs per Produce request.
const JOBS_PER_BATCH: u64 = 64;

pub async fn run(bench: QueueBench, broker: &BrokerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        bench.record_size >= 8,
        "--record-size must be at least 8 (the send time)"
    );
    anyhow::ensure!(
        bench.workers >= 1 && bench.producers >= 1,
        "--workers and --producers must be at least 1"
    );
    anyhow::ensure!(
        (1..=1000).contains(&bench.concurrency),
        "--concurrency must be within 1..=1000"
    );
    let admin = broker.admin().await?;
    let topic = format!("{}-{}", bench.topic, now_ns() / 1_000_000);
    let config = TopicConfig {
        fsync: bench.fsync as i32,
        ..TopicConfig::default()
    };
    admin.create_topic(&topic, bench.partitions, config).await?;
    let outstanding = Arc::new(Semaphore::new(
        (2 * bench.workers * bench.concurrency) as usize,
    ));
    let to_send = Arc::new(AtomicU64::new(bench.count));
    let acked = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?,
    ));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..bench.producers {
        let producer = Producer::connect(
            ProducerConfig::new()
                .connection(broker.connection())
                .retry(RetryPolicy::new().max_attempts(1000)),
        )
        .await?;
        let (topic, to_send, outstanding) = (
            topic.clone(),
            Arc::clone(&to_send),
            Arc::clone(&outstanding),
        );
        let (partitions, size) = (bench.partitions, bench.record_size);
        tasks.spawn(async move {
            let mut next = p;
            loop {
                let claimed = to_send.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n > 0).then(|| n - JOBS_PER_BATCH.min(n))
                });
                let jobs = match claimed {
                    Ok(before) => JOBS_PER_BATCH.min(before),
                    Err(_) => break,
                };
                outstanding.acquire_many(jobs as u32).await?.forget();
                let mut builder = BatchBuilder::with_capacity(jobs as usize * (size + 16) + 128);
                let mut value = vec![b'x'; size];
                value[..8].copy_from_slice(&now_ns().to_le_bytes());
                for _ in 0..jobs {
                    builder.push((now_ns() / 1_000_000) as i64, None, Some(&value), &[])?;
                }
                let batch: Bytes = builder.finish()?.freeze();
                producer
                    .send_batch(&topic, next % partitions, batch)
                    .await?;
                next += 1;
            }
            producer.close().await;
            anyhow::Ok(())
        });
    }
    for _ in 0..bench.workers {
        let queue = Queue::connect(broker.connection())
            .await?
            .retry(RetryPolicy::new().max_attempts(1000));
        let (topic, acked, outstanding, latency) = (
            topic.clone(),
            Arc::clone(&acked),
            Arc::clone(&outstanding),
            Arc::clone(&latency),
        );
        let (count, concurrency) = (bench.count, bench.concurrency);
        tasks.spawn(async move {
            // Each cycle acks the last cycle's jobs on the next Lease (one call, one append).
            let (mut tokens, mut stamps) = (Vec::new(), Vec::new());
            loop {
                if acked.load(Ordering::Acquire) >= count && tokens.is_empty() {
                    break;
                }
                let (jobs, results) = queue
                    .lease_and_ack(
                        &topic,
                        "bench",
                        concurrency,
                        Duration::from_secs(30),
                        Duration::from_millis(100),
                        std::mem::take(&mut tokens),
                    )
                    .await?;
                let now = now_ns();
                let ok = results.iter().filter(|r| r.code == 0).count() as u64;
                anyhow::ensure!(
                    ok == results.len() as u64,
                    "acks refused: {:?}",
                    results.iter().find(|r| r.code != 0)
                );
                if ok > 0 {
                    let mut latency = latency.lock().await;
                    for &sent in &stamps {
                        let _ = latency.record((now.saturating_sub(sent) / 1000).max(1));
                    }
                    acked.fetch_add(ok, Ordering::AcqRel);
                    outstanding.add_permits(ok as usize);
                }
                stamps.clear();
                for job in jobs {
                    // The no-op handler.
                    if let Some(stamp) = job.value.get(..8) {
                        let mut le = [0u8; 8];
                        le.copy_from_slice(stamp);
                        stamps.push(u64::from_le_bytes(le));
                    }
                    tokens.push(job.lease_token);
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("bench task")??;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let jobs = acked.load(Ordering::Acquire);
    let latency = latency.lock().await;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let summary = serde_json::json!({
        "mode": "queue",
        "partitions": bench.partitions,
        "producers": bench.producers,
        "workers": bench.workers,
        "concurrency": bench.concurrency,
        "record_size": bench.record_size,
        "fsync": format!("{:?}", bench.fsync),
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs as f64 / seconds,
        "produce_ack_ms": { "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": latency.max() as f64 / 1000.0 },
    });
    if let Err(error) = admin.delete_topic(&topic).await {
        eprintln!("could not delete the bench topic {topic}: {error}");
    }
    let mut out = std::io::stdout().lock();
    if bench.json {
        writeln!(out, "{summary}")?;
    } else {
        writeln!(
            out,
            "queue: {jobs} jobs of {} B, {} worker(s) x {} concurrency, in {seconds:.2} s: {:.0} jobs/s",
            bench.record_size,
            bench.workers,
            bench.concurrency,
            jobs as f64 / seconds
        )?;
        writeln!(
            out,
            "produce->ack latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            latency.max() as f64 / 1000.0
        )?;
    }
    Ok(())
}
