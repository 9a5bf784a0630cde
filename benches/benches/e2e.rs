//! End to end over loopback: a real in-process broker against the physical reference.
//!
//! - `sluice_produce/1MiB`: 1 KiB records in 1 MiB batches, one `Produce` at a time, each
//!   awaited (fsync `never`), through gRPC to a broker in this process on 127.0.0.1.
//! - `tcp_send/1MiB`: the same bytes written over a plain tokio TCP connection on loopback
//!   (TCP_NODELAY both ends), each acknowledged by an 8-byte reply: the physical reference.
//! - `sluice_fetch/1MiB`: reading back 1 MiB batches with `Fetch`, one at a time.
//!
//! Throughput is set in bytes; compare the ratios within one run (design.md §4 measured the
//! transport on this machine kind: tonic unary ~0.45× TCP at 1 MiB). The broker's data
//! directory is on tmpfs when the machine has one (see `start_broker`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::batch_of;
use sluice_proto::v1 as pb;
use sluice_server::testing::{TestBroker, endpoint};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

const RECORD_BYTES: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
/// Batches the fetch bench cycles through (written once before it starts).
const FETCH_BATCHES: u64 = 64;

struct Broker {
    broker: TestBroker,
    channel: Channel,
    _dir: tempfile::TempDir,
}

/// HTTP/2 frame size the client accepts (SLUICE_BENCH_FRAME_BYTES, default 1 MiB).
fn frame_size() -> u32 {
    std::env::var("SLUICE_BENCH_FRAME_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20)
}

async fn start_broker() -> Broker {
    // The data directory lives in memory (/dev/shm, where there is one): sustained writes to
    // a disk are throttled to its write-back bandwidth, which is the storage bench's subject
    // (against a raw file write), not this one's (the broker and transport against raw TCP).
    let shm = std::path::Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix("sluice-bench-e2e-");
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .unwrap();
    let broker = TestBroker::start_in(dir.path().to_path_buf(), |config| {
        // Retention runs as in production: the bench topic keeps its disk use bounded.
        config.retention_check_interval_ms =
            sluice_server::Config::default().retention_check_interval_ms;
    })
    .await;
    let endpoint = endpoint(broker.addr).max_frame_size(frame_size());
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    admin
        .create_topic(pb::CreateTopicRequest {
            name: "bench".into(),
            partitions: 1,
            config: Some(pb::TopicConfig {
                fsync: pb::FsyncPolicy::Never as i32,
                // Bounded disk use however long criterion runs: old segments go.
                retention_bytes: Some(512 << 20),
                segment_bytes: Some(128 << 20),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    Broker {
        broker,
        channel,
        _dir: dir,
    }
}

impl Broker {
    fn log(&self) -> pb::log_client::LogClient<Channel> {
        pb::log_client::LogClient::new(self.channel.clone())
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    async fn stop(self) {
        self.broker.stop().await;
    }
}

/// A loopback TCP server that reads `len`-byte messages and answers each with 8 bytes.
async fn tcp_pair(len: usize) -> tokio::net::TcpStream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; len];
        let mut count = 0u64;
        while socket.read_exact(&mut buf).await.is_ok() {
            count += 1;
            if socket.write_all(&count.to_le_bytes()).await.is_err() {
                break;
            }
        }
    });
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.set_nodelay(true).unwrap();
    socket
}

fn e2e(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let batch: Bytes = batch_of(BATCH_BYTES, RECORD_BYTES).unwrap().freeze();
    let broker = runtime.block_on(start_broker());
    let mut group = c.benchmark_group("e2e");
    group
        .throughput(Throughput::Bytes(batch.len() as u64))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));

    group.bench_function("tcp_send/1MiB", |b| {
        let mut socket = runtime.block_on(tcp_pair(batch.len()));
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut ack = [0u8; 8];
                let start = Instant::now();
                for _ in 0..iters {
                    socket.write_all(&batch).await.unwrap();
                    socket.read_exact(&mut ack).await.unwrap();
                }
                start.elapsed()
            })
        });
    });

    group.bench_function("sluice_produce/1MiB", |b| {
        let mut log = broker.log();
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    log.produce(pb::ProduceRequest {
                        topic: "bench".into(),
                        partition: 0,
                        batch: batch.clone(),
                    })
                    .await
                    .unwrap();
                }
                start.elapsed()
            })
        });
    });

    // Read back: a fresh topic region of FETCH_BATCHES batches, fetched round robin.
    let (first, mut log) = runtime.block_on(async {
        let mut log = broker.log();
        let mut first = None;
        for _ in 0..FETCH_BATCHES {
            let response = log
                .produce(pb::ProduceRequest {
                    topic: "bench".into(),
                    partition: 0,
                    batch: batch.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            first.get_or_insert(response.base_offset);
        }
        (first.unwrap_or(0), log)
    });
    let records_per_batch = sluice_storage::format::BatchView::new(&batch, usize::MAX)
        .unwrap()
        .record_count() as u64;
    group.bench_function("sluice_fetch/1MiB", |b| {
        let mut next = 0u64;
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let offset = first + (next % FETCH_BATCHES) * records_per_batch;
                    next += 1;
                    let response = log
                        .fetch(pb::FetchRequest {
                            topic: "bench".into(),
                            partition: 0,
                            offset,
                            max_bytes: BATCH_BYTES as u32,
                            max_wait_ms: 0,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(response.batches.len(), batch.len());
                }
                start.elapsed()
            })
        });
    });
    group.finish();
    runtime.block_on(broker.stop());
}

criterion_group!(benches, e2e);
criterion_main!(benches);
