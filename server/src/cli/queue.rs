//! Queue mode from the command line: `sluice work`, `sluice queue describe` and
//! `sluice dlq list|peek|redrive` (`sluice enqueue` is `produce` under another name).

use super::{BrokerArgs, interrupted};
use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_client::queue::{QueuePolicyChange, RedriveRange};
use sluice_client::{Consumer, ConsumerConfig, Job, Queue, StartFrom, Worker};
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of a failed command's stderr kept as the nack reason (its tail).
const REASON_BYTES: usize = 1024;

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Topic whose jobs to run.
    topic: String,
    /// Queue group (workers of one group share the jobs; created on first use).
    #[arg(long)]
    group: String,
    /// Commands running at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Lease length; a command running longer keeps its lease extended.
    #[arg(long, default_value = "30s", value_parser = super::topic::parse_duration_ms)]
    visibility: u64,
    /// Stop after this many jobs finished (succeeded or failed); default: until SIGINT/SIGTERM.
    #[arg(long)]
    max_jobs: Option<u64>,
    /// How long SIGINT/SIGTERM waits for running commands before releasing their jobs.
    #[arg(long, default_value = "30s", value_parser = super::topic::parse_duration_ms)]
    shutdown_timeout: u64,
    /// The command and its arguments: it gets the job's value on stdin and SLUICE_TOPIC,
    /// SLUICE_GROUP, SLUICE_PARTITION, SLUICE_OFFSET and SLUICE_ATTEMPT in its environment.
    /// Exit 0 acks the job; any other exit nacks it with the tail of its stderr.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Ready, delayed, in flight, done and dead-lettered counts per partition.
    Describe {
        topic: String,
        #[arg(long)]
        group: String,
    },
    /// Delete a queue group: its progress, leases and policy.
    Delete {
        topic: String,
        #[arg(long)]
        group: String,
    },
    /// Give a queue group its own retry policy (overriding its topic's), or --follow-topic.
    Config {
        topic: String,
        #[arg(long)]
        group: String,
        /// Deliveries of a message before it goes to TOPIC.dlq.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Backoff before the second delivery, like 100ms.
        #[arg(long, value_parser = super::topic::parse_duration_ms)]
        backoff_initial: Option<u64>,
        /// Backoff growth per attempt.
        #[arg(long)]
        backoff_multiplier: Option<f64>,
        /// Longest backoff, like 10s.
        #[arg(long, value_parser = super::topic::parse_duration_ms)]
        backoff_max: Option<u64>,
        /// Drop the group's own policy: follow the topic's.
        #[arg(long, conflicts_with_all = ["max_attempts", "backoff_initial", "backoff_multiplier", "backoff_max"])]
        follow_topic: bool,
    },
}

