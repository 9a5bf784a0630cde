//! Queue mode (design.md §4): queue groups that consume a topic one message at a time, with
//! leases, fenced acks, retries with backoff and dead letters.
//!
//! - `state.rs`: the pure state machine of one (partition, group): the cursor below which all
//!   is done, the bounded window of slots (attempts, lease deadlines, acked bits, waits);
//! - `record.rs`: its durable form in the compacted internal topic `__queue_state`, replayed
//!   at start;
//! - `token.rs`: lease tokens, which carry the attempt so stale acks are fenced;
//! - `lease.rs`: the lease path (long polls, deliveries, reading their records);
//! - `acks.rs`: ack, nack, extend, release;
//! - `dead.rs`: dead letters to `<topic>.dlq` and their redrive, each exactly once across a
//!   crash.
//!
//! [`Queues`] puts them together for the handlers. A change is made in memory under a short
//! std lock (so concurrent requests never see a message twice), then its records are appended
//! through the partition write path, and the request is answered once they are durable: an
//! acknowledged ack is on disk. Appends of concurrent requests run concurrently and share group
//! commits; replay tolerates their records landing out of order (see `record.rs`).

mod acks;
mod dead;
mod lease;
mod record;
pub mod state;
pub mod token;

pub use dead::{
    DLQ_SUFFIX, H_ATTEMPTS, H_DEAD_AT, H_LAST_ERROR, H_ORIGIN_GROUP, H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION, H_ORIGIN_TOPIC, H_REDRIVEN_FROM,
};
use lease::{OwnedRecord, read_records};
pub use state::{Counts, RetryPolicy};

use crate::Broker;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::groups::validate_group;
use crate::partition::{Origin, Partition};
use crate::topics::{Cleanup, Topic, TopicSettings, Topics};
use bytes::Bytes;
use record::{Entry, GroupKey, Redrives};
use sluice_storage::Durability;
use sluice_storage::format::BatchBuilder;
use state::{PartitionQueue, Stale};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Name of the internal topic that holds queue state.
pub const STATE_TOPIC: &str = "__queue_state";
/// Most messages one Lease hands out.
pub const MAX_LEASE_MESSAGES: u32 = 1000;
/// Most tokens one Ack takes.
pub const MAX_ACK_TOKENS: usize = 1000;
/// Visibility timeouts accepted, ms: 100 ms ..= 12 hours.
pub const VISIBILITY_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=43_200_000;
/// Longest explicit nack delay, ms: 1 day.
pub const MAX_NACK_DELAY_MS: u64 = 86_400_000;
/// Bytes of records per batch appended to the state topic (its batches are at most 1 MiB).
const STATE_BATCH_BYTES: usize = 256 << 10;
/// Bytes read from a partition per step when looking up leased records.
const READ_BYTES: u64 = 1 << 20;

/// A test hook that stops the broker at a chosen point, to prove crash safety.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// Abort the process after a dead letter is appended, before the queue records it.
    AbortAfterDeadLetterAppend,
}

impl Failpoint {
    /// The failpoint a name stands for (`abort-after-dead-letter-append`).
    pub fn parse(name: &str) -> Option<Self> {
        (name == "abort-after-dead-letter-append").then_some(Self::AbortAfterDeadLetterAppend)
    }
}

/// One queue group on one topic.
#[derive(Debug)]
struct QueueGroup {
    topic: String,
    group: String,
    /// Per partition, index = partition number.
    partitions: Mutex<Vec<PartitionQueue>>,
    /// Woken when messages may have become available (nack, release, acks that freed window
    /// space, expiry).
    changed: Notify,
    /// Where the next lease starts looking, so partitions are served in turn.
    next_partition: AtomicUsize,
    /// The group's own retry policy, overriding its topic's.
    policy: Mutex<Option<RetryPolicy>>,
    /// Set when the group (or its topic) is deleted: requests that found it before answer
    /// NOT_FOUND rather than write records for it.
    deleted: std::sync::atomic::AtomicBool,
}

