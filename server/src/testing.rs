//! The test harness (feature `testing`): one way to start a real broker for a test or bench.
//!
//! - [`TestBroker`]: a broker in this process on `127.0.0.1:0` (mini-redis's `start_server`),
//!   on a fresh or given data directory, with a given [`Env`] (a clock that follows tokio's
//!   paused time, injected I/O faults);
//! - [`ChildBroker`]: the `sluice` binary as a child process on loopback ports, for what only
//!   a process shows (SIGKILL, SIGTERM, its memory);
//! - clients, and helpers to build and decode batches.
//!
//! Everything here panics on failure: it is for tests, where a panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::{Config, Env};
use bytes::BytesMut;
use sluice_proto::v1 as pb;
use sluice_storage::format::{BatchBuilder, Batches};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

/// Largest message the harness's clients send or accept.
const CLIENT_MESSAGE_BYTES: usize = 64 << 20;

/// A broker running in this process on 127.0.0.1 with ephemeral ports.
pub struct TestBroker {
    /// gRPC address.
    pub addr: SocketAddr,
    /// HTTP address.
    pub http_addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<crate::Result<()>>>,
    dir: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts a broker on a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker on a fresh data directory, letting `tweak` adjust the config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_env(None, Env::default(), tweak).await
    }

    /// Starts a broker on `data_dir` (which the caller keeps).
    pub async fn start_in(data_dir: PathBuf, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_env(Some(data_dir), Env::default(), tweak).await
    }

    /// Starts a broker with `env` (clock, faults) on `data_dir`, or on a fresh directory.
    /// Retention and compaction run only when a test asks (their intervals are an hour unless
    /// `tweak` sets them).
    pub async fn start_env(
        data_dir: Option<PathBuf>,
        env: Env,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let (data_dir, dir) = match data_dir {
            Some(path) => (path, None),
            None => {
                let dir = tempfile::tempdir().unwrap();
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(grpc, http, data_dir, dir, env, tweak)
    }

    /// Stops the broker and starts another on the same data directory and the same
    /// addresses, so connected clients reconnect to it (a broker restart as clients see it).
    pub async fn restart(mut self, env: Env, tweak: impl FnOnce(&mut Config)) -> Self {
        self.shutdown().await.expect("broker ran cleanly");
        let bind = |addr: SocketAddr| async move {
            // The old listener is closed; its port is free to bind again (SO_REUSEADDR).
            tokio::net::TcpListener::bind(addr).await.unwrap()
        };
        let grpc = bind(self.addr).await;
        let http = bind(self.http_addr).await;
        Self::start_on(
            grpc,
            http,
            self.data_dir.clone(),
            self.dir.take(),
            env,
            tweak,
        )
    }

    fn start_on(
        grpc: tokio::net::TcpListener,
        http: tokio::net::TcpListener,
        data_dir: PathBuf,
        dir: Option<tempfile::TempDir>,
        env: Env,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let addr = grpc.local_addr().unwrap();
        let http_addr = http.local_addr().unwrap();
        let mut config = Config {
            data_dir: data_dir.clone(),
            grpc_addr: addr,
            http_addr,
            retention_check_interval_ms: 3_600_000,
            compaction_check_interval_ms: 3_600_000,
            ..Config::default()
        };
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(config, env, grpc, http, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            http_addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    /// A channel to the broker, with TCP_NODELAY.
    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    /// Log service client.
    pub async fn log(&self) -> pb::log_client::LogClient<Channel> {
        pb::log_client::LogClient::new(self.channel().await)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES)
    }

    /// Admin service client.
    pub async fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(self.channel().await)
    }

    /// Groups service client.
    pub async fn groups(&self) -> pb::groups_client::GroupsClient<Channel> {
        pb::groups_client::GroupsClient::new(self.channel().await)
    }

    /// Queue service client.
    pub async fn queue(&self) -> pb::queue_client::QueueClient<Channel> {
        pb::queue_client::QueueClient::new(self.channel().await)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES)
    }

    /// Stops the broker gracefully and waits for it (partitions closed cleanly).
    pub async fn stop(mut self) {
        self.shutdown().await.expect("broker ran cleanly");
    }

    /// Stops the broker and returns what `run` returned (an error when, say, a poisoned
    /// partition could not close cleanly).
    pub async fn stop_result(mut self) -> crate::Result<()> {
        self.shutdown().await
    }

    async fn shutdown(&mut self) -> crate::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("broker stops within 30 s")
                .expect("broker task"),
            None => Ok(()),
        }
    }

    /// Stops the broker and hands back its data directory (and the guard that deletes it,
    /// if the harness made it), to start another on it.
    pub async fn stop_keeping_dir(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.shutdown().await.expect("broker ran cleanly");
        (self.data_dir.clone(), self.dir.take())
    }
}

