//! Committed consumer-group offsets, kept in the internal topic `__consumer_offsets` so the
//! log stores its own metadata (design.md §4).
//!
//! Each commit appends one batch (one record per partition committed) and is acknowledged
//! once that batch is durable; the latest commit per key wins. The broker replays the topic
//! at start-up into an in-memory map, which answers fetches.
//!
//! ```text
//! key   = group NUL topic NUL partition (decimal)        (UTF-8)
//! value = { u64 offset | metadata (UTF-8) }              (offset little-endian)
//! ```
//!
//! The topic is kept small by copying forward: [`Offsets::compact`] re-appends the latest
//! commit of every key whose record sits in a sealed segment, then deletes those segments
//! whole. So the log holds about one record per live key plus the commits since the last pass,
//! and replay is linear in that. (Storage-level compaction, `cleanup = compact` for any topic,
//! is its own feature; this needs only whole-segment deletion.)

use crate::error::{Error, Result};
use crate::topics::{Fsync, Topic, TopicSettings, Topics};
use sluice_storage::format::{BatchBuilder, BatchPrefix, BatchView};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Name of the internal topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Longest group id.
pub const MAX_GROUP_LEN: usize = 249;
/// Longest commit metadata.
pub const MAX_METADATA_BYTES: usize = 4096;

type Key = (String, String, u32);

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group will consume.
    pub offset: u64,
    /// Free-form metadata.
    pub metadata: String,
    /// Where the commit sits in the internal log: a later commit of the same key replaces an
    /// earlier one whatever order concurrent committers update the map in.
    log_offset: u64,
}

/// Keeps the later of two commits of one key.
fn keep_latest(committed: &mut HashMap<Key, Committed>, key: Key, commit: Committed) {
    match committed.get(&key) {
        Some(existing) if existing.log_offset > commit.log_offset => {}
        _ => {
            committed.insert(key, commit);
        }
    }
}

/// The offsets store.
#[derive(Debug)]
pub struct Offsets {
    topic: Arc<Topic>,
    committed: RwLock<HashMap<Key, Committed>>,
    /// Serializes appends (commits and compaction), so that a record copied forward never
    /// lands after a newer commit of its key.
    writes: Mutex<()>,
}

/// Records per batch when compaction copies commits forward.
const COMPACT_BATCH_RECORDS: usize = 1000;

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

/// Checks a group id: 1–249 bytes, no NUL.
pub fn validate_group(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN || group.contains('\0') {
        return Err(Error::invalid(
            "group",
            group,
            "must be 1 to 249 bytes without NUL",
        ));
    }
    Ok(())
}

impl Offsets {
    /// Opens (creating if needed, with `segment_bytes` segments) the internal topic and
    /// replays it (blocking).
    pub fn open(topics: &Topics, segment_bytes: u64) -> Result<Self> {
        let topic = match topics.get(OFFSETS_TOPIC) {
            Ok(topic) => topic,
            Err(_) => {
                let settings = TopicSettings {
                    retention_bytes: None,
                    retention_ms: None,
                    segment_bytes,
                    fsync: Fsync::Always,
                    fsync_interval_ms: 1000,
                    max_batch_bytes: segment_bytes.min(1 << 20) as u32,
                };
                topics.create(OFFSETS_TOPIC, 1, settings, true)?
            }
        };
        let offsets = Self {
            topic,
            committed: RwLock::new(HashMap::new()),
            writes: Mutex::new(()),
        };
        offsets.replay()?;
        Ok(offsets)
    }

    fn replay(&self) -> Result<()> {
        let log = &self.topic.partition(0)?.log;
        let mut committed = self.committed.write().unwrap_or_else(|p| p.into_inner());
        let mut offset = log.earliest_offset();
        let mut records = 0u64;
        while offset < log.high_watermark() {
            let read = log.read(offset, 1 << 20)?;
            let mut rest = &read.batches[..];
            if rest.is_empty() {
                break;
            }
            while let Some(prefix) = BatchPrefix::parse(rest) {
                let len = prefix.total_len as usize;
                let Some(batch) = rest.get(..len) else { break };
                let view =
                    BatchView::new(batch, usize::MAX).map_err(sluice_storage::Error::from)?;
                for record in view.records() {
                    let (Some(key), Some(value)) = (record.key, record.value) else {
                        continue;
                    };
                    let (Some(key), Some(offset_bytes)) = (decode_key(key), value.get(..8)) else {
                        tracing::warn!(offset = record.offset, "skipping malformed offset commit");
                        continue;
                    };
                    let mut le = [0u8; 8];
                    le.copy_from_slice(offset_bytes);
                    let metadata = String::from_utf8_lossy(&value[8..]).into_owned();
                    keep_latest(
                        &mut committed,
                        key,
                        Committed {
                            offset: u64::from_le_bytes(le),
                            metadata,
                            log_offset: record.offset,
                        },
                    );
                    records += 1;
                }
                offset = view.last_offset() + 1;
                rest = &rest[len..];
            }
        }
        tracing::info!(
            records,
            groups_partitions = committed.len(),
            "replayed committed offsets"
        );
        Ok(())
    }

