//! Consumer groups (design.md §4): membership with server-side sticky assignment, and
//! committed offsets.
//!
//! - `membership.rs`: the pure state machine (joins, heartbeats, leaves, expiry take `now`),
//!   with `assign.rs`, the sticky assignor;
//! - `members_log.rs`: its durable form in `__consumer_groups`, replayed at start;
//! - `offsets.rs`: commits in `__consumer_offsets`, replayed at start.
//!
//! [`Groups`] puts them together for the handlers: a change to membership is made durable
//! (through the partition write path) before the member is answered, in the order it was made
//! (mutations are serialized by an async lock held across the append; reads take only the
//! state's short std lock); the broker clock gives `now`; [`Groups::run_expiry`] removes
//! members whose session timed out, waking at the earliest deadline.

mod assign;
mod members_log;
mod membership;
mod offsets;

pub use assign::TopicPartition;
pub use members_log::GROUPS_TOPIC;
pub use membership::{
    DEFAULT_SESSION_TIMEOUT_MS, GroupSummary, Join, MAX_CLIENT_ID_BYTES, MemberSummary, MemberView,
    SESSION_TIMEOUT_MS,
};
pub use offsets::{Committed, OFFSETS_TOPIC, Offsets};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::topics::{Cleanup, Topic, TopicSettings, Topics};
use membership::{Change, Membership, require_no_members};
use sluice_proto::limits::{MAX_COMMIT_METADATA_BYTES, group_problem};
use sluice_storage::Durability;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Checks a group id: 1–249 bytes of UTF-8 without NUL (the client checks the same).
pub fn validate_group(group: &str) -> Result<()> {
    match group_problem(group) {
        Some(reason) => Err(Error::invalid("group", group, reason)),
        None => Ok(()),
    }
}

/// Checks a commit's metadata: at most 4 KiB.
pub fn validate_metadata(metadata: &str) -> Result<()> {
    if metadata.len() > MAX_COMMIT_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("{} bytes", metadata.len()),
            "must be at most 4096 bytes",
        ));
    }
    Ok(())
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// Each partition's earliest offset.
    Earliest,
    /// Each partition's high watermark.
    Latest,
    /// This offset, clamped to each partition's range.
    Offset(u64),
    /// The first offset appended at or after this time (the high watermark if none).
    Timestamp(i64),
}

/// A partition as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic and partition.
    pub partition: TopicPartition,
    /// The member that owns it, if any.
    pub owner: Option<String>,
    /// The group's committed offset, if any.
    pub committed: Option<u64>,
    /// The partition's high watermark.
    pub log_end: u64,
    /// Records between the committed offset (or the earliest offset) and the log end.
    pub lag: u64,
}

/// A group as the admin API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group's generation.
    pub generation: u32,
    /// Live members.
    pub members: Vec<MemberSummary>,
    /// Partitions of the topics it subscribes to or committed for.
    pub partitions: Vec<PartitionLag>,
    /// How long the last complete rebalance took, ms by the broker clock.
    pub last_rebalance_ms: Option<i64>,
}

/// Consumer groups: membership and committed offsets.
#[derive(Debug)]
pub struct Groups {
    offsets: Offsets,
    membership: Mutex<Membership>,
    log: Arc<Partition>,
    /// Serializes changes to membership with their appends, so the log holds them in the
    /// order they were made.
    writes: tokio::sync::Mutex<()>,
    /// Wakes the expiry task when a deadline may have moved earlier.
    deadlines: Notify,
    clock: Clock,
    heartbeat_interval_ms: u32,
}

/// The internal topic `name` (one partition, written by the broker only, fsynced before each
/// answer, compacted by key so it holds about one record per live key), created with
/// `segment_bytes` segments if missing (blocking). One made before internal topics were
/// compacted is switched to compaction.
pub(crate) fn internal_topic(
    topics: &Topics,
    name: &str,
    segment_bytes: u64,
) -> Result<Arc<Topic>> {
    let topic = match topics.get(name) {
        Ok(topic) => topic,
        Err(_) => {
            let settings = TopicSettings {
                retention_bytes: None,
                retention_ms: None,
                segment_bytes,
                durability: Durability::Always,
                max_batch_bytes: segment_bytes.min(1 << 20) as u32,
                cleanup: Cleanup::Compact,
                ..TopicSettings::default()
            };
            return topics.create(name, 1, settings, true);
        }
    };
    if topic.settings.cleanup.compacts() {
        return Ok(topic);
    }
    tracing::info!(topic = name, "switching an internal topic to compaction");
    topics.compact_internal(name)
}

