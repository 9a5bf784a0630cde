//! Dead letters and their redrive, each exactly once across a crash.
//!
//! A dead letter takes two appends to two logs: the message to `<topic>.dlq`, and "done" to
//! the queue state. No lock spans both, so a crash may fall between them. The design:
//! 1. **intent**: the slot is recorded as `DeadLettering { dlq_from }`, `dlq_from` being the
//!    dead-letter partition's end offset before the append (durable before step 2);
//! 2. **append** the message to the dead-letter partition, with headers naming its origin
//!    (topic, partition, offset, group), attempts, last error and time;
//! 3. **done**: the slot is recorded as dead (and the cursor moves).
//!
//! A slot found `DeadLettering` at start is finished by looking for its dead letter in the
//! dead-letter partition from `dlq_from` on (only what was appended since the intent, so a
//! short scan): found, step 3 runs; not found, steps 2 and 3 do. A crash before step 1 left
//! the slot leased or waiting, so it is dead-lettered again from scratch, and nothing was
//! appended yet. So a dead letter is never lost and never written twice. The same holds while
//! the broker runs: a `DeadLettering` slot is never leased, and only one task finishes it.
//!
//! Redrive appends dead letters back to their origin topic the same way: an intent per dead
//! letter (`target_from`: the target partition's end), the append with a
//! [`H_REDRIVEN_FROM`] header, then "done"; an intent found at start is finished by looking
//! for that header from `target_from` on. A dead letter marked done is never redriven again.

use super::record::{self, Redrive};
use super::state::Exhausted;
use super::{Failpoint, OwnedRecord, QueueGroup, Queues, READ_BYTES, read_records};
use crate::Broker;
use crate::error::blocking;
use crate::error::{Error, Result};
use crate::partition::{Origin, Partition};
use crate::topics::{Topic, TopicSettings, Topics};
use bytes::Bytes;
use sluice_storage::format::{BatchBuilder, Batches, Header, Record};
use std::sync::Arc;

/// Suffix of a topic's dead-letter topic.
pub const DLQ_SUFFIX: &str = ".dlq";
/// Dead-letter header: the topic the message came from.
pub const H_ORIGIN_TOPIC: &str = "sluice.origin.topic";
/// Dead-letter header: its partition (decimal).
pub const H_ORIGIN_PARTITION: &str = "sluice.origin.partition";
/// Dead-letter header: its offset (decimal).
pub const H_ORIGIN_OFFSET: &str = "sluice.origin.offset";
/// Dead-letter header: the queue group that gave up on it.
pub const H_ORIGIN_GROUP: &str = "sluice.origin.group";
/// Dead-letter header: deliveries made (decimal).
pub const H_ATTEMPTS: &str = "sluice.dlq.attempts";
/// Dead-letter header: why the last one failed.
pub const H_LAST_ERROR: &str = "sluice.dlq.last_error";
/// Dead-letter header: when it was dead-lettered, ms since the epoch (decimal).
pub const H_DEAD_AT: &str = "sluice.dlq.time_ms";
/// Redriven message header: `DLQ_PARTITION:DLQ_OFFSET` of the dead letter it came from.
pub const H_REDRIVEN_FROM: &str = "sluice.redriven_from";

/// The dead-letter topic's name.
pub fn dlq_name(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// The dead-letter topic of `topic`, created (one partition, default settings) if missing.
async fn dlq_topic(broker: &Arc<Broker>, topic: &str) -> Result<Arc<Topic>> {
    let name = dlq_name(topic);
    if let Ok(found) = broker.topics.get(&name) {
        return Ok(found);
    }
    // Topic creation does file I/O and fsyncs: on the blocking pool.
    let created = {
        let broker = Arc::clone(broker);
        let name = name.clone();
        blocking(move || {
            broker
                .topics
                .create(&name, 1, TopicSettings::default(), false)
        })
        .await
    };
    let topics = &broker.topics;
    match created {
        Ok(topic) => {
            tracing::info!(topic = %name, "created dead-letter topic");
            Ok(topic)
        }
        Err(Error::TopicExists { .. }) => topics.get(&name),
        Err(error) => Err(error),
    }
}

fn header_text<'a>(record: &Record<'a>, key: &str) -> Option<&'a [u8]> {
    record
        .headers()
        .find(|h: &Header<'_>| h.key == key)
        .and_then(|h| h.value)
}

