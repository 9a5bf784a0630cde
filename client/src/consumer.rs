//! [`Consumer`]: reads assigned partitions from tracked positions, and commits them for a group.
//!
//! A poll fetches every assigned partition (at most `max_concurrent_fetches` at once): first
//! without waiting, and only if that found nothing, once more as a long poll of `max_wait`
//! that returns as soon as any partition has records. Each fetch answers whole batches from
//! the one holding the asked offset; they are walked with [`Batches`], checked with
//! [`BatchView::with_checksum`] (the broker validated every record on produce, the CRC proves
//! these are those bytes), and records below the asked offset are skipped.
//!
//! Invariants:
//! - A position is the next offset to read; it only moves forward in `poll` (a `seek` moves it
//!   anywhere), to one past the last offset of the last batch a fetch returned.
//! - A poll is all or nothing: if any partition's fetch fails, no position moves and the error
//!   names the partition, so nothing is skipped silently. `OUT_OF_RANGE` (the position is below
//!   what retention kept, or past the high watermark) becomes [`Error::OffsetOutOfRange`] with
//!   the partition's current bounds; `seek` to go on.
//! - Keys, values and header values are slices of the fetched buffer (`Bytes::slice_ref`), not
//!   copies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, FetchRequest, ListOffsetsRequest,
    ListOffsetsResponse, OffsetSpec, PartitionOffset, groups_client::GroupsClient,
    log_client::LogClient,
};
use sluice_storage::format::{Batches, FormatError};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

use crate::config::ConsumerConfig;
use crate::connection::{self, Idempotency, RetryPolicy};
use crate::error::{Error, Result};
use crate::group::{Member, Rebalance};

/// Where a partition's reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// The first offset retained.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    /// This offset.
    Offset(u64),
    /// The first record appended at or after this time (ms since the Unix epoch); the high
    /// watermark if none was.
    Timestamp(i64),
    /// The group's committed offset, or `fallback` if the group never committed one.
    Committed {
        /// Where to start without a committed offset.
        fallback: OffsetReset,
    },
}

/// Where to start when a group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The first offset retained.
    Earliest,
    /// The high watermark.
    Latest,
}

/// One record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: u64,
    /// Create time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key (a slice of the fetched buffer); `None` is null.
    pub key: Option<Bytes>,
    /// The value (a slice of the fetched buffer); `None` is null.
    pub value: Option<Bytes>,
    /// Headers in the order written; values are slices of the fetched buffer.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Reads assigned partitions; one caller at a time (`poll` takes `&mut self`).
///
/// ```no_run
/// # async fn example() -> sluice_client::Result<()> {
/// use sluice_client::{Consumer, ConsumerConfig, OffsetReset, StartFrom};
/// let config = ConsumerConfig::new().broker("127.0.0.1:7070").group("billing");
/// let mut consumer = Consumer::connect(config).await?;
/// let start = StartFrom::Committed { fallback: OffsetReset::Earliest };
/// consumer.assign("orders", 0, start).await?;
/// loop {
///     for record in consumer.poll().await? {
///         println!("{}/{} @{}", record.topic, record.partition, record.offset);
///     }
///     consumer.commit().await?;
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    pub(crate) config: ConsumerConfig,
    log: LogClient<Channel>,
    pub(crate) groups: GroupsClient<Channel>,
    /// Topic → partition → position (the next offset to read).
    positions: BTreeMap<Arc<str>, BTreeMap<u32, u64>>,
    /// Index of the partition the next poll fetches first, so that a poll cut short by
    /// `max_poll_bytes` does not starve the partitions after it.
    cursor: usize,
    /// The group membership, after `subscribe` (group.rs).
    pub(crate) member: Option<Member>,
    /// Told of every assignment change.
    pub(crate) listener: Option<Listener>,
    /// When positions were last auto-committed.
    pub(crate) committed_at: tokio::time::Instant,
}

/// A rebalance listener (a newtype, so the consumer can derive `Debug`).
pub(crate) struct Listener(pub(crate) Box<dyn FnMut(&Rebalance) + Send + Sync>);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// An assigned partition in a poll.
struct Slot {
    /// Position in assignment order.
    index: usize,
    topic: Arc<str>,
    partition: u32,
    offset: u64,
}

