//! Idempotent producers on one partition: the pure state the write path checks each batch of
//! an idempotent producer against (design.md §2 header fields, Kafka's producer state).
//!
//! Per producer id it keeps the epoch and the last [`KEPT_BATCHES`] batches (sequence range and
//! offsets). A batch whose base sequence follows the last one appends; a retry of one of the
//! kept batches is a duplicate, answered with its original offsets; anything else is out of
//! order; an older epoch is fenced. The state is rebuilt from the log's tail (the batch headers
//! carry id, epoch and sequence) through the replay hook, from a snapshot when there is one.
//! No I/O and no clock: callers pass `now`.

use std::collections::{HashMap, VecDeque};

use sluice_storage::format::BatchView;
use sluice_storage::replay::StateMachine;

/// Batches remembered per producer: a client keeps at most this many requests in flight per
/// partition, so any retry it sends is one of them.
pub const KEPT_BATCHES: usize = 5;

/// Sequence numbers run from 0 to `i32::MAX` and wrap to 0.
const SEQUENCE_SPACE: i64 = i32::MAX as i64 + 1;

/// What a batch says about its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The producer id (≥ 0).
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
    /// Sequence of the batch's first record.
    pub base_sequence: i32,
    /// Records in the batch.
    pub record_count: u32,
}

impl Incoming {
    /// The producer fields of `view`, if its producer is idempotent (`producer_id` ≥ 0).
    pub fn of(view: &BatchView<'_>) -> Option<Self> {
        (view.producer_id() >= 0).then(|| Self {
            producer_id: view.producer_id(),
            epoch: view.producer_epoch(),
            base_sequence: view.base_sequence(),
            record_count: view.record_count(),
        })
    }

    /// Sequence of the batch's last record.
    pub fn last_sequence(&self) -> i32 {
        add_sequence(self.base_sequence, u64::from(self.record_count.max(1) - 1))
    }
}

/// `sequence + n`, wrapping past `i32::MAX` to 0.
pub fn add_sequence(sequence: i32, n: u64) -> i32 {
    ((i64::from(sequence) + (n % SEQUENCE_SPACE as u64) as i64) % SEQUENCE_SPACE) as i32
}

/// How far `sequence` is past `expected`, in the wrapping space.
fn distance(expected: i32, sequence: i32) -> i64 {
    (i64::from(sequence) - i64::from(expected)).rem_euclid(SEQUENCE_SPACE)
}

/// A batch the state remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    /// Sequence of its first record.
    pub first_sequence: i32,
    /// Sequence of its last record.
    pub last_sequence: i32,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// When it was appended, ms.
    pub append_time_ms: i64,
}

/// What the check says to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// Already appended: answer with these offsets and append nothing.
    Duplicate(BatchMeta),
}

/// Why a batch of an idempotent producer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The producer's epoch is older than one already seen: a newer instance took over.
    Fenced {
        /// The newest epoch seen.
        current: i16,
    },
    /// The base sequence is not the next one (a gap, or a batch replayed from too long ago).
    OutOfOrder {
        /// The sequence the partition expects next.
        expected: i32,
    },
    /// A negative epoch or sequence with a producer id.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    /// The last batches, oldest first, at most [`KEPT_BATCHES`].
    batches: VecDeque<BatchMeta>,
    last_seen_ms: i64,
}

impl Entry {
    fn next_sequence(&self) -> Option<i32> {
        self.batches
            .back()
            .map(|b| add_sequence(b.last_sequence, 1))
    }
}

/// The idempotent producers of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, Entry>,
    /// Most producers kept; the longest idle goes first when a new one would pass it.
    max_producers: usize,
    /// `now` for batches applied by replay (the log does not keep when each was appended).
    replay_now_ms: i64,
}

impl ProducerStates {
    /// An empty state keeping at most `max_producers` producers; `replay_now_ms` stamps
    /// producers seen by replay as last seen then.
    pub fn new(max_producers: usize, replay_now_ms: i64) -> Self {
        Self {
            producers: HashMap::new(),
            max_producers: max_producers.max(1),
            replay_now_ms,
        }
    }

