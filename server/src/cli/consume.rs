//! `sluice consume TOPIC`: prints one value per line, from a start point, to the end of the log
//! (or forever with `--follow`, or for `--count` records), through the client's `Consumer`.

use super::BrokerArgs;
use anyhow::Context;
use clap::Args;
use sluice_client::admin::PartitionDescription;
use sluice_client::{Consumer, ConsumerConfig, OffsetReset, StartFrom};
use std::collections::HashMap;
use std::io::Write;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Where to start: `earliest`, `latest`, an offset (`42`), `-N` for the last N records of
    /// each partition, or a time: RFC 3339 (`2026-11-24T08:00:00Z`) or a date
    /// (`2026-11-24`, midnight UTC). A bare offset on a topic of several partitions starts
    /// each partition at that offset or its end, whichever is lower (and says so).
    #[arg(long, default_value = "earliest", allow_hyphen_values = true)]
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
    /// Consumer group: join it as a member (the broker assigns this consumer its share of the
    /// partitions; several `consume --group` share a topic), start where the group committed,
    /// commit and leave when done or on SIGINT/SIGTERM. With --partition: read that partition
    /// from the group's committed offset and commit it (refused while the group has members).
    #[arg(long)]
    group: Option<String>,
    /// Print "partition/offset key value" instead of the value alone.
    #[arg(long)]
    verbose: bool,
}

/// Where `--from` says to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Earliest,
    Latest,
    Offset(u64),
    /// The last N records of each partition.
    Last(u64),
    Time(i64),
}

fn parse_from(from: &str) -> anyhow::Result<From> {
    let problem = || {
        format!(
            "--from {from:?} is not earliest, latest, an offset, -N, an RFC 3339 time or a date (YYYY-MM-DD)"
        )
    };
    Ok(match from {
        "earliest" => From::Earliest,
        "latest" => From::Latest,
        other => {
            if let Ok(offset) = other.parse::<u64>() {
                From::Offset(offset)
            } else if let Some(last) = other.strip_prefix('-') {
                From::Last(last.parse().with_context(problem)?)
            } else {
                // A bare date means its midnight, UTC.
                let text = if other.len() == 10 {
                    format!("{other}T00:00:00Z")
                } else {
                    other.to_owned()
                };
                let time = humantime::parse_rfc3339_weak(&text).with_context(problem)?;
                let ms = time
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("--from time before 1970")?
                    .as_millis();
                From::Time(i64::try_from(ms).context("--from time too far ahead")?)
            }
        }
    })
}

/// Where `from` starts `partition`, and a note when a bare offset had to be lowered to the
/// partition's end.
fn start_of(
    from: From,
    partition: &PartitionDescription,
    several: bool,
) -> (StartFrom, Option<String>) {
    match from {
        From::Earliest => (StartFrom::Earliest, None),
        From::Latest => (StartFrom::Latest, None),
        From::Time(ms) => (StartFrom::Timestamp(ms), None),
        From::Last(n) => {
            let start = partition
                .latest_offset
                .saturating_sub(n)
                .max(partition.earliest_offset);
            (StartFrom::Offset(start), None)
        }
        From::Offset(offset) if several && offset > partition.latest_offset => {
            let note = format!(
                "partition {} ends at offset {}: starting there instead of {offset}",
                partition.partition, partition.latest_offset
            );
            (StartFrom::Offset(partition.latest_offset), Some(note))
        }
        From::Offset(offset) => (StartFrom::Offset(offset), None),
    }
}

pub async fn run(args: ConsumeArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    // SIGINT or SIGTERM ends the consume as the end of the log would: commit, leave. Listening
    // starts now, so a signal while the consumer still joins its group is not lost.
    let mut interrupted = super::interrupted();
    let from = parse_from(&args.from)?;
    let described = broker.admin().await?.describe_topic(&args.topic).await?;
    let partitions: Vec<&PartitionDescription> = described
        .partitions
        .iter()
        .filter(|p| args.partition.is_none_or(|only| p.partition == only))
        .collect();
    if let Some(only) = args.partition {
        anyhow::ensure!(
            !partitions.is_empty(),
            "topic {:?} has no partition {only} (it has {})",
            args.topic,
            described.partitions.len()
        );
    }
    // With a group and no --partition, the consumer is a member: the broker assigns its share.
    let member = args.group.is_some() && args.partition.is_none();
    let mut config = ConsumerConfig::new()
        .connection(broker.connection())
        .client_id("sluice-cli");
    if let Some(group) = &args.group {
        config = config.group(group.clone());
    }
    if member {
        config = config.reset(match from {
            From::Earliest => OffsetReset::Earliest,
            From::Latest => OffsetReset::Latest,
            _ => anyhow::bail!(
                "with --group (as a member), --from must be earliest or latest: where the group committed decides the rest (use --partition to read from an offset or time)"
            ),
        });
    }
    let mut consumer = Consumer::connect(config)
        .await
        .with_context(|| format!("connecting a consumer to {}", broker.broker))?;
    // Where "the end of the log" is for a non-following consume: the ends at start.
    let ends: HashMap<u32, u64> = partitions
        .iter()
        .map(|p| (p.partition, p.latest_offset))
        .collect();
    if member {
        consumer.subscribe(&[args.topic.as_str()]).await?;
    } else {
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
        let several = partitions.len() > 1;
        for p in &partitions {
            let start = match committed.get(&p.partition) {
                Some(&offset) => StartFrom::Offset(offset),
                None => {
                    let (start, note) = start_of(from, p, several);
                    if let Some(note) = note {
                        eprintln!("{note}");
                    }
                    start
                }
            };
            consumer.assign(&args.topic, p.partition, start).await?;
        }
    }
    let mut printed = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    'poll: loop {
        let at_end = consumer.assignment().iter().all(|(_, partition)| {
            let end = ends.get(partition).copied().unwrap_or(0);
            consumer
                .position(&args.topic, *partition)
                .is_none_or(|position| position >= end)
        });
        if !args.follow && at_end {
            break;
        }
        let records = tokio::select! {
            polled = consumer.poll() => polled?,
            () = interrupted.as_mut() => break,
        };
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
    if member {
        consumer.close().await?;
    } else if args.group.is_some() {
        consumer.commit().await?;
    }
    Ok(())
}
