//! The queue state of one (partition, queue group), as a pure state machine (design.md §4,
//! "queue mode, how"): it takes `now` (broker wall-clock ms) and inputs, and returns what
//! happened; it reads no clock, does no I/O and holds no lock.
//!
//! ```text
//!   offsets:  0 .. done_below | done_below .. next | next .. high watermark
//!             all done        | the window (slots) | never delivered
//! ```
//!
//! Invariants:
//! - every offset below `done_below` is done (acknowledged, dead-lettered, or gone from the
//!   log); `done_below` only grows;
//! - the window holds exactly one slot per offset in `done_below..next` (`slots[i]` is offset
//!   `done_below + i`), and its first slot is never done (the window is trimmed at once);
//! - the window holds at most `window_limit` slots (the caller's bound, like Kafka share
//!   groups' record-lock limit): past it nothing new is delivered until the oldest is done, so
//!   memory stays bounded under any backlog;
//! - a slot's `attempts` counts deliveries; a lease is current only while its slot is
//!   `Leased` with the token's attempt and a deadline after `now`. Anything else is stale:
//!   the caller gets [`Stale`] naming the current attempt, and nothing changes.
//!
//! A lease that runs out counts as a failed attempt: the slot waits for its backoff (from the
//! deadline) or, after the last attempt, must be dead-lettered. Expiry is computed when a slot
//! is looked at ([`PartitionQueue::lease`], [`PartitionQueue::expired`]), so it needs no timer
//! to be right, only one to be prompt.

use std::collections::VecDeque;
use std::sync::Arc;

/// Farthest a replayed slot may lie beyond its cursor (the largest window the config allows).
const MAX_RESTORED_SPAN: u64 = 1_000_000;

/// Longest last-error text kept per slot, bytes.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Retries of a topic (or group): how many deliveries, and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries before a message is dead-lettered. 1..=1000.
    pub max_attempts: u32,
    /// Backoff cap before the second delivery, ms.
    pub backoff_initial_ms: u64,
    /// Growth of the cap per attempt, thousandths (2000 = ×2).
    pub backoff_multiplier_milli: u32,
    /// Largest cap, ms.
    pub backoff_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_initial_ms: 1000,
            backoff_multiplier_milli: 2000,
            backoff_max_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The backoff cap after failed attempt `attempt` (1-based): `initial × multiplier^(attempt
    /// − 1)`, at most `max`.
    pub fn cap_ms(&self, attempt: u32) -> u64 {
        let mut cap = self.backoff_initial_ms as f64;
        let multiplier = f64::from(self.backoff_multiplier_milli) / 1000.0;
        for _ in 1..attempt.min(200) {
            cap *= multiplier;
            if cap >= self.backoff_max_ms as f64 {
                break;
            }
        }
        (cap as u64).min(self.backoff_max_ms)
    }

    /// Full jitter: a delay uniformly in `0..=cap_ms(attempt)`, `unit` in `[0, 1)` being the
    /// caller's random draw.
    pub fn backoff_ms(&self, attempt: u32, unit: f64) -> u64 {
        let cap = self.cap_ms(attempt);
        ((cap as f64 + 1.0) * unit.clamp(0.0, 1.0))
            .floor()
            .min(cap as f64) as u64
    }

    /// Why the policy is out of bounds, naming the field, if it is.
    pub fn problem(&self) -> Option<(&'static str, String, &'static str)> {
        if !(1..=1000).contains(&self.max_attempts) {
            return Some((
                "max_attempts",
                self.max_attempts.to_string(),
                "must be within 1..=1000",
            ));
        }
        if !(1..=86_400_000).contains(&self.backoff_initial_ms) {
            return Some((
                "backoff_initial_ms",
                self.backoff_initial_ms.to_string(),
                "must be within 1..=86400000 (1 day)",
            ));
        }
        if !(1000..=100_000).contains(&self.backoff_multiplier_milli) {
            return Some((
                "backoff_multiplier",
                format!("{}", f64::from(self.backoff_multiplier_milli) / 1000.0),
                "must be within 1.0..=100.0",
            ));
        }
        if !(self.backoff_initial_ms..=86_400_000).contains(&self.backoff_max_ms) {
            return Some((
                "backoff_max_ms",
                self.backoff_max_ms.to_string(),
                "must be at least backoff_initial_ms and at most 86400000 (1 day)",
            ));
        }
        None
    }
}