    /// Producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Whether `batch` is ahead of what the partition expects from its producer, so a batch
    /// sent before it (pipelined, or being retried) may still be on its way: the write path
    /// waits a little for it before checking.
    pub fn is_ahead(&self, batch: &Incoming) -> bool {
        match self.producers.get(&batch.producer_id) {
            Some(entry) if entry.epoch == batch.epoch => match entry.next_sequence() {
                Some(expected) => {
                    let ahead = distance(expected, batch.base_sequence);
                    ahead > 0 && ahead < SEQUENCE_SPACE / 2
                }
                None => batch.base_sequence != 0,
            },
            Some(entry) if entry.epoch > batch.epoch => false,
            _ => batch.base_sequence != 0,
        }
    }

    /// What to do with `batch`. A producer the partition does not know (new, or expired) may
    /// start at any sequence: after expiry a producer's next batch is accepted as it comes.
    pub fn check(&self, batch: &Incoming) -> Result<Verdict, Refusal> {
        if batch.epoch < 0 || batch.base_sequence < 0 {
            return Err(Refusal::Invalid);
        }
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        if batch.epoch < entry.epoch {
            return Err(Refusal::Fenced {
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            // A new epoch starts its sequences over.
            return if batch.base_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(Refusal::OutOfOrder { expected: 0 })
            };
        }
        let last = batch.last_sequence();
        if let Some(kept) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == batch.base_sequence && b.last_sequence == last)
        {
            return Ok(Verdict::Duplicate(*kept));
        }
        match entry.next_sequence() {
            Some(expected) if expected != batch.base_sequence => {
                Err(Refusal::OutOfOrder { expected })
            }
            _ => Ok(Verdict::Append),
        }
    }

    /// Records `batch`, appended at `base_offset` at `now_ms` (after [`check`](Self::check)
    /// said [`Verdict::Append`], or from the log during replay).
    pub fn record(&mut self, batch: &Incoming, base_offset: u64, now_ms: i64) {
        let meta = BatchMeta {
            first_sequence: batch.base_sequence,
            last_sequence: batch.last_sequence(),
            base_offset,
            last_offset: base_offset + u64::from(batch.record_count.max(1) - 1),
            append_time_ms: now_ms,
        };
        if !self.producers.contains_key(&batch.producer_id)
            && self.producers.len() >= self.max_producers
            && let Some(idlest) = self
                .producers
                .iter()
                .min_by_key(|(_, entry)| entry.last_seen_ms)
                .map(|(&id, _)| id)
        {
            self.producers.remove(&idlest);
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| Entry {
                epoch: batch.epoch,
                batches: VecDeque::with_capacity(KEPT_BATCHES),
                last_seen_ms: now_ms,
            });
        if entry.epoch != batch.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == KEPT_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
    }

