//! The lease path: long polls across partitions, deliveries taken under the group's lock,
//! their records read from the log and their leases made durable before the answer.

use super::MAX_ACK_TOKENS;
use super::record::Entry;
use super::state;
use super::token::Token;
use super::{
    LeaseRequest, Leased, MAX_LEASE_MESSAGES, QueueGroup, Queues, READ_BYTES, RetryPolicy,
    change_entries, record, unit, validate_visibility,
};
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::topics::{Topic, Topics};
use bytes::Bytes;
use sluice_storage::format::{Batches, Header};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Queues {
    /// Leases up to `max_messages` messages, long-polling up to `max_wait_ms` (at most
    /// `max_wait_cap_ms`) while none is available. `acks` are acknowledged first, as
    /// [`ack`](Self::ack) does (one result per token), and their records go in the same
    /// durable append as the new leases' (as Kafka's ShareFetch carries acknowledgements): a
    /// worker's cycle is one round trip and one append. A Lease that carries acks does not
    /// long-poll: with nothing to lease at once, it answers when the acks are durable.
    pub async fn lease(
        &self,
        topics: &Topics,
        request: &LeaseRequest,
        max_wait_cap_ms: u32,
        acks: &[String],
    ) -> Result<(Vec<Leased>, Vec<Result<()>>)> {
        if !(1..=MAX_LEASE_MESSAGES).contains(&request.max_messages) {
            return Err(Error::invalid(
                "max_messages",
                request.max_messages,
                "must be within 1..=1000",
            ));
        }
        validate_visibility("visibility_timeout_ms", request.visibility_timeout_ms)?;
        if request.max_wait_ms > max_wait_cap_ms {
            return Err(Error::invalid(
                "max_wait_ms",
                request.max_wait_ms,
                "exceeds the broker's max_fetch_wait_ms",
            ));
        }
        if acks.len() > MAX_ACK_TOKENS {
            return Err(Error::invalid(
                "ack_lease_tokens",
                format!("{} tokens", acks.len()),
                "at most 1000 tokens per Lease",
            ));
        }
        let topic = topics.get(&request.topic)?;
        let qg = self.group_or_create(&topic, &request.group).await?;
        let policy = qg.policy(&topic);
        let (acked, mut pending, moved) = self.ack_in_memory(&topic, &qg, acks);
        if moved {
            qg.changed.notify_waiters();
        }
        let wait_until = self.clock.now() + Duration::from_millis(u64::from(request.max_wait_ms));
        loop {
            qg.check_present()?;
            let notified = qg.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deliveries = self.take(&topic, &qg, &policy, request);
            if !deliveries.is_empty() {
                let leased = self
                    .deliver(&topic, &qg, deliveries, std::mem::take(&mut pending))
                    .await?;
                if !leased.is_empty() {
                    return Ok((leased, acked));
                }
                continue;
            }
            if !acks.is_empty() {
                qg.check_present()?;
                // Nothing to lease now: the acks' answers should not wait for the long poll
                // (the caller may be holding work back until they are durable).
                self.persist(std::mem::take(&mut pending)).await?;
                return Ok((Vec::new(), acked));
            }
            let now = self.clock.now();
            if now >= wait_until {
                return Ok((Vec::new(), acked));
            }
            // Wake for: a change (nack, release, freed window), a wait ending or a lease
            // running out, a new record in a partition with window space, or the end.
            let (wake_ms, watch): (Option<i64>, Vec<(Arc<Partition>, u64)>) = {
                let state = qg.state();
                let now_ms = self.clock.now_ms();
                let wake = state.iter().filter_map(|q| q.next_wakeup_ms(now_ms)).min();
                let watch = topic
                    .partitions
                    .iter()
                    .zip(state.iter())
                    .filter(|(_, q)| q.window_len() < self.window_limit)
                    .map(|(p, q)| (Arc::clone(p), q.next()))
                    .collect();
                (wake, watch)
            };
            let mut until = wait_until;
            if let Some(wake_ms) = wake_ms {
                let in_ms = wake_ms.saturating_sub(self.clock.now_ms()).max(0) as u64;
                until = until.min(now + Duration::from_millis(in_ms));
            }
            let mut arrivals = tokio::task::JoinSet::new();
            for (partition, next) in watch {
                // A record at `next` is one to deliver.
                arrivals.spawn(async move { partition.wait_past(next).await });
            }
            let arrival = async {
                if arrivals.is_empty() {
                    std::future::pending::<()>().await;
                }
                match arrivals.join_next().await {
                    Some(Ok(Err(error))) => Err(error),
                    _ => Ok(()),
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
                arrived = arrival => arrived?,
            }
        }
    }

    /// Takes deliveries under the group's lock: expired leases become waits (not dead letters:
    /// the timer task does those), then partitions are served in turn from a rotating start.
    fn take(
        &self,
        topic: &Topic,
        qg: &QueueGroup,
        policy: &RetryPolicy,
        request: &LeaseRequest,
    ) -> Vec<(u32, state::Delivery)> {
        let now = self.clock.now_ms();
        let mut state = qg.state();
        let count = state.len().min(topic.partitions.len());
        if count == 0 {
            return Vec::new();
        }
        let start = qg.next_partition.fetch_add(1, Ordering::Relaxed) % count;
        let mut remaining = request.max_messages as usize;
        let mut deliveries = Vec::new();
        for i in 0..count {
            if remaining == 0 {
                break;
            }
            let p = (start + i) % count;
            let partition = &topic.partitions[p];
            let queue = &mut state[p];
            queue.skip_to(partition.earliest_offset());
            queue.expire_retrying(now, policy, &mut unit);
            let got = queue.lease(
                now,
                remaining,
                request.visibility_timeout_ms,
                partition.high_watermark(),
                self.window_limit,
            );
            remaining -= got.len();
            deliveries.extend(got.into_iter().map(|d| (p as u32, d)));
        }
        if let Some(first) = deliveries.iter().map(|(_, d)| d.deadline_ms).min()
            && self.earliest_deadline_ms.fetch_min(first, Ordering::AcqRel) > first
        {
            self.timers.notify_one();
        }
        deliveries
    }

    /// Reads the records of `deliveries`, persists their leases and answers them. Offsets the
    /// log no longer holds are marked done and skipped.
    async fn deliver(
        &self,
        topic: &Topic,
        qg: &QueueGroup,
        mut deliveries: Vec<(u32, state::Delivery)>,
        acks: Vec<Entry>,
    ) -> Result<Vec<Leased>> {
        deliveries.sort_by_key(|(p, d)| (*p, d.offset));
        let mut leased = Vec::with_capacity(deliveries.len());
        let mut missing = Vec::new();
        let mut i = 0;
        while i < deliveries.len() {
            let p = deliveries[i].0;
            let end = deliveries[i..]
                .iter()
                .position(|(q, _)| *q != p)
                .map_or(deliveries.len(), |n| i + n);
            let partition = topic.partition(p)?;
            let offsets: Vec<u64> = deliveries[i..end].iter().map(|(_, d)| d.offset).collect();
            let records = read_records(partition, &offsets).await?;
            for ((_, delivery), record) in deliveries[i..end].iter().zip(records) {
                match record {
                    None => missing.push((p, delivery.offset)),
                    Some(record) => leased.push(Leased {
                        partition: p,
                        offset: delivery.offset,
                        key: record.key,
                        value: record.value,
                        headers: record.headers,
                        attempt: delivery.attempt,
                        token: Token {
                            partition: p,
                            offset: delivery.offset,
                            attempt: delivery.attempt,
                        }
                        .encode(&qg.topic, &qg.group),
                        timestamp_ms: record.timestamp_ms,
                        deadline_ms: delivery.deadline_ms,
                    }),
                }
            }
            i = end;
        }
        qg.check_present()?;
        let mut entries = acks;
        entries.reserve(leased.len() + missing.len());
        {
            let mut state = qg.state();
            for &(p, offset) in &missing {
                let queue = &mut state[p as usize];
                let before = queue.done_below();
                queue.gone(offset);
                change_entries(qg, p, queue, before, &[], &mut entries);
            }
            for message in &leased {
                if let Some(slot) = state[message.partition as usize].slot(message.offset) {
                    entries.push((
                        record::slot_key(&qg.group, &qg.topic, message.partition, message.offset),
                        Some(record::slot_value(slot)),
                    ));
                }
            }
        }
        self.persist(entries).await?;
        Ok(leased)
    }
}

/// A record read back for a delivery, its bytes slices of the read.
#[derive(Debug, Clone)]
pub(super) struct OwnedRecord {
    pub(super) key: Option<Bytes>,
    pub(super) value: Bytes,
    pub(super) headers: Vec<(String, Bytes)>,
    pub(super) timestamp_ms: i64,
}

/// The records at `offsets` (sorted, ascending) of `partition`; `None` where the log holds
/// none (compacted away, or below its earliest offset).
pub(super) async fn read_records(
    partition: &Partition,
    offsets: &[u64],
) -> Result<Vec<Option<OwnedRecord>>> {
    let mut found: Vec<Option<OwnedRecord>> = vec![None; offsets.len()];
    let mut i = 0;
    let earliest = partition.earliest_offset();
    while i < offsets.len() && offsets[i] < earliest {
        i += 1;
    }
    while i < offsets.len() {
        if offsets[i] >= partition.high_watermark() {
            break;
        }
        let read = match partition.read(offsets[i], READ_BYTES).await {
            Ok(read) => read,
            Err(Error::Storage(sluice_storage::Error::OffsetOutOfRange { .. })) => {
                i += 1;
                continue;
            }
            Err(error) => return Err(error),
        };
        let bytes = read.batches;
        if bytes.is_empty() {
            break;
        }
        let mut last_next = offsets[i];
        for framed in Batches::new(&bytes) {
            let framed = framed.map_err(|e| Error::Storage(e.into()))?;
            let view = framed.stored().map_err(|e| Error::Storage(e.into()))?;
            for record in view.records() {
                while i < offsets.len() && offsets[i] < record.offset {
                    i += 1;
                }
                if i < offsets.len() && offsets[i] == record.offset {
                    found[i] = Some(OwnedRecord {
                        key: record.key.map(|k| bytes.slice_ref(k)),
                        value: record.value.map_or_else(Bytes::new, |v| bytes.slice_ref(v)),
                        headers: record
                            .headers()
                            .map(|h: Header<'_>| {
                                (
                                    h.key.to_owned(),
                                    h.value.map_or_else(Bytes::new, |v| bytes.slice_ref(v)),
                                )
                            })
                            .collect(),
                        timestamp_ms: record.timestamp,
                    });
                    i += 1;
                }
            }
            last_next = framed.prefix.next_offset();
        }
        // Offsets in gaps of what was read are gone; the next read starts at the first
        // offset still wanted (each read holds it, or a later batch, so `i` always moves).
        while i < offsets.len() && offsets[i] < last_next {
            i += 1;
        }
    }
    Ok(found)
}