/// Where a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Delivered as attempt `attempts`, leased until `deadline_ms`.
    Leased {
        /// When the lease runs out.
        deadline_ms: i64,
    },
    /// Available again from `until_ms` (after a nack, a release or an expired lease).
    Waiting {
        /// When it may be delivered again.
        until_ms: i64,
    },
    /// Acknowledged: done.
    Acked,
    /// Out of attempts: being appended to the dead-letter topic, whose end offset was
    /// `dlq_from` before the append (so recovery looks for it there and after).
    DeadLettering {
        /// The dead-letter partition's end offset before the append.
        dlq_from: u64,
    },
    /// In the dead-letter topic: done.
    Dead,
}

impl SlotState {
    /// Done: acknowledged or dead-lettered.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Acked | Self::Dead)
    }

    /// Order of precedence between records of the same attempt, so a replay that meets them
    /// out of order (concurrent appends) keeps the later state.
    pub fn rank(self) -> u8 {
        match self {
            Self::Leased { .. } => 0,
            Self::Waiting { .. } => 1,
            Self::DeadLettering { .. } => 2,
            Self::Acked | Self::Dead => 3,
        }
    }
}

/// One offset in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Deliveries so far.
    pub attempts: u32,
    /// Where it stands.
    pub state: SlotState,
    /// Why its last attempt failed, if one did.
    pub last_error: Option<Arc<str>>,
}

impl Slot {
    fn fresh() -> Self {
        Self {
            attempts: 0,
            state: SlotState::Waiting { until_ms: i64::MIN },
            last_error: None,
        }
    }
}

/// A lease refused because it is not the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The offset.
    pub offset: u64,
    /// The token's attempt.
    pub attempt: u32,
    /// What the slot is now: its current attempt and state, or done.
    pub current: Current,
}

/// What a stale token's message is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current {
    /// Done (acknowledged or dead-lettered).
    Done,
    /// Never delivered at that attempt (a forged or future token).
    NotDelivered,
    /// At attempt `attempts`, leased or waiting.
    Attempt {
        /// The current attempt.
        attempts: u32,
        /// Whether that attempt is leased now.
        leased: bool,
    },
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (offset, attempt) = (self.offset, self.attempt);
        match self.current {
            Current::Done => write!(
                f,
                "lease of offset {offset} attempt {attempt} is over: the message is done"
            ),
            Current::NotDelivered => write!(
                f,
                "offset {offset} was never delivered as attempt {attempt}"
            ),
            Current::Attempt { attempts, leased } if attempts == attempt => write!(
                f,
                "lease of offset {offset} attempt {attempt} expired; it is the current attempt, {}",
                if leased {
                    "leased again"
                } else {
                    "waiting for redelivery"
                }
            ),
            Current::Attempt { attempts, leased } => write!(
                f,
                "lease of offset {offset} attempt {attempt} expired; the current attempt is {attempts} ({})",
                if leased {
                    "leased"
                } else {
                    "waiting for redelivery"
                }
            ),
        }
    }
}

/// A message handed out by [`PartitionQueue::lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Its offset.
    pub offset: u64,
    /// Its attempt (1 on the first delivery).
    pub attempt: u32,
    /// When the lease runs out.
    pub deadline_ms: i64,
}

/// A message out of attempts, to be dead-lettered by the caller (it is now `DeadLettering`
/// once the caller sets `dlq_from` with [`PartitionQueue::dead_lettering`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// Its offset.
    pub offset: u64,
    /// Deliveries made.
    pub attempts: u32,
    /// Why the last one failed.
    pub last_error: Option<Arc<str>>,
}

/// What a nack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nacked {
    /// Available again at `until_ms`.
    Retry {
        /// When.
        until_ms: i64,
    },
    /// That was the last attempt.
    Exhausted(Exhausted),
}

/// Counts of a partition's queue, for `describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Available now in the window (never delivered beyond it are added by the caller).
    pub ready: u64,
    /// Waiting for a backoff or delay.
    pub delayed: u64,
    /// Leased now.
    pub in_flight: u64,
    /// Done within the window.
    pub done: u64,
    /// Being dead-lettered.
    pub dead_lettering: u64,
}

