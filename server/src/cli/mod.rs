//! The client side of the `sluice` binary: `topic`, `produce`, `consume`, `bench`, `group`,
//! and queue mode's `enqueue`, `work`, `queue` and `dlq`.
//!
//! Every command talks to a broker at `--broker HOST:PORT` (env `SLUICE_BROKER`, default
//! `127.0.0.1:7070`) over the same gRPC API any client uses.

mod bench;
mod bench_queue;
mod consume;
mod group;
mod produce;
mod queue;
mod topic;

use clap::{Args, Subcommand};
use sluice_client::admin::{CleanupPolicy, FsyncPolicy};
use sluice_client::{Admin, ConnectionConfig};

/// The commands that talk to a running broker.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe or delete topics.
    Topic(topic::TopicArgs),
    /// Produce one record per line of stdin.
    Produce(produce::ProduceArgs),
    /// Print records, one value per line.
    Consume(consume::ConsumeArgs),
    /// Load-generate: producers and consumers, then a throughput and latency summary.
    Bench(bench::BenchArgs),
    /// List, describe, reset or delete consumer groups.
    Group(group::GroupArgs),
    /// Enqueue one job per line of stdin (queue mode; the same as `produce`).
    Enqueue(produce::ProduceArgs),
    /// Run a command per job of a queue group: value on stdin, exit 0 acks, else nacks.
    Work(queue::WorkArgs),
    /// Describe a queue group.
    Queue(queue::QueueArgs),
    /// Dead letters of a topic: list, peek, redrive.
    Dlq(queue::DlqArgs),
}

/// Where the broker is: a global flag, accepted before or after any subcommand.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker gRPC address, for the client commands.
    #[arg(
        long,
        global = true,
        env = "SLUICE_BROKER",
        default_value = "127.0.0.1:7070"
    )]
    pub broker: String,
}

impl BrokerArgs {
    /// The client connection settings for the broker (TCP_NODELAY, the broker's windows,
    /// 1 MiB frames: the client's defaults).
    pub fn connection(&self) -> ConnectionConfig {
        ConnectionConfig::new().address(self.broker.clone())
    }

    /// An admin handle on the broker.
    pub async fn admin(&self) -> anyhow::Result<Admin> {
        Admin::connect(self.connection())
            .await
            .map_err(|e| anyhow::anyhow!("{e}: {}", error_chain(&e)))
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is called, and completes on the first.
/// The listeners are installed here, not on the future's first poll: a signal that arrives
/// in between (a consumer still joining its group, say) is kept, instead of killing the
/// process before it can commit and leave. Call it inside the runtime, as early as the
/// command can be interrupted.
pub fn interrupted() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => Box::pin(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }),
            (Ok(mut only), Err(error)) | (Err(error), Ok(mut only)) => {
                tracing::error!(%error, "cannot listen for one of SIGINT and SIGTERM");
                Box::pin(async move {
                    only.recv().await;
                })
            }
            (Err(error), Err(_)) => {
                tracing::error!(%error, "cannot listen for SIGINT or SIGTERM");
                Box::pin(std::future::pending())
            }
        }
    }
    #[cfg(not(unix))]
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// `always`, `interval` or `never`, as `--fsync` takes it.
pub fn parse_fsync(text: &str) -> Result<FsyncPolicy, String> {
    match text {
        "always" => Ok(FsyncPolicy::Always),
        "interval" => Ok(FsyncPolicy::Interval),
        "never" => Ok(FsyncPolicy::Never),
        other => Err(format!(
            "{other:?} is not a durability: use always, interval or never"
        )),
    }
}

/// `delete`, `compact` or `compact,delete`, as `--cleanup` takes it.
pub fn parse_cleanup(text: &str) -> Result<CleanupPolicy, String> {
    match text {
        "delete" => Ok(CleanupPolicy::Delete),
        "compact" => Ok(CleanupPolicy::Compact),
        "compact,delete" | "delete,compact" => Ok(CleanupPolicy::CompactDelete),
        other => Err(format!(
            "{other:?} is not a cleanup policy: use delete, compact or compact,delete"
        )),
    }
}

/// The causes below an error, joined, for messages that should say why a connect failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.join(": ")
}

/// Runs a client command.
pub async fn run(command: ClientCommand, broker: &BrokerArgs) -> anyhow::Result<()> {
    match command {
        ClientCommand::Topic(args) => topic::run(args, broker).await,
        ClientCommand::Produce(args) => produce::run(args, broker).await,
        ClientCommand::Consume(args) => consume::run(args, broker).await,
        ClientCommand::Bench(args) => bench::run(args, broker).await,
        ClientCommand::Group(args) => group::run(args, broker).await,
        ClientCommand::Enqueue(args) => produce::run(args, broker).await,
        ClientCommand::Work(args) => queue::work(args, broker).await,
        ClientCommand::Queue(args) => queue::queue(args, broker).await,
        ClientCommand::Dlq(args) => queue::dlq(args, broker).await,
    }
}