    /// Stores commits durably, then makes them visible (blocking).
    pub fn commit(&self, group: &str, topic: &str, offsets: &[(u32, u64, String)]) -> Result<()> {
        validate_group(group)?;
        if offsets.is_empty() {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut builder = BatchBuilder::new();
        for (partition, offset, metadata) in offsets {
            if metadata.len() > MAX_METADATA_BYTES {
                return Err(Error::invalid(
                    "metadata",
                    format!("{} bytes", metadata.len()),
                    "must be at most 4096 bytes",
                ));
            }
            let key = encode_key(group, topic, *partition);
            let mut value = Vec::with_capacity(8 + metadata.len());
            value.extend_from_slice(&offset.to_le_bytes());
            value.extend_from_slice(metadata.as_bytes());
            builder
                .push(now, Some(key.as_bytes()), Some(&value), &[])
                .map_err(sluice_storage::Error::from)?;
        }
        let limit = self.topic.settings.max_batch_bytes as usize;
        if builder.len() > limit {
            return Err(Error::invalid(
                "offsets",
                format!("{} partitions, {} bytes", offsets.len(), builder.len()),
                "one commit must fit the internal topic's batch limit; commit fewer partitions or less metadata at once",
            ));
        }
        let mut batch = builder.finish().map_err(sluice_storage::Error::from)?;
        let log = &self.topic.partition(0)?.log;
        let _writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let appended = log.append(&mut batch)?;
        let durable = log.flush()?;
        debug_assert!(durable > appended.last_offset);
        let mut committed = self.committed.write().unwrap_or_else(|p| p.into_inner());
        for (i, (partition, offset, metadata)) in offsets.iter().enumerate() {
            keep_latest(
                &mut committed,
                (group.to_owned(), topic.to_owned(), *partition),
                Committed {
                    offset: *offset,
                    metadata: metadata.clone(),
                    log_offset: appended.base_offset + i as u64,
                },
            );
        }
        Ok(())
    }

    /// Copies forward the latest commit of every key whose record sits in a sealed segment,
    /// makes the copies durable, then deletes those segments (blocking). Returns the segments
    /// deleted; does nothing while the log has a single segment.
    pub fn compact(&self) -> Result<usize> {
        let log = &self.topic.partition(0)?.log;
        let bases = log.segment_bases();
        let Some(&cutoff) = bases.last().filter(|_| bases.len() > 1) else {
            return Ok(0);
        };
        let _writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<(Key, Committed)> = self
            .committed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, commit)| commit.log_offset < cutoff)
            .map(|(key, commit)| (key.clone(), commit.clone()))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for chunk in live.chunks(COMPACT_BATCH_RECORDS) {
            let mut builder = BatchBuilder::new();
            for ((group, topic, partition), commit) in chunk {
                let key = encode_key(group, topic, *partition);
                let mut value = Vec::with_capacity(8 + commit.metadata.len());
                value.extend_from_slice(&commit.offset.to_le_bytes());
                value.extend_from_slice(commit.metadata.as_bytes());
                builder
                    .push(now, Some(key.as_bytes()), Some(&value), &[])
                    .map_err(sluice_storage::Error::from)?;
            }
            let mut batch = builder.finish().map_err(sluice_storage::Error::from)?;
            let appended = log.append(&mut batch)?;
            let mut committed = self.committed.write().unwrap_or_else(|p| p.into_inner());
            for (i, (key, commit)) in chunk.iter().enumerate() {
                keep_latest(
                    &mut committed,
                    key.clone(),
                    Committed {
                        log_offset: appended.base_offset + i as u64,
                        ..commit.clone()
                    },
                );
            }
        }
        log.flush()?;
        let deleted = log.delete_before(cutoff)?;
        tracing::debug!(copied = live.len(), deleted, "compacted committed offsets");
        Ok(deleted)
    }

    /// The committed offset of one partition, if any.
    pub fn fetch(&self, group: &str, topic: &str, partition: u32) -> Option<Committed> {
        self.committed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(group.to_owned(), topic.to_owned(), partition))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        let key = encode_key("g", "orders", 7);
        assert_eq!(
            decode_key(key.as_bytes()),
            Some(("g".to_owned(), "orders".to_owned(), 7))
        );
        assert_eq!(decode_key(b"g\0orders"), None);
        assert_eq!(decode_key(b"g\0orders\0x"), None);
        assert_eq!(decode_key(b"g\0orders\x001\0extra"), None);
        assert_eq!(decode_key(&[0xff, 0, b'a', 0, b'1']), None);
        assert!(validate_group("").is_err());
        assert!(validate_group("a\0b").is_err());
        assert!(validate_group("workers").is_ok());
    }
}
