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
//! The topic is kept small by copying forward: [`Offsets::compact`] re-appends the latest
//! commit of every key whose newest record sits in a sealed segment, then deletes those
//! segments whole. So the log holds about one record per live key plus the commits since the
//! last pass, and replay is linear in that.
//!
//! Concurrency without a lock across appends: each key remembers the log offset of its newest
//! *appended* record (`latest`, set in the pre-append check, under the log's writer lock) apart
//! from its newest *acknowledged* one (`visible`, which fetches answer from). Commits run
//! concurrently and share group commits. A compaction copy checks, under the writer lock, that
//! no key in it got a newer record since it looked; if one did (at an offset past the cutoff,
//! so it survives the deletion), the key is left out and the copy retried.

use super::{validate_group, validate_metadata};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::partition::{Origin, Partition};
use crate::topics::{Topic, TopicSettings, Topics};
use bytes::Bytes;
use sluice_storage::Durability;
use sluice_storage::format::{BatchBuilder, BatchView};
use sluice_storage::replay::StateMachine;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the internal topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Records per batch when compaction copies commits forward.
const COMPACT_BATCH_RECORDS: usize = 1000;
/// Times a compaction copy is rebuilt after racing commits before the pass gives up (the
/// next pass tries again).
const COMPACT_RETRIES: usize = 8;

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
        // Offsets copy forward instead of snapshotting, so the log holds all of its state.
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
        let topic = match topics.get(OFFSETS_TOPIC) {
            Ok(topic) => topic,
            Err(_) => {
                let settings = TopicSettings {
                    retention_bytes: None,
                    retention_ms: None,
                    segment_bytes,
                    durability: Durability::Always,
                    max_batch_bytes: segment_bytes.min(1 << 20) as u32,
                    ..TopicSettings::default()
                };
                topics.create(OFFSETS_TOPIC, 1, settings, true)?
            }
        };
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

    /// Copies forward the latest commit of every key whose newest record sits in a sealed
    /// segment, waits for the copies to be durable, then deletes those segments. Returns the
    /// segments deleted; does nothing while the log has a single segment.
    pub async fn compact(&self) -> Result<usize> {
        let bases = self.partition.segment_bases();
        let Some(&cutoff) = bases.last().filter(|_| bases.len() > 1) else {
            return Ok(0);
        };
        let live: Vec<(Key, Committed)> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, entry)| entry.latest.log_offset < cutoff)
            .map(|(key, entry)| (key.clone(), entry.latest.clone()))
            .collect();
        let mut copied = 0;
        for chunk in live.chunks(COMPACT_BATCH_RECORDS) {
            copied += self.copy_forward(chunk.to_vec()).await?;
        }
        let partition = Arc::clone(&self.partition);
        let deleted = crate::error::blocking(move || partition.delete_before(cutoff)).await?;
        tracing::debug!(copied, deleted, "compacted committed offsets");
        Ok(deleted)
    }

    /// Re-appends `chunk` (keys with the latest record each had when compaction looked),
    /// leaving out any key that got a newer record meanwhile. Returns the records copied.
    async fn copy_forward(&self, mut chunk: Vec<(Key, Committed)>) -> Result<usize> {
        for _ in 0..COMPACT_RETRIES {
            if chunk.is_empty() {
                return Ok(0);
            }
            let batch = encode_batch(
                self.clock.now_ms(),
                chunk
                    .iter()
                    .map(|(key, commit)| (key, commit.offset, commit.metadata.as_str())),
            )?;
            let state = Arc::clone(&self.state);
            let looked = chunk.clone();
            let appended = self
                .partition
                .append_checked(batch, Origin::Broker, move |_, base_offset| {
                    let mut state = lock(&state);
                    let raced: Vec<Key> = looked
                        .iter()
                        .filter(|(key, commit)| {
                            state
                                .entries
                                .get(key)
                                .is_none_or(|e| e.latest.log_offset != commit.log_offset)
                        })
                        .map(|(key, _)| key.clone())
                        .collect();
                    if !raced.is_empty() {
                        return Err(Error::Conflict {
                            what: "offset commits raced a compaction copy",
                            keys: raced.len(),
                        });
                    }
                    state.appended_from(base_offset, looked);
                    Ok(())
                })
                .await;
            match appended {
                Ok((ack, ())) => {
                    let mut state = self.lock();
                    for (i, (key, commit)) in chunk.iter().enumerate() {
                        // The copy replaces what fetches see only if it copies that record.
                        let shown = state
                            .entries
                            .get(key)
                            .and_then(|e| e.visible.as_ref())
                            .is_some_and(|v| v.log_offset == commit.log_offset);
                        if shown {
                            let log_offset = ack.base_offset + i as u64;
                            state.acknowledged(
                                key,
                                Committed {
                                    log_offset,
                                    ..commit.clone()
                                },
                            );
                        }
                    }
                    return Ok(chunk.len());
                }
                Err(Error::Conflict { .. }) => {
                    let state = self.lock();
                    chunk.retain(|(key, commit)| {
                        state
                            .entries
                            .get(key)
                            .is_some_and(|e| e.latest.log_offset == commit.log_offset)
                    });
                }
                Err(error) => return Err(error),
            }
        }
        Err(Error::Conflict {
            what: "offset commits kept racing a compaction copy; the next pass retries",
            keys: chunk.len(),
        })
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
        for chunk in keys.chunks(COMPACT_BATCH_RECORDS) {
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