fn print_policy(
    out: &mut impl Write,
    policy: &sluice_client::queue::QueuePolicy,
) -> std::io::Result<()> {
    writeln!(
        out,
        "  policy ({}) max_attempts {}  backoff_initial_ms {}  backoff_multiplier {}  backoff_max_ms {}",
        if policy.group_own {
            "group's own"
        } else {
            "topic's"
        },
        policy.max_attempts,
        policy.backoff_initial_ms,
        policy.backoff_multiplier,
        policy.backoff_max_ms
    )
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// One line per dead letter of TOPIC.dlq: where it came from, attempts, last error.
    List {
        topic: String,
        /// Stop after this many.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Dead letters in full: value and every header.
    Peek {
        topic: String,
        /// First dead-letter offset to show.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Re-enqueue dead letters into TOPIC (attempts start over, the origin stays in headers),
    /// each at most once ever.
    Redrive {
        topic: String,
        /// First dead-letter offset.
        #[arg(long, requires = "to", conflicts_with = "all")]
        from: Option<u64>,
        /// Last dead-letter offset (inclusive).
        #[arg(long, requires = "from", conflicts_with = "all")]
        to: Option<u64>,
        /// Every dead letter.
        #[arg(long, required_unless_present = "from")]
        all: bool,
    },
}

async fn queue_client(broker: &BrokerArgs) -> anyhow::Result<Queue> {
    Queue::connect(broker.connection())
        .await
        .with_context(|| format!("connecting to {}", broker.broker))
}

/// Runs the command for one job; `Err` carries the nack reason.
async fn run_command(args: &WorkArgs, group: &str, job: Job) -> Result<(), String> {
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| "no command given".to_owned())?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("SLUICE_TOPIC", &args.topic)
        .env("SLUICE_GROUP", group)
        .env("SLUICE_PARTITION", job.partition.to_string())
        .env("SLUICE_OFFSET", job.offset.to_string())
        .env("SLUICE_ATTEMPT", job.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let value = job.value.clone();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its stdin closes the pipe: not a failure.
            let _ = stdin.write_all(&value).await;
        }
        drop(stdin);
    };
    let collect = async move {
        let mut tail = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let _ = std::io::stderr().write_all(&chunk[..n]);
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > REASON_BYTES * 4 {
                    tail.drain(..tail.len() - REASON_BYTES);
                }
            }
        }
        tail
    };
    let ((), tail, status) = tokio::join!(feed, collect, child.wait());
    let status = status.map_err(|e| format!("waiting for {program:?}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&tail);
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(REASON_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    Err(format!("{status}: {}", &text[start..]))
}

pub async fn work(args: WorkArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    // Listening starts now: SIGINT/SIGTERM while connecting still drains cleanly.
    let signal = interrupted();
    let queue = queue_client(broker).await?;
    let group = args.group.clone();
    let topic = args.topic.clone();
    let finished = Arc::new(AtomicU64::new(0));
    let limit_reached = Arc::new(tokio::sync::Notify::new());
    let worker = Worker::new(queue, &topic, &group)
        .concurrency(args.concurrency)
        .visibility_timeout(Duration::from_millis(args.visibility))
        .shutdown_timeout(Duration::from_millis(args.shutdown_timeout));
    let max_jobs = args.max_jobs;
    let args = Arc::new(args);
    let handler = {
        let finished = Arc::clone(&finished);
        let limit_reached = Arc::clone(&limit_reached);
        move |job: Job| {
            let args = Arc::clone(&args);
            let finished = Arc::clone(&finished);
            let limit_reached = Arc::clone(&limit_reached);
            async move {
                let outcome = run_command(&args, &args.group, job).await;
                let done = finished.fetch_add(1, Ordering::AcqRel) + 1;
                if max_jobs.is_some_and(|max| done >= max) {
                    limit_reached.notify_one();
                }
                outcome
            }
        }
    };
    let stop = async move {
        tokio::select! {
            _ = signal => {}
            _ = limit_reached.notified(), if max_jobs.is_some() => {}
        }
    };
    let stats = worker
        .run_until(handler, stop)
        .await
        .with_context(|| format!("working on {topic} as group {group}"))?;
    eprintln!(
        "worked {} jobs of {topic}: {} succeeded, {} failed, {} released, {} acks refused",
        stats.succeeded + stats.failed,
        stats.succeeded,
        stats.failed,
        stats.released,
        stats.acks_refused
    );
    Ok(())
}

pub async fn queue(args: QueueArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    let queue = queue_client(broker).await?;
    let (topic, group) = match args.command {
        QueueCommand::Describe { topic, group } => (topic, group),
        QueueCommand::Delete { topic, group } => {
            queue.delete_group(&topic, &group).await?;
            writeln!(
                std::io::stdout().lock(),
                "deleted queue group {group} of {topic}"
            )?;
            return Ok(());
        }
        QueueCommand::Config {
            topic,
            group,
            max_attempts,
            backoff_initial,
            backoff_multiplier,
            backoff_max,
            follow_topic,
        } => {
            let change = if follow_topic {
                QueuePolicyChange::FollowTopic
            } else {
                QueuePolicyChange::Set {
                    max_attempts,
                    backoff_initial: backoff_initial.map(Duration::from_millis),
                    backoff_multiplier,
                    backoff_max: backoff_max.map(Duration::from_millis),
                }
            };
            let policy = queue.configure_group(&topic, &group, change).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "queue group {group} on {topic}")?;
            print_policy(&mut out, &policy)?;
            return Ok(());
        }
    };
    let described = queue.describe(&topic, &group).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "queue group {group} on {topic} (max_attempts {})",
        described.max_attempts
    )?;
    if let Some(policy) = &described.policy {
        print_policy(&mut out, policy)?;
    }
    writeln!(
        out,
        "  {:>9} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8} {:>14}",
        "partition",
        "ready",
        "delayed",
        "in_flight",
        "done",
        "dead_letter",
        "log_end",
        "oldest_ready_ms"
    )?;
    for p in &described.partitions {
        writeln!(
            out,
            "  {:>9} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8} {:>14}",
            p.partition,
            p.ready,
            p.delayed,
            p.in_flight,
            p.done,
            p.dead_lettered,
            p.log_end_offset,
            p.oldest_ready_age_ms
                .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
        )?;
    }
    Ok(())
}

