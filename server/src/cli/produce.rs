//! `sluice produce TOPIC`: one record per line of stdin, through the client's `Producer`.

use super::BrokerArgs;
use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use sluice_client::{Producer, ProducerConfig, ProducerRecord};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Deliveries awaited at once: beyond this the reader waits for the oldest acknowledgement.
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to produce to.
    topic: String,
    /// Split each line at the first SEP into key and value (no SEP in a line: no key).
    #[arg(long, value_name = "SEP")]
    key_sep: Option<String>,
    /// Send every record to this partition (default: by key hash, keyless round robin).
    #[arg(long)]
    partition: Option<u32>,
    /// How long a batch waits for more records, ms.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
}

pub async fn run(args: ProduceArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    let producer = Producer::connect(
        ProducerConfig::new()
            .connection(broker.connection())
            .linger(Duration::from_millis(args.linger_ms)),
    )
    .await
    .with_context(|| format!("connecting a producer to {}", broker.broker))?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut pending = VecDeque::new();
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    let mut settle = |result: sluice_client::Result<_>| match result {
        Ok(_) => sent += 1,
        Err(error) => {
            failed += 1;
            first_error.get_or_insert(error);
        }
    };
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        let (key, value) = match args.key_sep.as_deref().and_then(|sep| line.split_once(sep)) {
            Some((key, value)) => (Some(key.to_owned()), value.to_owned()),
            None => (None, line),
        };
        let mut record = ProducerRecord::new(Bytes::from(value));
        if let Some(key) = key {
            record = record.key(Bytes::from(key));
        }
        if let Some(partition) = args.partition {
            record = record.partition(partition);
        }
        pending.push_back(producer.send(&args.topic, record).await?);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending.pop_front()
        {
            settle(oldest.await);
        }
    }
    producer.flush().await;
    for delivery in pending {
        settle(delivery.await);
    }
    producer.close().await;
    let records = if sent == 1 { "record" } else { "records" };
    eprintln!("produced {sent} {records} to {}", args.topic);
    match first_error {
        Some(error) => Err(anyhow::anyhow!("{failed} records failed; first: {error}")),
        None => Ok(()),
    }
}