/// The gRPC endpoint settings every harness client uses: TCP_NODELAY, the broker's windows,
/// 1 MiB frames (design.md §4).
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
}

/// A channel to `addr`, retrying the connect for up to 10 s (the broker may still be binding).
pub async fn connect(addr: SocketAddr) -> Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint(addr).connect().await {
            Ok(channel) => return channel,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot connect to {addr}: {error}"),
        }
    }
}

/// A batch of `count` records with keys `k{i}` and values `"{tag}-{i}"` padded to `value_len`.
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

/// Every (offset, value) of a run of whole batches, each checked in full as a stored batch
/// (compacted batches have gaps).
pub fn decode(batches: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for framed in Batches::new(batches) {
        let view = framed.and_then(|f| f.stored()).expect("a valid batch");
        for record in view.records() {
            out.push((record.offset, record.value.unwrap_or_default().to_vec()));
        }
    }
    out
}

/// A Produce of `batch` to `topic`/`partition`.
pub fn produce_request(
    topic: &str,
    partition: u32,
    batch: impl Into<bytes::Bytes>,
) -> pb::ProduceRequest {
    pb::ProduceRequest {
        topic: topic.into(),
        partition,
        batch: batch.into(),
    }
}

/// A Fetch of `topic`/`partition` from `offset`: the default size, no waiting.
pub fn fetch_request(topic: &str, partition: u32, offset: u64) -> pb::FetchRequest {
    pb::FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 0,
        max_wait_ms: 0,
    }
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
    crate::Clock::system().now_ms()
}

/// Asserts a status's code and that its message contains `needle`.
pub fn expect_status(status: &tonic::Status, code: tonic::Code, needle: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} does not contain {needle:?}",
        status.message()
    );
}

/// A `sluice serve` child on loopback ports. Dropping it kills the process, so a failing
/// test leaves none behind.
pub struct ChildBroker {
    pub child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    pub exited: Option<ExitStatus>,
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Broker starts in this process, to name their log files.
static STARTS: AtomicU32 = AtomicU32::new(0);

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

impl ChildBroker {
    /// Starts `bin serve` (the `sluice` binary; tests pass `env!("CARGO_BIN_EXE_sluice")`) on
    /// `data_dir` with fresh loopback ports, retrying when a port was taken between probing
    /// and binding, and waits until it answers gRPC. Its log goes to a file under `logs`.
    pub async fn start(
        bin: &Path,
        data_dir: &Path,
        logs: &Path,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> ChildBroker {
        for attempt in 0..5 {
            let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if grpc == http {
                continue;
            }
            let log_path = logs.join(format!(
                "broker-{}-{attempt}.log",
                STARTS.fetch_add(1, Ordering::Relaxed)
            ));
            let log_file = std::fs::File::create(&log_path).expect("create broker log");
            let child = Command::new(bin)
                .arg("serve")
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--grpc-addr")
                .arg(grpc.to_string())
                .arg("--http-addr")
                .arg(http.to_string())
                .args(extra)
                .env_clear()
                .env("SLUICE_LOG", "info")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log_file))
                .spawn()
                .expect("spawn sluice serve");
            let mut broker = ChildBroker {
                child,
                addr: grpc,
                log_path,
                exited: None,
            };
            match broker.wait_ready().await {
                Ok(()) => return broker,
                Err(status) => {
                    broker.exited = Some(status);
                    let log = broker.log_text();
                    if log.contains("binding") || log.contains("in use") {
                        continue;
                    }
                    panic!("broker exited during startup with {status}:\n{log}");
                }
            }
        }
        panic!("could not start the broker on free ports after 5 attempts");
    }

