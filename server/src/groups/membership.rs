//! Group membership as a pure state machine: joins, heartbeats, leaves and session expiry take
//! `now_ms` and return what the member is told and the [`Change`]s to make durable; no I/O,
//! no clock (iggy's consumer-group liveness is the model). `groups/mod.rs` persists the
//! changes to `__consumer_groups` and replays them at start.
//!
//! Invariants:
//! - The **target** (partition → member) comes from the sticky assignor each time membership or
//!   subscriptions change; the group's generation then moves.
//! - A member is **delivered** (told it may consume) only the partitions of its target that no
//!   other member was delivered or still reports owning: a partition is revoked from its old
//!   owner (which commits it and reports it no longer owned) before its new owner gets it.
//! - A member's generation is the group generation at which its delivered assignment last
//!   changed; commits must carry it, and may name only partitions the member was delivered or
//!   still owns.
//! - A member whose deadline (last heartbeat + session timeout) passed is removed at the next
//!   `expire`, and what it held is free at once.

use super::assign::{TopicPartition, assign};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};

/// Session timeout when a join names none, ms.
pub const DEFAULT_SESSION_TIMEOUT_MS: u32 = 30_000;
/// Bounds of a session timeout, ms.
pub const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 1_000..=300_000;
/// Longest client id, bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 249;

/// A member's durable state: what a restart must know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Free-form client name.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Session timeout, ms.
    pub session_timeout_ms: u32,
    /// The member's generation.
    pub generation: u32,
    /// The group generation at which it (last) joined: commits from before are fenced.
    #[serde(default)]
    pub joined_generation: u32,
    /// What it was last delivered.
    pub assigned: Vec<TopicPartition>,
}

/// A change to make durable before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A member's state; `None`: the member is gone.
    Member {
        /// The group.
        group: String,
        /// The member.
        member_id: String,
        /// Its record.
        record: Option<MemberRecord>,
    },
    /// The group's generation; `None`: the group is deleted.
    Generation {
        /// The group.
        group: String,
        /// Its generation.
        generation: Option<u32>,
    },
}

/// What a member is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its id.
    pub member_id: String,
    /// Its generation.
    pub generation: u32,
    /// What it may consume now.
    pub assignment: BTreeSet<TopicPartition>,
    /// Its session timeout, ms.
    pub session_timeout_ms: u32,
}

/// A member as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    /// Its id.
    pub member_id: String,
    /// Client name.
    pub client_id: String,
    /// Its generation.
    pub generation: u32,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Delivered partitions.
    pub assignment: BTreeSet<TopicPartition>,
    /// Session timeout, ms.
    pub session_timeout_ms: u32,
    /// Time since its last heartbeat, ms.
    pub since_heartbeat_ms: u64,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group's generation.
    pub generation: u32,
    /// Live members.
    pub members: Vec<MemberSummary>,
    /// Subscribed topics of all members.
    pub topics: BTreeSet<String>,
    /// Who owns (was delivered) each partition.
    pub owners: BTreeMap<TopicPartition, String>,
    /// How long the last complete rebalance took, by the broker clock.
    pub last_rebalance_ms: Option<i64>,
}

/// A join request, validated by the caller's translation.
#[derive(Debug, Clone)]
pub struct Join {
    /// The group.
    pub group: String,
    /// The id to rejoin under, or `None` for a new member.
    pub member_id: Option<String>,
    /// Topics to consume.
    pub topics: BTreeSet<String>,
    /// Session timeout, ms.
    pub session_timeout_ms: u32,
    /// Client name.
    pub client_id: String,
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout_ms: u32,
    deadline_ms: i64,
    last_heartbeat_ms: i64,
    generation: u32,
    joined_generation: u32,
    assigned: BTreeSet<TopicPartition>,
    owned: BTreeSet<TopicPartition>,
}