/// What one partition's fetch produced.
struct PartitionFetch {
    /// Position of the partition in the poll's order.
    index: usize,
    topic: Arc<str>,
    partition: u32,
    records: Vec<ConsumedRecord>,
    next_position: u64,
    bytes: usize,
}

/// What a fetch task needs, owned so that it can run on its own task.
#[derive(Clone)]
struct Fetcher {
    log: LogClient<Channel>,
    retry: RetryPolicy,
    request_timeout: Duration,
    max_bytes: u32,
}

impl Consumer {
    /// Validates `config` and connects to the broker. Nothing is assigned yet.
    pub async fn connect(config: ConsumerConfig) -> Result<Self> {
        config.validate()?;
        let channel = connection::connect(&config.connection).await?;
        Ok(Self {
            log: connection::log_client(channel.clone(), &config.connection),
            groups: connection::groups_client(channel, &config.connection),
            config,
            positions: BTreeMap::new(),
            cursor: 0,
            member: None,
            listener: None,
            committed_at: tokio::time::Instant::now(),
        })
    }

    /// The config the consumer runs with.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Adds `topic`/`partition` to the assignment (or moves it, if already assigned) at the
    /// offset `start` resolves to, which it returns.
    pub async fn assign(&mut self, topic: &str, partition: u32, start: StartFrom) -> Result<u64> {
        let offset = self.resolve(topic, partition, start).await?;
        self.positions
            .entry(Arc::from(topic))
            .or_default()
            .insert(partition, offset);
        Ok(offset)
    }

    /// Removes a partition from the assignment; whether it was assigned.
    pub fn unassign(&mut self, topic: &str, partition: u32) -> bool {
        let Some(partitions) = self.positions.get_mut(topic) else {
            return false;
        };
        let removed = partitions.remove(&partition).is_some();
        if partitions.is_empty() {
            self.positions.remove(topic);
        }
        removed
    }

    /// The assigned partitions, by topic then partition.
    pub fn assignment(&self) -> Vec<(Arc<str>, u32)> {
        self.positions
            .iter()
            .flat_map(|(topic, partitions)| partitions.keys().map(|&p| (topic.clone(), p)))
            .collect()
    }

