//! `sluice group list|describe|reset|delete`: inspect consumer groups and replay them.

use super::BrokerArgs;
use anyhow::Context;
use clap::{Args, Subcommand};
use sluice_client::admin::{GroupDescription, ResetTo, TopicPartitions};
use std::io::Write;

#[derive(Debug, Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List groups (with members or committed offsets).
    List,
    /// Show a group's members, assignment, and committed offset, log end and lag per partition.
    Describe { group: String },
    /// Move a group's committed offsets on a topic (only while the group has no live members).
    Reset {
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// Where to: earliest, latest, an offset, an RFC 3339 time or a date (YYYY-MM-DD).
        #[arg(long)]
        to: String,
    },
    /// Delete a group's committed offsets and membership (only while it has no live members).
    Delete { group: String },
}

fn parse_to(to: &str) -> anyhow::Result<ResetTo> {
    Ok(match to {
        "earliest" => ResetTo::Earliest,
        "latest" => ResetTo::Latest,
        other => match other.parse::<u64>() {
            Ok(offset) => ResetTo::Offset(offset),
            Err(_) => {
                let text = if other.len() == 10 {
                    format!("{other}T00:00:00Z")
                } else {
                    other.to_owned()
                };
                let time = humantime::parse_rfc3339_weak(&text).with_context(|| {
                    format!(
                        "--to {other:?} is not earliest, latest, an offset, an RFC 3339 time or a date"
                    )
                })?;
                let ms = time
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("--to time before 1970")?
                    .as_millis();
                ResetTo::Timestamp(i64::try_from(ms).context("--to time too far ahead")?)
            }
        },
    })
}

fn partitions(list: &[TopicPartitions]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|tp| {
            let numbers: Vec<String> = tp.partitions.iter().map(u32::to_string).collect();
            format!("{}[{}]", tp.topic, numbers.join(","))
        })
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

fn print_description(out: &mut impl Write, group: &GroupDescription) -> std::io::Result<()> {
    writeln!(
        out,
        "group {}  generation {}  members {}",
        group.group,
        group.generation,
        group.members.len()
    )?;
    for member in &group.members {
        writeln!(
            out,
            "  member {} ({})  generation {}  last heartbeat {} ms ago  owns {}",
            member.member_id,
            member.client_id,
            member.generation,
            member.since_heartbeat_ms,
            partitions(&member.assignment)
        )?;
    }
    writeln!(
        out,
        "  {:<24} {:>9} {:>14} {:>14} {:>10}  owner",
        "topic", "partition", "committed", "log_end", "lag"
    )?;
    for p in &group.partitions {
        let committed = p
            .committed_offset
            .map_or_else(|| "-".to_owned(), |o| o.to_string());
        let owner = if p.member_id.is_empty() {
            "-"
        } else {
            &p.member_id
        };
        writeln!(
            out,
            "  {:<24} {:>9} {:>14} {:>14} {:>10}  {owner}",
            p.topic, p.partition, committed, p.log_end_offset, p.lag
        )?;
    }
    Ok(())
}

pub async fn run(args: GroupArgs, broker: &BrokerArgs) -> anyhow::Result<()> {
    let admin = broker.admin().await?;
    let mut out = std::io::stdout().lock();
    match args.command {
        GroupCommand::List => {
            for group in admin.list_groups().await? {
                writeln!(out, "{}\t{}", group.group, group.members)?;
            }
        }
        GroupCommand::Describe { group } => {
            print_description(&mut out, &admin.describe_group(&group).await?)?;
        }
        GroupCommand::Reset { group, topic, to } => {
            let to = parse_to(&to)?;
            for set in admin.reset_group_offsets(&group, &topic, to).await? {
                writeln!(out, "{topic}/{} -> {}", set.partition, set.offset)?;
            }
        }
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await?;
            writeln!(out, "deleted group {group}")?;
        }
    }
    Ok(())
}
