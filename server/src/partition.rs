//! One partition of a topic, and the one path every write to it takes (design.md §4).
//!
//! [`Partition::append`] is the only way a batch reaches a partition's log: a client's
//! Produce, an offset commit, and later dead letters, queue state and schedules. In order it
//! does:
//! 1. the limits: producers may not write internal (`__`) topics nor set the control or
//!    transactional bits, and every record they produce to a compacted topic needs a key; the
//!    batch must fit the topic's `max_batch_bytes`; a producer's bytes must fit the in-flight
//!    bounds (partition, connection, broker) or it is refused at once with a retry hint;
//! 2. on the blocking pool: validation and the caller's pre-append check, under the log's
//!    writer lock with the offset the batch will get ([`Log::append_with`]), then one write;
//!    for a producer's batch that check is the idempotent producer's sequence check
//!    ([`Partition::produce`]);
//! 3. the durability wait: under `fsync = always` the answer waits for the group commit that
//!    covers the batch (so an acknowledged batch is on disk);
//! 4. the counters.
//!
//! Reads go through it too, on the blocking pool (a read may open and map a segment), and the
//! high watermark is watched for long polls and subscriptions.

use crate::error::{Error, Result, blocking};
use crate::inflight::Limiter;
use crate::producers::Sequencing;
use crate::producers::state::{Incoming, ProducerStates, Refusal, Verdict};
use crate::topics::Cleanup;
use bytes::{Bytes, BytesMut};
use sluice_storage::format::{
    ATTR_CONTROL, ATTR_TRANSACTIONAL, BatchView, FormatError, HEADER_LEN, layout,
};
use sluice_storage::replay::{Replayed, StateMachine};
use sluice_storage::{AppendInfo, CompactionLimits, CompactionReport, Durability, Log, ReadResult};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, OnceCell, Semaphore, watch};

/// Where an append comes from, which decides the limits it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client's Produce: refused on internal topics, bounded by the in-flight bytes of the
    /// partition, of the connection from `peer`, and of the broker.
    Producer {
        /// The client's address (the per-connection bound's key).
        peer: Option<SocketAddr>,
    },
    /// The broker's own state (committed offsets; later dead letters, queue state,
    /// schedules), written on behalf of a request that was already admitted.
    Broker,
}

/// What an acknowledged append answers: where the batch landed, and when.
pub type Ack = AppendInfo;

/// What a producer's append answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Where the batch is.
    pub ack: Ack,
    /// The batch was a retry of one already appended: `ack` is the original's, and nothing
    /// was appended again.
    pub duplicate: bool,
}

/// Counters of one partition's write path, for metrics (atomics, once per batch).
#[derive(Debug, Default)]
pub struct Counters {
    /// Batches appended for producers.
    pub produced_batches: AtomicU64,
    /// Records appended for producers.
    pub produced_records: AtomicU64,
    /// Bytes appended for producers.
    pub produced_bytes: AtomicU64,
    /// Batches the broker appended for its own state.
    pub internal_batches: AtomicU64,
    /// Appends refused by the in-flight bounds (`RESOURCE_EXHAUSTED`).
    pub refused_busy: AtomicU64,
    /// Appends that failed validation or their pre-append check.
    pub rejected: AtomicU64,
    /// Retries of an idempotent producer's batch answered from its state, not appended again.
    pub duplicates: AtomicU64,
}

/// The idempotent producers of a partition: loaded from the log's tail on the first batch of
/// one (so partitions without them cost nothing at start), checked under the writer lock.
#[derive(Debug)]
struct Producers {
    loaded: OnceCell<()>,
    state: Mutex<ProducerStates>,
    /// Signalled after each idempotent batch's append finishes (appended or not): batches
    /// waiting for their predecessors look again.
    sequenced: Notify,
    /// The state changed since the last snapshot.
    dirty: AtomicBool,
}

impl Producers {
    fn state(&self) -> MutexGuard<'_, ProducerStates> {
        // Every change is one call on the state under the lock; nothing panics inside.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A partition: its log and what guards it.
#[derive(Debug)]
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    internal: bool,
    /// The topic's cleanup policy: compacted topics refuse producers' records without keys.
    cleanup: Cleanup,
    log: Arc<Log>,
    /// The high watermark, sent by the log's listener each time it advances.
    high_watermark: watch::Receiver<u64>,
    /// Turns true when the topic is deleted: waiters end with `NOT_FOUND`.
    deleted: watch::Sender<bool>,
    /// Produce bytes accepted and not yet acknowledged (per-partition bound).
    inflight: Arc<Semaphore>,
    limiter: Arc<Limiter>,
    counters: Counters,
    sequencing: Arc<Sequencing>,
    producers: Arc<Producers>,
}