impl Member {
    fn record(&self) -> MemberRecord {
        MemberRecord {
            client_id: self.client_id.clone(),
            topics: self.topics.iter().cloned().collect(),
            session_timeout_ms: self.session_timeout_ms,
            generation: self.generation,
            joined_generation: self.joined_generation,
            assigned: self.assigned.iter().cloned().collect(),
        }
    }

    fn holds(&self, partition: &TopicPartition) -> bool {
        self.assigned.contains(partition) || self.owned.contains(partition)
    }
}

#[derive(Debug, Clone, Default)]
struct Group {
    generation: u32,
    members: BTreeMap<String, Member>,
    target: BTreeMap<TopicPartition, String>,
    /// When the rebalance under way began, by the broker clock.
    rebalancing_since_ms: Option<i64>,
    last_rebalance_ms: Option<i64>,
}

/// Every group's membership.
#[derive(Debug, Default)]
pub struct Membership {
    groups: BTreeMap<String, Group>,
    /// Member ids made so far (with a random salt, ids stay unique across restarts).
    next_member: u64,
    salt: u64,
}

/// Partition counts of topics, as the broker knows them now (`None`: no such topic).
pub type Counts<'a> = &'a dyn Fn(&str) -> Option<u32>;

impl Membership {
    /// An empty membership.
    pub fn new() -> Self {
        let salt = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            salt,
            ..Self::default()
        }
    }

    /// Joins (or rejoins) a member; answers what it may consume.
    pub fn join(
        &mut self,
        join: Join,
        now_ms: i64,
        counts: Counts<'_>,
    ) -> Result<(MemberView, Vec<Change>)> {
        let member_id = match join.member_id {
            Some(id) => id,
            None => self.new_member_id(&join.client_id),
        };
        let group = self.groups.entry(join.group.clone()).or_default();
        let mut changes = Vec::new();
        let rejoined = match group.members.get_mut(&member_id) {
            Some(member) => {
                let same = member.topics == join.topics;
                member.topics = join.topics.clone();
                member.session_timeout_ms = join.session_timeout_ms;
                member.client_id = join.client_id.clone();
                same
            }
            None => false,
        };
        if !rejoined {
            group.members.entry(member_id.clone()).or_insert(Member {
                client_id: join.client_id.clone(),
                topics: join.topics.clone(),
                session_timeout_ms: join.session_timeout_ms,
                deadline_ms: 0,
                last_heartbeat_ms: now_ms,
                generation: 0,
                joined_generation: 0,
                assigned: BTreeSet::new(),
                owned: BTreeSet::new(),
            });
            rebalance(&join.group, group, now_ms, counts, &mut changes);
        }
        let member = group
            .members
            .get_mut(&member_id)
            .ok_or_else(|| unknown_member(&join.group, &member_id))?;
        member.last_heartbeat_ms = now_ms;
        member.deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        if !rejoined && member.generation == 0 {
            member.generation = group.generation;
            member.joined_generation = group.generation;
        }
        let view = deliver(&join.group, group, &member_id, now_ms, &mut changes)?;
        // The member's record (subscriptions, timeout) is durable either way.
        push_member(&join.group, group, &member_id, &mut changes);
        Ok((view, changes))
    }

    /// A heartbeat: keeps the member alive, records what it still owns, answers its current
    /// assignment. `NOT_FOUND` for a member not in the group.
    pub fn heartbeat(
        &mut self,
        group_name: &str,
        member_id: &str,
        generation: u32,
        owned: BTreeSet<TopicPartition>,
        now_ms: i64,
    ) -> Result<(MemberView, Vec<Change>)> {
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| unknown_member(group_name, member_id))?;
        let member = group
            .members
            .get_mut(member_id)
            .ok_or_else(|| unknown_member(group_name, member_id))?;
        member.last_heartbeat_ms = now_ms;
        member.deadline_ms = now_ms + i64::from(member.session_timeout_ms);
        // Only what it was delivered can it own. A report from a member that has not yet seen
        // its latest answer (an older generation) may predate a revocation: it can add to what
        // the member holds, never release.
        let previously: BTreeSet<TopicPartition> =
            member.assigned.union(&member.owned).cloned().collect();
        let reported: BTreeSet<TopicPartition> = owned.intersection(&previously).cloned().collect();
        if generation == member.generation {
            member.owned = reported;
        } else {
            member.owned.extend(reported);
        }
        let mut changes = Vec::new();
        let view = deliver(group_name, group, member_id, now_ms, &mut changes)?;
        Ok((view, changes))
    }

    /// A member leaves; what it held moves.
    pub fn leave(
        &mut self,
        group_name: &str,
        member_id: &str,
        now_ms: i64,
        counts: Counts<'_>,
    ) -> Result<Vec<Change>> {
        let group = self
            .groups
            .get_mut(group_name)
            .ok_or_else(|| unknown_member(group_name, member_id))?;
        if group.members.remove(member_id).is_none() {
            return Err(unknown_member(group_name, member_id));
        }
        let mut changes = vec![Change::Member {
            group: group_name.to_owned(),
            member_id: member_id.to_owned(),
            record: None,
        }];
        rebalance(group_name, group, now_ms, counts, &mut changes);
        Ok(changes)
    }

    /// Removes every member whose session timed out by `now_ms`.
    pub fn expire(&mut self, now_ms: i64, counts: Counts<'_>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, group) in &mut self.groups {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| m.deadline_ms <= now_ms)
                .map(|(id, _)| id.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            for member_id in expired {
                tracing::info!(group = %name, member = %member_id, "member session expired");
                group.members.remove(&member_id);
                changes.push(Change::Member {
                    group: name.clone(),
                    member_id,
                    record: None,
                });
            }
            rebalance(name, group, now_ms, counts, &mut changes);
        }
        changes
    }

    /// The earliest session deadline of any member, ms.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.groups
            .values()
            .flat_map(|g| g.members.values().map(|m| m.deadline_ms))
            .min()
    }

    /// Whether `member_id` of `group` at `generation` may commit `partitions` of `topic`. A
    /// commit without a member is allowed only while the group has no live members.
    pub fn check_commit(
        &self,
        group_name: &str,
        member_id: &str,
        generation: u32,
        topic: &str,
        partitions: &[u32],
    ) -> Result<()> {
        let group = self.groups.get(group_name);
        if member_id.is_empty() {
            let live = group.map(|g| g.members.len()).unwrap_or(0);
            if live > 0 {
                return Err(Error::Fenced {
                    reason: format!(
                        "group {group_name:?} has {live} live members: a commit must carry a member id and generation"
                    ),
                });
            }
            return Ok(());
        }
        let member = group
            .and_then(|g| g.members.get(member_id))
            .ok_or_else(|| Error::Fenced {
                reason: format!(
                    "member {member_id:?} is not in group {group_name:?} (it left or its session expired)"
                ),
            })?;
        // A commit that crossed a heartbeat moving the member's generation is fine (it must
        // still hold the partitions, below); one from before the member (re)joined is from a
        // previous incarnation of it, and is fenced.
        if generation < member.joined_generation || generation > member.generation {
            return Err(Error::Fenced {
                reason: format!(
                    "stale generation {generation} for member {member_id:?} of group {group_name:?}: its generation is {} (it joined at {})",
                    member.generation, member.joined_generation
                ),
            });
        }
        for &partition in partitions {
            if !member.holds(&(topic.to_owned(), partition)) {
                return Err(Error::Fenced {
                    reason: format!(
                        "partition {topic}/{partition} is not assigned to member {member_id:?} of group {group_name:?}"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Live members of a group.
    pub fn live_members(&self, group: &str) -> Vec<String> {
        self.groups
            .get(group)
            .map(|g| g.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every group with its live member count.
    pub fn list(&self) -> Vec<(String, usize)> {
        self.groups
            .iter()
            .map(|(name, g)| (name.clone(), g.members.len()))
            .collect()
    }

    /// A group's members and owners, if the group is known.
    pub fn describe(&self, group: &str, now_ms: i64) -> Option<GroupSummary> {
        let group = self.groups.get(group)?;
        let members = group
            .members
            .iter()
            .map(|(id, m)| MemberSummary {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                generation: m.generation,
                topics: m.topics.iter().cloned().collect(),
                assignment: m.assigned.clone(),
                session_timeout_ms: m.session_timeout_ms,
                since_heartbeat_ms: u64::try_from(now_ms - m.last_heartbeat_ms).unwrap_or(0),
            })
            .collect();
        let owners = group
            .members
            .iter()
            .flat_map(|(id, m)| m.assigned.iter().map(move |tp| (tp.clone(), id.clone())))
            .collect();
        Some(GroupSummary {
            generation: group.generation,
            members,
            topics: group
                .members
                .values()
                .flat_map(|m| m.topics.clone())
                .collect(),
            owners,
            last_rebalance_ms: group.last_rebalance_ms,
        })
    }

    /// Forgets a group without live members; the changes delete its records.
    pub fn delete(&mut self, group_name: &str) -> Result<Vec<Change>> {
        let live = self.live_members(group_name);
        if !live.is_empty() {
            return Err(live_members(group_name, &live));
        }
        let existed = self.groups.remove(group_name).is_some();
        Ok(if existed {
            vec![Change::Generation {
                group: group_name.to_owned(),
                generation: None,
            }]
        } else {
            Vec::new()
        })
    }

    /// Applies a durable change (replay at start).
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Generation { group, generation } => match generation {
                Some(generation) => {
                    let entry = self.groups.entry(group).or_default();
                    entry.generation = entry.generation.max(generation);
                }
                None => {
                    self.groups.remove(&group);
                }
            },
            Change::Member {
                group,
                member_id,
                record,
            } => {
                let entry = self.groups.entry(group).or_default();
                match record {
                    Some(record) => {
                        let assigned: BTreeSet<TopicPartition> =
                            record.assigned.into_iter().collect();
                        entry.members.insert(
                            member_id,
                            Member {
                                client_id: record.client_id,
                                topics: record.topics.into_iter().collect(),
                                session_timeout_ms: record.session_timeout_ms,
                                deadline_ms: 0,
                                last_heartbeat_ms: 0,
                                generation: record.generation,
                                joined_generation: record.joined_generation,
                                owned: assigned.clone(),
                                assigned,
                            },
                        );
                    }
                    None => {
                        entry.members.remove(&member_id);
                    }
                }
            }
        }
    }

    /// After replay: every member gets a full session from `now_ms` to heartbeat again, and
    /// each group's target is rebuilt around what its members were delivered.
    pub fn restored(&mut self, now_ms: i64, counts: Counts<'_>) {
        for group in self.groups.values_mut() {
            for member in group.members.values_mut() {
                member.last_heartbeat_ms = now_ms;
                member.deadline_ms = now_ms + i64::from(member.session_timeout_ms);
            }
            group.target = group
                .members
                .iter()
                .flat_map(|(id, m)| m.assigned.iter().map(move |tp| (tp.clone(), id.clone())))
                .collect();
            let members = subscriptions(group);
            group.target = assign(&members, &partition_counts(group, counts), &group.target);
        }
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        self.next_member += 1;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hasher.write_u64(self.salt);
        hasher.write_u64(self.next_member);
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        format!("{prefix}-{:016x}", hasher.finish())
    }
}

fn unknown_member(group: &str, member: &str) -> Error {
    Error::UnknownMember {
        group: group.to_owned(),
        member: member.to_owned(),
    }
}

fn live_members(group: &str, live: &[String]) -> Error {
    Error::Fenced {
        reason: format!(
            "group {group:?} has live members: {}; stop them first",
            live.join(", ")
        ),
    }
}

/// The error for an operation that needs a group without live members.
pub fn require_no_members(membership: &Membership, group: &str) -> Result<()> {
    let live = membership.live_members(group);
    if live.is_empty() {
        Ok(())
    } else {
        Err(live_members(group, &live))
    }
}

fn subscriptions(group: &Group) -> BTreeMap<String, BTreeSet<String>> {
    group
        .members
        .iter()
        .map(|(id, m)| (id.clone(), m.topics.clone()))
        .collect()
}

fn partition_counts(group: &Group, counts: Counts<'_>) -> BTreeMap<String, u32> {
    group
        .members
        .values()
        .flat_map(|m| m.topics.iter())
        .filter_map(|topic| counts(topic).map(|n| (topic.clone(), n)))
        .collect()
}

/// Membership or subscriptions changed: a new generation and target.
fn rebalance(
    name: &str,
    group: &mut Group,
    now_ms: i64,
    counts: Counts<'_>,
    changes: &mut Vec<Change>,
) {
    group.generation += 1;
    let members = subscriptions(group);
    group.target = assign(&members, &partition_counts(group, counts), &group.target);
    group.rebalancing_since_ms.get_or_insert(now_ms);
    changes.push(Change::Generation {
        group: name.to_owned(),
        generation: Some(group.generation),
    });
    check_settled(name, group, now_ms);
}

/// Recomputes what `member_id` may consume: its target, less what another member still holds.
fn deliver(
    name: &str,
    group: &mut Group,
    member_id: &str,
    now_ms: i64,
    changes: &mut Vec<Change>,
) -> Result<MemberView> {
    let target: BTreeSet<TopicPartition> = group
        .target
        .iter()
        .filter(|(_, owner)| owner.as_str() == member_id)
        .map(|(tp, _)| tp.clone())
        .collect();
    let free: BTreeSet<TopicPartition> = target
        .into_iter()
        .filter(|tp| {
            !group
                .members
                .iter()
                .any(|(id, m)| id != member_id && m.holds(tp))
        })
        .collect();
    let generation = group.generation;
    let member = group
        .members
        .get_mut(member_id)
        .ok_or_else(|| unknown_member(name, member_id))?;
    if member.assigned != free {
        // What is taken away stays held until the member acknowledges it (a heartbeat at the
        // new generation that no longer reports it).
        let revoked: Vec<TopicPartition> = member.assigned.difference(&free).cloned().collect();
        member.owned.extend(revoked);
        member.assigned = free;
        member.generation = generation;
        push_member(name, group, member_id, changes);
    }
    check_settled(name, group, now_ms);
    let member = group
        .members
        .get(member_id)
        .ok_or_else(|| unknown_member(name, member_id))?;
    Ok(MemberView {
        member_id: member_id.to_owned(),
        generation: member.generation,
        assignment: member.assigned.clone(),
        session_timeout_ms: member.session_timeout_ms,
    })
}

fn push_member(name: &str, group: &Group, member_id: &str, changes: &mut Vec<Change>) {
    if let Some(member) = group.members.get(member_id) {
        changes.retain(|c| {
            !matches!(c, Change::Member { group: g, member_id: m, .. } if g == name && m == member_id)
        });
        changes.push(Change::Member {
            group: name.to_owned(),
            member_id: member_id.to_owned(),
            record: Some(member.record()),
        });
    }
}

/// Ends the rebalance under way once every member was delivered its whole target and owns
/// nothing else, logging how long it took by the broker clock.
fn check_settled(name: &str, group: &mut Group, now_ms: i64) {
    let Some(since) = group.rebalancing_since_ms else {
        return;
    };
    let settled = group.members.iter().all(|(id, m)| {
        let target: BTreeSet<&TopicPartition> = group
            .target
            .iter()
            .filter(|(_, owner)| *owner == id)
            .map(|(tp, _)| tp)
            .collect();
        m.assigned.iter().collect::<BTreeSet<_>>() == target
            && m.owned.iter().all(|tp| target.contains(tp))
    });
    if settled {
        let took = now_ms - since;
        group.rebalancing_since_ms = None;
        group.last_rebalance_ms = Some(took);
        tracing::info!(
            group = name,
            generation = group.generation,
            rebalance_ms = took,
            "rebalance complete"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(topic: &str) -> Option<u32> {
        (topic == "t").then_some(6)
    }

    fn join(m: &mut Membership, id: Option<&str>, now: i64) -> MemberView {
        let request = Join {
            group: "g".into(),
            member_id: id.map(str::to_owned),
            topics: ["t".to_owned()].into(),
            session_timeout_ms: 10_000,
            client_id: "c".into(),
        };
        match m.join(request, now, &counts) {
            Ok((view, _)) => view,
            Err(e) => panic!("{e}"),
        }
    }

    fn beat(
        m: &mut Membership,
        view: &MemberView,
        owned: &BTreeSet<TopicPartition>,
        now: i64,
    ) -> MemberView {
        match m.heartbeat("g", &view.member_id, view.generation, owned.clone(), now) {
            Ok((view, _)) => view,
            Err(e) => panic!("{e}"),
        }
    }

    /// Members that own what they are delivered (the client's part), heartbeating in turn.
    fn settle(m: &mut Membership, views: &mut [MemberView], now: i64) {
        for _ in 0..4 {
            for view in views.iter_mut() {
                let owned = view.assignment.clone();
                *view = beat(m, view, &owned, now);
            }
        }
    }

    #[test]
    fn partitions_are_revoked_before_they_move_and_never_owned_twice() {
        let mut m = Membership::new();
        let a = join(&mut m, None, 0);
        assert_eq!(a.assignment.len(), 6);
        // b joins: its target is three of a's partitions, but a still owns them.
        let b = join(&mut m, None, 1);
        assert!(b.assignment.is_empty(), "{b:?}");
        // a heartbeats, still owning everything: its answer revokes three.
        let a2 = beat(&mut m, &a, &a.assignment, 2);
        assert_eq!(a2.assignment.len(), 3);
        assert!(a2.generation > a.generation);
        // b heartbeats before a reported giving them up: still nothing for b.
        let b2 = beat(&mut m, &b, &BTreeSet::new(), 3);
        assert!(b2.assignment.is_empty());
        // a reports owning only its three; then b gets the other three.
        let a3 = beat(&mut m, &a2, &a2.assignment, 4);
        let b3 = beat(&mut m, &b2, &BTreeSet::new(), 5);
        assert_eq!(b3.assignment.len(), 3);
        assert!(a3.assignment.is_disjoint(&b3.assignment));
        assert_eq!(
            m.describe("g", 5).and_then(|g| g.last_rebalance_ms),
            Some(4)
        );
    }

    #[test]
    fn a_report_that_predates_a_revocation_releases_nothing() {
        let mut m = Membership::new();
        let a = join(&mut m, None, 0);
        // The client has not yet applied its first assignment when its heartbeat goes out.
        let b = join(&mut m, None, 1);
        let a2 = beat(&mut m, &a, &BTreeSet::new(), 2);
        assert_eq!(a2.assignment.len(), 3, "three revoked");
        // A heartbeat that left before the revocation arrived (the old generation) and
        // reports nothing owned: the revoked partitions stay held.
        let stale = MemberView {
            generation: a.generation,
            ..a2.clone()
        };
        beat(&mut m, &stale, &BTreeSet::new(), 3);
        assert!(beat(&mut m, &b, &BTreeSet::new(), 4).assignment.is_empty());
        // Once a heartbeat at the new generation stops reporting them, they move.
        beat(&mut m, &a2, &a2.assignment, 5);
        assert_eq!(beat(&mut m, &b, &BTreeSet::new(), 6).assignment.len(), 3);
    }

    #[test]
    fn expiry_and_leave_free_partitions_and_fence_commits() {
        let mut m = Membership::new();
        let mut views = vec![
            join(&mut m, None, 0),
            join(&mut m, None, 0),
            join(&mut m, None, 0),
        ];
        settle(&mut m, &mut views, 1);
        assert!(views.iter().all(|v| v.assignment.len() == 2));
        let frozen = views.remove(2);
        let p = frozen.assignment.iter().next().map(|tp| tp.1).unwrap_or(0);
        assert!(
            m.check_commit("g", &frozen.member_id, frozen.generation, "t", &[p])
                .is_ok()
        );
        // The others keep heartbeating; the frozen one misses its session.
        settle(&mut m, &mut views, 5_000);
        assert!(m.expire(10_000, &counts).is_empty(), "not yet");
        let changes = m.expire(10_001, &counts);
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Member { record: None, .. }))
        );
        settle(&mut m, &mut views, 10_002);
        assert_eq!(views.iter().map(|v| v.assignment.len()).sum::<usize>(), 6);
        // Its late commit is fenced; a stale generation of a live member too.
        assert!(matches!(
            m.check_commit("g", &frozen.member_id, frozen.generation, "t", &[p]),
            Err(Error::Fenced { .. })
        ));
        let live = &views[0];
        match m.check_commit("g", &live.member_id, live.generation + 1, "t", &[]) {
            Err(Error::Fenced { reason }) => {
                assert!(reason.contains("stale generation"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // A generation older than the member's, but not older than its join, is accepted for
        // the partitions it holds (a commit that crossed a heartbeat).
        let held = live.assignment.iter().next().map(|tp| tp.1).unwrap_or(0);
        assert!(
            m.check_commit("g", &live.member_id, live.generation - 1, "t", &[held])
                .is_ok()
        );
        // Rejoining after expiry is a new incarnation: commits from before it are fenced.
        let rejoined = join(&mut m, Some(&frozen.member_id), 10_002);
        assert!(rejoined.generation > frozen.generation);
        assert!(
            m.check_commit("g", &frozen.member_id, frozen.generation, "t", &[])
                .is_err()
        );
        assert!(m.leave("g", &frozen.member_id, 10_002, &counts).is_ok());
        // A commit from outside is refused while members live, allowed once they are gone.
        assert!(m.check_commit("g", "", 0, "t", &[0]).is_err());
        for view in &views {
            assert!(m.leave("g", &view.member_id, 10_003, &counts).is_ok());
        }
        assert!(m.check_commit("g", "", 0, "t", &[0]).is_ok());
        assert!(matches!(
            m.heartbeat("g", &views[0].member_id, 0, BTreeSet::new(), 10_004),
            Err(Error::UnknownMember { .. })
        ));
    }

    #[test]
    fn replayed_changes_restore_members_assignments_and_generations() {
        let mut m = Membership::new();
        let mut log = Vec::new();
        let mut record = |(view, changes): (MemberView, Vec<Change>)| {
            log.extend(changes);
            view
        };
        let request = |id: Option<&str>| Join {
            group: "g".into(),
            member_id: id.map(str::to_owned),
            topics: ["t".to_owned()].into(),
            session_timeout_ms: 10_000,
            client_id: String::new(),
        };
        let a = record(
            m.join(request(None), 0, &counts)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let b = record(
            m.join(request(None), 0, &counts)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        for _ in 0..3 {
            for view in [&a, &b] {
                let owned = m
                    .describe("g", 0)
                    .map(|g| {
                        g.owners
                            .iter()
                            .filter(|(_, o)| **o == view.member_id)
                            .map(|(tp, _)| tp.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let generation = m
                    .describe("g", 0)
                    .and_then(|g| {
                        g.members
                            .iter()
                            .find(|x| x.member_id == view.member_id)
                            .map(|x| x.generation)
                    })
                    .unwrap_or(0);
                record(
                    m.heartbeat("g", &view.member_id, generation, owned, 1)
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
        }
        let before = m.describe("g", 1);
        let mut restored = Membership::new();
        for change in log {
            restored.apply(change);
        }
        restored.restored(100, &counts);
        let after = restored.describe("g", 100);
        assert_eq!(
            after.as_ref().map(|g| &g.owners),
            before.as_ref().map(|g| &g.owners)
        );
        assert_eq!(after.map(|g| g.generation), before.map(|g| g.generation));
        // Their sessions start over from the restart.
        assert_eq!(restored.next_deadline_ms(), Some(10_100));
    }
}