    /// Forgets producers not seen for `idle_ms`; answers how many.
    pub fn expire(&mut self, now_ms: i64, idle_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| now_ms.saturating_sub(entry.last_seen_ms) < idle_ms);
        before - self.producers.len()
    }

    /// Forgets producers whose last batch lies below `earliest` (retention dropped it, so the
    /// state restored from an older snapshot may be missing their later batches).
    pub fn forget_before(&mut self, earliest: u64) {
        self.producers.retain(|_, entry| {
            entry
                .batches
                .back()
                .is_some_and(|last| last.last_offset >= earliest)
        });
    }

    /// The state as snapshot bytes (little-endian; see [`decode`](Self::decode)).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_below(u64::MAX)
    }

    /// [`encode`](Self::encode) leaving out batches at or past `end`: a snapshot at `end`
    /// must not remember batches a crash may cut from the log.
    pub fn encode_below(&self, end: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.producers.len() * (19 + KEPT_BATCHES * 32));
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let entry = &self.producers[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&entry.epoch.to_le_bytes());
            out.extend_from_slice(&entry.last_seen_ms.to_le_bytes());
            let below = entry.batches.iter().take_while(|b| b.base_offset < end);
            out.push(below.clone().count() as u8);
            for b in below {
                out.extend_from_slice(&b.first_sequence.to_le_bytes());
                out.extend_from_slice(&b.last_sequence.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
                out.extend_from_slice(&b.append_time_ms.to_le_bytes());
            }
        }
        out
    }

    /// Replaces the state with snapshot bytes from [`encode`](Self::encode); `None` if they
    /// do not decode (the state is then left empty).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<()> {
        self.producers.clear();
        let mut reader = Reader(bytes);
        let count = reader.u32()?;
        for _ in 0..count {
            let id = reader.i64()?;
            let epoch = i16::from_le_bytes(reader.take()?);
            let last_seen_ms = reader.i64()?;
            let kept = usize::from(reader.take::<1>()?[0]);
            if kept > KEPT_BATCHES {
                self.producers.clear();
                return None;
            }
            let mut batches = VecDeque::with_capacity(KEPT_BATCHES);
            for _ in 0..kept {
                batches.push_back(BatchMeta {
                    first_sequence: i32::from_le_bytes(reader.take()?),
                    last_sequence: i32::from_le_bytes(reader.take()?),
                    base_offset: reader.i64()? as u64,
                    last_offset: reader.i64()? as u64,
                    append_time_ms: reader.i64()?,
                });
            }
            self.producers.insert(
                id,
                Entry {
                    epoch,
                    batches,
                    last_seen_ms,
                },
            );
        }
        reader.0.is_empty().then_some(())
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
}

impl StateMachine for ProducerStates {
    type Error = crate::error::Error;

    fn restore(&mut self, state: &[u8]) -> Result<(), Self::Error> {
        if self.decode(state).is_none() {
            // The snapshot passed its CRC, so this is a format bug; the state is a cache of
            // the log's tail and starts empty rather than refusing the partition.
            tracing::warn!("ignoring a producer-state snapshot that does not decode");
            self.producers.clear();
        }
        Ok(())
    }