    /// Waits until a ListTopics call succeeds; `Err` if the process exited first.
    pub async fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "broker not ready within 60 s:\n{}",
                self.log_text()
            );
            let attempt = async {
                let channel = endpoint(self.addr).connect().await.ok()?;
                pb::admin_client::AdminClient::new(channel)
                    .list_topics(pb::ListTopicsRequest {})
                    .await
                    .ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the broker logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A fresh connection to the broker.
    pub async fn channel(&self) -> Channel {
        endpoint(self.addr)
            .connect()
            .await
            .expect("connect to broker")
    }

    pub async fn log_client(&self) -> pb::log_client::LogClient<Channel> {
        pb::log_client::LogClient::new(self.channel().await)
            .max_decoding_message_size(CLIENT_MESSAGE_BYTES)
            .max_encoding_message_size(CLIENT_MESSAGE_BYTES)
    }

    /// SIGKILL, as `kill -9`: no chance to sync or write markers.
    pub fn kill_hard(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL the broker");
        let status = self.child.wait().expect("wait for the broker");
        self.exited = Some(status);
        status
    }

    /// SIGTERM via coreutils `kill`, then waits up to 60 s for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {} failed: {sent}", self.pid());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit within 60 s of SIGTERM:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs the CLI `bin ARGS` (tests pass `env!("CARGO_BIN_EXE_sluice")`) against `broker`
/// with `stdin`, bounded in time; returns (success, stdout, stderr).
pub async fn run_cli(
    bin: &str,
    broker: &TestBroker,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env("SLUICE_BROKER", broker.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the CLI finishes within 60 s")
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A TCP proxy on loopback in front of a broker that cuts connections on demand: to lose a
/// response after its request reached the broker, or to cut every connection at random
/// moments. Connections are cut by closing both sides, as a network failure would.
pub struct CutProxy {
    /// The address clients connect to.
    pub addr: SocketAddr,
    shared: std::sync::Arc<ProxyShared>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyShared {
    target: std::sync::Mutex<SocketAddr>,
    /// Responses still to cut: a server-to-client chunk of at least [`RESPONSE_BYTES`] (HTTP/2
    /// control frames are smaller) closes its connection instead of passing.
    cut_responses: std::sync::atomic::AtomicUsize,
    /// Responses cut so far.
    cut: std::sync::atomic::AtomicUsize,
    /// Accept and close new connections at once.
    refusing: std::sync::atomic::AtomicBool,
    /// Bumped to cut every open connection.
    generation: tokio::sync::watch::Sender<u64>,
}

/// Smallest server-to-client chunk taken for a response (a unary answer's HEADERS, DATA and
/// trailers); SETTINGS, PING and WINDOW_UPDATE frames are at most 17 bytes.
const RESPONSE_BYTES: usize = 40;

impl CutProxy {
    /// Starts a proxy to `target` on an ephemeral loopback port.
    pub async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = std::sync::Arc::new(ProxyShared {
            target: std::sync::Mutex::new(target),
            cut_responses: AtomicUsize::new(0),
            cut: AtomicUsize::new(0),
            refusing: AtomicBool::new(false),
            generation: tokio::sync::watch::Sender::new(0),
        });
        let task = tokio::spawn({
            let shared = std::sync::Arc::clone(&shared);
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if shared.refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(proxy_connection(std::sync::Arc::clone(&shared), client));
                }
            }
        });
        Self { addr, shared, task }
    }

    /// Cuts the connections that carry the next `n` responses, instead of passing them.
    pub fn cut_next_responses(&self, n: usize) {
        self.shared.cut_responses.store(n, Ordering::SeqCst);
    }

    /// Responses cut so far.
    pub fn responses_cut(&self) -> usize {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Cuts every open connection now.
    pub fn cut_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// While set, new connections are accepted and closed at once (the broker looks down).
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Points new connections at `target` (a broker restarted on another port).
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap() = target;
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

async fn proxy_connection(shared: std::sync::Arc<ProxyShared>, client: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = *shared.target.lock().unwrap();
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut generation = shared.generation.subscribe();
    generation.mark_unchanged();
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = client_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = server_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            if n >= RESPONSE_BYTES
                && shared
                    .cut_responses
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                shared.cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends (or a cut) drops both halves of both sockets: the connection is cut.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
        _ = generation.changed() => {}
    }
}