impl QueueGroup {
    fn new(topic: String, group: String, partitions: Vec<PartitionQueue>) -> Self {
        Self {
            topic,
            group,
            partitions: Mutex::new(partitions),
            changed: Notify::new(),
            next_partition: AtomicUsize::new(0),
            policy: Mutex::new(None),
            deleted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `NOT_FOUND` if the group was deleted since it was looked up.
    fn check_present(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::UnknownGroup {
                group: format!(
                    "{} (deleted from topic {:?})",
                    crate::error::echo(&self.group),
                    crate::error::echo(&self.topic)
                ),
            });
        }
        Ok(())
    }

    /// The policy in force: the group's own, else its topic's.
    fn policy(&self, topic: &Topic) -> RetryPolicy {
        self.policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(topic.settings.retry)
    }

    fn state(&self) -> MutexGuard<'_, Vec<PartitionQueue>> {
        // Every mutation completes under the lock, so a panic cannot leave it half-done.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A leased message, as Lease answers it.
#[derive(Debug, Clone)]
pub struct Leased {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value (empty if null).
    pub value: Bytes,
    /// Its headers.
    pub headers: Vec<(String, Bytes)>,
    /// Its attempt, from 1.
    pub attempt: u32,
    /// The token to ack it with.
    pub token: String,
    /// The record's timestamp.
    pub timestamp_ms: i64,
    /// When the lease runs out.
    pub deadline_ms: i64,
}

/// What a Lease asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The topic.
    pub topic: String,
    /// The queue group.
    pub group: String,
    /// At most this many messages (1..=1000).
    pub max_messages: u32,
    /// Lease length, ms.
    pub visibility_timeout_ms: u64,
    /// Long-poll bound, ms.
    pub max_wait_ms: u32,
}

/// A partition's queue as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    /// The partition.
    pub partition: u32,
    /// Every offset below is done.
    pub done_below: u64,
    /// Available now.
    pub ready: u64,
    /// Waiting for a backoff or delay.
    pub delayed: u64,
    /// Leased.
    pub in_flight: u64,
    /// Done, ever (the cursor plus those done in the window).
    pub done: u64,
    /// Dead-lettered, ever.
    pub dead_lettered: u64,
    /// The partition's high watermark.
    pub log_end: u64,
    /// Age of the oldest ready message, ms.
    pub oldest_ready_age_ms: Option<i64>,
}

/// A change to a queue group's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    /// Drop the group's own policy: it follows its topic's.
    FollowTopic,
    /// The group's own policy: these fields, the rest as in force now.
    Set {
        /// Deliveries before dead-lettering.
        max_attempts: Option<u32>,
        /// First backoff cap, ms.
        backoff_initial_ms: Option<u64>,
        /// Growth per attempt, thousandths.
        backoff_multiplier_milli: Option<u32>,
        /// Largest backoff, ms.
        backoff_max_ms: Option<u64>,
    },
}

/// What a nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Available again at this time (ms since the epoch).
    Retry(i64),
    /// Dead-lettered.
    DeadLettered,
}

/// Every queue group of the broker.
#[derive(Debug)]
pub struct Queues {
    log: Arc<Partition>,
    groups: Mutex<HashMap<GroupKey, Arc<QueueGroup>>>,
    redrives: Mutex<Redrives>,
    /// One redrive at a time (they are rare, and this keeps each dead letter's exactly-once
    /// simple).
    redrive_lock: tokio::sync::Mutex<()>,
    clock: Clock,
    window_limit: usize,
    failpoint: Option<Failpoint>,
    /// The earliest lease deadline the timer task may have missed (a hint, ms).
    earliest_deadline_ms: AtomicI64,
    /// Wakes the timer task when `earliest_deadline_ms` moved earlier.
    timers: Notify,
}