/// Partition counts as the assignor needs them.
fn counts(topics: &Topics) -> impl Fn(&str) -> Option<u32> + '_ {
    move |name| topics.get(name).ok().map(|t| t.partitions.len() as u32)
}

impl Groups {
    /// Opens (creating if needed) the internal topics and replays them (blocking).
    pub fn open(
        topics: &Topics,
        offsets_segment_bytes: u64,
        heartbeat_interval_ms: u32,
        clock: Clock,
    ) -> Result<Self> {
        let offsets = Offsets::open(topics, offsets_segment_bytes, clock.clone())?;
        let log =
            Arc::clone(internal_topic(topics, GROUPS_TOPIC, offsets_segment_bytes)?.partition(0)?);
        let mut membership = Membership::new();
        let replayed = log.replay(&mut members_log::Replaying(&mut membership))?;
        membership.restored(clock.now_ms(), &counts(topics));
        tracing::info!(
            groups = membership.list().len(),
            batches = replayed.batches,
            "replayed group membership"
        );
        Ok(Self {
            offsets,
            membership: Mutex::new(membership),
            log,
            writes: tokio::sync::Mutex::new(()),
            deadlines: Notify::new(),
            clock,
            heartbeat_interval_ms,
        })
    }

    fn state(&self) -> MutexGuard<'_, Membership> {
        // Every mutation replaces whole values under the lock.
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How often members should heartbeat, given their session timeout.
    pub fn heartbeat_interval_ms(&self, session_timeout_ms: u32) -> u32 {
        self.heartbeat_interval_ms
            .min(session_timeout_ms / 3)
            .max(1)
    }