    /// The next offset `poll` reads from a partition; `None` if it is not assigned.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.positions.get(topic)?.get(&partition).copied()
    }

    /// Moves an assigned partition's position to where `start` resolves; returns the offset.
    pub async fn seek(&mut self, topic: &str, partition: u32, start: StartFrom) -> Result<u64> {
        if self.position(topic, partition).is_none() {
            return Err(Error::NotAssigned {
                topic: topic.to_owned(),
                partition,
            });
        }
        let offset = self.resolve(topic, partition, start).await?;
        if let Some(position) = self
            .positions
            .get_mut(topic)
            .and_then(|partitions| partitions.get_mut(&partition))
        {
            *position = offset;
        }
        Ok(offset)
    }

    /// Fetches from every assigned partition and returns the records read, advancing
    /// positions past them. Waits up to `max_wait` when there is nothing new; returns an empty
    /// list after that (or at once after `max_wait` when nothing is assigned).
    ///
    /// Cancel safe: positions move only when a poll returns `Ok`, so a poll dropped midway
    /// (say, raced against a timeout) loses nothing; its records are fetched again.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>> {
        if self.member.is_some() {
            self.follow_assignment().await?;
            self.auto_commit().await?;
        }
        let order: Vec<Slot> = self
            .positions
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(&partition, &offset)| (topic, partition, offset))
            })
            .enumerate()
            .map(|(index, (topic, partition, offset))| Slot {
                index,
                topic: topic.clone(),
                partition,
                offset,
            })
            .collect();
        if order.is_empty() {
            // Nothing to read: wait, but wake for a new assignment.
            match &self.member {
                Some(member) => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.max_wait) => {}
                        _ = member.changed() => {}
                    }
                }
                None => tokio::time::sleep(self.config.max_wait).await,
            }
            return Ok(Vec::new());
        }
        let start = self.cursor % order.len();
        let rotated: Vec<&Slot> = order.iter().cycle().skip(start).take(order.len()).collect();
        let fetcher = Fetcher {
            log: self.log.clone(),
            retry: self.config.retry,
            request_timeout: self.config.request_timeout,
            max_bytes: u32::try_from(self.config.max_bytes).unwrap_or(u32::MAX),
        };
        let limit = self.config.max_concurrent_fetches;

        // Round one: every partition, no waiting, until the byte budget is spent.
        let mut results: Vec<PartitionFetch> = Vec::new();
        let mut tasks: JoinSet<Result<PartitionFetch>> = JoinSet::new();
        let mut gathered = 0usize;
        let mut next = 0usize;
        loop {
            while next < rotated.len()
                && tasks.len() < limit
                && gathered < self.config.max_poll_bytes
            {
                let slot = rotated[next];
                let task = fetcher.clone().fetch(
                    slot.index,
                    slot.topic.clone(),
                    slot.partition,
                    slot.offset,
                    0,
                );
                tasks.spawn(task);
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let fetched = joined.map_err(task_failed)??;
            gathered = gathered.saturating_add(fetched.bytes);
            results.push(fetched);
        }
        // The next poll starts with the first partition this one did not reach.
        self.cursor = if next < rotated.len() {
            rotated[next].index
        } else {
            start + 1
        };

        // Round two, only if round one found nothing: a long poll, answered by the first
        // partition that gets records.
        let max_wait_ms = u32::try_from(self.config.max_wait.as_millis()).unwrap_or(u32::MAX);
        if max_wait_ms > 0 && results.iter().all(|r| r.records.is_empty()) {
            let mut tasks: JoinSet<Result<PartitionFetch>> = JoinSet::new();
            for slot in rotated.iter().take(limit) {
                // Round one may have moved the position (past control batches).
                let offset = results
                    .iter()
                    .find(|r| r.index == slot.index)
                    .map_or(slot.offset, |r| r.next_position);
                let task = fetcher.clone().fetch(
                    slot.index,
                    slot.topic.clone(),
                    slot.partition,
                    offset,
                    max_wait_ms,
                );
                tasks.spawn(task);
            }
            while let Some(joined) = tasks.join_next().await {
                let fetched = joined.map_err(task_failed)??;
                let found = !fetched.records.is_empty();
                results.push(fetched);
                if found {
                    while let Some(joined) = tasks.try_join_next() {
                        results.push(joined.map_err(task_failed)??);
                    }
                    break;
                }
            }
            // Dropping `tasks` cancels the long polls still waiting.
        }

        // Every fetch succeeded: apply positions and hand out the records in poll order.
        results.sort_by_key(|r| r.index);
        let mut records = Vec::with_capacity(results.iter().map(|r| r.records.len()).sum());
        for fetched in results {
            if let Some(position) = self
                .positions
                .get_mut(&fetched.topic)
                .and_then(|partitions| partitions.get_mut(&fetched.partition))
            {
                *position = (*position).max(fetched.next_position);
            }
            records.extend(fetched.records);
        }
        Ok(records)
    }

    /// Commits the current position of every assigned partition for the configured group.
    pub async fn commit(&self) -> Result<()> {
        self.group("commit")?;
        for (topic, partitions) in &self.positions {
            let offsets: Vec<(u32, u64)> = partitions.iter().map(|(&p, &o)| (p, o)).collect();
            self.commit_offsets(topic, &offsets).await?;
        }
        Ok(())
    }

    /// Commits `(partition, next offset to read)` pairs of `topic` for the configured group
    /// (as its member, after `subscribe`: a member whose generation moved on since the last
    /// heartbeat retries once with the new one).
    pub async fn commit_offsets(&self, topic: &str, offsets: &[(u32, u64)]) -> Result<()> {
        let group = self.group("commit")?;
        let mut identity = self.member.as_ref().map(Member::identity);
        loop {
            let (member_id, generation) = identity.clone().unwrap_or_default();
            let request = CommitOffsetsRequest {
                group: group.to_owned(),
                topic: topic.to_owned(),
                offsets: offsets
                    .iter()
                    .map(|&(partition, offset)| PartitionOffset {
                        partition,
                        offset,
                        metadata: String::new(),
                    })
                    .collect(),
                member_id,
                generation,
            };
            let timeout = self.config.request_timeout;
            let committed = connection::with_retry(
                &self.config.retry,
                Idempotency::Idempotent,
                timeout,
                || {
                    let mut groups = self.groups.clone();
                    let request = connection::request(request.clone(), timeout);
                    async move { groups.commit_offsets(request).await }
                },
            )
            .await;
            match committed {
                Ok(_) => return Ok(()),
                Err(f) => {
                    let newer = self.member.as_ref().map(Member::identity);
                    if f.status.code() == Code::FailedPrecondition && newer != identity {
                        identity = newer;
                        continue;
                    }
                    return Err(Error::broker(
                        "commit offsets of",
                        topic,
                        None,
                        &f.status,
                        f.attempts,
                    ));
                }
            }
        }
    }

    /// The group's committed offsets of `partitions` of `topic` (every partition if empty), as
    /// `(partition, offset)`; `None` where the group never committed.
    pub async fn committed(
        &self,
        topic: &str,
        partitions: &[u32],
    ) -> Result<Vec<(u32, Option<u64>)>> {
        let group = self.group("committed")?;
        let request = FetchOffsetsRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions: partitions.to_vec(),
        };
        let timeout = self.config.request_timeout;
        let response =
            connection::with_retry(&self.config.retry, Idempotency::Idempotent, timeout, || {
                let mut groups = self.groups.clone();
                let request = connection::request(request.clone(), timeout);
                async move { groups.fetch_offsets(request).await }
            })
            .await
            .map_err(|f| Error::broker("fetch offsets of", topic, None, &f.status, f.attempts))?;
        Ok(response
            .offsets
            .into_iter()
            .map(|committed| (committed.partition, committed.offset))
            .collect())
    }

    pub(crate) fn group(&self, operation: &'static str) -> Result<&str> {
        self.config
            .group
            .as_deref()
            .ok_or(Error::NoGroup { operation })
    }

    /// The offset `start` means for a partition now.
    async fn resolve(&self, topic: &str, partition: u32, start: StartFrom) -> Result<u64> {
        let fetcher = Fetcher {
            log: self.log.clone(),
            retry: self.config.retry,
            request_timeout: self.config.request_timeout,
            max_bytes: 0,
        };
        let list = |spec, timestamp_ms| fetcher.list_offsets(topic, partition, spec, timestamp_ms);
        Ok(match start {
            StartFrom::Offset(offset) => offset,
            StartFrom::Earliest => {
                let answer = list(OffsetSpec::Earliest, 0).await?;
                answer.offset.unwrap_or(answer.earliest_offset)
            }
            StartFrom::Latest => {
                let answer = list(OffsetSpec::Latest, 0).await?;
                answer.offset.unwrap_or(answer.high_watermark)
            }
            StartFrom::Timestamp(timestamp_ms) => {
                let answer = list(OffsetSpec::Timestamp, timestamp_ms).await?;
                answer.offset.unwrap_or(answer.high_watermark)
            }
            StartFrom::Committed { fallback } => {
                let committed = self.committed(topic, &[partition]).await?;
                match committed.iter().find(|(p, _)| *p == partition) {
                    Some(&(_, Some(offset))) => offset,
                    _ => {
                        let spec = match fallback {
                            OffsetReset::Earliest => OffsetSpec::Earliest,
                            OffsetReset::Latest => OffsetSpec::Latest,
                        };
                        let answer = list(spec, 0).await?;
                        answer.offset.unwrap_or(match fallback {
                            OffsetReset::Earliest => answer.earliest_offset,
                            OffsetReset::Latest => answer.high_watermark,
                        })
                    }
                }
            }
        })
    }
}

