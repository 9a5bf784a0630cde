//! Committed consumer-group offsets, kept in the internal topic `__consumer_offsets` so the
//! log stores its own metadata (design.md §4).
//!
//! Each commit appends one batch (one record per partition committed) through the partition's
//! write path and is acknowledged once that batch is durable; the latest record per key wins.
//! At start the topic is replayed into memory through the replay hook (`OffsetsState` is the
//! state machine), and fetches answer from memory.
//!
//! ```text
//! key   = group NUL topic NUL partition (decimal)        (UTF-8)
//! value = { u64 offset | metadata (UTF-8) }              (offset little-endian)
//! ```
//!
//! The topic is a compacted topic (`cleanup = compact`): the background compactor keeps the
//! latest record per key in its sealed segments, and drops a deleted group's tombstones once
//! they are older than the topic's `delete_retention_ms`. So the log holds about one record
//! per live key plus the commits since the last pass, and replay is linear in that. Records
//! keep their offsets through compaction, so the newest record of a key is still the one
//! with the highest offset.
//!
//! Concurrency without a lock across appends: each key remembers the log offset of its newest
//! *appended* record (`latest`, set in the pre-append check, under the log's writer lock) apart
//! from its newest *acknowledged* one (`visible`, which fetches answer from). Commits run
//! concurrently and share group commits, and whichever finishes last, the record appended
//! last wins, as it does in the log.

use super::{validate_group, validate_metadata};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::partition::{Origin, Partition};
use crate::topics::{Topic, Topics};
use bytes::Bytes;
use sluice_storage::format::{BatchBuilder, BatchView};
use sluice_storage::replay::StateMachine;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the internal topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Records per batch of tombstones when a group is deleted.
const TOMBSTONE_BATCH_RECORDS: usize = 1000;

/// (group, topic, partition).
type Key = (String, String, u32);

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group will consume.
    pub offset: u64,
    /// Free-form metadata.
    pub metadata: String,
    /// Where the commit's record sits in the internal log: a later record of the same key
    /// replaces an earlier one, whatever order concurrent committers finish in.
    log_offset: u64,
}

/// What is known of one key.
#[derive(Debug, Clone)]
struct Entry {
    /// The newest record appended (acknowledged or not yet).
    latest: Committed,
    /// The newest record acknowledged: what fetches see.
    visible: Option<Committed>,
}

/// Every key's entry; a std mutex held for short sections only, never across an append.
#[derive(Debug, Default)]
struct OffsetsState {
    entries: HashMap<Key, Entry>,
    records: u64,
}

impl OffsetsState {
    /// Notes an appended record as the key's latest (if it is newer).
    fn appended(&mut self, key: Key, commit: Committed) {
        match self.entries.get_mut(&key) {
            Some(entry) if entry.latest.log_offset > commit.log_offset => {}
            Some(entry) => entry.latest = commit,
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        latest: commit,
                        visible: None,
                    },
                );
            }
        }
    }

    /// Notes a batch of records appended from `base_offset` on, one per commit, in order.
    fn appended_from(
        &mut self,
        base_offset: u64,
        commits: impl IntoIterator<Item = (Key, Committed)>,
    ) {
        for (i, (key, commit)) in commits.into_iter().enumerate() {
            let log_offset = base_offset + i as u64;
            self.appended(
                key,
                Committed {
                    log_offset,
                    ..commit
                },
            );
        }
    }

    /// Makes an acknowledged record visible (if it is newer than what is).
    fn acknowledged(&mut self, key: &Key, commit: Committed) {
        if let Some(entry) = self.entries.get_mut(key)
            && entry
                .visible
                .as_ref()
                .is_none_or(|v| v.log_offset < commit.log_offset)
        {
            entry.visible = Some(commit);
        }
    }
}

impl StateMachine for OffsetsState {
    type Error = Error;

    fn restore(&mut self, _state: &[u8]) -> Result<()> {
        // The compacted log holds all of the state: nothing snapshots it.
        Err(Error::BadMetadata {
            path: OFFSETS_TOPIC.into(),
            reason: "committed offsets take no snapshot, but one was found".into(),
        })
    }

    fn apply(&mut self, batch: &BatchView<'_>) -> Result<()> {
        for record in batch.records() {
            // A null value deletes the key (a deleted group).
            if record.value.is_none() {
                if let Some(key) = record.key.and_then(decode_key) {
                    self.entries.remove(&key);
                }
                continue;
            }
            let decoded = record
                .key
                .and_then(decode_key)
                .zip(record.value.and_then(decode_value));
            let Some((key, (offset, metadata))) = decoded else {
                tracing::warn!(offset = record.offset, "skipping malformed offset commit");
                continue;
            };
            let commit = Committed {
                offset,
                metadata,
                log_offset: record.offset,
            };
            self.appended(key.clone(), commit.clone());
            self.acknowledged(&key, commit);
            self.records += 1;
        }
        Ok(())
    }
}

