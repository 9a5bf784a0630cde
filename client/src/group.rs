//! Group membership for the [`Consumer`](crate::Consumer): join, a background heartbeat, and
//! the assignment the broker hands out.
//!
//! The heartbeat task reports the partitions the consumer owns and stores the assignment the
//! broker answers; the consumer, in `poll`, compares the two, handles revocations first
//! (commit, stop reading, report them released) and then takes what was added. So a partition
//! is never read by two members at once: the broker gives it to its new owner only after the
//! old one stopped reporting it. A heartbeat answered `NOT_FOUND` (the session expired, or the
//! broker lost the member) rejoins under the same member id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sluice_proto::v1::{
    HeartbeatRequest, JoinRequest, JoinResponse, LeaveRequest, TopicPartitions,
    groups_client::GroupsClient,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

use crate::config::ConsumerConfig;
use crate::connection::{self, Idempotency};
use crate::consumer::{Consumer, Listener, OffsetReset, StartFrom};
use crate::error::{Error, Result};

/// A topic and a partition.
pub type TopicPartition = (Arc<str>, u32);

/// A change of a consumer's assignment, handed to its rebalance listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rebalance {
    /// These partitions are now the consumer's: reading starts at the committed offsets.
    Assigned(Vec<TopicPartition>),
    /// These partitions are no longer the consumer's; their positions were just committed.
    Revoked(Vec<TopicPartition>),
}

/// What the heartbeat task and the consumer share.
#[derive(Debug)]
struct Shared {
    group: String,
    state: Mutex<State>,
    /// The assignment changed.
    changed: Notify,
    /// The consumer released partitions: heartbeat now rather than at the next interval.
    beat_now: Notify,
}

#[derive(Debug)]
struct State {
    member_id: String,
    generation: u32,
    /// What the broker last said the member may consume.
    assignment: BTreeSet<TopicPartition>,
    /// What the consumer reads now.
    owned: BTreeSet<TopicPartition>,
    interval: Duration,
}

/// A consumer's membership in a group; heartbeats run until it is left or dropped.
#[derive(Debug)]
pub(crate) struct Member {
    shared: Arc<Shared>,
    groups: GroupsClient<Channel>,
    config: ConsumerConfig,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn partitions(list: Vec<TopicPartitions>) -> BTreeSet<TopicPartition> {
    list.into_iter()
        .flat_map(|tp| {
            let topic: Arc<str> = Arc::from(tp.topic);
            tp.partitions
                .into_iter()
                .map(move |p| (Arc::clone(&topic), p))
        })
        .collect()
}

fn wire(set: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut out: Vec<TopicPartitions> = Vec::new();
    for (topic, partition) in set {
        match out.last_mut() {
            Some(last) if last.topic.as_str() == &**topic => last.partitions.push(*partition),
            _ => out.push(TopicPartitions {
                topic: topic.to_string(),
                partitions: vec![*partition],
            }),
        }
    }
    out
}

async fn join(
    groups: &GroupsClient<Channel>,
    config: &ConsumerConfig,
    group: &str,
    member_id: &str,
    topics: &[String],
) -> Result<JoinResponse> {
    let request = JoinRequest {
        group: group.to_owned(),
        member_id: member_id.to_owned(),
        topics: topics.to_vec(),
        session_timeout_ms: u32::try_from(config.session_timeout.as_millis()).unwrap_or(u32::MAX),
        client_id: config.client_id.clone(),
    };
    let timeout = config.request_timeout;
    connection::with_retry(&config.retry, Idempotency::Idempotent, timeout, || {
        let mut groups = groups.clone();
        let request = connection::request(request.clone(), timeout);
        async move { groups.join(request).await }
    })
    .await
    .map_err(|f| Error::broker("join group", group, None, &f.status, f.attempts))
}

impl Member {
    /// Joins `group` subscribing to `topics`, and starts heartbeating.
    pub(crate) async fn join(
        groups: GroupsClient<Channel>,
        config: &ConsumerConfig,
        group: &str,
        topics: Vec<String>,
    ) -> Result<Self> {
        let joined = join(&groups, config, group, "", &topics).await?;
        let shared = Arc::new(Shared {
            group: group.to_owned(),
            state: Mutex::new(State {
                member_id: joined.member_id,
                generation: joined.generation,
                assignment: partitions(joined.assignment),
                owned: BTreeSet::new(),
                interval: Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(1))),
            }),
            changed: Notify::new(),
            beat_now: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(heartbeats(
            Arc::clone(&shared),
            groups.clone(),
            config.clone(),
            topics,
            stopped,
        ));
        Ok(Self {
            shared,
            groups,
            config: config.clone(),
            stop,
            task: Some(task),
        })
    }

