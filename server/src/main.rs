//! `sluice`: the broker (`sluice serve`) and its command-line tools.
#![forbid(unsafe_code)]

mod cli;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sluice_server::Config;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Sluice: a streaming log and job queue.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(flatten)]
    broker: cli::BrokerArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: a local data directory, gRPC and HTTP on loopback by default.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// Flags override `SLUICE_*` environment variables, which override the config file, which
/// overrides the defaults.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (fields as in `Config`).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./sluice-data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7070].
    #[arg(long, env = "SLUICE_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address for /healthz [default: 127.0.0.1:7071].
    #[arg(long, env = "SLUICE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Segment files and maps open at once [default: 1024].
    #[arg(long, env = "SLUICE_MAX_OPEN_SEGMENTS")]
    max_open_segments: Option<usize>,
    /// Largest gRPC message, bytes [default: 16 MiB].
    #[arg(long, env = "SLUICE_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Produce bytes in flight per partition [default: 64 MiB].
    #[arg(long, env = "SLUICE_MAX_INFLIGHT_BYTES_PER_PARTITION")]
    max_inflight_bytes_per_partition: Option<u32>,
    /// Produce bytes in flight per connection [default: 64 MiB].
    #[arg(long, env = "SLUICE_MAX_INFLIGHT_BYTES_PER_CONNECTION")]
    max_inflight_bytes_per_connection: Option<u32>,
    /// Produce bytes in flight in the whole broker [default: 256 MiB].
    #[arg(long, env = "SLUICE_MAX_INFLIGHT_BYTES")]
    max_inflight_bytes: Option<u32>,
    /// Client connections at once [default: 1024].
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Client connections at once from one IP address [default: 256].
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Time a new connection has to start its HTTP/2 handshake, ms [default: 10000].
    #[arg(long, env = "SLUICE_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<u64>,
    /// Interval of HTTP/2 keepalive pings, ms [default: 30000].
    #[arg(long, env = "SLUICE_KEEPALIVE_INTERVAL_MS")]
    keepalive_interval_ms: Option<u64>,
    /// Time a peer has to answer a keepalive ping, ms [default: 20000].
    #[arg(long, env = "SLUICE_KEEPALIVE_TIMEOUT_MS")]
    keepalive_timeout_ms: Option<u64>,
    /// Produce requests being received at once [default: 64].
    #[arg(long, env = "SLUICE_MAX_PRODUCE_REQUESTS")]
    max_produce_requests: Option<usize>,
    /// Retry hint sent with RESOURCE_EXHAUSTED, ms [default: 50].
    #[arg(long, env = "SLUICE_RETRY_AFTER_MS")]
    retry_after_ms: Option<u32>,
    /// Print the effective configuration as TOML (the config file's format: every field,
    /// defaults filled in) and exit without serving.
    #[arg(long)]
    print_config: bool,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                Config::from_toml(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(value) = self.$field { config.$field = value; })*};
        }
        set!(
            data_dir,
            grpc_addr,
            http_addr,
            max_open_segments,
            max_message_bytes,
            max_inflight_bytes_per_partition,
            max_inflight_bytes_per_connection,
            max_inflight_bytes,
            max_connections,
            max_connections_per_ip,
            handshake_timeout_ms,
            keepalive_interval_ms,
            keepalive_timeout_ms,
            max_produce_requests,
            retry_after_ms
        );
        config.validate()?;
        Ok(config)
    }
}

/// Completes on SIGINT or SIGTERM, listening from the call on (so a signal during start-up
/// stops the broker cleanly once it is up, rather than killing it).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    let signal = cli::interrupted();
    async move {
        signal.await;
        tracing::info!("shutdown signal received");
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let print = args.print_config;
    let config = args.into_config()?;
    if print {
        print!(
            "{}",
            toml::to_string(&config).context("writing the config as TOML")?
        );
        return Ok(());
    }
    let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP address {}", config.http_addr))?;
    let env = sluice_server::Env {
        failpoint: failpoint()?,
        ..sluice_server::Env::default()
    };
    sluice_server::run(config, env, grpc, http, shutdown_signal()).await?;
    Ok(())
}

/// The crash point `SLUICE_FAILPOINT` names, for crash tests. Read only in debug builds (the
/// tests'): a release binary ignores the variable.
#[cfg(debug_assertions)]
fn failpoint() -> anyhow::Result<Option<sluice_server::queue::Failpoint>> {
    match std::env::var("SLUICE_FAILPOINT") {
        Ok(name) => sluice_server::queue::Failpoint::parse(&name)
            .map(Some)
            .with_context(|| format!("unknown SLUICE_FAILPOINT {name:?}")),
        Err(_) => Ok(None),
    }
}

#[cfg(not(debug_assertions))]
fn failpoint() -> anyhow::Result<Option<sluice_server::queue::Failpoint>> {
    Ok(None)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that went away (`sluice consume … | head`) is not an error.
        Err(error) if is_broken_pipe(&error) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Client(command) => cli::run(command, &cli.broker).await,
        }
    })
}
