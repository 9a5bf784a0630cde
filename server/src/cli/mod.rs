//! The client side of the `sluice` binary: `topic`, `produce`, `consume` and `bench`.
//!
//! Every command talks to a broker at `--broker HOST:PORT` (env `SLUICE_BROKER`, default
//! `127.0.0.1:7070`) over the same gRPC API any client uses.

mod bench;
mod consume;
mod produce;
mod topic;

use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_proto::v1 as pb;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

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
}

/// Where the broker is.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker gRPC address.
    #[arg(long, env = "SLUICE_BROKER", default_value = "127.0.0.1:7070")]
    pub broker: String,
}

impl BrokerArgs {
    /// A channel to the broker (TCP_NODELAY, 8/16 MiB windows as the broker uses).
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let uri = if self.broker.contains("://") {
            self.broker.clone()
        } else {
            format!("http://{}", self.broker)
        };
        Endpoint::from_shared(uri.clone())
            .with_context(|| format!("bad broker address {:?}", self.broker))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            // 1 MiB frames for fetched batches: 2.2x the fetch throughput of h2's 16 KiB.
            .max_frame_size(1 << 20)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the broker at {uri}"))
    }

    pub async fn log(&self) -> anyhow::Result<pb::log_client::LogClient<Channel>> {
        Ok(pb::log_client::LogClient::new(self.connect().await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    pub async fn admin(&self) -> anyhow::Result<pb::admin_client::AdminClient<Channel>> {
        Ok(pb::admin_client::AdminClient::new(self.connect().await?))
    }

    pub async fn groups(&self) -> anyhow::Result<pb::groups_client::GroupsClient<Channel>> {
        Ok(pb::groups_client::GroupsClient::new(self.connect().await?))
    }
}

/// Runs a client command.
pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Topic(args) => topic::run(args).await,
        ClientCommand::Produce(args) => produce::run(args).await,
        ClientCommand::Consume(args) => consume::run(args).await,
        ClientCommand::Bench(args) => bench::run(args).await,
    }
}

/// A gRPC status as an error that says what the broker said.
pub fn status(context: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{context}: {} ({:?})", status.message(), status.code())
}