    /// The member id and generation now.
    pub(crate) fn identity(&self) -> (String, u32) {
        let state = lock(&self.shared.state);
        (state.member_id.clone(), state.generation)
    }

    /// What the broker last said the member may consume, and its generation.
    pub(crate) fn assignment(&self) -> (BTreeSet<TopicPartition>, u32) {
        let state = lock(&self.shared.state);
        (state.assignment.clone(), state.generation)
    }

    /// Records what the consumer reads now; a release is reported at once.
    pub(crate) fn set_owned(&self, owned: BTreeSet<TopicPartition>) {
        let released = {
            let mut state = lock(&self.shared.state);
            let released = !state.owned.is_subset(&owned);
            state.owned = owned;
            released
        };
        if released {
            self.shared.beat_now.notify_one();
        }
    }

    /// Completes when the assignment may have changed.
    pub(crate) async fn changed(&self) {
        self.shared.changed.notified().await;
    }

    /// Leaves the group and stops heartbeating.
    pub(crate) async fn leave(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let (member_id, _) = self.identity();
        let request = LeaveRequest {
            group: self.shared.group.clone(),
            member_id,
        };
        let timeout = self.config.request_timeout;
        let mut groups = self.groups.clone();
        groups
            .leave(connection::request(request, timeout))
            .await
            .map_err(|status| Error::broker("leave group", &self.shared.group, None, &status, 1))?;
        Ok(())
    }
}

impl Drop for Member {
    /// Stops the heartbeats and, when a runtime is at hand, leaves the group in the
    /// background (best effort: otherwise the session times out).
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        let _ = self.stop.send(true);
        task.abort();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (member_id, _) = self.identity();
        let request = LeaveRequest {
            group: self.shared.group.clone(),
            member_id,
        };
        let mut groups = self.groups.clone();
        runtime.spawn(async move {
            let _ = groups.leave(request).await;
        });
    }
}

/// Heartbeats at the broker's interval (or at once when the consumer released partitions),
/// storing each answer; rejoins under the same id when the broker no longer knows the member.
async fn heartbeats(
    shared: Arc<Shared>,
    groups: GroupsClient<Channel>,
    config: ConsumerConfig,
    topics: Vec<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let interval = lock(&shared.state).interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.beat_now.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let (member_id, generation, owned) = {
            let state = lock(&shared.state);
            (
                state.member_id.clone(),
                state.generation,
                wire(&state.owned),
            )
        };
        let request = HeartbeatRequest {
            group: shared.group.clone(),
            member_id: member_id.clone(),
            generation,
            owned,
        };
        let mut client = groups.clone();
        let answer = client
            .heartbeat(connection::request(request, config.request_timeout))
            .await;
        let (assignment, generation, interval_ms) = match answer {
            Ok(response) => {
                let response = response.into_inner();
                (
                    response.assignment,
                    response.generation,
                    response.heartbeat_interval_ms,
                )
            }
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!(group = %shared.group, member = %member_id, "member unknown to the broker: rejoining");
                match join(&groups, &config, &shared.group, &member_id, &topics).await {
                    Ok(joined) => (
                        joined.assignment,
                        joined.generation,
                        joined.heartbeat_interval_ms,
                    ),
                    Err(error) => {
                        tracing::warn!(group = %shared.group, %error, "rejoin failed");
                        continue;
                    }
                }
            }
            Err(status) => {
                tracing::debug!(group = %shared.group, code = ?status.code(), message = status.message(), "heartbeat failed");
                continue;
            }
        };
        {
            let mut state = lock(&shared.state);
            state.assignment = partitions(assignment);
            state.generation = generation;
            state.interval = Duration::from_millis(u64::from(interval_ms.max(1)));
        }
        shared.changed.notify_waiters();
    }
}