/// The offsets store.
#[derive(Debug)]
pub struct Offsets {
    partition: Arc<Partition>,
    state: Arc<Mutex<OffsetsState>>,
    clock: Clock,
}

fn encode_key(group: &str, topic: &str, partition: u32) -> String {
    format!("{group}\0{topic}\0{partition}")
}

fn decode_key(key: &[u8]) -> Option<Key> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.split('\0');
    let group = parts.next()?;
    let topic = parts.next()?;
    let partition = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then(|| (group.to_owned(), topic.to_owned(), partition))
}

fn encode_value(offset: u64, metadata: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + metadata.len());
    value.extend_from_slice(&offset.to_le_bytes());
    value.extend_from_slice(metadata.as_bytes());
    value
}

fn decode_value(value: &[u8]) -> Option<(u64, String)> {
    let offset = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    Some((offset, String::from_utf8_lossy(&value[8..]).into_owned()))
}

/// One batch of commit records, `(key, offset, metadata)` each.
fn encode_batch<'a>(
    now_ms: i64,
    commits: impl Iterator<Item = (&'a Key, u64, &'a str)>,
) -> Result<Bytes> {
    let mut builder = BatchBuilder::new();
    for ((group, topic, partition), offset, metadata) in commits {
        let key = encode_key(group, topic, *partition);
        builder
            .push(
                now_ms,
                Some(key.as_bytes()),
                Some(&encode_value(offset, metadata)),
                &[],
            )
            .map_err(sluice_storage::Error::from)?;
    }
    Ok(builder
        .finish()
        .map_err(sluice_storage::Error::from)?
        .freeze())
}