/// The queue state of one partition for one group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionQueue {
    /// Every offset below is done.
    done_below: u64,
    /// One slot per offset from `done_below`.
    slots: VecDeque<Slot>,
    /// Messages dead-lettered, ever.
    dead_lettered: u64,
}

impl PartitionQueue {
    /// A queue with everything below `done_below` done.
    pub fn new(done_below: u64) -> Self {
        Self {
            done_below,
            slots: VecDeque::new(),
            dead_lettered: 0,
        }
    }

    /// Rebuilt from replayed parts: the cursor, the dead-letter count and the slots found
    /// (offsets below the cursor are dropped; offsets missing between are fresh).
    pub fn restored(
        done_below: u64,
        dead_lettered: u64,
        slots: impl IntoIterator<Item = (u64, Slot)>,
    ) -> Self {
        let mut queue = Self {
            done_below,
            slots: VecDeque::new(),
            dead_lettered,
        };
        for (offset, slot) in slots {
            let Some(index) = offset.checked_sub(done_below) else {
                continue;
            };
            // Slots are written only inside a window; one far beyond any window is damage
            // and must not make the window allocate without bound.
            if index > MAX_RESTORED_SPAN {
                tracing::warn!(
                    done_below,
                    offset,
                    "skipping a queue slot far beyond its cursor"
                );
                continue;
            }
            let index = index as usize;
            while queue.slots.len() <= index {
                queue.slots.push_back(Slot::fresh());
            }
            queue.slots[index] = slot;
        }
        queue.trim();
        queue
    }

    /// Every offset below is done.
    pub fn done_below(&self) -> u64 {
        self.done_below
    }

    /// Slots in the window.
    pub fn window_len(&self) -> usize {
        self.slots.len()
    }

    /// One past the last offset ever delivered.
    pub fn next(&self) -> u64 {
        self.done_below + self.slots.len() as u64
    }

