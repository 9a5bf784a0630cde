//! A `sluice serve` child process on loopback ports, shared by the integration tests that
//! need the real binary (crash, restart, memory of the broker process).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use sluice_proto::v1 as pb;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// A `sluice serve` child. Dropping it kills the process (so a failing test leaves none behind).
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

/// Broker starts in this test binary, to name their log files.
static STARTS: AtomicU32 = AtomicU32::new(0);

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

impl ChildBroker {
    /// Starts `sluice serve` on `data_dir` with fresh loopback ports, retrying when a port was
    /// taken between probing and binding, and waits until it answers gRPC.
    pub async fn start(
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
            let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
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
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
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

pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
}