/// The internal topic `__queue_state`: one partition, fsynced before each answer, compacted;
/// tombstones go after a minute (only this broker reads the topic, and replay needs none).
fn state_topic(topics: &Topics, segment_bytes: u64) -> Result<Arc<Topic>> {
    match topics.get(STATE_TOPIC) {
        Ok(topic) => Ok(topic),
        Err(_) => {
            let settings = TopicSettings {
                retention_bytes: None,
                retention_ms: None,
                segment_bytes,
                durability: Durability::Always,
                max_batch_bytes: segment_bytes.min(1 << 20) as u32,
                cleanup: Cleanup::Compact,
                delete_retention_ms: 60_000,
                ..TopicSettings::default()
            };
            topics.create(STATE_TOPIC, 1, settings, true)
        }
    }
}

/// Checks a visibility timeout.
fn validate_visibility(field: &'static str, ms: u64) -> Result<()> {
    if VISIBILITY_TIMEOUT_MS.contains(&ms) {
        return Ok(());
    }
    Err(Error::invalid(
        field,
        ms,
        "must be within 100..=43200000 ms (100 ms to 12 hours)",
    ))
}

fn fenced(topic: &str, group: &str, partition: u32, stale: &Stale) -> Error {
    Error::Fenced {
        reason: format!(
            "queue group {:?} on {}/{partition}: {stale}",
            crate::error::echo(group),
            crate::error::echo(topic)
        ),
    }
}

fn unit() -> f64 {
    rand::random::<f64>()
}

/// Records for a change of `queue` (partition `p` of `qg`) that moved the cursor from
/// `before`: the cursor and tombstones of the slots it passed; plus records of `touched`
/// offsets still in the window.
fn change_entries(
    qg: &QueueGroup,
    p: u32,
    queue: &PartitionQueue,
    before: u64,
    touched: &[u64],
    entries: &mut Vec<Entry>,
) {
    let after = queue.done_below();
    if after != before {
        entries.push((
            record::cursor_key(&qg.group, &qg.topic, p),
            Some(record::cursor_value(queue)),
        ));
        for offset in before..after {
            entries.push((record::slot_key(&qg.group, &qg.topic, p, offset), None));
        }
    }
    for &offset in touched {
        if let Some(slot) = queue.slot(offset) {
            entries.push((
                record::slot_key(&qg.group, &qg.topic, p, offset),
                Some(record::slot_value(slot)),
            ));
        }
    }
}

