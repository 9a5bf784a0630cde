//! The durable form of queue state: records of the internal compacted topic `__queue_state`,
//! written through the partition write path and replayed at start (design.md §4, "everything
//! is a log").
//!
//! Keys are UTF-8, parts joined by NUL, numbers in decimal; the first part says what the
//! record is. Values are little-endian, version first:
//!
//! ```text
//! cursor  key = "c" NUL group NUL topic NUL partition
//!         value = { u8 version | u64 done_below | u64 dead_lettered }
//! slot    key = "s" NUL group NUL topic NUL partition NUL offset
//!         value = { u8 version | u8 state | u32 attempts | i64 time_ms | u64 dlq_from | error }
//!         (null value: a tombstone; the cursor passed the offset)
//! redrive key = "r" NUL topic NUL dlq_partition NUL dlq_offset
//!         value = { u8 version | u8 state | u32 target_partition | u64 target_from }
//! policy  key = "p" NUL group NUL topic
//!         value = { u8 version | u32 max_attempts | u64 backoff_initial_ms
//!                 | u32 backoff_multiplier_milli | u64 backoff_max_ms }
//!         (null value: the group follows its topic's policy again)
//! ```
//!
//! | record  | offset | size | field              | notes                                     |
//! |---------|-------:|-----:|--------------------|-------------------------------------------|
//! | cursor  |      0 |    1 | `version`          | [`VERSION`]                               |
//! | cursor  |      1 |    8 | `done_below`       | every offset below is done                |
//! | cursor  |      9 |    8 | `dead_lettered`    | dead letters of the partition, ever       |
//! | slot    |      0 |    1 | `version`          | [`VERSION`]                               |
//! | slot    |      1 |    1 | `state`            | 1 leased, 2 waiting, 3 acked, 4 dead-lettering, 5 dead |
//! | slot    |      2 |    4 | `attempts`         | deliveries so far                         |
//! | slot    |      6 |    8 | `time_ms`          | leased: deadline; waiting: until; else 0  |
//! | slot    |     14 |    8 | `dlq_from`         | dead-lettering: the DLQ's end before it   |
//! | slot    |     22 |    … | `error`            | the last error, UTF-8 (may be empty)      |
//! | redrive |      0 |    1 | `version`          | [`VERSION`]                               |
//! | redrive |      1 |    1 | `state`            | 1 intent, 2 done                          |
//! | redrive |      2 |    4 | `target_partition` | the origin topic's partition              |
//! | redrive |      6 |    8 | `target_from`      | that partition's end before the append    |
//! | policy  |      0 |    1 | `version`          | [`VERSION`]                               |
//! | policy  |      1 |    4 | `max_attempts`     | the group's override of the topic's       |
//! | policy  |      5 |    8 | `backoff_initial_ms` |                                         |
//! | policy  |     13 |    4 | `backoff_multiplier_milli` | thousandths                       |
//! | policy  |     17 |    8 | `backoff_max_ms`   |                                           |
//!
//! Compaction keeps the latest record per key, so the topic holds about one cursor per
//! (group, topic, partition), one slot per offset in a window (bounded), and one redrive
//! record per dead letter redriven. When a cursor moves, the same batch carries tombstones
//! for the slots it passed, so they go too.

use super::state::{PartitionQueue, RetryPolicy, Slot, SlotState};
use sluice_storage::format::BatchView;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The format version of every value.
pub const VERSION: u8 = 1;
const CURSOR_LEN: usize = 17;
const SLOT_HEADER_LEN: usize = 22;
const REDRIVE_LEN: usize = 14;
const POLICY_LEN: usize = 25;
const _: () = assert!(POLICY_LEN == 1 + 4 + 8 + 4 + 8);
const _: () = assert!(CURSOR_LEN == 1 + 8 + 8);
const _: () = assert!(SLOT_HEADER_LEN == 1 + 1 + 4 + 8 + 8);
const _: () = assert!(REDRIVE_LEN == 1 + 1 + 4 + 8);

/// A record to append: key and value (`None`: tombstone).
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// The cursor key.
pub fn cursor_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    format!("c\0{group}\0{topic}\0{partition}").into_bytes()
}

/// A slot key.
pub fn slot_key(group: &str, topic: &str, partition: u32, offset: u64) -> Vec<u8> {
    format!("s\0{group}\0{topic}\0{partition}\0{offset}").into_bytes()
}