impl Fetcher {
    /// Fetches `topic`/`partition` from `offset` and decodes what came back.
    async fn fetch(
        self,
        index: usize,
        topic: Arc<str>,
        partition: u32,
        offset: u64,
        max_wait_ms: u32,
    ) -> Result<PartitionFetch> {
        let timeout = self.request_timeout;
        let answer = connection::with_retry(&self.retry, Idempotency::Idempotent, timeout, || {
            let request = FetchRequest {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes: self.max_bytes,
                max_wait_ms,
            };
            let mut log = self.log.clone();
            async move { log.fetch(connection::request(request, timeout)).await }
        })
        .await;
        let response = match answer {
            Ok(response) => response,
            Err(failure) if failure.status.code() == Code::OutOfRange => {
                // Name the offsets: the partition's bounds as they are now.
                let bounds = self
                    .list_offsets(&topic, partition, OffsetSpec::Earliest, 0)
                    .await?;
                return Err(Error::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    earliest: bounds.earliest_offset,
                    high_watermark: bounds.high_watermark,
                });
            }
            Err(failure) => {
                return Err(Error::broker(
                    "fetch from",
                    &topic,
                    Some(partition),
                    &failure.status,
                    failure.attempts,
                ));
            }
        };
        let mut records = Vec::new();
        let next_position =
            decode_fetch(&topic, partition, offset, &response.batches, &mut records)?;
        Ok(PartitionFetch {
            index,
            topic,
            partition,
            records,
            next_position,
            bytes: response.batches.len(),
        })
    }

    async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
        timestamp_ms: i64,
    ) -> Result<ListOffsetsResponse> {
        let timeout = self.request_timeout;
        connection::with_retry(&self.retry, Idempotency::Idempotent, timeout, || {
            let request = ListOffsetsRequest {
                topic: topic.to_owned(),
                partition,
                spec: spec as i32,
                timestamp_ms,
            };
            let mut log = self.log.clone();
            async move {
                log.list_offsets(connection::request(request, timeout))
                    .await
            }
        })
        .await
        .map_err(|f| {
            Error::broker(
                "list offsets of",
                topic,
                Some(partition),
                &f.status,
                f.attempts,
            )
        })
    }
}