/// Every dead letter of `topic`.dlq from `from` on, at most `count`, in partition order.
async fn dead_letters(
    broker: &BrokerArgs,
    topic: &str,
    from: u64,
    count: u64,
) -> anyhow::Result<Vec<sluice_client::ConsumedRecord>> {
    let dlq = format!("{topic}.dlq");
    let admin = broker.admin().await?;
    let description = admin
        .describe_topic(&dlq)
        .await
        .with_context(|| format!("{topic} has no dead letters (no topic {dlq})"))?;
    let mut consumer = Consumer::connect(
        ConsumerConfig::new()
            .connection(broker.connection())
            .max_wait(Duration::from_millis(100)),
    )
    .await?;
    let mut found = Vec::new();
    for partition in &description.partitions {
        let end = partition.latest_offset;
        if from.max(partition.earliest_offset) >= end {
            continue;
        }
        consumer
            .assign(
                &dlq,
                partition.partition,
                StartFrom::Offset(from.max(partition.earliest_offset)),
            )
            .await?;
        while consumer
            .position(&dlq, partition.partition)
            .is_some_and(|p| p < end)
            && (found.len() as u64) < count
        {
            for record in consumer.poll().await? {
                if record.offset < end && (found.len() as u64) < count {
                    found.push(record);
                }
            }
        }
        consumer.unassign(&dlq, partition.partition);
    }
    Ok(found)
}

fn header<'a>(record: &'a sluice_client::ConsumedRecord, key: &str) -> &'a str {
    record
        .headers
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("-")
}

pub async fn dlq(args: DlqArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match args.command {
        DlqCommand::List { topic, count } => {
            for r in dead_letters(broker, &topic, 0, count.unwrap_or(u64::MAX)).await? {
                let value = r.value.as_deref().unwrap_or_default();
                let preview = String::from_utf8_lossy(&value[..value.len().min(60)]);
                writeln!(
                    out,
                    "{}/{} origin {}/{}/{} group {} attempts {} error {:?} value {:?}",
                    r.partition,
                    r.offset,
                    header(&r, "sluice.origin.topic"),
                    header(&r, "sluice.origin.partition"),
                    header(&r, "sluice.origin.offset"),
                    header(&r, "sluice.origin.group"),
                    header(&r, "sluice.dlq.attempts"),
                    header(&r, "sluice.dlq.last_error"),
                    preview,
                )?;
            }
        }
        DlqCommand::Peek { topic, from, count } => {
            for r in dead_letters(broker, &topic, from, count).await? {
                writeln!(out, "dead letter {}/{}", r.partition, r.offset)?;
                for (key, value) in &r.headers {
                    let value = value.as_deref().unwrap_or_default();
                    writeln!(out, "  {key}: {}", String::from_utf8_lossy(value))?;
                }
                let value = r.value.as_deref().unwrap_or_default();
                writeln!(out, "  value: {}", String::from_utf8_lossy(value))?;
            }
        }
        DlqCommand::Redrive {
            topic,
            from,
            to,
            all,
        } => {
            let range = match (from, to, all) {
                (Some(from), Some(to), false) => RedriveRange::Offsets { from, to },
                (None, None, true) => RedriveRange::All,
                _ => anyhow::bail!("give --from and --to, or --all"),
            };
            let queue = queue_client(broker).await?;
            let done = queue.redrive(&topic, range).await?;
            writeln!(
                out,
                "redrove {} dead letters to {topic} ({} were redriven before)",
                done.redriven, done.already_redriven
            )?;
        }
    }
    Ok(())
}
