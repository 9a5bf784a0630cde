//! `sluice consume TOPIC`: prints one value per line, from a start point, to the end of the log
//! (or forever with `--follow`, or for `--count` records), through the client's `Consumer`.

use super::BrokerArgs;
use anyhow::Context;
use clap::Args;
use sluice_client::admin::PartitionDescription;
use sluice_client::{Consumer, ConsumerConfig, StartFrom};
use std::collections::HashMap;
use std::io::Write;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Topic to read.
    topic: String,
    /// Where to start: earliest, latest, an offset, or an RFC 3339 time.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Only this partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Keep waiting for new records instead of stopping at the end of the log.
    #[arg(long)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<u64>,
    /// Consumer group: start from its committed offsets where it has them, commit when done.
    #[arg(long)]
    group: Option<String>,
    /// Print "partition/offset key value" instead of the value alone.
    #[arg(long)]
    verbose: bool,
}

fn parse_from(from: &str) -> anyhow::Result<StartFrom> {
    Ok(match from {
        "earliest" => StartFrom::Earliest,
        "latest" => StartFrom::Latest,
        other => {
            match other.parse::<u64>() {
                Ok(offset) => StartFrom::Offset(offset),
                Err(_) => {
                    let time = humantime::parse_rfc3339_weak(other).with_context(|| {
                    format!("--from {other:?} is not earliest, latest, an offset or an RFC 3339 time")
                })?;
                    let ms = time
                        .duration_since(std::time::UNIX_EPOCH)
                        .context("--from time before 1970")?
                        .as_millis() as i64;
                    StartFrom::Timestamp(ms)
                }
            }
        }
    })
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let start = parse_from(&args.from)?;
    let described = args
        .broker
        .admin()
        .await?
        .describe_topic(&args.topic)
        .await?;
    let partitions: Vec<&PartitionDescription> = described
        .partitions
        .iter()
        .filter(|p| args.partition.is_none_or(|only| p.partition == only))
        .collect();
    anyhow::ensure!(
        !partitions.is_empty(),
        "topic {:?} has no partition {:?}",
        args.topic,
        args.partition
    );
    let mut config = ConsumerConfig::new().connection(args.broker.connection());
    if let Some(group) = &args.group {
        config = config.group(group.clone());
    }
    let mut consumer = Consumer::connect(config)
        .await
        .with_context(|| format!("connecting a consumer to {}", args.broker.broker))?;
    let committed: HashMap<u32, u64> = match &args.group {
        Some(_) => {
            let ids: Vec<u32> = partitions.iter().map(|p| p.partition).collect();
            consumer
                .committed(&args.topic, &ids)
                .await?
                .into_iter()
                .filter_map(|(partition, offset)| Some((partition, offset?)))
                .collect()
        }
        None => HashMap::new(),
    };
    // Where "the end of the log" is for a non-following consume: the ends at start.
    let mut ends = HashMap::new();
    for p in &partitions {
        let from = committed
            .get(&p.partition)
            .map_or(start, |&offset| StartFrom::Offset(offset));
        consumer.assign(&args.topic, p.partition, from).await?;
        ends.insert(p.partition, p.latest_offset);
    }
    let mut printed = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    'poll: loop {
        if !args.follow
            && ends.iter().all(|(&partition, &end)| {
                consumer
                    .position(&args.topic, partition)
                    .is_none_or(|position| position >= end)
            })
        {
            break;
        }
        let records = consumer.poll().await?;
        for record in records {
            if !args.follow
                && ends
                    .get(&record.partition)
                    .is_some_and(|&end| record.offset >= end)
            {
                continue;
            }
            let value = record.value.as_deref().unwrap_or_default();
            if args.verbose {
                let key = record.key.as_deref().unwrap_or_default();
                write!(
                    out,
                    "{}/{} {} ",
                    record.partition,
                    record.offset,
                    String::from_utf8_lossy(key)
                )?;
            }
            out.write_all(value)?;
            out.write_all(b"\n")?;
            printed += 1;
            if args.count.is_some_and(|count| printed >= count) {
                break 'poll;
            }
        }
        if args.follow {
            out.flush()?;
        }
    }
    out.flush()?;
    drop(out);
    if args.group.is_some() {
        consumer.commit().await?;
    }
    Ok(())
}