    /// Joins a member (validating the request against the topics that exist).
    pub async fn join(&self, topics: &Topics, join: Join) -> Result<MemberView> {
        validate_group(&join.group)?;
        if join.topics.is_empty() {
            return Err(Error::invalid(
                "topics",
                "[]",
                "a member must subscribe to a topic",
            ));
        }
        for topic in &join.topics {
            topics.get(topic)?;
        }
        if !SESSION_TIMEOUT_MS.contains(&join.session_timeout_ms) {
            return Err(Error::invalid(
                "session_timeout_ms",
                join.session_timeout_ms,
                "must be within 1000..=300000",
            ));
        }
        if join.client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(Error::invalid(
                "client_id",
                &join.client_id,
                "must be at most 249 bytes",
            ));
        }
        let _writes = self.writes.lock().await;
        let now = self.clock.now_ms();
        let (view, changes) = self.state().join(join, now, &counts(topics))?;
        members_log::persist(&self.log, now, &changes).await?;
        self.deadlines.notify_one();
        Ok(view)
    }

    /// A member's heartbeat: answers its assignment now.
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
        owned: BTreeSet<TopicPartition>,
    ) -> Result<MemberView> {
        let _writes = self.writes.lock().await;
        let now = self.clock.now_ms();
        let (view, changes) = self
            .state()
            .heartbeat(group, member_id, generation, owned, now)?;
        members_log::persist(&self.log, now, &changes).await?;
        Ok(view)
    }

    /// A member leaves.
    pub async fn leave(&self, topics: &Topics, group: &str, member_id: &str) -> Result<()> {
        let _writes = self.writes.lock().await;
        let now = self.clock.now_ms();
        let changes = self.state().leave(group, member_id, now, &counts(topics))?;
        members_log::persist(&self.log, now, &changes).await
    }

    /// Commits offsets for `group` on `topic`, from `member_id` at `generation` (or from
    /// outside the group: an empty member id, refused while the group has live members).
    pub async fn commit(
        &self,
        group: &str,
        member_id: &str,
        generation: u32,
        topic: &Topic,
        offsets: Vec<(u32, u64, String)>,
    ) -> Result<()> {
        validate_group(group)?;
        let partitions: Vec<u32> = offsets.iter().map(|(p, _, _)| *p).collect();
        self.state()
            .check_commit(group, member_id, generation, &topic.name, &partitions)?;
        self.offsets.commit(group, topic, offsets).await
    }

    /// The committed offsets of `partitions` of `topic` (every partition if empty).
    pub fn fetch(
        &self,
        group: &str,
        topic: &Topic,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Option<Committed>)>> {
        self.offsets.fetch(group, topic, partitions)
    }

    /// Every group with members or committed offsets, with its live member count.
    pub fn list(&self) -> Vec<(String, usize)> {
        let mut groups: BTreeMap<String, usize> =
            self.offsets.groups().into_iter().map(|g| (g, 0)).collect();
        for (group, members) in self.state().list() {
            groups.insert(group, members);
        }
        groups.into_iter().collect()
    }

    /// Members, assignments, committed offsets and lag of a group.
    pub fn describe(&self, topics: &Topics, group: &str) -> Result<GroupDescription> {
        validate_group(group)?;
        let now = self.clock.now_ms();
        let summary = self.state().describe(group, now);
        let committed = self.offsets.committed(group);
        if summary.is_none() && committed.is_empty() {
            return Err(Error::UnknownGroup {
                group: group.to_owned(),
            });
        }
        let summary = summary.unwrap_or_else(|| GroupSummary {
            generation: 0,
            members: Vec::new(),
            topics: BTreeSet::new(),
            owners: BTreeMap::new(),
            last_rebalance_ms: None,
        });
        let names: BTreeSet<String> = summary
            .topics
            .iter()
            .cloned()
            .chain(committed.keys().map(|(t, _)| t.clone()))
            .collect();
        let mut partitions = Vec::new();
        for name in names {
            let Ok(topic) = topics.get(&name) else {
                continue;
            };
            for partition in &topic.partitions {
                let key = (name.clone(), partition.id());
                let committed = committed.get(&key).copied();
                let log_end = partition.high_watermark();
                let from = committed.unwrap_or_else(|| partition.earliest_offset());
                partitions.push(PartitionLag {
                    owner: summary.owners.get(&key).cloned(),
                    partition: key,
                    committed,
                    log_end,
                    lag: log_end.saturating_sub(from),
                });
            }
        }
        Ok(GroupDescription {
            generation: summary.generation,
            members: summary.members,
            partitions,
            last_rebalance_ms: summary.last_rebalance_ms,
        })
    }

    /// Moves a group's committed offsets on `topic` (only while it has no live members);
    /// returns the offsets set.
    pub async fn reset(&self, group: &str, topic: &Topic, to: ResetTo) -> Result<Vec<(u32, u64)>> {
        validate_group(group)?;
        let _writes = self.writes.lock().await;
        require_no_members(&self.state(), group)?;
        let mut offsets = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let (earliest, latest) = (partition.earliest_offset(), partition.high_watermark());
            let offset = match to {
                ResetTo::Earliest => earliest,
                ResetTo::Latest => latest,
                ResetTo::Offset(offset) => offset.clamp(earliest, latest),
                ResetTo::Timestamp(ms) => partition.offset_for_time(ms).await?.unwrap_or(latest),
            };
            offsets.push((partition.id(), offset, String::new()));
        }
        let set = offsets.iter().map(|(p, o, _)| (*p, *o)).collect();
        self.offsets.commit(group, topic, offsets).await?;
        Ok(set)
    }

    /// Deletes a group's offsets and membership (only while it has no live members).
    pub async fn delete(&self, group: &str) -> Result<()> {
        validate_group(group)?;
        let _writes = self.writes.lock().await;
        let known = self.state().list().iter().any(|(g, _)| g == group)
            || self.offsets.groups().contains(group);
        if !known {
            return Err(Error::UnknownGroup {
                group: group.to_owned(),
            });
        }
        let changes: Vec<Change> = self.state().delete(group)?;
        members_log::persist(&self.log, self.clock.now_ms(), &changes).await?;
        self.offsets.delete_group(group).await?;
        Ok(())
    }

    /// Removes members whose session timed out, at each earliest deadline by the broker
    /// clock, until `stop` turns true.
    pub async fn run_expiry(&self, topics: &Topics, mut stop: watch::Receiver<bool>) {
        loop {
            let next = self.state().next_deadline_ms();
            let wait = match next {
                Some(deadline) => {
                    let ms = deadline.saturating_sub(self.clock.now_ms()).max(0) as u64;
                    Duration::from_millis(ms)
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.deadlines.notified() => continue,
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let _writes = self.writes.lock().await;
            let now = self.clock.now_ms();
            let changes = self.state().expire(now, &counts(topics));
            if let Err(error) = members_log::persist(&self.log, now, &changes).await {
                tracing::warn!(%error, "persisting expired members failed");
            }
        }
    }
}