/// The first record of `partition` from `from` on for which `matches` holds: its offset.
async fn find(
    partition: &Partition,
    from: u64,
    matches: impl Fn(&Record<'_>) -> bool,
) -> Result<Option<u64>> {
    let mut offset = from.max(partition.earliest_offset());
    while offset < partition.high_watermark() {
        let read = partition.read(offset, READ_BYTES).await?;
        if read.batches.is_empty() {
            break;
        }
        for framed in Batches::new(&read.batches) {
            let framed = framed.map_err(|e| Error::Storage(e.into()))?;
            let view = framed.stored().map_err(|e| Error::Storage(e.into()))?;
            for record in view.records() {
                if record.offset >= from && matches(&record) {
                    return Ok(Some(record.offset));
                }
            }
            offset = framed.prefix.next_offset();
        }
    }
    Ok(None)
}

/// A message to append: key, value, headers.
type Message = (Option<Bytes>, Bytes, Vec<(String, Bytes)>);

/// Builds a one-batch append of `records`.
fn batch(now_ms: i64, records: &[Message]) -> Result<Bytes> {
    let mut builder = BatchBuilder::new();
    for (key, value, headers) in records {
        let headers: Vec<Header<'_>> = headers
            .iter()
            .map(|(k, v)| Header {
                key: k,
                value: Some(v),
            })
            .collect();
        builder
            .push(now_ms, key.as_deref(), Some(value), &headers)
            .map_err(|e| Error::Task(format!("encoding a dead letter: {e}")))?;
    }
    let batch = builder
        .finish()
        .map_err(|e| Error::Task(format!("encoding a dead letter: {e}")))?;
    Ok(batch.freeze())
}

impl Queues {
    /// Dead-letters `exhausted` (partition `p` of `qg`, already `DeadLettering` in memory):
    /// intent, append, done (see the module doc).
    pub(super) async fn dead_letter(
        &self,
        broker: &Arc<Broker>,
        topic: &Topic,
        qg: &QueueGroup,
        p: u32,
        exhausted: Exhausted,
    ) -> Result<()> {
        qg.check_present()?;
        let dlq = dlq_topic(broker, &topic.name).await?;
        let dlq_partition = Arc::clone(&dlq.partitions[p as usize % dlq.partitions.len()]);
        let dlq_from = dlq_partition.log_end_offset();
        let entry = {
            let mut state = qg.state();
            let queue = &mut state[p as usize];
            queue.dead_lettering(exhausted.offset, dlq_from);
            queue.slot(exhausted.offset).map(|slot| {
                (
                    record::slot_key(&qg.group, &qg.topic, p, exhausted.offset),
                    Some(record::slot_value(slot)),
                )
            })
        };
        self.persist(entry.into_iter().collect()).await?;
        self.append_dead_letter(topic, qg, p, &exhausted, &dlq_partition)
            .await?;
        if self.failpoint == Some(Failpoint::AbortAfterDeadLetterAppend) {
            tracing::error!(
                topic = %topic.name,
                partition = p,
                offset = exhausted.offset,
                "failpoint abort-after-dead-letter-append: aborting"
            );
            std::process::abort();
        }
        self.mark_dead(qg, p, exhausted.offset).await
    }

    async fn append_dead_letter(
        &self,
        topic: &Topic,
        qg: &QueueGroup,
        p: u32,
        exhausted: &Exhausted,
        dlq: &Partition,
    ) -> Result<()> {
        let found = read_records(topic.partition(p)?, &[exhausted.offset]).await?;
        let Some(Some(record)) = found.into_iter().next() else {
            tracing::warn!(topic = %topic.name, partition = p, offset = exhausted.offset, "the message to dead-letter is gone from the log");
            return Ok(());
        };
        let now = self.clock.now_ms();
        let OwnedRecord {
            key,
            value,
            headers,
            ..
        } = record;
        let mut headers: Vec<(String, Bytes)> = headers
            .into_iter()
            .filter(|(k, _)| !k.starts_with("sluice.origin.") && !k.starts_with("sluice.dlq."))
            .collect();
        let text = |s: String| Bytes::from(s.into_bytes());
        headers.push((H_ORIGIN_TOPIC.into(), text(topic.name.clone())));
        headers.push((H_ORIGIN_PARTITION.into(), text(p.to_string())));
        headers.push((H_ORIGIN_OFFSET.into(), text(exhausted.offset.to_string())));
        headers.push((H_ORIGIN_GROUP.into(), text(qg.group.clone())));
        headers.push((H_ATTEMPTS.into(), text(exhausted.attempts.to_string())));
        headers.push((
            H_LAST_ERROR.into(),
            text(exhausted.last_error.as_deref().unwrap_or("").to_owned()),
        ));
        headers.push((H_DEAD_AT.into(), text(now.to_string())));
        dlq.append(batch(now, &[(key, value, headers)])?, Origin::Broker)
            .await?;
        Ok(())
    }

    /// Records that the dead letter of `offset` is durable.
    async fn mark_dead(&self, qg: &QueueGroup, p: u32, offset: u64) -> Result<()> {
        let entries = {
            let mut state = qg.state();
            let queue = &mut state[p as usize];
            let before = queue.done_below();
            queue.dead_lettered_at(offset);
            let mut entries = vec![(
                record::cursor_key(&qg.group, &qg.topic, p),
                Some(record::cursor_value(queue)),
            )];
            super::change_entries(qg, p, queue, before, &[offset], &mut entries);
            entries
        };
        qg.check_present()?;
        self.persist(entries).await?;
        qg.changed.notify_waiters();
        Ok(())
    }

    /// Finishes dead letters and redrives a crash interrupted (at start).
    pub(super) async fn recover(&self, broker: &Arc<Broker>) -> Result<()> {
        let topics = &broker.topics;
        let groups: Vec<Arc<QueueGroup>> = self.groups().values().cloned().collect();
        for qg in groups {
            let Ok(topic) = topics.get(&qg.topic) else {
                continue;
            };
            let pending: Vec<(u32, Vec<_>)> = {
                let state = qg.state();
                state
                    .iter()
                    .enumerate()
                    .map(|(p, q)| (p as u32, q.dead_letters_pending()))
                    .filter(|(_, pending)| !pending.is_empty())
                    .collect()
            };
            for (p, pending) in pending {
                for (offset, attempts, last_error, dlq_from) in pending {
                    let dlq = dlq_topic(broker, &topic.name).await?;
                    let dlq_partition =
                        Arc::clone(&dlq.partitions[p as usize % dlq.partitions.len()]);
                    let (group, name) = (qg.group.as_bytes(), topic.name.as_bytes());
                    let (p_text, o_text) = (p.to_string(), offset.to_string());
                    let found = find(&dlq_partition, dlq_from, |r| {
                        header_text(r, H_ORIGIN_OFFSET) == Some(o_text.as_bytes())
                            && header_text(r, H_ORIGIN_PARTITION) == Some(p_text.as_bytes())
                            && header_text(r, H_ORIGIN_GROUP) == Some(group)
                            && header_text(r, H_ORIGIN_TOPIC) == Some(name)
                    })
                    .await?;
                    if found.is_none() {
                        let exhausted = Exhausted {
                            offset,
                            attempts,
                            last_error,
                        };
                        self.append_dead_letter(&topic, &qg, p, &exhausted, &dlq_partition)
                            .await?;
                    }
                    tracing::info!(
                        topic = %topic.name,
                        group = %qg.group,
                        partition = p,
                        offset,
                        already_appended = found.is_some(),
                        "finished an interrupted dead letter"
                    );
                    self.mark_dead(&qg, p, offset).await?;
                }
            }
        }
        let _one = self.redrive_lock.lock().await;
        let intents: Vec<((String, u32, u64), Redrive)> = self
            .redrives
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, r)| matches!(r, Redrive::Intent { .. }))
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        for ((topic, dlq_p, dlq_offset), intent) in intents {
            let (Ok(origin), Ok(dlq)) = (topics.get(&topic), topics.get(&dlq_name(&topic))) else {
                continue;
            };
            self.finish_redrive(&origin, &dlq, dlq_p, dlq_offset, intent)
                .await?;
        }
        Ok(())
    }

    /// Finishes a redrive intent: appends the dead letter unless the target holds it already.
    async fn finish_redrive(
        &self,
        origin: &Topic,
        dlq: &Topic,
        dlq_p: u32,
        dlq_offset: u64,
        intent: Redrive,
    ) -> Result<()> {
        let Redrive::Intent {
            target_partition,
            target_from,
        } = intent
        else {
            return Ok(());
        };
        let target = origin.partition(target_partition)?;
        let marker = format!("{dlq_p}:{dlq_offset}");
        let found = find(target, target_from, |r| {
            header_text(r, H_REDRIVEN_FROM) == Some(marker.as_bytes())
        })
        .await?;
        if found.is_none() {
            let records = read_records(dlq.partition(dlq_p)?, &[dlq_offset]).await?;
            if let Some(Some(record)) = records.into_iter().next() {
                let message = redriven(record, dlq_p, dlq_offset);
                target
                    .append(batch(self.clock.now_ms(), &[message])?, Origin::Broker)
                    .await?;
            }
        }
        self.redrive_done(&origin.name, &[(dlq_p, dlq_offset)])
            .await
    }

    async fn redrive_done(&self, topic: &str, done: &[(u32, u64)]) -> Result<()> {
        let entries = done
            .iter()
            .map(|&(p, o)| {
                (
                    record::redrive_key(topic, p, o),
                    Some(record::redrive_value(Redrive::Done)),
                )
            })
            .collect();
        self.persist(entries).await?;
        let mut redrives = self.redrives.lock().unwrap_or_else(|p| p.into_inner());
        for &(p, o) in done {
            redrives.insert((topic.to_owned(), p, o), Redrive::Done);
        }
        Ok(())
    }

    /// Appends the dead letters of `<topic>.dlq` at offsets `from..=to` (every partition) back
    /// to `topic`, each at most once ever; returns (redriven now, redriven before).
    pub async fn redrive(
        &self,
        topics: &Topics,
        topic: &str,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64)> {
        if from > to {
            return Err(Error::invalid(
                "from_offset",
                from,
                "must not be above to_offset",
            ));
        }
        let _one = self.redrive_lock.lock().await;
        let origin = topics.get(topic)?;
        let dlq = topics.get(&dlq_name(topic))?;
        let (mut redriven, mut before) = (0, 0);
        for dlq_partition in &dlq.partitions {
            let dlq_p = dlq_partition.id();
            let end = to.saturating_add(1).min(dlq_partition.high_watermark());
            let mut offset = from.max(dlq_partition.earliest_offset());
            while offset < end {
                let read = dlq_partition.read(offset, READ_BYTES).await?;
                if read.batches.is_empty() {
                    break;
                }
                let bytes = read.batches;
                // (dlq offset, target partition, message) of this read, not yet redriven.
                let mut fresh = Vec::new();
                let mut intents = Vec::new();
                for framed in Batches::new(&bytes) {
                    let framed = framed.map_err(|e| Error::Storage(e.into()))?;
                    let view = framed.stored().map_err(|e| Error::Storage(e.into()))?;
                    for record in view.records() {
                        if record.offset < offset || record.offset >= end {
                            continue;
                        }
                        let known = self
                            .redrives
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(&(origin.name.clone(), dlq_p, record.offset))
                            .copied();
                        match known {
                            Some(Redrive::Done) => before += 1,
                            Some(intent) => intents.push((record.offset, intent)),
                            None => {
                                let target = header_text(&record, H_ORIGIN_PARTITION)
                                    .and_then(|v| std::str::from_utf8(v).ok())
                                    .and_then(|v| v.parse::<u32>().ok())
                                    .unwrap_or(0)
                                    % origin.partitions.len() as u32;
                                let owned = OwnedRecord {
                                    key: record.key.map(|k| bytes.slice_ref(k)),
                                    value: record
                                        .value
                                        .map_or_else(Bytes::new, |v| bytes.slice_ref(v)),
                                    headers: record
                                        .headers()
                                        .map(|h: Header<'_>| {
                                            (
                                                h.key.to_owned(),
                                                h.value.map_or_else(Bytes::new, |v| {
                                                    bytes.slice_ref(v)
                                                }),
                                            )
                                        })
                                        .collect(),
                                    timestamp_ms: record.timestamp,
                                };
                                fresh.push((record.offset, target, owned));
                            }
                        }
                    }
                    offset = framed.prefix.next_offset();
                }
                for (dlq_offset, intent) in intents {
                    self.finish_redrive(&origin, &dlq, dlq_p, dlq_offset, intent)
                        .await?;
                    redriven += 1;
                }
                redriven += self.redrive_fresh(&origin, dlq_p, fresh).await?;
            }
        }
        Ok((redriven, before))
    }

    /// Intent, append, done for dead letters of one read, one batch per target partition.
    async fn redrive_fresh(
        &self,
        origin: &Topic,
        dlq_p: u32,
        fresh: Vec<(u64, u32, OwnedRecord)>,
    ) -> Result<u64> {
        let mut count = 0;
        for target_p in 0..origin.partitions.len() as u32 {
            let mine: Vec<&(u64, u32, OwnedRecord)> =
                fresh.iter().filter(|(_, t, _)| *t == target_p).collect();
            if mine.is_empty() {
                continue;
            }
            let target = origin.partition(target_p)?;
            // Bounded batches: a read is at most 1 MiB, a topic takes at least that by default,
            // but smaller limits exist; a chunk of 64 records or half the limit.
            let limit = target.max_batch_bytes() as usize / 2;
            let mut start = 0;
            while start < mine.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < mine.len() && (end == start || (end - start < 64 && bytes < limit)) {
                    let (_, _, r) = mine[end];
                    bytes += r.value.len() + r.key.as_ref().map_or(0, Bytes::len) + 256;
                    end += 1;
                }
                let chunk = &mine[start..end];
                let target_from = target.log_end_offset();
                let intent = Redrive::Intent {
                    target_partition: target_p,
                    target_from,
                };
                self.persist(
                    chunk
                        .iter()
                        .map(|(o, _, _)| {
                            (
                                record::redrive_key(&origin.name, dlq_p, *o),
                                Some(record::redrive_value(intent)),
                            )
                        })
                        .collect(),
                )
                .await?;
                {
                    let mut redrives = self.redrives.lock().unwrap_or_else(|p| p.into_inner());
                    for (o, _, _) in chunk {
                        redrives.insert((origin.name.clone(), dlq_p, *o), intent);
                    }
                }
                let messages: Vec<_> = chunk
                    .iter()
                    .map(|(o, _, r)| redriven(r.clone(), dlq_p, *o))
                    .collect();
                target
                    .append(batch(self.clock.now_ms(), &messages)?, Origin::Broker)
                    .await?;
                let done: Vec<(u32, u64)> = chunk.iter().map(|(o, _, _)| (dlq_p, *o)).collect();
                self.redrive_done(&origin.name, &done).await?;
                count += chunk.len() as u64;
                start = end;
            }
        }
        Ok(count)
    }
}

/// A dead letter as it goes back: its key, value and headers (origin kept), plus
/// [`H_REDRIVEN_FROM`].
fn redriven(
    record: OwnedRecord,
    dlq_p: u32,
    dlq_offset: u64,
) -> (Option<Bytes>, Bytes, Vec<(String, Bytes)>) {
    let mut headers: Vec<(String, Bytes)> = record
        .headers
        .into_iter()
        .filter(|(k, _)| k != H_REDRIVEN_FROM)
        .collect();
    headers.push((
        H_REDRIVEN_FROM.into(),
        Bytes::from(format!("{dlq_p}:{dlq_offset}").into_bytes()),
    ));
    (record.key, record.value, headers)
}