/// A redrive key.
pub fn redrive_key(topic: &str, dlq_partition: u32, dlq_offset: u64) -> Vec<u8> {
    format!("r\0{topic}\0{dlq_partition}\0{dlq_offset}").into_bytes()
}

/// A group's policy key.
pub fn policy_key(group: &str, topic: &str) -> Vec<u8> {
    format!("p\0{group}\0{topic}").into_bytes()
}

/// A group's policy value.
pub fn policy_value(policy: &RetryPolicy) -> Vec<u8> {
    let mut value = Vec::with_capacity(POLICY_LEN);
    value.push(VERSION);
    value.extend_from_slice(&policy.max_attempts.to_le_bytes());
    value.extend_from_slice(&policy.backoff_initial_ms.to_le_bytes());
    value.extend_from_slice(&policy.backoff_multiplier_milli.to_le_bytes());
    value.extend_from_slice(&policy.backoff_max_ms.to_le_bytes());
    value
}

/// A partition number from a key: a topic never has `MAX_PARTITIONS` or more, and replay
/// sizes a group's partition list by the largest it sees, so a damaged key must not pass.
fn partition_of(text: &str) -> Option<u32> {
    text.parse()
        .ok()
        .filter(|&p| p < sluice_proto::limits::MAX_PARTITIONS)
}

fn decode_policy(value: &[u8]) -> Option<RetryPolicy> {
    if value.len() != POLICY_LEN || value[0] != VERSION {
        return None;
    }
    let policy = RetryPolicy {
        max_attempts: u32_at(value, 1)?,
        backoff_initial_ms: u64_at(value, 5)?,
        backoff_multiplier_milli: u32_at(value, 13)?,
        backoff_max_ms: u64_at(value, 17)?,
    };
    // Checked when set; a value out of bounds on disk is damage.
    policy.problem().is_none().then_some(policy)
}

/// A cursor value.
pub fn cursor_value(queue: &PartitionQueue) -> Vec<u8> {
    let mut value = Vec::with_capacity(CURSOR_LEN);
    value.push(VERSION);
    value.extend_from_slice(&queue.done_below().to_le_bytes());
    value.extend_from_slice(&queue.dead_lettered().to_le_bytes());
    value
}

/// A slot value.
pub fn slot_value(slot: &Slot) -> Vec<u8> {
    let (state, time_ms, dlq_from) = match slot.state {
        SlotState::Leased { deadline_ms } => (1u8, deadline_ms, 0u64),
        SlotState::Waiting { until_ms } => (2, until_ms, 0),
        SlotState::Acked => (3, 0, 0),
        SlotState::DeadLettering { dlq_from } => (4, 0, dlq_from),
        SlotState::Dead => (5, 0, 0),
    };
    let error = slot.last_error.as_deref().unwrap_or("");
    let mut value = Vec::with_capacity(SLOT_HEADER_LEN + error.len());
    value.push(VERSION);
    value.push(state);
    value.extend_from_slice(&slot.attempts.to_le_bytes());
    value.extend_from_slice(&time_ms.to_le_bytes());
    value.extend_from_slice(&dlq_from.to_le_bytes());
    value.extend_from_slice(error.as_bytes());
    value
}

/// Where a redrive of one dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redrive {
    /// About to append to `target_partition`, whose end offset was `target_from`.
    Intent {
        /// The origin topic's partition.
        target_partition: u32,
        /// Its end offset before the append.
        target_from: u64,
    },
    /// Appended: never again.
    Done,
}