    /// Messages dead-lettered, ever.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered
    }

    /// The slot of `offset`, if it is in the window.
    pub fn slot(&self, offset: u64) -> Option<&Slot> {
        let index = offset.checked_sub(self.done_below)?;
        self.slots.get(usize::try_from(index).ok()?)
    }

    fn slot_mut(&mut self, offset: u64) -> Option<&mut Slot> {
        let index = offset.checked_sub(self.done_below)?;
        self.slots.get_mut(usize::try_from(index).ok()?)
    }

    /// The window's slots with their offsets.
    pub fn slots(&self) -> impl Iterator<Item = (u64, &Slot)> {
        (self.done_below..).zip(self.slots.iter())
    }

    /// Turns leases that ran out by `now_ms` into waits (or exhaustion): `unit` draws jitter.
    /// Returns the messages now out of attempts, marked `DeadLettering { dlq_from: 0 }` until
    /// the caller sets where their dead letter goes.
    pub fn expire(
        &mut self,
        now_ms: i64,
        policy: &RetryPolicy,
        unit: &mut impl FnMut() -> f64,
    ) -> Vec<Exhausted> {
        self.expire_with(now_ms, policy, unit, true)
    }

    /// [`expire`](Self::expire) for leases with attempts left only: a lease that ran out on
    /// its last attempt stays as it is, for the one who dead-letters (the timer task).
    pub fn expire_retrying(
        &mut self,
        now_ms: i64,
        policy: &RetryPolicy,
        unit: &mut impl FnMut() -> f64,
    ) {
        self.expire_with(now_ms, policy, unit, false);
    }

    fn expire_with(
        &mut self,
        now_ms: i64,
        policy: &RetryPolicy,
        unit: &mut impl FnMut() -> f64,
        exhaust: bool,
    ) -> Vec<Exhausted> {
        let mut exhausted = Vec::new();
        let base = self.done_below;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let SlotState::Leased { deadline_ms } = slot.state else {
                continue;
            };
            if deadline_ms > now_ms || (!exhaust && slot.attempts >= policy.max_attempts) {
                continue;
            }
            slot.last_error = Some(Arc::from("lease expired"));
            if slot.attempts >= policy.max_attempts {
                slot.state = SlotState::DeadLettering { dlq_from: 0 };
                exhausted.push(Exhausted {
                    offset: base + i as u64,
                    attempts: slot.attempts,
                    last_error: slot.last_error.clone(),
                });
            } else {
                let delay = policy.backoff_ms(slot.attempts, unit());
                slot.state = SlotState::Waiting {
                    until_ms: deadline_ms.saturating_add(delay as i64),
                };
            }
        }
        exhausted
    }

    /// Leases up to `max` available messages at `now_ms` for `visibility_ms`: first those due
    /// for redelivery (oldest offset first), then never-delivered ones below `end` (the
    /// partition's high watermark) while the window holds fewer than `window_limit` slots.
    /// Call [`expire`](Self::expire) first.
    pub fn lease(
        &mut self,
        now_ms: i64,
        max: usize,
        visibility_ms: u64,
        end: u64,
        window_limit: usize,
    ) -> Vec<Delivery> {
        let deadline_ms = now_ms.saturating_add(visibility_ms as i64);
        let mut leased = Vec::new();
        let base = self.done_below;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if leased.len() >= max {
                return leased;
            }
            if let SlotState::Waiting { until_ms } = slot.state
                && until_ms <= now_ms
            {
                slot.attempts += 1;
                slot.state = SlotState::Leased { deadline_ms };
                leased.push(Delivery {
                    offset: base + i as u64,
                    attempt: slot.attempts,
                    deadline_ms,
                });
            }
        }
        while leased.len() < max && self.next() < end && self.slots.len() < window_limit {
            let offset = self.next();
            self.slots.push_back(Slot {
                attempts: 1,
                state: SlotState::Leased { deadline_ms },
                last_error: None,
            });
            leased.push(Delivery {
                offset,
                attempt: 1,
                deadline_ms,
            });
        }
        leased
    }

    /// Checks that `attempt` of `offset` is leased now; the slot if so.
    fn current(&mut self, now_ms: i64, offset: u64, attempt: u32) -> Result<&mut Slot, Stale> {
        let stale = |current| Stale {
            offset,
            attempt,
            current,
        };
        if offset < self.done_below {
            return Err(stale(Current::Done));
        }
        let slot = self
            .slot_mut(offset)
            .ok_or_else(|| stale(Current::NotDelivered))?;
        match slot.state {
            SlotState::Leased { deadline_ms }
                if slot.attempts == attempt && deadline_ms > now_ms =>
            {
                Ok(slot)
            }
            state if state.is_done() || matches!(state, SlotState::DeadLettering { .. }) => {
                Err(stale(Current::Done))
            }
            _ if attempt > slot.attempts || attempt == 0 => Err(stale(Current::NotDelivered)),
            SlotState::Leased { deadline_ms } => Err(stale(Current::Attempt {
                attempts: slot.attempts,
                leased: deadline_ms > now_ms,
            })),
            _ => Err(stale(Current::Attempt {
                attempts: slot.attempts,
                leased: false,
            })),
        }
    }

    /// Acknowledges `attempt` of `offset`. Returns whether `done_below` moved (the caller
    /// then records the new cursor and drops the records of the offsets it passed).
    pub fn ack(&mut self, now_ms: i64, offset: u64, attempt: u32) -> Result<bool, Stale> {
        self.current(now_ms, offset, attempt)?.state = SlotState::Acked;
        Ok(self.trim())
    }

    /// A failed attempt: waits `delay_ms` (or the policy's backoff, drawing `unit`) or, after
    /// the last attempt, is exhausted (now `DeadLettering`).
    #[allow(clippy::too_many_arguments)]
    pub fn nack(
        &mut self,
        now_ms: i64,
        offset: u64,
        attempt: u32,
        delay_ms: Option<u64>,
        reason: &str,
        policy: &RetryPolicy,
        unit: f64,
    ) -> Result<Nacked, Stale> {
        let slot = self.current(now_ms, offset, attempt)?;
        slot.last_error = Some(Arc::from(truncate(reason, MAX_ERROR_BYTES)));
        if slot.attempts >= policy.max_attempts {
            slot.state = SlotState::DeadLettering { dlq_from: 0 };
            return Ok(Nacked::Exhausted(Exhausted {
                offset,
                attempts: slot.attempts,
                last_error: slot.last_error.clone(),
            }));
        }
        let delay = delay_ms.unwrap_or_else(|| policy.backoff_ms(slot.attempts, unit));
        let until_ms = now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
        slot.state = SlotState::Waiting { until_ms };
        Ok(Nacked::Retry { until_ms })
    }

    /// Moves the lease's deadline to `now_ms + visibility_ms`; returns it.
    pub fn extend(
        &mut self,
        now_ms: i64,
        offset: u64,
        attempt: u32,
        visibility_ms: u64,
    ) -> Result<i64, Stale> {
        let slot = self.current(now_ms, offset, attempt)?;
        let deadline_ms = now_ms.saturating_add(visibility_ms as i64);
        slot.state = SlotState::Leased { deadline_ms };
        Ok(deadline_ms)
    }

    /// Gives the message back without counting the attempt: available at once.
    pub fn release(&mut self, now_ms: i64, offset: u64, attempt: u32) -> Result<(), Stale> {
        let slot = self.current(now_ms, offset, attempt)?;
        slot.attempts -= 1;
        slot.state = SlotState::Waiting { until_ms: now_ms };
        Ok(())
    }

    /// Records where the dead letter of `offset` goes (it must be `DeadLettering`).
    pub fn dead_lettering(&mut self, offset: u64, dlq_from: u64) {
        if let Some(slot) = self.slot_mut(offset)
            && let SlotState::DeadLettering { .. } = slot.state
        {
            slot.state = SlotState::DeadLettering { dlq_from };
        }
    }

    /// The dead letter of `offset` is durable: the message is done. Returns whether
    /// `done_below` moved.
    pub fn dead_lettered_at(&mut self, offset: u64) -> bool {
        let Some(slot) = self.slot_mut(offset) else {
            return false;
        };
        if slot.state == SlotState::Dead {
            return false;
        }
        slot.state = SlotState::Dead;
        self.dead_lettered += 1;
        self.trim()
    }

    /// Marks `offset` done because the log no longer holds it (compacted or deleted by
    /// retention). Returns whether `done_below` moved.
    pub fn gone(&mut self, offset: u64) -> bool {
        if let Some(slot) = self.slot_mut(offset) {
            slot.state = SlotState::Acked;
        }
        self.trim()
    }

    /// Skips to `earliest` when retention deleted offsets never delivered (only while the
    /// window is empty: slots are never dropped unseen). Returns whether it moved.
    pub fn skip_to(&mut self, earliest: u64) -> bool {
        if self.slots.is_empty() && earliest > self.done_below {
            self.done_below = earliest;
            return true;
        }
        false
    }

    /// Drops done slots from the window's front; whether `done_below` moved.
    fn trim(&mut self) -> bool {
        let before = self.done_below;
        while self.slots.front().is_some_and(|s| s.state.is_done()) {
            self.slots.pop_front();
            self.done_below += 1;
        }
        self.done_below != before
    }

    /// The earliest time after `now_ms` something changes by itself: a lease deadline or a
    /// wait ending.
    pub fn next_wakeup_ms(&self, now_ms: i64) -> Option<i64> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Leased { deadline_ms } => Some(deadline_ms),
                SlotState::Waiting { until_ms } => Some(until_ms),
                _ => None,
            })
            .filter(|&at| at > now_ms)
            .min()
    }

    /// Whether a lease at `now_ms` would find something, given the partition's end.
    pub fn has_ready(&self, now_ms: i64, end: u64, window_limit: usize) -> bool {
        (self.next() < end && self.slots.len() < window_limit)
            || self.slots.iter().any(|s| match s.state {
                SlotState::Waiting { until_ms } => until_ms <= now_ms,
                SlotState::Leased { deadline_ms } => deadline_ms <= now_ms,
                _ => false,
            })
    }

    /// Slots in `DeadLettering`, for recovery: `(offset, attempts, last error, dlq_from)`.
    pub fn dead_letters_pending(&self) -> Vec<(u64, u32, Option<Arc<str>>, u64)> {
        self.slots()
            .filter_map(|(offset, s)| match s.state {
                SlotState::DeadLettering { dlq_from } => {
                    Some((offset, s.attempts, s.last_error.clone(), dlq_from))
                }
                _ => None,
            })
            .collect()
    }

    /// The window's counts at `now_ms`.
    pub fn counts(&self, now_ms: i64) -> Counts {
        let mut counts = Counts::default();
        for slot in &self.slots {
            match slot.state {
                SlotState::Leased { deadline_ms } if deadline_ms > now_ms => counts.in_flight += 1,
                SlotState::Leased { .. } => counts.ready += 1,
                SlotState::Waiting { until_ms } if until_ms <= now_ms => counts.ready += 1,
                SlotState::Waiting { .. } => counts.delayed += 1,
                SlotState::Acked | SlotState::Dead => counts.done += 1,
                SlotState::DeadLettering { .. } => counts.dead_lettering += 1,
            }
        }
        counts
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: i64 = 1_000_000;
    const VIS: u64 = 30_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 100,
            backoff_multiplier_milli: 2000,
            backoff_max_ms: 1000,
        }
    }

    fn half() -> f64 {
        0.5
    }

    #[test]
    fn backoff_caps_grow_and_stop_at_the_max_with_full_jitter_below() {
        let p = policy();
        assert_eq!(
            (1..=6).map(|a| p.cap_ms(a)).collect::<Vec<_>>(),
            vec![100, 200, 400, 800, 1000, 1000]
        );
        assert_eq!(p.backoff_ms(2, 0.0), 0);
        assert_eq!(p.backoff_ms(2, 0.999_999), 200);
        assert_eq!(p.backoff_ms(2, 0.5), 100);
        assert_eq!(p.cap_ms(u32::MAX), 1000);
        assert!(p.problem().is_none());
        let bad = RetryPolicy {
            backoff_max_ms: 50,
            ..p
        };
        assert_eq!(bad.problem().map(|p| p.0), Some("backoff_max_ms"));
        let bad = RetryPolicy {
            max_attempts: 0,
            ..p
        };
        assert_eq!(bad.problem().map(|p| p.0), Some("max_attempts"));
    }

    #[test]
    fn leases_hand_out_new_offsets_up_to_the_end_and_the_window() {
        let mut q = PartitionQueue::new(10);
        let got = q.lease(T0, 5, VIS, 13, 100);
        assert_eq!(
            got.iter()
                .map(|d| (d.offset, d.attempt))
                .collect::<Vec<_>>(),
            vec![(10, 1), (11, 1), (12, 1)]
        );
        assert!(q.lease(T0, 5, VIS, 13, 100).is_empty());
        // The window bound: two slots at most.
        let mut q = PartitionQueue::new(0);
        assert_eq!(q.lease(T0, 10, VIS, 100, 2).len(), 2);
        assert!(q.lease(T0, 10, VIS, 100, 2).is_empty());
        assert!(!q.has_ready(T0, 100, 2));
        q.ack(T0, 0, 1).unwrap();
        assert_eq!(q.done_below(), 1);
        assert_eq!(q.lease(T0, 10, VIS, 100, 2)[0].offset, 2);
    }

    #[test]
    fn acks_out_of_order_move_the_cursor_only_over_done_offsets() {
        let mut q = PartitionQueue::new(0);
        q.lease(T0, 3, VIS, 3, 100);
        assert_eq!(q.ack(T0, 1, 1), Ok(false));
        assert_eq!(q.ack(T0, 2, 1), Ok(false));
        assert_eq!(q.done_below(), 0);
        assert_eq!(q.ack(T0, 0, 1), Ok(true));
        assert_eq!(q.done_below(), 3);
        assert_eq!(q.next(), 3);
        // Acking again: done.
        let stale = q.ack(T0, 1, 1).unwrap_err();
        assert_eq!(stale.current, Current::Done);
    }

    #[test]
    fn an_expired_lease_is_redelivered_after_backoff_and_the_old_token_is_fenced() {
        let mut q = PartitionQueue::new(0);
        let p = policy();
        q.lease(T0, 1, VIS, 1, 100);
        let expiry = T0 + VIS as i64;
        // Just before the deadline: still leased, nothing to expire.
        assert!(q.expire(expiry - 1, &p, &mut half).is_empty());
        assert!(q.lease(expiry - 1, 1, VIS, 1, 100).is_empty());
        assert!(q.expire(expiry, &p, &mut half).is_empty());
        // Waiting for half the cap of attempt 1 (100 ms) from the deadline.
        assert_eq!(
            q.slot(0).map(|s| s.state),
            Some(SlotState::Waiting {
                until_ms: expiry + 50
            })
        );
        let stale = q.ack(expiry, 0, 1).unwrap_err();
        assert_eq!(
            stale.current,
            Current::Attempt {
                attempts: 1,
                leased: false
            }
        );
        assert!(q.lease(expiry + 49, 1, VIS, 1, 100).is_empty());
        let again = q.lease(expiry + 50, 1, VIS, 1, 100);
        assert_eq!(again[0].attempt, 2);
        // The first worker's late ack: refused, naming attempt 2, and nothing changes.
        let before = q.clone();
        let stale = q.ack(expiry + 60, 0, 1).unwrap_err();
        assert_eq!(
            stale.current,
            Current::Attempt {
                attempts: 2,
                leased: true
            }
        );
        assert!(
            stale.to_string().contains("current attempt is 2"),
            "{stale}"
        );
        assert_eq!(q, before);
        assert_eq!(q.ack(expiry + 60, 0, 2), Ok(true));
    }

    #[test]
    fn nacks_back_off_then_exhaust_into_a_dead_letter() {
        let mut q = PartitionQueue::new(0);
        let p = policy();
        let mut now = T0;
        for attempt in 1..=3 {
            let d = q.lease(now, 1, VIS, 1, 100);
            assert_eq!(d.len(), 1, "attempt {attempt}");
            assert_eq!(d[0].attempt, attempt);
            match q
                .nack(now, 0, attempt, None, "boom", &p, 0.999_999)
                .unwrap()
            {
                Nacked::Retry { until_ms } => {
                    assert!(attempt < 3);
                    assert_eq!(until_ms, now + p.cap_ms(attempt) as i64);
                    now = until_ms;
                }
                Nacked::Exhausted(e) => {
                    assert_eq!(attempt, 3);
                    assert_eq!((e.offset, e.attempts), (0, 3));
                    assert_eq!(e.last_error.as_deref(), Some("boom"));
                }
            }
        }
        // Dead-lettering: not leasable, not done yet.
        assert!(q.lease(now + 1_000_000, 1, VIS, 1, 100).is_empty());
        assert_eq!(q.done_below(), 0);
        q.dead_lettering(0, 7);
        assert_eq!(
            q.dead_letters_pending(),
            vec![(0, 3, Some(Arc::from("boom")), 7)]
        );
        assert!(q.dead_lettered_at(0));
        assert_eq!((q.done_below(), q.dead_lettered()), (1, 1));
        // Once only.
        assert!(!q.dead_lettered_at(0));
        assert_eq!(q.dead_lettered(), 1);
    }

    #[test]
    fn an_explicit_delay_wins_over_the_backoff_and_release_does_not_count() {
        let mut q = PartitionQueue::new(0);
        let p = policy();
        q.lease(T0, 1, VIS, 1, 100);
        assert_eq!(
            q.nack(T0, 0, 1, Some(5000), "later", &p, 0.0),
            Ok(Nacked::Retry {
                until_ms: T0 + 5000
            })
        );
        assert!(q.lease(T0 + 4999, 1, VIS, 1, 100).is_empty());
        let d = q.lease(T0 + 5000, 1, VIS, 1, 100);
        assert_eq!(d[0].attempt, 2);
        q.release(T0 + 5000, 0, 2).unwrap();
        let d = q.lease(T0 + 5000, 1, VIS, 1, 100);
        assert_eq!(d[0].attempt, 2, "a release gives the attempt back");
    }

    #[test]
    fn extend_moves_the_deadline_and_expired_extends_are_refused() {
        let mut q = PartitionQueue::new(0);
        q.lease(T0, 1, VIS, 1, 100);
        let deadline = q.extend(T0 + 20_000, 0, 1, VIS).unwrap();
        assert_eq!(deadline, T0 + 50_000);
        assert!(q.expire(T0 + 40_000, &policy(), &mut half).is_empty());
        assert!(q.ack(T0 + 49_999, 0, 1).is_ok());
        let mut q = PartitionQueue::new(0);
        q.lease(T0, 1, VIS, 1, 100);
        assert!(q.extend(T0 + VIS as i64, 0, 1, VIS).is_err());
    }

    #[test]
    fn leases_expiring_on_their_last_attempt_are_exhausted() {
        let mut q = PartitionQueue::new(0);
        let p = RetryPolicy {
            max_attempts: 1,
            ..policy()
        };
        q.lease(T0, 2, VIS, 2, 100);
        q.ack(T0, 1, 1).unwrap();
        let exhausted = q.expire(T0 + VIS as i64, &p, &mut half);
        assert_eq!(exhausted.len(), 1);
        assert_eq!(exhausted[0].last_error.as_deref(), Some("lease expired"));
        assert!(q.dead_lettered_at(0));
        assert_eq!(q.done_below(), 2);
        // Lease paths expire only what has attempts left.
        let mut q = PartitionQueue::new(0);
        q.lease(T0, 1, VIS, 1, 100);
        q.expire_retrying(T0 + VIS as i64, &p, &mut half);
        assert!(matches!(
            q.slot(0).map(|s| s.state),
            Some(SlotState::Leased { .. })
        ));
        assert!(q.lease(T0 + VIS as i64, 1, VIS, 1, 100).is_empty());
        assert_eq!(q.expire(T0 + VIS as i64, &p, &mut half).len(), 1);
    }

    #[test]
    fn tokens_from_the_future_or_unknown_offsets_are_not_delivered() {
        let mut q = PartitionQueue::new(5);
        q.lease(T0, 1, VIS, 10, 100);
        assert_eq!(q.ack(T0, 5, 2).unwrap_err().current, Current::NotDelivered);
        assert_eq!(q.ack(T0, 9, 1).unwrap_err().current, Current::NotDelivered);
        assert_eq!(q.ack(T0, 3, 1).unwrap_err().current, Current::Done);
        assert_eq!(q.ack(T0, 5, 0).unwrap_err().current, Current::NotDelivered);
    }

    #[test]
    fn restored_queues_drop_what_the_cursor_covers_and_fill_holes() {
        let leased = Slot {
            attempts: 2,
            state: SlotState::Leased { deadline_ms: T0 },
            last_error: None,
        };
        let acked = Slot {
            state: SlotState::Acked,
            ..leased.clone()
        };
        let q = PartitionQueue::restored(
            10,
            4,
            vec![(3, leased.clone()), (10, acked), (12, leased.clone())],
        );
        assert_eq!(q.done_below(), 11);
        assert_eq!(q.next(), 13);
        assert_eq!(q.dead_lettered(), 4);
        assert_eq!(q.slot(11).map(|s| s.attempts), Some(0));
        assert_eq!(q.slot(12), Some(&leased));
        // The restored lease runs out and is redelivered as attempt 3.
        let mut q = q;
        q.expire(T0, &policy(), &mut || 0.0);
        let d = q.lease(T0, 5, VIS, 13, 100);
        assert_eq!(
            d.iter().map(|d| (d.offset, d.attempt)).collect::<Vec<_>>(),
            vec![(11, 1), (12, 3)]
        );
    }

    #[test]
    fn counts_and_wakeups() {
        let mut q = PartitionQueue::new(0);
        let p = policy();
        q.lease(T0, 4, VIS, 4, 100);
        q.ack(T0, 1, 1).unwrap();
        q.nack(T0, 2, 1, Some(1000), "x", &p, 0.0).unwrap();
        let counts = q.counts(T0);
        assert_eq!(
            (counts.in_flight, counts.done, counts.delayed, counts.ready),
            (2, 1, 1, 0)
        );
        assert_eq!(q.next_wakeup_ms(T0), Some(T0 + 1000));
        assert_eq!(q.next_wakeup_ms(T0 + 1000), Some(T0 + VIS as i64));
        assert!(!q.has_ready(T0, 4, 100));
        assert!(q.has_ready(T0 + 1000, 4, 100));
        assert!(q.has_ready(T0, 5, 100));
    }

    #[test]
    fn skip_to_only_moves_an_empty_window() {
        let mut q = PartitionQueue::new(0);
        assert!(q.skip_to(5));
        assert_eq!(q.done_below(), 5);
        q.lease(T0, 1, VIS, 10, 100);
        assert!(!q.skip_to(8));
        assert!(q.gone(5));
        assert_eq!(q.done_below(), 6);
        assert_eq!(truncate("héllo", 2), "h");
    }
}
