//! `peers-queue redis|nats --size B --count N --workers W --concurrency C [--producers P]`:
//! the same closed loop as `sluice bench --mode queue` against a peer. Producers enqueue
//! 64-job pipelined batches while at most 2 x W x C jobs are outstanding; each worker fetches
//! up to C jobs, runs a no-op handler and acknowledges every one (Redis: one XACK for the
//! batch; NATS: an explicit ack per message, pipelined). Prints one RESULT line: jobs/s and
//! produce->ack latency p50/p99 (send time in the value to the ack's completion).

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, Semaphore};

const BATCH: u64 = 64;

#[derive(Clone, Copy)]
struct Args {
    size: usize,
    count: u64,
    workers: u32,
    concurrency: u32,
    producers: u32,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn value(size: usize) -> Vec<u8> {
    let mut v = vec![b'x'; size.max(8)];
    v[..8].copy_from_slice(&now_ns().to_le_bytes());
    v
}

fn stamp(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.get(..8)?.try_into().ok()?))
}

struct Shared {
    to_send: AtomicU64,
    acked: AtomicU64,
    outstanding: Semaphore,
    latency: Mutex<Histogram<u64>>,
}

impl Shared {
    fn new(args: &Args) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            to_send: AtomicU64::new(args.count),
            acked: AtomicU64::new(0),
            outstanding: Semaphore::new((2 * args.workers * args.concurrency) as usize),
            latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        }))
    }

    /// Claims the next batch to send (waiting for room), or None when all are sent.
    async fn claim(&self) -> anyhow::Result<Option<u64>> {
        let claimed = self.to_send.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n > 0).then(|| n - BATCH.min(n)));
        let Ok(before) = claimed else { return Ok(None) };
        let jobs = BATCH.min(before);
        self.outstanding.acquire_many(jobs as u32).await?.forget();
        Ok(Some(jobs))
    }

    async fn acked(&self, stamps: &[u64]) {
        let now = now_ns();
        {
            let mut h = self.latency.lock().await;
            for &s in stamps {
                let _ = h.record((now.saturating_sub(s) / 1000).max(1));
            }
        }
        self.acked.fetch_add(stamps.len() as u64, Ordering::AcqRel);
        self.outstanding.add_permits(stamps.len());
    }
}

async fn redis_bench(args: Args, url: &str) -> anyhow::Result<Arc<Shared>> {
    use redis::AsyncCommands;
    use redis::streams::{StreamReadOptions, StreamReadReply};
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("DEL").arg("jobs").query_async(&mut con).await?;
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg("jobs").arg("g").arg("0").arg("MKSTREAM").query_async(&mut con).await?;
    let shared = Shared::new(&args)?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let (shared, mut con) = (Arc::clone(&shared), client.get_multiplexed_async_connection().await?);
        tasks.spawn(async move {
            while let Some(jobs) = shared.claim().await? {
                let v = value(args.size);
                let mut pipe = redis::pipe();
                for _ in 0..jobs {
                    pipe.cmd("XADD").arg("jobs").arg("*").arg("d").arg(&v[..]).ignore();
                }
                let _: () = pipe.query_async(&mut con).await?;
            }
            anyhow::Ok(())
        });
    }
    for w in 0..args.workers {
        let (shared, mut con) = (Arc::clone(&shared), client.get_multiplexed_async_connection().await?);
        tasks.spawn(async move {
            let name = format!("c{w}");
            let options = StreamReadOptions::default().group("g", &name).count(args.concurrency as usize).block(100);
            while shared.acked.load(Ordering::Acquire) < args.count {
                let reply: StreamReadReply = con.xread_options(&["jobs"], &[">"], &options).await?;
                let mut ids = Vec::new();
                let mut stamps = Vec::new();
                for key in reply.keys {
                    for entry in key.ids {
                        if let Some(redis::Value::BulkString(v)) = entry.map.get("d") {
                            stamps.extend(stamp(v));
                        }
                        ids.push(entry.id);
                    }
                }
                if ids.is_empty() {
                    continue;
                }
                let _: u64 = con.xack("jobs", "g", &ids).await?;
                shared.acked(&stamps).await;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(shared)
}

async fn nats_bench(args: Args, url: &str) -> anyhow::Result<Arc<Shared>> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream("JOBS").await;
    let stream = js
        .create_stream(stream::Config {
            name: "JOBS".into(),
            subjects: vec!["jobs".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("create stream")?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("w".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1_000_000,
            ..Default::default()
        })
        .await
        .context("create consumer")?;
    let shared = Shared::new(&args)?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.producers {
        let shared = Arc::clone(&shared);
        let js = jetstream::new(async_nats::connect(url).await?);
        tasks.spawn(async move {
            while let Some(jobs) = shared.claim().await? {
                let v = bytes::Bytes::from(value(args.size));
                let mut acks = Vec::with_capacity(jobs as usize);
                for _ in 0..jobs {
                    acks.push(js.publish("jobs", v.clone()).await?);
                }
                for ack in acks {
                    ack.await?;
                }
            }
            anyhow::Ok(())
        });
    }
    for _ in 0..args.workers {
        let shared = Arc::clone(&shared);
        let js = jetstream::new(async_nats::connect(url).await?);
        tasks.spawn(async move {
            let consumer: consumer::PullConsumer = js.get_stream("JOBS").await?.get_consumer("w").await.map_err(|e| anyhow::anyhow!("{e}"))?;
            while shared.acked.load(Ordering::Acquire) < args.count {
                let mut messages = consumer
                    .fetch()
                    .max_messages(args.concurrency as usize)
                    .expires(Duration::from_millis(100))
                    .messages()
                    .await?;
                let mut stamps = Vec::new();
                let mut pending = Vec::new();
                while let Some(message) = messages.next().await {
                    let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                    stamps.extend(stamp(&message.payload));
                    pending.push(message);
                }
                // Explicit acks, each a publish; double_ack waits for the server's answer.
                let acks = pending.iter().map(|m| m.double_ack());
                for ack in futures::future::join_all(acks).await {
                    ack.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                if !stamps.is_empty() {
                    shared.acked(&stamps).await;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(shared)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let peer = argv.get(1).cloned().context("usage: peers-queue redis|nats [--size B] [--count N] [--workers W] [--concurrency C] [--producers P] [--url U]")?;
    let mut args = Args { size: 100, count: 100_000, workers: 1, concurrency: 64, producers: 1 };
    let mut url = None;
    let mut i = 2;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--size" => args.size = v.parse()?,
            "--count" => args.count = v.parse()?,
            "--workers" => args.workers = v.parse()?,
            "--concurrency" => args.concurrency = v.parse()?,
            "--producers" => args.producers = v.parse()?,
            "--url" => url = Some(v.clone()),
            other => anyhow::bail!("unknown flag {other}"),
        }
        i += 2;
    }
    let started = Instant::now();
    let shared = match peer.as_str() {
        "redis" => redis_bench(args, url.as_deref().unwrap_or("redis://127.0.0.1:6390/")).await?,
        "nats" => nats_bench(args, url.as_deref().unwrap_or("nats://127.0.0.1:4222")).await?,
        other => anyhow::bail!("unknown peer {other}"),
    };
    let seconds = started.elapsed().as_secs_f64();
    let jobs = shared.acked.load(Ordering::Acquire);
    let h = shared.latency.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "RESULT peer={peer} size={} workers={} concurrency={} jobs={jobs} seconds={seconds:.2} jobs_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        args.size, args.workers, args.concurrency, jobs as f64 / seconds, ms(0.5), ms(0.99)
    );
    Ok(())
}