fn task_failed(error: tokio::task::JoinError) -> Error {
    Error::Task {
        task: "fetch",
        message: error.to_string(),
    }
}

/// Decodes the batches of a fetch from `offset`: appends the records at or above `offset` to
/// `out` and returns the position after the last batch (`offset` if there was none).
///
/// Each batch is checked with [`BatchView::with_checksum`]; a short, mis-sized or corrupt one
/// fails the whole fetch, naming its byte position.
pub(crate) fn decode_fetch(
    topic: &Arc<str>,
    partition: u32,
    offset: u64,
    batches: &Bytes,
    out: &mut Vec<ConsumedRecord>,
) -> Result<u64> {
    let corrupt = |position: usize, source: FormatError| Error::CorruptBatch {
        topic: topic.to_string(),
        partition,
        offset,
        position,
        source,
    };
    let mut next = offset;
    let mut walk = Batches::new(batches);
    while let Some(framed) = walk.next() {
        let framed = framed.map_err(|e| corrupt(walk.position(), e))?;
        let position = framed.position;
        let view = framed.checked().map_err(|e| corrupt(position, e))?;
        if !view.is_control() {
            let mut records = view.records();
            for record in records.by_ref() {
                if record.offset < next {
                    continue;
                }
                out.push(ConsumedRecord {
                    topic: topic.clone(),
                    partition,
                    offset: record.offset,
                    timestamp_ms: record.timestamp,
                    key: record.key.map(|key| batches.slice_ref(key)),
                    value: record.value.map(|value| batches.slice_ref(value)),
                    headers: record
                        .headers()
                        .map(|h| (h.key.to_owned(), h.value.map(|v| batches.slice_ref(v))))
                        .collect(),
                });
            }
            if let Some(error) = records.error() {
                return Err(corrupt(position, error.clone()));
            }
        }
        next = next.max(view.last_offset().saturating_add(1));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::format::{BatchBuilder, Header, stamp_base_offset};

    /// A batch of `count` records `k{i}`/`v{i}` stamped at `base_offset`.
    fn batch(base_offset: u64, count: u32) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for i in 0..count {
            let key = format!("k{}", base_offset + u64::from(i));
            let value = format!("v{}", base_offset + u64::from(i));
            let headers = [Header {
                key: "h",
                value: Some(b"x"),
            }];
            let pushed = builder.push(
                1_000 + i64::from(i),
                Some(key.as_bytes()),
                Some(value.as_bytes()),
                &headers,
            );
            assert!(pushed.is_ok());
        }
        let mut bytes = match builder.finish() {
            Ok(bytes) => bytes.to_vec(),
            Err(error) => panic!("{error}"),
        };
        stamp_base_offset(&mut bytes, base_offset);
        bytes
    }

    fn decode(offset: u64, bytes: Vec<u8>) -> (Result<u64>, Vec<ConsumedRecord>, Bytes) {
        let topic: Arc<str> = Arc::from("t");
        let bytes = Bytes::from(bytes);
        let mut out = Vec::new();
        let next = decode_fetch(&topic, 2, offset, &bytes, &mut out);
        (next, out, bytes)
    }

    #[test]
    fn decodes_back_to_back_batches_zero_copy() {
        let mut bytes = batch(10, 3);
        bytes.extend(batch(13, 2));
        let (next, records, buffer) = decode(10, bytes);
        assert!(matches!(next, Ok(15)));
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [10, 11, 12, 13, 14]);
        let first = &records[0];
        assert_eq!(&*first.topic, "t");
        assert_eq!(first.partition, 2);
        assert_eq!(first.timestamp_ms, 1_000);
        assert_eq!(first.key.as_deref(), Some(&b"k10"[..]));
        assert_eq!(first.value.as_deref(), Some(&b"v10"[..]));
        assert_eq!(
            first.headers,
            vec![("h".to_owned(), Some(Bytes::from_static(b"x")))]
        );
        // Zero copy: the value points into the fetched buffer.
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let value = first.value.as_ref().map_or(0, |v| v.as_ptr() as usize);
        assert!(range.contains(&value));
    }

    #[test]
    fn skips_records_below_the_asked_offset() {
        let mut bytes = batch(10, 5);
        bytes.extend(batch(15, 1));
        let (next, records, _) = decode(13, bytes);
        assert!(matches!(next, Ok(16)));
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [13, 14, 15]);
    }

    /// `batch(base_offset, count)` with only the records whose offset `keep` selects, as
    /// compaction leaves it in a log.
    fn compacted(base_offset: u64, count: u32, keep: impl Fn(u64) -> bool) -> Vec<u8> {
        let whole = batch(base_offset, count);
        let view = match sluice_storage::format::BatchView::new(&whole, usize::MAX) {
            Ok(view) => view,
            Err(error) => panic!("{error}"),
        };
        let mut out = Vec::new();
        let retained = sluice_storage::format::retain_records(&view, |r| keep(r.offset), &mut out);
        assert!(matches!(
            retained,
            sluice_storage::format::Retained::Some(_)
        ));
        out
    }

    #[test]
    fn reads_compacted_batches_at_their_real_offsets() {
        // Batch 10..=14 kept 11 and 13; batch 15..=16 went whole; batch 17..=19 kept 19.
        let mut bytes = compacted(10, 5, |o| o == 11 || o == 13);
        bytes.extend(compacted(17, 3, |o| o == 19));
        let (next, records, _) = decode(10, bytes.clone());
        assert!(matches!(next, Ok(20)), "{next:?}");
        let read: Vec<(u64, Option<&[u8]>)> = records
            .iter()
            .map(|r| (r.offset, r.value.as_deref()))
            .collect();
        assert_eq!(
            read,
            [
                (11, Some(&b"v11"[..])),
                (13, Some(&b"v13"[..])),
                (19, Some(&b"v19"[..]))
            ]
        );
        // From inside a gap: the records at or after it.
        let (next, records, _) = decode(12, bytes);
        assert!(matches!(next, Ok(20)));
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [13, 19]);
    }

    #[test]
    fn consumer_is_send() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Consumer>();
    }

    #[test]
    fn empty_fetch_keeps_the_position() {
        let (next, records, _) = decode(7, Vec::new());
        assert!(matches!(next, Ok(7)));
        assert!(records.is_empty());
    }

    #[test]
    fn corruption_names_the_batch() {
        // A flipped bit in the second batch's records.
        let mut bytes = batch(0, 2);
        let second = bytes.len();
        bytes.extend(batch(2, 2));
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let (next, _, _) = decode(0, bytes);
        assert!(
            matches!(
                next,
                Err(Error::CorruptBatch { position, source: FormatError::ChecksumMismatch { .. }, .. })
                    if position == second
            ),
            "{next:?}"
        );
        // A truncated tail.
        let mut bytes = batch(0, 2);
        bytes.truncate(bytes.len() - 3);
        let (next, _, _) = decode(0, bytes);
        assert!(matches!(
            next,
            Err(Error::CorruptBatch {
                position: 0,
                source: FormatError::LengthMismatch { .. },
                ..
            })
        ));
        // Fewer bytes than a header.
        let (next, _, _) = decode(0, vec![0; 20]);
        assert!(matches!(
            next,
            Err(Error::CorruptBatch {
                source: FormatError::TooShort { len: 20 },
                ..
            })
        ));
    }
}