impl Queues {
    /// Opens (creating if needed) `__queue_state` and replays it (blocking).
    pub fn open(
        topics: &Topics,
        segment_bytes: u64,
        window_limit: usize,
        clock: Clock,
        failpoint: Option<Failpoint>,
    ) -> Result<Self> {
        let log = Arc::clone(state_topic(topics, segment_bytes)?.partition(0)?);
        let mut replaying = record::Replaying::default();
        let replayed = log.replay(&mut replaying)?;
        let malformed = replaying.malformed;
        let mut policies = std::mem::take(&mut replaying.policies);
        let (queues, redrives) = replaying.into_queues();
        let mut groups = HashMap::new();
        for ((group, topic), partitions) in queues {
            let count = partitions.keys().max().map_or(0, |p| p + 1) as usize;
            let mut list: Vec<PartitionQueue> =
                (0..count).map(|_| PartitionQueue::new(0)).collect();
            for (p, queue) in partitions {
                list[p as usize] = queue;
            }
            let key = (group.clone(), topic.clone());
            let qg = QueueGroup::new(topic, group, list);
            *qg.policy.lock().unwrap_or_else(|p| p.into_inner()) = policies.remove(&key);
            groups.insert(key, Arc::new(qg));
        }
        tracing::info!(
            groups = groups.len(),
            batches = replayed.batches,
            malformed,
            "replayed queue state"
        );
        Ok(Self {
            log,
            groups: Mutex::new(groups),
            redrives: Mutex::new(redrives),
            redrive_lock: tokio::sync::Mutex::new(()),
            clock,
            window_limit,
            failpoint,
            earliest_deadline_ms: AtomicI64::new(i64::MIN),
            timers: Notify::new(),
        })
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<GroupKey, Arc<QueueGroup>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group, or `NOT_FOUND` naming it.
    fn group(&self, topic: &str, group: &str) -> Result<Arc<QueueGroup>> {
        validate_group(group)?;
        self.groups()
            .get(&(group.to_owned(), topic.to_owned()))
            .cloned()
            .ok_or_else(|| Error::UnknownGroup {
                group: format!(
                    "{} (no queue group of that name on topic {:?})",
                    crate::error::echo(group),
                    crate::error::echo(topic)
                ),
            })
    }

    /// The group, created (starting at each partition's earliest offset, durably) if new.
    async fn group_or_create(&self, topic: &Topic, group: &str) -> Result<Arc<QueueGroup>> {
        validate_group(group)?;
        let key = (group.to_owned(), topic.name.clone());
        let (qg, created) = {
            let mut groups = self.groups();
            match groups.get(&key) {
                Some(qg) => (Arc::clone(qg), false),
                None => {
                    let partitions = topic
                        .partitions
                        .iter()
                        .map(|p| PartitionQueue::new(p.earliest_offset()))
                        .collect();
                    let qg = Arc::new(QueueGroup::new(
                        topic.name.clone(),
                        group.to_owned(),
                        partitions,
                    ));
                    groups.insert(key, Arc::clone(&qg));
                    (qg, true)
                }
            }
        };
        // A topic's partitions never shrink; state may know fewer than the topic has now.
        let entries: Vec<Entry> = {
            let mut state = qg.state();
            let known = state.len();
            for partition in topic.partitions.iter().skip(known) {
                state.push(PartitionQueue::new(partition.earliest_offset()));
            }
            if created || known < topic.partitions.len() {
                state
                    .iter()
                    .enumerate()
                    .skip(if created { 0 } else { known })
                    .map(|(p, q)| {
                        (
                            record::cursor_key(group, &topic.name, p as u32),
                            Some(record::cursor_value(q)),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            }
        };
        if !entries.is_empty() {
            tracing::info!(topic = %topic.name, group, "created queue group");
            self.persist(entries).await?;
        }
        Ok(qg)
    }

    /// Appends `entries` to the state topic, durably, in batches of bounded size.
    async fn persist(&self, entries: Vec<Entry>) -> Result<()> {
        let now = self.clock.now_ms();
        let mut builder = BatchBuilder::new();
        let mut bytes = 0;
        let mut pending = 0;
        for (key, value) in &entries {
            builder
                .push(now, Some(key), value.as_deref(), &[])
                .map_err(|e| Error::Task(format!("encoding queue state: {e}")))?;
            bytes += key.len() + value.as_ref().map_or(0, Vec::len) + 8;
            pending += 1;
            if bytes >= STATE_BATCH_BYTES {
                let full = std::mem::take(&mut builder);
                self.append_state(full).await?;
                bytes = 0;
                pending = 0;
            }
        }
        if pending > 0 {
            self.append_state(builder).await?;
        }
        Ok(())
    }

    async fn append_state(&self, builder: BatchBuilder) -> Result<()> {
        let batch = builder
            .finish()
            .map_err(|e| Error::Task(format!("encoding queue state: {e}")))?;
        self.log.append(batch.freeze(), Origin::Broker).await?;
        Ok(())
    }

    /// The group's partitions: counts, cursor, and the age of the oldest ready message.
    pub async fn describe(
        &self,
        topics: &Topics,
        topic: &str,
        group: &str,
    ) -> Result<(Vec<PartitionDescription>, RetryPolicy, bool)> {
        let topic = topics.get(topic)?;
        let qg = self.group(&topic.name, group)?;
        let now = self.clock.now_ms();
        let mut described = Vec::new();
        let mut oldest = Vec::new();
        {
            let state = qg.state();
            for (partition, queue) in topic.partitions.iter().zip(state.iter()) {
                let counts = queue.counts(now);
                let log_end = partition.high_watermark();
                let never = log_end.saturating_sub(queue.next());
                let first_ready = queue
                    .slots()
                    .find(|(_, s)| match s.state {
                        state::SlotState::Waiting { until_ms } => until_ms <= now,
                        state::SlotState::Leased { deadline_ms } => deadline_ms <= now,
                        _ => false,
                    })
                    .map(|(offset, _)| offset)
                    .or((never > 0).then(|| queue.next()));
                oldest.push(first_ready);
                described.push(PartitionDescription {
                    partition: partition.id(),
                    done_below: queue.done_below(),
                    ready: counts.ready + never,
                    delayed: counts.delayed,
                    in_flight: counts.in_flight,
                    done: queue.done_below() + counts.done,
                    dead_lettered: queue.dead_lettered(),
                    log_end,
                    oldest_ready_age_ms: None,
                });
            }
        }
        for (description, first) in described.iter_mut().zip(oldest) {
            let Some(offset) = first else { continue };
            let partition = topic.partition(description.partition)?;
            if let Ok(records) = read_records(partition, &[offset]).await
                && let Some(Some(record)) = records.into_iter().next()
            {
                description.oldest_ready_age_ms = Some(now.saturating_sub(record.timestamp_ms));
            }
        }
        let own = qg
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        Ok((described, qg.policy(&topic), own))
    }

    /// Sets (or with [`PolicyChange::FollowTopic`] clears) the retry policy of `group` on `topic`, overriding the
    /// topic's; the group is created if new. Durable before it returns. Returns the policy
    /// now in force.
    pub async fn configure(
        &self,
        topics: &Topics,
        topic: &str,
        group: &str,
        change: PolicyChange,
    ) -> Result<(RetryPolicy, bool)> {
        let topic = topics.get(topic)?;
        let qg = self.group_or_create(&topic, group).await?;
        let policy = match change {
            PolicyChange::FollowTopic => None,
            PolicyChange::Set {
                max_attempts,
                backoff_initial_ms,
                backoff_multiplier_milli,
                backoff_max_ms,
            } => {
                let base = qg.policy(&topic);
                Some(RetryPolicy {
                    max_attempts: max_attempts.unwrap_or(base.max_attempts),
                    backoff_initial_ms: backoff_initial_ms.unwrap_or(base.backoff_initial_ms),
                    backoff_multiplier_milli: backoff_multiplier_milli
                        .unwrap_or(base.backoff_multiplier_milli),
                    backoff_max_ms: backoff_max_ms.unwrap_or(base.backoff_max_ms),
                })
            }
        };
        if let Some((field, value, reason)) = policy.as_ref().and_then(RetryPolicy::problem) {
            return Err(Error::invalid(field, value, reason));
        }
        let value = policy.as_ref().map(record::policy_value);
        self.persist(vec![(record::policy_key(&qg.group, &qg.topic), value)])
            .await?;
        *qg.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
        tracing::info!(topic = %topic.name, group, ?policy, "set a queue group's retry policy");
        Ok((qg.policy(&topic), policy.is_some()))
    }

    /// Forgets what queue mode knows of topic `name`, which was deleted: its queue groups
    /// (their cursors and slots are tombstoned, so a topic made again under the name starts
    /// afresh) and the redrive records of its dead letters, or of the topic whose dead-letter
    /// topic it was (a new DLQ's offsets start over).
    pub async fn forget_topic(&self, name: &str) -> Result<()> {
        let gone: Vec<Arc<QueueGroup>> = {
            let mut groups = self.groups();
            let keys: Vec<GroupKey> = groups.keys().filter(|(_, t)| t == name).cloned().collect();
            keys.iter().filter_map(|k| groups.remove(k)).collect()
        };
        let mut entries = forget_groups(&gone);
        let origin = name.strip_suffix(dead::DLQ_SUFFIX);
        {
            let mut redrives = self.redrives.lock().unwrap_or_else(|p| p.into_inner());
            redrives.retain(|(topic, p, o), _| {
                let forget = topic == name || Some(topic.as_str()) == origin;
                if forget {
                    entries.push((record::redrive_key(topic, *p, *o), None));
                }
                !forget
            });
        }
        if !entries.is_empty() {
            tracing::info!(
                topic = name,
                groups = gone.len(),
                "forgetting the queue state of a deleted topic"
            );
            self.persist(entries).await?;
        }
        Ok(())
    }

    /// Deletes queue group `group` of `topic`: its cursors, slots and policy are tombstoned;
    /// leases it handed out can no longer be acknowledged (`NOT_FOUND`), and a Lease under
    /// the name starts a new group at each partition's earliest offset.
    pub async fn delete_group(&self, topics: &Topics, topic: &str, group: &str) -> Result<()> {
        let topic = topics.get(topic)?;
        let qg = self.group(&topic.name, group)?;
        let removed = self
            .groups()
            .remove(&(qg.group.clone(), qg.topic.clone()))
            .is_some();
        if !removed {
            return qg.check_present();
        }
        let entries = forget_groups(&[qg]);
        tracing::info!(topic = %topic.name, group, "deleted queue group");
        self.persist(entries).await
    }

    /// Dead-letters leases that ran out on their last attempt, and finishes dead letters and
    /// redrives a crash interrupted; at each earliest lease deadline, until `stop`.
    pub async fn run_timers(&self, broker: &Arc<Broker>, mut stop: watch::Receiver<bool>) {
        if let Err(error) = self.recover(broker).await {
            tracing::error!(%error, "finishing interrupted dead letters and redrives failed");
        }
        loop {
            let hint = self.earliest_deadline_ms.swap(i64::MAX, Ordering::AcqRel);
            let now = self.clock.now_ms();
            if hint <= now {
                self.expire_all(broker, now).await;
                continue;
            }
            let wait = if hint == i64::MAX {
                Duration::from_secs(3600)
            } else {
                self.earliest_deadline_ms.fetch_min(hint, Ordering::AcqRel);
                Duration::from_millis(hint.saturating_sub(now) as u64)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.timers.notified() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Expires every group's leases at `now`: waits begin, last attempts are dead-lettered,
    /// long polls wake; notes the next deadline.
    async fn expire_all(&self, broker: &Arc<Broker>, now: i64) {
        let groups: Vec<Arc<QueueGroup>> = self.groups().values().cloned().collect();
        for qg in groups {
            let Ok(topic) = broker.topics.get(&qg.topic) else {
                continue;
            };
            let policy = qg.policy(&topic);
            let (exhausted, next) = {
                let mut state = qg.state();
                let mut exhausted = Vec::new();
                for (p, queue) in state.iter_mut().enumerate() {
                    for e in queue.expire(now, &policy, &mut unit) {
                        exhausted.push((p as u32, e));
                    }
                }
                let next = state
                    .iter()
                    .flat_map(|q| q.slots())
                    .filter_map(|(_, s)| match s.state {
                        state::SlotState::Leased { deadline_ms } => Some(deadline_ms),
                        _ => None,
                    })
                    .min();
                (exhausted, next)
            };
            if let Some(next) = next {
                self.earliest_deadline_ms.fetch_min(next, Ordering::AcqRel);
            }
            qg.changed.notify_waiters();
            for (p, e) in exhausted {
                if let Err(error) = self.dead_letter(broker, &topic, &qg, p, e).await {
                    tracing::error!(topic = %qg.topic, group = %qg.group, partition = p, %error, "dead-lettering failed");
                }
            }
        }
    }
}

/// Marks `gone` deleted and returns the tombstones of everything they wrote.
fn forget_groups(gone: &[Arc<QueueGroup>]) -> Vec<Entry> {
    let mut entries = Vec::new();
    for qg in gone {
        qg.deleted.store(true, Ordering::Release);
        let state = qg.state();
        entries.push((record::policy_key(&qg.group, &qg.topic), None));
        for (p, queue) in state.iter().enumerate() {
            let p = p as u32;
            entries.push((record::cursor_key(&qg.group, &qg.topic, p), None));
            for (offset, _) in queue.slots() {
                entries.push((record::slot_key(&qg.group, &qg.topic, p, offset), None));
            }
        }
        // Long polls on the group wake and answer NOT_FOUND.
        qg.changed.notify_waiters();
    }
    entries
}

fn unknown_partition(topic: &Topic, partition: u32) -> Error {
    Error::UnknownPartition {
        topic: topic.name.clone(),
        partition,
        partitions: topic.partitions.len() as u32,
    }
}