impl Partition {
    /// Wraps an open log as partition `id` of `topic`, whose cleanup policy is `cleanup`.
    pub fn new(
        topic: Arc<str>,
        id: u32,
        cleanup: Cleanup,
        log: Arc<Log>,
        limiter: Arc<Limiter>,
        inflight_bytes: u32,
        sequencing: Arc<Sequencing>,
    ) -> Self {
        let (sender, high_watermark) = watch::channel(log.high_watermark());
        log.on_high_watermark(Box::new(move |hw| {
            sender.send_replace(hw);
        }));
        Self {
            internal: topic.starts_with("__"),
            topic,
            id,
            cleanup,
            log,
            high_watermark,
            deleted: watch::Sender::new(false),
            inflight: Arc::new(Semaphore::new(inflight_bytes as usize)),
            limiter,
            counters: Counters::default(),
            producers: Arc::new(Producers {
                loaded: OnceCell::new(),
                state: Mutex::new(ProducerStates::new(sequencing.max_per_partition, 0)),
                sequenced: Notify::new(),
                dirty: AtomicBool::new(false),
            }),
            sequencing,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `topic/id`, for messages and logs.
    pub fn name(&self) -> String {
        format!("{}/{}", self.topic, self.id)
    }

    /// A client's Produce: [`append`](Self::append) with `Origin::Producer`, plus, for a batch
    /// of an idempotent producer (`producer_id` ≥ 0), the sequence check under the writer
    /// lock: the next sequence appends; a retry of one of the producer's last batches is
    /// answered with that batch's offsets (once they are acknowledged) and appends nothing; a
    /// gap is `OutOfOrderSequence`; an older epoch is `ProducerFenced`. A batch ahead of the
    /// expected sequence first waits (at most `reorder_wait`) for the ones before it, which
    /// pipelined requests may overtake on their way.
    pub async fn produce(&self, batch: Bytes, peer: Option<SocketAddr>) -> Result<Produced> {
        let origin = Origin::Producer { peer };
        let Some(incoming) = peek_producer(&batch) else {
            let ack = self.append(batch, origin).await?;
            return Ok(Produced {
                ack,
                duplicate: false,
            });
        };
        if incoming.producer_id < 0
            || incoming.producer_id >= self.sequencing.issued.load(Ordering::Acquire)
        {
            return Err(Error::invalid(
                "producer_id",
                incoming.producer_id,
                "was not issued by this broker: call InitProducer, or send -1 for a producer that is not idempotent",
            ));
        }
        self.load_producers().await?;
        self.wait_for_predecessors(&incoming).await;
        let producers = Arc::clone(&self.producers);
        let clock = self.sequencing.clock.clone();
        // The name is formatted only for a refusal: nothing is allocated per accepted batch.
        let (topic, id) = (Arc::clone(&self.topic), self.id);
        let appended = self
            .append_checked(batch, origin, move |view, base_offset| {
                // The same bytes `peek_producer` read, now validated.
                let incoming = Incoming::of(view).ok_or_else(|| {
                    Error::invalid("producer_id", view.producer_id(), "changed under the check")
                })?;
                let mut state = producers.state();
                match state.check(&incoming) {
                    Ok(Verdict::Append) => {
                        state.record(&incoming, base_offset, clock.now_ms());
                        drop(state);
                        producers.dirty.store(true, Ordering::Release);
                        // Its successor may go now: it takes the writer lock after this write
                        // and need not wait for this batch's fsync (group commit covers both).
                        producers.sequenced.notify_waiters();
                        Ok(())
                    }
                    Ok(Verdict::Duplicate(meta)) => Err(Error::DuplicateBatch(meta)),
                    Err(refusal) => {
                        Err(refusal_error(&format!("{topic}/{id}"), &incoming, refusal))
                    }
                }
            })
            .await;
        // Refused batches wake the waiters too: they look again and stop waiting in vain.
        self.producers.sequenced.notify_waiters();
        match appended {
            Ok((ack, ())) => Ok(Produced {
                ack,
                duplicate: false,
            }),
            Err(Error::DuplicateBatch(meta)) => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                // The original may not be durable yet: answer once it is acknowledged.
                self.wait_past(meta.last_offset).await?;
                Ok(Produced {
                    ack: Ack {
                        base_offset: meta.base_offset,
                        last_offset: meta.last_offset,
                        append_time_ms: meta.append_time_ms,
                    },
                    duplicate: true,
                })
            }
            Err(error) => Err(error),
        }
    }

    /// Loads the producer state from the log's tail, once (blocking work on the pool): the
    /// newest producer snapshot, else the last two segments.
    async fn load_producers(&self) -> Result<()> {
        let load = || async {
            let log = Arc::clone(&self.log);
            let producers = Arc::clone(&self.producers);
            let sequencing = Arc::clone(&self.sequencing);
            let name = self.name();
            blocking(move || {
                let mut state =
                    ProducerStates::new(sequencing.max_per_partition, sequencing.clock.now_ms());
                let bases = log.segment_bases();
                let floor = bases.len().checked_sub(2).map_or(0, |i| bases[i]);
                let replayed = sluice_storage::replay::replay_tail(&log, &mut state, floor)?;
                state.forget_before(log.earliest_offset());
                tracing::debug!(
                    partition = %name,
                    producers = state.len(),
                    snapshot = ?replayed.snapshot,
                    batches = replayed.batches,
                    "loaded producer state"
                );
                *producers.state() = state;
                Ok(())
            })
            .await
        };
        self.producers.loaded.get_or_try_init(load).await?;
        Ok(())
    }

    /// Waits while `incoming` is ahead of what its producer's state expects, at most
    /// `reorder_wait`: the batches before it may be in flight behind it.
    async fn wait_for_predecessors(&self, incoming: &Incoming) {
        let deadline = tokio::time::Instant::now() + self.sequencing.reorder_wait;
        loop {
            let notified = self.producers.sequenced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.producers.state().is_ahead(incoming) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Forgets producers idle past the configured time and snapshots the producer state if it
    /// changed (blocking; the broker's maintenance pass calls it).
    pub fn maintain_producers(&self) -> Result<()> {
        if !self.producers.loaded.initialized() {
            return Ok(());
        }
        let now = self.sequencing.clock.now_ms();
        if self.producers.state().expire(now, self.sequencing.idle_ms) > 0 {
            self.producers.dirty.store(true, Ordering::Release);
        }
        self.snapshot_producers()
    }

    /// Idempotent producers this partition keeps state for (0 until one wrote).
    pub fn producer_count(&self) -> usize {
        self.producers.state().len()
    }

    /// Writes the producer state as a snapshot at the log's end, if it changed (blocking):
    /// the end is read before the state, so the state holds every batch below it, and the
    /// snapshot leaves out batches at or past it (they may not survive a crash).
    fn snapshot_producers(&self) -> Result<()> {
        if !self.producers.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let end = self.log.log_end_offset();
        let bytes = self.producers.state().encode_below(end);
        let written = self
            .log
            .flush()
            .and_then(|_| sluice_storage::replay::write_snapshot(&self.log, end, &bytes));
        if written.is_err() {
            self.producers.dirty.store(true, Ordering::Release);
        }
        Ok(written?)
    }

    /// Appends `batch` (the wire format, `base_offset` 0) and answers once it is acknowledged
    /// under the topic's durability. See the module doc for what it checks.
    pub async fn append(&self, batch: Bytes, origin: Origin) -> Result<Ack> {
        self.append_checked(batch, origin, |_, _| Ok(()))
            .await
            .map(|(ack, ())| ack)
    }

    /// [`append`](Self::append) with a check run under the log's writer lock: `check(view,
    /// base_offset)` sees the validated batch and the offset it will get, atomically with the
    /// write; an `Err` refuses the batch and nothing is written. What it returns is handed back
    /// with the acknowledgement. It runs on the blocking pool and must be quick.
    pub async fn append_checked<T, F>(
        &self,
        batch: Bytes,
        origin: Origin,
        check: F,
    ) -> Result<(Ack, T)>
    where
        F: FnOnce(&BatchView<'_>, u64) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.check_present()?;
        let max = self.log.config().max_batch_bytes;
        let permit = match origin {
            Origin::Producer { peer } => {
                if self.internal {
                    return Err(Error::invalid(
                        "topic",
                        &self.topic,
                        "internal topics are written by the broker only",
                    ));
                }
                if batch.len() > max as usize {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(too_large(batch.len(), max));
                }
                let acquired = self.limiter.try_acquire(
                    || self.name(),
                    &self.inflight,
                    peer,
                    batch.len() as u32,
                );
                match acquired {
                    Ok(permit) => Some(permit),
                    Err(busy) => {
                        self.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
                        return Err(busy);
                    }
                }
            }
            Origin::Broker => {
                if batch.len() > max as usize {
                    return Err(too_large(batch.len(), max));
                }
                None
            }
        };
        // Control and transactional batches are markers the broker writes (for transactions,
        // later); a consumer skips control batches, so one from a producer would vanish.
        let producer = matches!(origin, Origin::Producer { .. });
        // Compaction keeps the latest record per key: a record without one could never be
        // replaced or deleted. The broker's own records are its business.
        let keys_required = producer && self.cleanup.compacts();
        let topic = Arc::clone(&self.topic);
        let check = move |view: &BatchView<'_>, base_offset: u64| {
            let reserved = view.attributes() & (ATTR_CONTROL | ATTR_TRANSACTIONAL);
            if producer && reserved != 0 {
                return Err(Error::invalid(
                    "batch attributes",
                    format!("{:#06x}", view.attributes()),
                    "the control (0x20) and transactional (0x10) bits are reserved for batches the broker writes",
                ));
            }
            if keys_required {
                // One walk of the records BatchView::new already checked: no allocation.
                if let Some(index) = view.records().position(|record| record.key.is_none()) {
                    return Err(Error::KeylessRecord {
                        topic: crate::error::echo(&topic),
                        index: index as u32,
                    });
                }
            }
            check(view, base_offset)
        };
        let log = Arc::clone(&self.log);
        let len = batch.len() as u64;
        let appended = blocking(move || {
            let _permit = permit;
            // The broker stamps the base offset in place: the batch must be ours to change.
            // `From<Bytes>` reuses the buffer when no one else holds it and copies otherwise.
            let mut batch = BytesMut::from(batch);
            let appended = log.append_with(&mut batch, check)?;
            if log.config().durability == Durability::Always {
                log.flush()?;
            }
            Ok(appended)
        })
        .await;
        let (ack, checked) = match appended {
            Ok(appended) => appended,
            Err(error) => {
                if matches!(
                    error,
                    Error::Storage(sluice_storage::Error::InvalidBatch(_))
                        | Error::InvalidArgument { .. }
                        | Error::KeylessRecord { .. }
                        | Error::Conflict { .. }
                        | Error::OutOfOrderSequence { .. }
                        | Error::ProducerFenced { .. }
                ) {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
                return Err(error);
            }
        };
        match origin {
            Origin::Producer { .. } => {
                let records = ack.last_offset - ack.base_offset + 1;
                self.counters
                    .produced_batches
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .produced_records
                    .fetch_add(records, Ordering::Relaxed);
                self.counters
                    .produced_bytes
                    .fetch_add(len, Ordering::Relaxed);
            }
            Origin::Broker => {
                self.counters
                    .internal_batches
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok((ack, checked))
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (at least one), read on
    /// the blocking pool: a read is mostly a slice of a mapped segment, but a segment not in the
    /// store's cache is opened and mapped first, which is file I/O.
    pub async fn read(&self, offset: u64, max_bytes: u64) -> Result<ReadResult> {
        self.check_present()?;
        let log = Arc::clone(&self.log);
        blocking(move || Ok(log.read(offset, max_bytes)?)).await
    }

    /// The first offset appended at or after `time_ms` (see `Log::offset_for_time`).
    pub async fn offset_for_time(&self, time_ms: i64) -> Result<Option<u64>> {
        let log = Arc::clone(&self.log);
        blocking(move || Ok(log.offset_for_time(time_ms)?)).await
    }

    /// Waits until the high watermark passes `offset`. `NOT_FOUND` if the topic is (or gets)
    /// deleted: a long poll or subscription on it ends rather than wait forever.
    pub async fn wait_past(&self, offset: u64) -> Result<()> {
        let mut high_watermark = self.high_watermark.clone();
        let mut deleted = self.deleted.subscribe();
        tokio::select! {
            passed = high_watermark.wait_for(|hw| *hw > offset) => {
                passed.map(|_| ()).map_err(|_| self.deleted_error())
            }
            _ = deleted.wait_for(|deleted| *deleted) => Err(self.deleted_error()),
        }
    }

    /// Marks the partition's topic as deleted (before its log is closed), ending waiters.
    pub fn mark_deleted(&self) {
        self.deleted.send_replace(true);
    }

    fn check_present(&self) -> Result<()> {
        if *self.deleted.borrow() {
            return Err(self.deleted_error());
        }
        Ok(())
    }

    fn deleted_error(&self) -> Error {
        Error::TopicDeleted {
            topic: self.topic.to_string(),
        }
    }

    /// Rebuilds `machine` from this partition's log (blocking; at start-up).
    pub fn replay<M: StateMachine>(&self, machine: &mut M) -> Result<Replayed, M::Error> {
        sluice_storage::replay::replay(&self.log, machine)
    }

    /// Drops the oldest segments wholly below `offset` (blocking); returns how many.
    pub fn delete_before(&self, offset: u64) -> Result<usize> {
        Ok(self.log.delete_before(offset)?)
    }

    /// Applies the topic's retention (blocking); returns the segments deleted.
    pub fn enforce_retention(&self) -> Result<usize> {
        Ok(self.log.enforce_retention()?)
    }

    /// Runs one compaction pass on the log if one is due (blocking; see `Log::compact`):
    /// tombstones appended `delete_retention` or more before `now_ms` go.
    pub fn compact(
        &self,
        now_ms: i64,
        delete_retention: std::time::Duration,
        limits: &CompactionLimits,
    ) -> Result<CompactionReport> {
        Ok(self.log.compact(now_ms, delete_retention, limits)?)
    }

    /// The topic's cleanup policy.
    pub fn cleanup(&self) -> Cleanup {
        self.cleanup
    }

    /// Closes the log cleanly (blocking): producer state snapshotted, synced, clean-shutdown
    /// marker written.
    pub fn close(&self) -> Result<()> {
        if let Err(error) = self.snapshot_producers() {
            tracing::warn!(partition = %self.name(), %error, "producer state snapshot failed");
        }
        Ok(self.log.close()?)
    }

    /// Stops the log without syncing anything, its topic being deleted (blocking).
    pub fn discard(&self) {
        self.log.discard();
    }

    /// First offset retained.
    pub fn earliest_offset(&self) -> u64 {
        self.log.earliest_offset()
    }

    /// One past the last readable offset.
    pub fn high_watermark(&self) -> u64 {
        self.log.high_watermark()
    }

    /// One past the last offset written.
    pub fn log_end_offset(&self) -> u64 {
        self.log.log_end_offset()
    }

    /// Bytes held in segment files.
    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// Segments held.
    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// Base offsets of the segments, oldest first; the last is the active one's.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.log.segment_bases()
    }

    /// Largest batch the partition accepts, bytes.
    pub fn max_batch_bytes(&self) -> u32 {
        self.log.config().max_batch_bytes
    }

    /// The write path's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// The producer fields of a batch's header, if it is long enough to have one and names an
/// idempotent producer (`producer_id` ≠ −1). Read before validation to route the batch; the
/// check reads them again from the validated view.
fn peek_producer(batch: &[u8]) -> Option<Incoming> {
    let header = batch.get(..HEADER_LEN)?;
    let field = |range: std::ops::Range<usize>| header.get(range);
    let producer_id = i64::from_le_bytes(field(layout::PRODUCER_ID)?.try_into().ok()?);
    if producer_id == -1 {
        return None;
    }
    Some(Incoming {
        producer_id,
        epoch: i16::from_le_bytes(field(layout::PRODUCER_EPOCH)?.try_into().ok()?),
        base_sequence: i32::from_le_bytes(field(layout::BASE_SEQUENCE)?.try_into().ok()?),
        record_count: u32::from_le_bytes(field(layout::RECORD_COUNT)?.try_into().ok()?),
    })
}

/// The error a refused idempotent batch gets.
fn refusal_error(partition: &str, incoming: &Incoming, refusal: Refusal) -> Error {
    match refusal {
        Refusal::Fenced { current } => Error::ProducerFenced {
            partition: partition.to_owned(),
            producer_id: incoming.producer_id,
            epoch: incoming.epoch,
            current,
        },
        Refusal::OutOfOrder { expected } => Error::OutOfOrderSequence {
            partition: partition.to_owned(),
            producer_id: incoming.producer_id,
            epoch: incoming.epoch,
            expected,
            received: incoming.base_sequence,
        },
        Refusal::Invalid => Error::invalid(
            "producer epoch or base_sequence",
            format!("{}/{}", incoming.epoch, incoming.base_sequence),
            "must not be negative for an idempotent producer",
        ),
    }
}

fn too_large(len: usize, max: u32) -> Error {
    Error::Storage(sluice_storage::Error::InvalidBatch(FormatError::TooLarge {
        len: len as u64,
        max: u64::from(max),
    }))
}