/// A redrive value.
pub fn redrive_value(redrive: Redrive) -> Vec<u8> {
    let (state, partition, from) = match redrive {
        Redrive::Intent {
            target_partition,
            target_from,
        } => (1u8, target_partition, target_from),
        Redrive::Done => (2, 0, 0),
    };
    let mut value = Vec::with_capacity(REDRIVE_LEN);
    value.push(VERSION);
    value.push(state);
    value.extend_from_slice(&partition.to_le_bytes());
    value.extend_from_slice(&from.to_le_bytes());
    value
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn decode_slot(value: &[u8]) -> Option<Slot> {
    if value.len() < SLOT_HEADER_LEN || value[0] != VERSION {
        return None;
    }
    let attempts = u32_at(value, 2)?;
    let time_ms = u64_at(value, 6)? as i64;
    let dlq_from = u64_at(value, 14)?;
    let state = match value[1] {
        1 => SlotState::Leased {
            deadline_ms: time_ms,
        },
        2 => SlotState::Waiting { until_ms: time_ms },
        3 => SlotState::Acked,
        4 => SlotState::DeadLettering { dlq_from },
        5 => SlotState::Dead,
        _ => return None,
    };
    let error = std::str::from_utf8(&value[SLOT_HEADER_LEN..]).ok()?;
    Some(Slot {
        attempts,
        state,
        last_error: (!error.is_empty()).then(|| Arc::from(error)),
    })
}

fn decode_redrive(value: &[u8]) -> Option<Redrive> {
    if value.len() != REDRIVE_LEN || value[0] != VERSION {
        return None;
    }
    match value[1] {
        1 => Some(Redrive::Intent {
            target_partition: u32_at(value, 2)?,
            target_from: u64_at(value, 6)?,
        }),
        2 => Some(Redrive::Done),
        _ => None,
    }
}

/// (group, topic).
pub type GroupKey = (String, String);

/// What one partition's records said, while replaying.
#[derive(Debug, Default)]
struct Found {
    cursor: Option<(u64, u64)>,
    slots: BTreeMap<u64, Slot>,
}

/// The replay state machine of `__queue_state`.
#[derive(Debug, Default)]
pub struct Replaying {
    partitions: HashMap<GroupKey, BTreeMap<u32, Found>>,
    /// Redrive records by (topic, dlq partition, dlq offset).
    pub redrives: HashMap<(String, u32, u64), Redrive>,
    /// Records that did not decode (skipped with a warning).
    pub malformed: u64,
    /// Groups' own retry policies.
    pub policies: HashMap<GroupKey, RetryPolicy>,
}

impl Replaying {
    /// The queues rebuilt: per (group, topic), per partition.
    pub fn into_queues(self) -> (HashMap<GroupKey, BTreeMap<u32, PartitionQueue>>, Redrives) {
        let queues = self
            .partitions
            .into_iter()
            .map(|(key, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|(partition, found)| {
                        // Without a cursor (its group's creation did not become durable), the
                        // oldest slot is where the window starts.
                        let oldest = found.slots.keys().next().copied().unwrap_or(0);
                        let (done_below, dead) = found.cursor.unwrap_or((oldest, 0));
                        (
                            partition,
                            PartitionQueue::restored(done_below, dead, found.slots),
                        )
                    })
                    .collect();
                (key, partitions)
            })
            .collect();
        (queues, self.redrives)
    }

    fn apply_record(&mut self, key: &[u8], value: Option<&[u8]>) -> Option<()> {
        let key = std::str::from_utf8(key).ok()?;
        let mut parts = key.split('\0');
        match parts.next()? {
            "c" => {
                let group = parts.next()?;
                let topic = parts.next()?;
                let partition = partition_of(parts.next()?)?;
                let Some(value) = value else {
                    // The group (or its topic) was deleted: forget the partition.
                    let key = (group.to_owned(), topic.to_owned());
                    if let Some(partitions) = self.partitions.get_mut(&key) {
                        partitions.remove(&partition);
                        if partitions.is_empty() {
                            self.partitions.remove(&key);
                        }
                    }
                    return Some(());
                };
                if value.len() != CURSOR_LEN || value[0] != VERSION {
                    return None;
                }
                let done_below = u64_at(value, 1)?;
                let dead = u64_at(value, 9)?;
                let found = self.found(group, topic, partition);
                // Concurrent appends may land out of order: the cursor only grows.
                let (d, n) = found.cursor.unwrap_or((0, 0));
                found.cursor = Some((d.max(done_below), n.max(dead)));
            }
            "s" => {
                let group = parts.next()?;
                let topic = parts.next()?;
                let partition = partition_of(parts.next()?)?;
                let offset: u64 = parts.next()?.parse().ok()?;
                if value.is_none() {
                    // A tombstone creates nothing (its group may be gone).
                    if let Some(found) = self
                        .partitions
                        .get_mut(&(group.to_owned(), topic.to_owned()))
                        .and_then(|p| p.get_mut(&partition))
                    {
                        found.slots.remove(&offset);
                    }
                    return Some(());
                }
                let found = self.found(group, topic, partition);
                match value {
                    None => {}
                    Some(value) => {
                        let slot = decode_slot(value)?;
                        // Out-of-order records of one offset: the later attempt, then the
                        // later state, wins.
                        let newer = found.slots.get(&offset).is_none_or(|old| {
                            (slot.attempts, slot.state.rank()) >= (old.attempts, old.state.rank())
                        });
                        if newer {
                            found.slots.insert(offset, slot);
                        }
                    }
                }
            }
            "r" => {
                let topic = parts.next()?;
                let partition = partition_of(parts.next()?)?;
                let offset: u64 = parts.next()?.parse().ok()?;
                let Some(value) = value else {
                    self.redrives.remove(&(topic.to_owned(), partition, offset));
                    return Some(());
                };
                let redrive = decode_redrive(value)?;
                let entry = self
                    .redrives
                    .entry((topic.to_owned(), partition, offset))
                    .or_insert(redrive);
                if redrive == Redrive::Done {
                    *entry = Redrive::Done;
                }
            }
            "p" => {
                let key = (parts.next()?.to_owned(), parts.next()?.to_owned());
                match value {
                    None => {
                        self.policies.remove(&key);
                    }
                    Some(value) => {
                        self.policies.insert(key, decode_policy(value)?);
                    }
                }
            }
            _ => return None,
        }
        Some(())
    }

    fn found(&mut self, group: &str, topic: &str, partition: u32) -> &mut Found {
        self.partitions
            .entry((group.to_owned(), topic.to_owned()))
            .or_default()
            .entry(partition)
            .or_default()
    }
}