impl Consumer {
    /// Joins the configured group subscribing to `topics`: the broker assigns this consumer its
    /// share of their partitions, and `poll` follows rebalances — revoked partitions are
    /// committed and dropped before they go to another member, added ones start at the group's
    /// committed offsets (or [`reset`](ConsumerConfig::reset)). Positions are committed every
    /// [`auto_commit`](ConsumerConfig::auto_commit), on revocation and on [`close`](Self::close);
    /// heartbeats run in the background. Manual `assign` and `subscribe` do not mix.
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        let group = self.group("subscribe")?.to_owned();
        if self.member.is_some() || !self.assignment().is_empty() {
            return Err(Error::InvalidConfig {
                field: "subscribe",
                value: format!("{topics:?}"),
                reason: "the consumer already subscribed or has manual assignments",
            });
        }
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let member = Member::join(self.groups.clone(), &self.config, &group, topics).await?;
        self.member = Some(member);
        self.committed_at = tokio::time::Instant::now();
        self.follow_assignment().await
    }

    /// Calls `listener` with every assignment change, revocations before their commit.
    pub fn on_rebalance(&mut self, listener: impl FnMut(&Rebalance) + Send + Sync + 'static) {
        self.listener = Some(Listener(Box::new(listener)));
    }

    /// The member id and generation, after `subscribe`.
    pub fn member(&self) -> Option<(String, u32)> {
        self.member.as_ref().map(Member::identity)
    }

    fn tell(&mut self, event: Rebalance) {
        if let Some(Listener(listener)) = &mut self.listener {
            listener(&event);
        }
    }

    /// Brings the consumer's partitions in line with the broker's latest answer.
    pub(crate) async fn follow_assignment(&mut self) -> Result<()> {
        let Some(member) = &self.member else {
            return Ok(());
        };
        let (target, _) = member.assignment();
        let owned: BTreeSet<TopicPartition> = self.assignment().into_iter().collect();
        let revoked: Vec<TopicPartition> = owned.difference(&target).cloned().collect();
        let added: Vec<TopicPartition> = target.difference(&owned).cloned().collect();
        if revoked.is_empty() && added.is_empty() {
            return Ok(());
        }
        if !revoked.is_empty() {
            self.tell(Rebalance::Revoked(revoked.clone()));
            // Commit before letting go, so the next owner starts where this one stopped. A
            // member whose session expired is fenced here: its partitions are gone anyway.
            if let Err(error) = self.commit_partitions(&revoked).await {
                tracing::warn!(%error, "committing revoked partitions failed");
            }
            for (topic, partition) in &revoked {
                self.unassign(topic, *partition);
            }
        }
        if !added.is_empty() {
            let mut by_topic: BTreeMap<Arc<str>, Vec<u32>> = BTreeMap::new();
            for (topic, partition) in &added {
                by_topic
                    .entry(Arc::clone(topic))
                    .or_default()
                    .push(*partition);
            }
            let fallback = match self.config.reset {
                OffsetReset::Earliest => StartFrom::Earliest,
                OffsetReset::Latest => StartFrom::Latest,
            };
            for (topic, partitions) in by_topic {
                for (partition, committed) in self.committed(&topic, &partitions).await? {
                    let start = committed.map_or(fallback, StartFrom::Offset);
                    self.assign(&topic, partition, start).await?;
                }
            }
            self.tell(Rebalance::Assigned(added));
        }
        let now: BTreeSet<TopicPartition> = self.assignment().into_iter().collect();
        if let Some(member) = &self.member {
            member.set_owned(now);
        }
        Ok(())
    }

    /// Commits the positions of `partitions`.
    async fn commit_partitions(&self, partitions: &[TopicPartition]) -> Result<()> {
        let mut by_topic: BTreeMap<&str, Vec<(u32, u64)>> = BTreeMap::new();
        for (topic, partition) in partitions {
            if let Some(position) = self.position(topic, *partition) {
                by_topic
                    .entry(topic)
                    .or_default()
                    .push((*partition, position));
            }
        }
        for (topic, offsets) in by_topic {
            self.commit_offsets(topic, &offsets).await?;
        }
        Ok(())
    }

    /// Commits every position if `auto_commit` is due.
    pub(crate) async fn auto_commit(&mut self) -> Result<()> {
        let Some(every) = self.config.auto_commit else {
            return Ok(());
        };
        if self.committed_at.elapsed() < every || self.assignment().is_empty() {
            return Ok(());
        }
        self.commit().await?;
        self.committed_at = tokio::time::Instant::now();
        Ok(())
    }

    /// Leaves the group: the rebalance listener hears every partition revoked, positions are
    /// committed (unless `auto_commit` is off), then the member leaves. Without `subscribe`,
    /// does nothing. Dropping a subscribed consumer leaves in the background.
    pub async fn close(mut self) -> Result<()> {
        if self.member.is_none() {
            return Ok(());
        }
        let owned = self.assignment();
        if !owned.is_empty() {
            self.tell(Rebalance::Revoked(owned));
        }
        let committed = if self.config.auto_commit.is_some() && !self.assignment().is_empty() {
            self.commit().await
        } else {
            Ok(())
        };
        let left = match self.member.take() {
            Some(member) => member.leave().await,
            None => Ok(()),
        };
        committed.and(left)
    }
}
