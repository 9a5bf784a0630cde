//! Harness for Sluice's integration tests: a real broker, in-process or as a child process,
//! on ephemeral loopback ports, and gRPC clients connected to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use sluice_proto::v1 as pb;
use sluice_server::Config;
use sluice_storage::format::BatchBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// A broker running in this process on 127.0.0.1 with ephemeral ports.
pub struct TestBroker {
    /// gRPC address.
    pub addr: SocketAddr,
    /// HTTP address.
    pub http_addr: SocketAddr,
    /// The data directory (kept alive for the broker's lifetime unless `keep_dir` moved it).
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<sluice_server::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts a broker on a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker on a fresh data directory, letting `tweak` adjust the config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let mut broker = Self::start_in(path, tweak).await;
        broker._dir = Some(dir);
        broker
    }

    /// Starts a broker on `data_dir` (which the caller keeps).
    pub async fn start_in(data_dir: PathBuf, tweak: impl FnOnce(&mut Config)) -> Self {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let mut config = Config {
            data_dir: data_dir.clone(),
            grpc_addr: addr,
            http_addr,
            retention_check_interval_ms: 3_600_000,
            ..Config::default()
        };
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_server::run(config, grpc, http, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            http_addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    /// A channel to the broker, with TCP_NODELAY.
    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    /// Log service client.
    pub async fn log(&self) -> pb::log_client::LogClient<Channel> {
        pb::log_client::LogClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Admin service client.
    pub async fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel().await)
    }

    /// Groups service client.
    pub async fn groups(&self) -> pb::groups_client::GroupsClient<Channel> {
        pb::groups_client::GroupsClient::new(self.channel().await)
    }

    /// Stops the broker gracefully and waits for it (partitions closed cleanly).
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("broker stops within 30 s")
                .expect("broker task");
            result.expect("broker ran cleanly");
        }
    }

    /// Stops the broker and hands back its data directory, to start another on it.
    pub async fn stop_keeping_dir(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.shutdown().await;
        (self.data_dir.clone(), self._dir.take())
    }
}

/// A channel to `addr` with TCP_NODELAY, retrying the connect for up to 10 s.
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) if tokio::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot connect to {addr}: {error}"),
        }
    }
}

/// A batch of `count` records with values `"{tag}-{i}"` padded to `value_len` bytes.
pub fn batch(tag: &str, count: u32, value_len: usize, timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let mut value = format!("{tag}-{i}").into_bytes();
        if value.len() < value_len {
            value.resize(value_len, b'.');
        }
        builder
            .push(
                timestamp_ms,
                Some(format!("k{i}").as_bytes()),
                Some(&value),
                &[],
            )
            .unwrap();
    }
    builder.finish().unwrap()
}

/// Every (offset, value) of a run of whole batches, checking each batch's CRC.
pub fn decode(mut batches: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while !batches.is_empty() {
        let prefix = sluice_storage::format::BatchPrefix::parse(batches).expect("batch prefix");
        let (one, rest) = batches.split_at(prefix.total_len as usize);
        let view = sluice_storage::format::BatchView::new(one, usize::MAX).expect("valid batch");
        for record in view.records() {
            out.push((record.offset, record.value.unwrap_or_default().to_vec()));
        }
        batches = rest;
    }
    out
}

/// Creates a topic with the given config, panicking on error.
pub async fn create_topic(
    broker: &TestBroker,
    name: &str,
    partitions: u32,
    config: pb::TopicConfig,
) {
    broker
        .admin()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            partitions,
            config: Some(config),
        })
        .await
        .unwrap();
}

/// Current wall-clock time, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