/// Redrive records by (topic, dlq partition, dlq offset).
pub type Redrives = HashMap<(String, u32, u64), Redrive>;

impl sluice_storage::replay::StateMachine for Replaying {
    type Error = crate::error::Error;

    fn restore(&mut self, _state: &[u8]) -> crate::Result<()> {
        Err(crate::error::Error::BadMetadata {
            path: super::STATE_TOPIC.into(),
            reason:
                "queue state takes no snapshot (the compacted log is the state), but one was found"
                    .into(),
        })
    }

    fn apply(&mut self, batch: &BatchView<'_>) -> crate::Result<()> {
        for record in batch.records() {
            let applied = record
                .key
                .and_then(|key| self.apply_record(key, record.value));
            if applied.is_none() {
                self.malformed += 1;
                tracing::warn!(
                    offset = record.offset,
                    "skipping a malformed queue state record"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use sluice_storage::format::BatchBuilder;
    use sluice_storage::replay::StateMachine;

    proptest! {
        /// Values read back from `__queue_state` are decoded defensively: any bytes are a
        /// value or `None`, never a panic.
        #[test]
        fn any_value_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = partition_of(&String::from_utf8_lossy(&bytes));
            let _ = decode_policy(&bytes);
            let _ = decode_slot(&bytes);
            let _ = decode_redrive(&bytes);
        }
    }

    fn apply(replaying: &mut Replaying, entries: &[Entry]) {
        let mut builder = BatchBuilder::new();
        for (key, value) in entries {
            builder.push(0, Some(key), value.as_deref(), &[]).unwrap();
        }
        let batch = builder.finish().unwrap();
        replaying
            .apply(&BatchView::new(&batch, usize::MAX).unwrap())
            .unwrap();
    }

    #[test]
    fn records_round_trip_through_replay() {
        let mut queue = PartitionQueue::new(0);
        queue.lease(1000, 3, 500, 3, 10);
        queue.ack(1000, 0, 1).unwrap();
        let leased = queue.slot(1).unwrap().clone();
        let mut nacked = queue.slot(2).unwrap().clone();
        nacked.state = SlotState::DeadLettering { dlq_from: 9 };
        nacked.last_error = Some(Arc::from("boom"));
        let mut replaying = Replaying::default();
        apply(
            &mut replaying,
            &[
                (slot_key("g", "t", 0, 0), Some(slot_value(&leased))),
                (slot_key("g", "t", 0, 1), Some(slot_value(&leased))),
                (slot_key("g", "t", 0, 2), Some(slot_value(&nacked))),
                (cursor_key("g", "t", 0), Some(cursor_value(&queue))),
                (slot_key("g", "t", 0, 0), None),
                (
                    redrive_key("t", 0, 4),
                    Some(redrive_value(Redrive::Intent {
                        target_partition: 1,
                        target_from: 7,
                    })),
                ),
                (b"junk".to_vec(), Some(vec![1])),
                // A damaged partition number past any topic's: skipped, not a huge list.
                (cursor_key("g", "t", u32::MAX), Some(cursor_value(&queue))),
            ],
        );
        assert_eq!(replaying.malformed, 2);
        // An older cursor landing late does not move it back.
        apply(
            &mut replaying,
            &[(
                cursor_key("g", "t", 0),
                Some(cursor_value(&PartitionQueue::new(0))),
            )],
        );
        let (queues, redrives) = replaying.into_queues();
        let restored = &queues[&("g".to_owned(), "t".to_owned())][&0];
        assert_eq!(restored.done_below(), 1);
        assert_eq!(restored.slot(1), Some(&leased));
        assert_eq!(restored.slot(2), Some(&nacked));
        assert_eq!(
            redrives[&("t".to_owned(), 0, 4)],
            Redrive::Intent {
                target_partition: 1,
                target_from: 7
            }
        );
    }

    #[test]
    fn tombstones_forget_deleted_groups_and_redrives() {
        let mut replaying = Replaying::default();
        let queue = PartitionQueue::new(5);
        apply(
            &mut replaying,
            &[
                (cursor_key("g", "t", 0), Some(cursor_value(&queue))),
                (cursor_key("g", "t", 1), Some(cursor_value(&queue))),
                (redrive_key("t", 0, 1), Some(redrive_value(Redrive::Done))),
                (cursor_key("g", "t", 0), None),
                (cursor_key("g", "t", 1), None),
                (slot_key("g", "t", 1, 9), None),
                (redrive_key("t", 0, 1), None),
            ],
        );
        assert_eq!(replaying.malformed, 0);
        let (queues, redrives) = replaying.into_queues();
        assert!(queues.is_empty(), "{queues:?}");
        assert!(redrives.is_empty());
    }

    #[test]
    fn a_lower_attempt_landing_late_does_not_win() {
        let mut replaying = Replaying::default();
        let slot = |attempts, state| Slot {
            attempts,
            state,
            last_error: None,
        };
        apply(
            &mut replaying,
            &[
                (
                    slot_key("g", "t", 0, 0),
                    Some(slot_value(&slot(2, SlotState::Leased { deadline_ms: 5 }))),
                ),
                (
                    slot_key("g", "t", 0, 0),
                    Some(slot_value(&slot(1, SlotState::Waiting { until_ms: 3 }))),
                ),
            ],
        );
        let (queues, _) = replaying.into_queues();
        let restored = &queues[&("g".to_owned(), "t".to_owned())][&0];
        assert_eq!(restored.slot(0).unwrap().attempts, 2);
    }

    #[test]
    fn group_policies_round_trip_and_clear() {
        let policy = RetryPolicy {
            max_attempts: 2,
            backoff_initial_ms: 5,
            backoff_multiplier_milli: 1500,
            backoff_max_ms: 50,
        };
        assert_eq!(decode_policy(&policy_value(&policy)), Some(policy));
        let mut bad = policy_value(&policy);
        bad[1..5].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_policy(&bad), None, "out of bounds");
        let mut replaying = Replaying::default();
        apply(
            &mut replaying,
            &[
                (policy_key("g", "t"), Some(policy_value(&policy))),
                (policy_key("h", "t"), Some(policy_value(&policy))),
                (policy_key("h", "t"), None),
            ],
        );
        assert_eq!(replaying.policies.len(), 1);
        assert_eq!(
            replaying.policies[&("g".to_owned(), "t".to_owned())],
            policy
        );
    }

    #[test]
    fn damaged_values_are_refused() {
        let slot = Slot {
            attempts: 1,
            state: SlotState::Acked,
            last_error: None,
        };
        let value = slot_value(&slot);
        assert!(decode_slot(&value).is_some());
        for len in 0..SLOT_HEADER_LEN {
            assert!(decode_slot(&value[..len]).is_none());
        }
        let mut bad = value.clone();
        bad[1] = 9;
        assert!(decode_slot(&bad).is_none());
        let mut bad = value;
        bad[0] = 2;
        assert!(decode_slot(&bad).is_none());
        assert!(decode_redrive(&[1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }
}
