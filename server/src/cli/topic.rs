//! `sluice topic create|list|describe|delete`.

use super::{BrokerArgs, parse_cleanup, parse_fsync};
use clap::{Args, Subcommand};
use sluice_client::admin::{CleanupPolicy, FsyncPolicy, TopicConfig, TopicDescription};
use std::io::Write;

#[derive(Debug, Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Retention by size per partition, bytes (-1: none).
        #[arg(long, allow_negative_numbers = true)]
        retention_bytes: Option<i64>,
        /// Retention by age, ms (-1: forever) [default: 7 days].
        #[arg(long, allow_negative_numbers = true)]
        retention_ms: Option<i64>,
        /// Segment size, bytes [default: 1 GiB].
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Durability: always, interval or never [default: always].
        #[arg(long, value_parser = parse_fsync)]
        fsync: Option<FsyncPolicy>,
        /// fsync interval with --fsync interval, ms [default: 1000].
        #[arg(long)]
        fsync_interval_ms: Option<u64>,
        /// Largest batch accepted, bytes [default: 4 MiB].
        #[arg(long)]
        max_batch_bytes: Option<u32>,
        /// What happens to old records: delete (by retention), compact (keep the latest record
        /// per key; every record needs a key) or compact,delete [default: delete].
        #[arg(long, value_parser = parse_cleanup)]
        cleanup: Option<CleanupPolicy>,
        /// On compacted topics, how long a tombstone (a null value) stays after it was
        /// appended, ms [default: 1 day].
        #[arg(long)]
        delete_retention_ms: Option<u64>,
        #[command(flatten)]
        queue: QueueFlags,
    },
    /// Change a topic's queue settings (max attempts, backoff).
    Alter {
        name: String,
        #[command(flatten)]
        queue: QueueFlags,
    },
    /// List topics.
    List,
    /// Show a topic's config and partitions.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

/// Queue-mode settings of a topic.
#[derive(Debug, Args)]
struct QueueFlags {
    /// Queue mode: deliveries of a message before it goes to TOPIC.dlq [default: 5].
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Queue mode: backoff before the second delivery, like 100ms or 2s (full jitter)
    /// [default: 1s].
    #[arg(long, value_parser = parse_duration_ms)]
    backoff_initial: Option<u64>,
    /// Queue mode: backoff growth per attempt [default: 2.0].
    #[arg(long)]
    backoff_multiplier: Option<f64>,
    /// Queue mode: longest backoff, like 10s [default: 60s].
    #[arg(long, value_parser = parse_duration_ms)]
    backoff_max: Option<u64>,
}

impl QueueFlags {
    fn apply(&self, config: &mut TopicConfig) {
        config.max_attempts = self.max_attempts;
        config.backoff_initial_ms = self.backoff_initial;
        config.backoff_multiplier = self.backoff_multiplier;
        config.backoff_max_ms = self.backoff_max;
    }
}

/// A duration like `100ms`, `2s` or `1m`, in ms.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 100ms or 10s: {e}"))?;
    u64::try_from(duration.as_millis()).map_err(|_| format!("{text:?} is too long"))
}

fn print_description(out: &mut impl Write, topic: &TopicDescription) -> std::io::Result<()> {
    let config = topic.config.unwrap_or_default();
    let fsync = FsyncPolicy::try_from(config.fsync)
        .map(|f| {
            f.as_str_name()
                .trim_start_matches("FSYNC_POLICY_")
                .to_lowercase()
        })
        .unwrap_or_default();
    let cleanup = match CleanupPolicy::try_from(config.cleanup) {
        Ok(CleanupPolicy::Unspecified | CleanupPolicy::Delete) => "delete",
        Ok(CleanupPolicy::Compact) => "compact",
        Ok(CleanupPolicy::CompactDelete) => "compact,delete",
        Err(_) => "unknown",
    };
    writeln!(out, "topic {}", topic.name)?;
    writeln!(
        out,
        "  fsync {fsync}  segment_bytes {}  max_batch_bytes {}  retention_bytes {}  retention_ms {}",
        config.segment_bytes.unwrap_or_default(),
        config.max_batch_bytes.unwrap_or_default(),
        config.retention_bytes.unwrap_or(-1),
        config.retention_ms.unwrap_or(-1),
    )?;
    writeln!(
        out,
        "  cleanup {cleanup}  delete_retention_ms {}",
        config.delete_retention_ms.unwrap_or_default(),
    )?;
    writeln!(
        out,
        "  queue max_attempts {}  backoff_initial_ms {}  backoff_multiplier {}  backoff_max_ms {}",
        config.max_attempts.unwrap_or_default(),
        config.backoff_initial_ms.unwrap_or_default(),
        config.backoff_multiplier.unwrap_or_default(),
        config.backoff_max_ms.unwrap_or_default(),
    )?;
    writeln!(
        out,
        "  {:>9} {:>14} {:>14} {:>14} {:>12} {:>8}",
        "partition", "earliest", "latest", "log_end", "bytes", "segments"
    )?;
    for p in &topic.partitions {
        writeln!(
            out,
            "  {:>9} {:>14} {:>14} {:>14} {:>12} {:>8}",
            p.partition,
            p.earliest_offset,
            p.latest_offset,
            p.log_end_offset,
            p.size_bytes,
            p.segments
        )?;
    }
    Ok(())
}

pub async fn run(args: TopicArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    let admin = broker.admin().await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            retention_bytes,
            retention_ms,
            segment_bytes,
            fsync,
            fsync_interval_ms,
            max_batch_bytes,
            cleanup,
            delete_retention_ms,
            queue,
        } => {
            let mut config = TopicConfig {
                retention_bytes,
                retention_ms,
                segment_bytes,
                fsync: fsync.unwrap_or(FsyncPolicy::Unspecified) as i32,
                fsync_interval_ms,
                max_batch_bytes,
                cleanup: cleanup.unwrap_or(CleanupPolicy::Unspecified) as i32,
                delete_retention_ms,
                ..TopicConfig::default()
            };
            queue.apply(&mut config);
            let created = admin.create_topic(&name, partitions, config).await?;
            print_description(&mut out, &created)?;
        }
        TopicCommand::Alter { name, queue } => {
            let mut config = TopicConfig::default();
            queue.apply(&mut config);
            let altered = admin.alter_topic(&name, config).await?;
            print_description(&mut out, &altered)?;
        }
        TopicCommand::List => {
            for topic in admin.list_topics().await? {
                writeln!(out, "{}\t{}", topic.name, topic.partitions)?;
            }
        }
        TopicCommand::Describe { name } => {
            print_description(&mut out, &admin.describe_topic(&name).await?)?;
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            writeln!(out, "deleted {name}")?;
        }
    }
    Ok(())
}