    fn apply(&mut self, batch: &BatchView<'_>) -> Result<(), Self::Error> {
        let Some(incoming) = Incoming::of(batch) else {
            return Ok(());
        };
        let base_offset = batch.base_offset();
        // A snapshot may be taken while a batch it already holds is still being written:
        // replay skips what the state has.
        let known = self
            .producers
            .get(&incoming.producer_id)
            .and_then(|entry| entry.batches.back())
            .is_some_and(|last| last.last_offset >= base_offset);
        if !known {
            self.record(&incoming, base_offset, self.replay_now_ms);
            if let Some(entry) = self.producers.get_mut(&incoming.producer_id)
                && let Some(last) = entry.batches.back_mut()
            {
                last.append_time_ms = batch.max_timestamp();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn batch(producer_id: i64, epoch: i16, base_sequence: i32, record_count: u32) -> Incoming {
        Incoming {
            producer_id,
            epoch,
            base_sequence,
            record_count,
        }
    }

    #[test]
    fn next_sequence_appends_a_kept_batch_is_a_duplicate_and_a_gap_is_refused() {
        let mut state = ProducerStates::new(100, 0);
        let first = batch(1, 0, 0, 10);
        assert_eq!(state.check(&first), Ok(Verdict::Append));
        state.record(&first, 100, 1);
        let second = batch(1, 0, 10, 5);
        assert!(!state.is_ahead(&second));
        assert_eq!(state.check(&second), Ok(Verdict::Append));
        state.record(&second, 200, 2);
        match state.check(&first) {
            Ok(Verdict::Duplicate(meta)) => {
                assert_eq!((meta.base_offset, meta.last_offset), (100, 109));
            }
            other => panic!("{other:?}"),
        }
        let gap = batch(1, 0, 20, 1);
        assert!(state.is_ahead(&gap));
        assert_eq!(state.check(&gap), Err(Refusal::OutOfOrder { expected: 15 }));
        // Same start, other length: not the batch kept, so out of order.
        assert_eq!(
            state.check(&batch(1, 0, 0, 3)),
            Err(Refusal::OutOfOrder { expected: 15 })
        );
    }

    #[test]
    fn only_the_last_five_batches_are_duplicates() {
        let mut state = ProducerStates::new(100, 0);
        for i in 0..7 {
            state.record(&batch(1, 0, i, 1), i as u64, 0);
        }
        assert_eq!(
            state.check(&batch(1, 0, 1, 1)),
            Err(Refusal::OutOfOrder { expected: 7 })
        );
        assert!(matches!(
            state.check(&batch(1, 0, 2, 1)),
            Ok(Verdict::Duplicate(_))
        ));
    }

    #[test]
    fn older_epochs_are_fenced_and_a_new_epoch_starts_at_zero() {
        let mut state = ProducerStates::new(100, 0);
        state.record(&batch(1, 3, 0, 1), 0, 0);
        assert_eq!(
            state.check(&batch(1, 2, 1, 1)),
            Err(Refusal::Fenced { current: 3 })
        );
        assert_eq!(
            state.check(&batch(1, 4, 5, 1)),
            Err(Refusal::OutOfOrder { expected: 0 })
        );
        assert_eq!(state.check(&batch(1, 4, 0, 1)), Ok(Verdict::Append));
        assert_eq!(state.check(&batch(1, -1, 0, 1)), Err(Refusal::Invalid));
        assert_eq!(state.check(&batch(1, 3, -5, 1)), Err(Refusal::Invalid));
    }

    #[test]
    fn sequences_wrap_past_i32_max() {
        let mut state = ProducerStates::new(100, 0);
        let near = batch(1, 0, i32::MAX - 1, 4);
        assert_eq!(near.last_sequence(), 1);
        state.record(&near, 0, 0);
        assert_eq!(state.check(&batch(1, 0, 2, 1)), Ok(Verdict::Append));
        assert!(!state.is_ahead(&batch(1, 0, 2, 1)));
        assert!(state.is_ahead(&batch(1, 0, 3, 1)));
    }

    #[test]
    fn unknown_producers_append_at_any_sequence_but_wait_first() {
        let state = ProducerStates::new(100, 0);
        assert_eq!(state.check(&batch(9, 0, 50, 1)), Ok(Verdict::Append));
        assert!(state.is_ahead(&batch(9, 0, 50, 1)));
        assert!(!state.is_ahead(&batch(9, 0, 0, 1)));
    }

    #[test]
    fn idle_producers_expire_and_the_idlest_goes_at_the_cap() {
        let mut state = ProducerStates::new(2, 0);
        state.record(&batch(1, 0, 0, 1), 0, 10);
        state.record(&batch(2, 0, 0, 1), 1, 20);
        state.record(&batch(3, 0, 0, 1), 2, 30);
        assert_eq!(state.len(), 2);
        assert_eq!(state.check(&batch(1, 0, 7, 1)), Ok(Verdict::Append));
        assert_eq!(state.expire(1_025, 1_000), 1);
        assert_eq!(state.len(), 1);
        state.forget_before(3);
        assert!(state.is_empty());
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut state = ProducerStates::new(100, 0);
        for id in 0..20i64 {
            for seq in 0..(id % 7) as i32 {
                state.record(&batch(id, 2, seq, 1), (id * 10 + i64::from(seq)) as u64, id);
            }
        }
        let bytes = state.encode();
        let mut restored = ProducerStates::new(100, 0);
        assert_eq!(restored.decode(&bytes), Some(()));
        assert_eq!(restored, state);
        for cut in 0..bytes.len() {
            assert_eq!(restored.decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut cut = ProducerStates::new(100, 0);
        // Producer 6 appended sequences 1..=5 at offsets 61..=65 (its first batch is gone).
        assert_eq!(cut.decode(&state.encode_below(63)), Some(()));
        assert!(
            cut.check(&batch(6, 2, 5, 1)).is_err(),
            "offsets 63 and up are past the end"
        );
        assert_eq!(cut.check(&batch(6, 2, 3, 1)), Ok(Verdict::Append));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(restored.decode(&longer), None);
    }
}