impl Offsets {
    /// Opens (creating if needed, with `segment_bytes` segments) the internal topic and
    /// replays it (blocking).
    pub fn open(topics: &Topics, segment_bytes: u64, clock: Clock) -> Result<Self> {
        let topic = super::internal_topic(topics, OFFSETS_TOPIC, segment_bytes)?;
        let partition = Arc::clone(topic.partition(0)?);
        let mut state = OffsetsState::default();
        let replayed = partition.replay(&mut state)?;
        tracing::info!(
            records = state.records,
            batches = replayed.batches,
            keys = state.entries.len(),
            "replayed committed offsets"
        );
        Ok(Self {
            partition,
            state: Arc::new(Mutex::new(state)),
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, OffsetsState> {
        lock(&self.state)
    }

    /// Stores commits of `(partition, offset, metadata)` to `topic` durably, then makes them
    /// visible. Each partition must exist and appear once, and no offset may pass the
    /// partition's high watermark (that would skip records never read).
    pub async fn commit(
        &self,
        group: &str,
        topic: &Topic,
        offsets: Vec<(u32, u64, String)>,
    ) -> Result<()> {
        validate_group(group)?;
        let mut seen = HashSet::with_capacity(offsets.len());
        for (partition, offset, metadata) in &offsets {
            let log = topic.partition(*partition)?;
            if !seen.insert(*partition) {
                return Err(Error::invalid(
                    "offsets",
                    format!("partition {partition} twice"),
                    "each partition may be committed once per request",
                ));
            }
            let latest = log.high_watermark();
            if *offset > latest {
                return Err(Error::Storage(sluice_storage::Error::OffsetOutOfRange {
                    offset: *offset,
                    earliest: log.earliest_offset(),
                    latest,
                }));
            }
            validate_metadata(metadata)?;
        }
        if offsets.is_empty() {
            return Ok(());
        }
        let topic = topic.name.as_str();
        let keys: Vec<Key> = offsets
            .iter()
            .map(|(partition, _, _)| (group.to_owned(), topic.to_owned(), *partition))
            .collect();
        let batch = encode_batch(
            self.clock.now_ms(),
            keys.iter()
                .zip(&offsets)
                .map(|(key, (_, offset, metadata))| (key, *offset, metadata.as_str())),
        )?;
        if batch.len() > self.partition.max_batch_bytes() as usize {
            return Err(Error::invalid(
                "offsets",
                format!("{} partitions, {} bytes", offsets.len(), batch.len()),
                "one commit must fit the internal topic's batch limit; commit fewer partitions or less metadata at once",
            ));
        }
        let commits: Vec<(Key, Committed)> = keys
            .into_iter()
            .zip(offsets)
            .map(|(key, (_, offset, metadata))| {
                let commit = Committed {
                    offset,
                    metadata,
                    log_offset: 0,
                };
                (key, commit)
            })
            .collect();
        let state = Arc::clone(&self.state);
        let pending = commits.clone();
        let (ack, ()) = self
            .partition
            .append_checked(batch, Origin::Broker, move |_, base_offset| {
                lock(&state).appended_from(base_offset, pending);
                Ok(())
            })
            .await?;
        let mut state = self.lock();
        for (i, (key, commit)) in commits.into_iter().enumerate() {
            let log_offset = ack.base_offset + i as u64;
            state.acknowledged(
                &key,
                Committed {
                    log_offset,
                    ..commit
                },
            );
        }
        Ok(())
    }

    /// Groups with committed offsets.
    pub fn groups(&self) -> BTreeSet<String> {
        self.lock()
            .entries
            .iter()
            .filter(|(_, e)| e.visible.is_some())
            .map(|((group, _, _), _)| group.clone())
            .collect()
    }

    /// Every committed offset of `group`: (topic, partition) → offset.
    pub fn committed(&self, group: &str) -> BTreeMap<(String, u32), u64> {
        self.lock()
            .entries
            .iter()
            .filter(|((g, _, _), _)| g == group)
            .filter_map(|((_, topic, partition), e)| {
                e.visible
                    .as_ref()
                    .map(|c| ((topic.clone(), *partition), c.offset))
            })
            .collect()
    }

    /// Deletes every committed offset of `group` (tombstones through the write path); returns
    /// how many. The caller makes sure no member is committing.
    pub async fn delete_group(&self, group: &str) -> Result<usize> {
        let keys: Vec<Key> = self
            .lock()
            .entries
            .keys()
            .filter(|(g, _, _)| g == group)
            .cloned()
            .collect();
        for chunk in keys.chunks(TOMBSTONE_BATCH_RECORDS) {
            let mut builder = BatchBuilder::new();
            for (group, topic, partition) in chunk {
                let key = encode_key(group, topic, *partition);
                builder
                    .push(self.clock.now_ms(), Some(key.as_bytes()), None, &[])
                    .map_err(sluice_storage::Error::from)?;
            }
            let batch = builder
                .finish()
                .map_err(sluice_storage::Error::from)?
                .freeze();
            let state = Arc::clone(&self.state);
            let doomed = chunk.to_vec();
            self.partition
                .append_checked(batch, Origin::Broker, move |_, _| {
                    let mut state = lock(&state);
                    for key in &doomed {
                        state.entries.remove(key);
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(keys.len())
    }

    /// The committed offsets of `partitions` of `topic` (every partition if empty), each
    /// `None` where the group never committed; `NOT_FOUND` for a partition the topic lacks.
    pub fn fetch(
        &self,
        group: &str,
        topic: &Topic,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Option<Committed>)>> {
        validate_group(group)?;
        let all: Vec<u32>;
        let partitions = if partitions.is_empty() {
            all = (0..topic.partitions.len() as u32).collect();
            &all
        } else {
            partitions
        };
        let state = self.lock();
        partitions
            .iter()
            .map(|&partition| {
                topic.partition(partition)?;
                let key = (group.to_owned(), topic.name.clone(), partition);
                let committed = state.entries.get(&key).and_then(|e| e.visible.clone());
                Ok((partition, committed))
            })
            .collect()
    }
}

fn lock(state: &Mutex<OffsetsState>) -> MutexGuard<'_, OffsetsState> {
    // Entries are replaced whole under the lock, so a panic cannot leave one half-written.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip_and_reject_garbage() {
        let key = encode_key("g", "orders", 7);
        assert_eq!(
            decode_key(key.as_bytes()),
            Some(("g".to_owned(), "orders".to_owned(), 7))
        );
        assert_eq!(decode_key(b"g\0orders"), None);
        assert_eq!(decode_key(b"g\0orders\0x"), None);
        assert_eq!(decode_key(b"g\0orders\x001\0extra"), None);
        assert_eq!(decode_key(&[0xff, 0, b'a', 0, b'1']), None);
        assert_eq!(
            decode_value(&encode_value(42, "meta")),
            Some((42, "meta".to_owned()))
        );
        assert_eq!(decode_value(&[1, 2, 3]), None);
    }

    #[test]
    fn a_newer_record_wins_whatever_order_they_are_acknowledged_in() {
        let key: Key = ("g".into(), "t".into(), 0);
        let commit = |offset, log_offset| Committed {
            offset,
            metadata: String::new(),
            log_offset,
        };
        let mut state = OffsetsState::default();
        state.appended(key.clone(), commit(10, 5));
        state.appended(key.clone(), commit(20, 9));
        state.appended(key.clone(), commit(15, 7)); // an older record noted late: ignored
        assert_eq!(state.entries[&key].latest.offset, 20);
        assert_eq!(
            state.entries[&key].visible, None,
            "nothing acknowledged yet"
        );
        state.acknowledged(&key, commit(20, 9));
        state.acknowledged(&key, commit(10, 5));
        assert_eq!(
            state.entries[&key].visible.as_ref().map(|c| c.offset),
            Some(20)
        );
    }
}
