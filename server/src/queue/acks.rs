//! Acks, nacks, extends and releases: each checks its token's attempt against the current
//! lease (a stale one changes nothing), changes the state under the group's lock, and is
//! answered once its records are durable.

use super::QueueGroup;
use super::record::Entry;
use super::state;
use super::token::Token;
use super::{
    MAX_ACK_TOKENS, MAX_NACK_DELAY_MS, NackOutcome, Queues, change_entries, fenced, unit,
    unknown_partition, validate_visibility,
};
use crate::Broker;
use crate::error::{Error, Result};
use crate::topics::{Topic, Topics};
use std::collections::HashMap;
use std::sync::Arc;

impl Queues {
    /// Acknowledges each token; one result per token, in order. The acks are durable before
    /// this returns.
    pub async fn ack(
        &self,
        topics: &Topics,
        topic: &str,
        group: &str,
        tokens: &[String],
    ) -> Result<Vec<Result<()>>> {
        if tokens.len() > MAX_ACK_TOKENS {
            return Err(Error::invalid(
                "lease_tokens",
                format!("{} tokens", tokens.len()),
                "at most 1000 tokens per Ack",
            ));
        }
        let topic = topics.get(topic)?;
        let qg = self.group(&topic.name, group)?;
        let (results, entries, moved) = self.ack_in_memory(&topic, &qg, tokens);
        if !entries.is_empty() {
            qg.check_present()?;
            self.persist(entries).await?;
        }
        if moved {
            qg.changed.notify_waiters();
        }
        Ok(results)
    }

    /// Acknowledges `tokens` in memory: one result per token, the records that make the
    /// acks durable, and whether a cursor moved (window space freed).
    pub(super) fn ack_in_memory(
        &self,
        topic: &Topic,
        qg: &QueueGroup,
        tokens: &[String],
    ) -> (Vec<Result<()>>, Vec<Entry>, bool) {
        let now = self.clock.now_ms();
        let mut results: Vec<Result<()>> = Vec::with_capacity(tokens.len());
        let mut entries = Vec::new();
        let mut moved = false;
        {
            let mut state = qg.state();
            let mut touched: HashMap<u32, (u64, Vec<u64>)> = HashMap::new();
            for text in tokens {
                let token = match Token::decode(text, &qg.topic, &qg.group) {
                    Ok(token) => token,
                    Err(error) => {
                        results.push(Err(error));
                        continue;
                    }
                };
                let Some(queue) = state.get_mut(token.partition as usize) else {
                    results.push(Err(unknown_partition(topic, token.partition)));
                    continue;
                };
                let before = queue.done_below();
                match queue.ack(now, token.offset, token.attempt) {
                    Ok(_) => {
                        let entry = touched
                            .entry(token.partition)
                            .or_insert((before, Vec::new()));
                        entry.1.push(token.offset);
                        results.push(Ok(()));
                    }
                    Err(stale) => {
                        results.push(Err(fenced(&qg.topic, &qg.group, token.partition, &stale)))
                    }
                }
            }
            for (p, (before, offsets)) in touched {
                let queue = &state[p as usize];
                moved |= queue.done_below() != before;
                change_entries(qg, p, queue, before, &offsets, &mut entries);
            }
        }
        (results, entries, moved)
    }

    /// A failed attempt: retried after `delay_ms` or the backoff, or dead-lettered after the
    /// last attempt (durably in `<topic>.dlq` before this returns).
    pub async fn nack(
        &self,
        broker: &Arc<Broker>,
        topic: &str,
        group: &str,
        token: &str,
        delay_ms: Option<u64>,
        reason: &str,
    ) -> Result<NackOutcome> {
        if let Some(delay) = delay_ms
            && delay > MAX_NACK_DELAY_MS
        {
            return Err(Error::invalid(
                "delay_ms",
                delay,
                "must be at most 86400000 (1 day)",
            ));
        }
        let topic = broker.topics.get(topic)?;
        let qg = self.group(&topic.name, group)?;
        let token = Token::decode(token, &qg.topic, &qg.group)?;
        let policy = qg.policy(&topic);
        let now = self.clock.now_ms();
        let (outcome, entries) = change_one(
            &qg,
            &topic,
            &token,
            |queue| {
                queue.nack(
                    now,
                    token.offset,
                    token.attempt,
                    delay_ms,
                    reason,
                    &policy,
                    unit(),
                )
            },
            // An exhausted job is dead-lettered, which writes its own records.
            |nacked| matches!(nacked, state::Nacked::Retry { .. }),
        )?;
        qg.changed.notify_waiters();
        match outcome {
            state::Nacked::Retry { until_ms } => {
                qg.check_present()?;
                self.persist(entries).await?;
                Ok(NackOutcome::Retry(until_ms))
            }
            state::Nacked::Exhausted(exhausted) => {
                self.dead_letter(broker, &topic, &qg, token.partition, exhausted)
                    .await?;
                Ok(NackOutcome::DeadLettered)
            }
        }
    }

    /// Moves a lease's deadline to now + `visibility_timeout_ms`; returns the new deadline.
    pub async fn extend(
        &self,
        topics: &Topics,
        topic: &str,
        group: &str,
        token: &str,
        visibility_timeout_ms: u64,
    ) -> Result<i64> {
        validate_visibility("visibility_timeout_ms", visibility_timeout_ms)?;
        let topic = topics.get(topic)?;
        let qg = self.group(&topic.name, group)?;
        let token = Token::decode(token, &qg.topic, &qg.group)?;
        let now = self.clock.now_ms();
        let (deadline, entries) = change_one(
            &qg,
            &topic,
            &token,
            |queue| queue.extend(now, token.offset, token.attempt, visibility_timeout_ms),
            |_| true,
        )?;
        qg.check_present()?;
        self.persist(entries).await?;
        Ok(deadline)
    }

    /// Gives a message back without counting the attempt.
    pub async fn release(
        &self,
        topics: &Topics,
        topic: &str,
        group: &str,
        token: &str,
    ) -> Result<()> {
        let topic = topics.get(topic)?;
        let qg = self.group(&topic.name, group)?;
        let token = Token::decode(token, &qg.topic, &qg.group)?;
        let now = self.clock.now_ms();
        let ((), entries) = change_one(
            &qg,
            &topic,
            &token,
            |queue| queue.release(now, token.offset, token.attempt),
            |_| true,
        )?;
        qg.changed.notify_waiters();
        qg.check_present()?;
        self.persist(entries).await
    }
}

/// Applies `change` to the partition queue of the job `token` names, under the group's lock
/// (a stale token is fenced and changes nothing); answers what it did and, if `persist` holds
/// for that, the records of the job's new state (and of the cursor, had it moved) for
/// `__queue_state`.
fn change_one<T>(
    qg: &QueueGroup,
    topic: &Topic,
    token: &Token,
    change: impl FnOnce(&mut state::PartitionQueue) -> std::result::Result<T, state::Stale>,
    persist: impl FnOnce(&T) -> bool,
) -> Result<(T, Vec<Entry>)> {
    let mut groups = qg.state();
    let queue = groups
        .get_mut(token.partition as usize)
        .ok_or_else(|| unknown_partition(topic, token.partition))?;
    let before = queue.done_below();
    let changed =
        change(queue).map_err(|stale| fenced(&qg.topic, &qg.group, token.partition, &stale))?;
    let mut entries = Vec::new();
    if persist(&changed) {
        change_entries(
            qg,
            token.partition,
            queue,
            before,
            &[token.offset],
            &mut entries,
        );
    }
    Ok((changed, entries))
}
