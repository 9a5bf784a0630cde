//! A producer's partition task: batches one partition's records and keeps a window of up to
//! `max_in_flight` Produce requests in flight, numbering batches for an idempotent producer and
//! renumbering them after a batch fails for good (the invariants are in `producer.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::ERROR_KIND;
use sluice_proto::v1::{
    InitProducerRequest, ProduceRequest, ProduceResponse, log_client::LogClient,
};
use sluice_storage::format::{FormatError, restamp_producer};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

use crate::accumulator::{Accumulator, Sealed, Stamp};
use crate::connection::{self, Idempotency, RetryPolicy};
use crate::error::{Error, Result};
use crate::producer::{ProducerRecord, RecordMetadata};

/// A message to a partition task.
pub(crate) enum Command {
    /// A record to batch and send.
    Record {
        record: ProducerRecord,
        timestamp_ms: i64,
        pending: Pending,
    },
    /// Send what is batched now and answer once everything queued before this is answered.
    Flush(oneshot::Sender<()>),
}

/// A record on its way: where its answer goes, and its share of the buffer.
pub(crate) struct Pending {
    pub(crate) reply: oneshot::Sender<Result<RecordMetadata>>,
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// Batches and sends the records of one partition.
pub(crate) struct PartitionTask {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
    pub(crate) log: LogClient<Channel>,
    pub(crate) retry: RetryPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) linger: Duration,
    pub(crate) batch_bytes: usize,
    pub(crate) max_in_flight: usize,
    /// The idempotent producer's identity, if idempotence is on.
    pub(crate) identity: Option<Identity>,
}

/// An idempotent producer's id and epoch, from `InitProducer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
}

/// Where a batch of the window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// A request for it is on its way.
    Sending,
    /// Refused as out of order while a batch before it was unresolved: sent again once that
    /// one is on its way again (the broker waits for it), or renumbered.
    Resend,
    /// Answered (appended or failed for good).
    Done,
}

/// A sealed batch in the window of requests in flight.
struct Slot {
    id: u64,
    batch: Bytes,
    tickets: Vec<Pending>,
    state: SlotState,
    resends: u32,
}

/// How one request for a batch ended.
enum Sent {
    Appended(ProduceResponse),
    /// The broker refused it as out of order: a batch before it has not landed (yet).
    OutOfOrder(Error),
    Failed(Error),
}

impl PartitionTask {
    pub(crate) async fn run(self, mut commands: mpsc::Receiver<Command>) {
        let task = Arc::new(self);
        let mut accumulator: Accumulator<Pending> = Accumulator::new(task.batch_bytes, task.linger);
        if let Some(identity) = task.identity {
            accumulator.set_producer(Stamp {
                producer_id: identity.producer_id,
                epoch: identity.epoch,
                next_sequence: 0,
            });
        }
        // Sealed batches waiting for room in the window; at most two (see `receive`).
        let mut ready: VecDeque<Sealed<Pending>> = VecDeque::new();
        // Batches sent and not yet all answered, in sequence order.
        let mut window: VecDeque<Slot> = VecDeque::new();
        let mut sends: JoinSet<(u64, Sent)> = JoinSet::new();
        let mut next_slot: u64 = 0;
        // A batch of an idempotent producer failed for good: the batches after it carry
        // sequences the broker will never accept, and are renumbered once none is in flight.
        let mut broken = false;
        let mut sealed_count: u64 = 0;
        let mut answered_count: u64 = 0;
        let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
        let mut open = true;
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        loop {
            while window.front().is_some_and(|s| s.state == SlotState::Done) {
                window.pop_front();
            }
            if broken && sends.is_empty() {
                task.renumber(&mut window, &mut ready, &mut accumulator)
                    .await;
                broken = false;
            }
            if !broken {
                for slot in window.iter_mut().filter(|s| s.state == SlotState::Resend) {
                    slot.state = SlotState::Sending;
                    slot.resends += 1;
                    let delay = task.retry.delay(slot.resends.min(8) - 1, &Status::ok(""));
                    sends.spawn(task.clone().send(
                        slot.id,
                        slot.batch.clone(),
                        slot.tickets.len(),
                        delay,
                    ));
                }
                while window.len() < task.max_in_flight
                    && let Some(Sealed { batch, tickets }) = ready.pop_front()
                {
                    match batch {
                        Ok(batch) => {
                            let id = next_slot;
                            next_slot += 1;
                            sends.spawn(task.clone().send(
                                id,
                                batch.clone(),
                                tickets.len(),
                                Duration::ZERO,
                            ));
                            window.push_back(Slot {
                                id,
                                batch,
                                tickets,
                                state: SlotState::Sending,
                                resends: 0,
                            });
                        }
                        Err(source) => {
                            let error = Error::Encode {
                                topic: task.topic.to_string(),
                                partition: task.partition,
                                source,
                            };
                            for pending in tickets {
                                let _ = pending.reply.send(Err(error.clone()));
                            }
                            answered_count += 1;
                        }
                    }
                }
            }
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut flushes)
                .into_iter()
                .partition(|(target, _)| *target <= answered_count);
            flushes = waiting;
            for (_, reply) in done {
                let _ = reply.send(());
            }
            if !open
                && window.is_empty()
                && ready.is_empty()
                && sends.is_empty()
                && accumulator.record_count() == 0
            {
                break;
            }
            let deadline = accumulator.deadline();
            if let Some(deadline) = deadline
                && linger.deadline() != deadline
            {
                linger.as_mut().reset(deadline);
            }
            // Read more only while nothing sealed waits: a full window pushes back on `send`.
            let receive = open && ready.is_empty();
            let mut seal = false;
            tokio::select! {
                Some(joined) = sends.join_next(), if !sends.is_empty() => {
                    let Ok((id, sent)) = joined else {
                        // A send task panicked or was cancelled: nothing to answer from it.
                        continue;
                    };
                    let Some(index) = window.iter().position(|s| s.id == id) else {
                        continue;
                    };
                    let unresolved_before = window
                        .iter()
                        .take(index)
                        .any(|s| s.state != SlotState::Done);
                    let slot = &mut window[index];
                    match sent {
                        Sent::Appended(response) => {
                            task.answer(std::mem::take(&mut slot.tickets), Ok(response));
                            slot.state = SlotState::Done;
                            answered_count += 1;
                        }
                        Sent::OutOfOrder(_) if broken || unresolved_before => {
                            slot.state = SlotState::Resend;
                        }
                        Sent::OutOfOrder(error) | Sent::Failed(error) => {
                            task.answer(std::mem::take(&mut slot.tickets), Err(error));
                            slot.state = SlotState::Done;
                            answered_count += 1;
                            broken |= task.identity.is_some();
                        }
                    }
                }
                command = commands.recv(), if receive => match command {
                    Some(Command::Record { record, timestamp_ms, pending }) => {
                        let (closed, rejected) =
                            accumulator.push(Instant::now(), timestamp_ms, &record, pending);
                        if let Some(sealed) = closed {
                            sealed_count += 1;
                            ready.push_back(sealed);
                        }
                        if let Some((source, pending)) = rejected {
                            let _ = pending.reply.send(Err(Error::Encode {
                                topic: task.topic.to_string(),
                                partition: task.partition,
                                source,
                            }));
                        }
                        seal = accumulator.is_full();
                    }
                    Some(Command::Flush(reply)) => {
                        if let Some(sealed) = accumulator.seal() {
                            sealed_count += 1;
                            ready.push_back(sealed);
                        }
                        if answered_count >= sealed_count {
                            let _ = reply.send(());
                        } else {
                            flushes.push((sealed_count, reply));
                        }
                    }
                    None => {
                        open = false;
                        seal = true;
                    }
                },
                () = &mut linger, if deadline.is_some() && ready.is_empty() => seal = true,
            }
            if seal && let Some(sealed) = accumulator.seal() {
                sealed_count += 1;
                ready.push_back(sealed);
            }
        }
        for (_, reply) in flushes {
            let _ = reply.send(());
        }
    }

    /// After a batch failed for good: takes a fresh producer id (the broker will never accept
    /// the old id's later sequences) and restamps every unanswered batch with it from sequence
    /// 0, in order. None is in flight, so none can land under its old number afterwards. If no
    /// id can be had, those batches fail with that error.
    async fn renumber(
        &self,
        window: &mut VecDeque<Slot>,
        ready: &mut VecDeque<Sealed<Pending>>,
        accumulator: &mut Accumulator<Pending>,
    ) {
        let fresh = init_producer(&self.log, &self.retry, self.request_timeout, None).await;
        let mut stamp = match fresh {
            Ok(identity) => Stamp {
                producer_id: identity.producer_id,
                epoch: identity.epoch,
                next_sequence: 0,
            },
            Err(error) => {
                for slot in window.iter_mut().filter(|s| s.state != SlotState::Done) {
                    self.answer(std::mem::take(&mut slot.tickets), Err(error.clone()));
                    slot.state = SlotState::Done;
                }
                if let Some(stamp) = accumulator.producer() {
                    // Keep numbering: the batches still to come fail or land in order.
                    accumulator.set_producer(stamp);
                }
                return;
            }
        };
        tracing::warn!(
            topic = &*self.topic,
            partition = self.partition,
            producer_id = stamp.producer_id,
            "a batch failed for good; renumbering the batches after it under a new producer id"
        );
        let restamp = |batch: &Bytes, records: usize, stamp: &mut Stamp| -> Result<Bytes> {
            let mut bytes = bytes::BytesMut::from(&batch[..]);
            let first = stamp.take(records);
            restamp_producer(&mut bytes, stamp.producer_id, stamp.epoch, first).map_err(
                |source| Error::Encode {
                    topic: self.topic.to_string(),
                    partition: self.partition,
                    source,
                },
            )?;
            Ok(bytes.freeze())
        };
        for slot in window.iter_mut().filter(|s| s.state != SlotState::Done) {
            match restamp(&slot.batch, slot.tickets.len(), &mut stamp) {
                Ok(batch) => {
                    slot.batch = batch;
                    slot.state = SlotState::Resend;
                    slot.resends = 0;
                }
                Err(error) => {
                    self.answer(std::mem::take(&mut slot.tickets), Err(error));
                    slot.state = SlotState::Done;
                }
            }
        }
        for sealed in ready.iter_mut() {
            if let Ok(batch) = &sealed.batch {
                sealed.batch =
                    restamp(batch, sealed.tickets.len(), &mut stamp).map_err(|e| match e {
                        Error::Encode { source, .. } => source,
                        _ => FormatError::Empty,
                    });
            }
        }
        accumulator.set_producer(stamp);
    }

    /// Answers each record of a batch.
    fn answer(&self, tickets: Vec<Pending>, outcome: Result<ProduceResponse>) {
        match outcome {
            Ok(response) => {
                for (index, pending) in (0u64..).zip(tickets) {
                    let _ = pending.reply.send(Ok(RecordMetadata {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        offset: response.base_offset + index,
                        append_time_ms: response.append_time_ms,
                    }));
                }
            }
            Err(error) => {
                tracing::debug!(
                    topic = &*self.topic,
                    partition = self.partition,
                    records = tickets.len(),
                    %error,
                    "batch failed"
                );
                for pending in tickets {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Sends one batch after `delay`, retrying as the policy allows (a batch of an idempotent
    /// producer is safe to retry after a timeout too: a duplicate is answered, not appended).
    async fn send(
        self: Arc<Self>,
        id: u64,
        batch: Bytes,
        records: usize,
        delay: Duration,
    ) -> (u64, Sent) {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let idempotency = if self.identity.is_some() {
            Idempotency::Idempotent
        } else {
            Idempotency::NonIdempotent
        };
        let sent = produce(
            &self.log,
            &self.retry,
            idempotency,
            self.request_timeout,
            &self.topic,
            self.partition,
            batch,
            Some(records),
        )
        .await;
        let sent = match sent {
            Ok((response, _attempts)) => Sent::Appended(response),
            Err((error, true)) => Sent::OutOfOrder(error),
            Err((error, false)) => Sent::Failed(error),
        };
        (id, sent)
    }
}

/// Asks the broker for an idempotent producer's id and epoch.
pub(crate) async fn init_producer(
    log: &LogClient<Channel>,
    retry: &RetryPolicy,
    timeout: Duration,
    transactional_id: Option<&str>,
) -> Result<Identity> {
    let response = connection::with_retry(retry, Idempotency::NonIdempotent, timeout, || {
        let request = InitProducerRequest {
            transactional_id: transactional_id.map(str::to_owned),
        };
        let mut log = log.clone();
        async move {
            log.init_producer(connection::request(request, timeout))
                .await
        }
    })
    .await
    .map_err(|f| {
        Error::broker(
            "init producer for",
            transactional_id.unwrap_or("(no transactional id)"),
            None,
            &f.status,
            f.attempts,
        )
    })?;
    let epoch = i16::try_from(response.producer_epoch).map_err(|_| Error::UnexpectedResponse {
        operation: "init producer",
        topic: String::new(),
        what: format!("epoch {}", response.producer_epoch),
    })?;
    Ok(Identity {
        producer_id: response.producer_id,
        epoch,
    })
}

/// Sends one encoded batch with the retry policy; checks that the broker's offsets cover
/// `records`, if given. Answers the response and the attempts it took, or the error and
/// whether the broker refused the batch as out of sequence.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn produce(
    log: &LogClient<Channel>,
    retry: &RetryPolicy,
    idempotency: Idempotency,
    timeout: Duration,
    topic: &str,
    partition: u32,
    batch: Bytes,
    records: Option<usize>,
) -> std::result::Result<(ProduceResponse, u32), (Error, bool)> {
    let (response, attempts) = connection::with_retry_counted(retry, idempotency, timeout, || {
        let request = ProduceRequest {
            topic: topic.to_owned(),
            partition,
            batch: batch.clone(),
        };
        let mut log = log.clone();
        async move { log.produce(connection::request(request, timeout)).await }
    })
    .await
    .map_err(|f| {
        let out_of_order = f
            .status
            .metadata()
            .get(ERROR_KIND)
            .is_some_and(|kind| kind == "out-of-order-sequence");
        (
            Error::broker("produce to", topic, Some(partition), &f.status, f.attempts),
            out_of_order,
        )
    })?;
    let answered = response
        .last_offset
        .checked_sub(response.base_offset)
        .and_then(|delta| delta.checked_add(1));
    if let Some(records) = records
        && answered != Some(records as u64)
    {
        return Err((
            Error::UnexpectedResponse {
                operation: "produce to",
                topic: format!("{topic}/{partition}"),
                what: format!(
                    "offsets {}..={} for a batch of {records} records",
                    response.base_offset, response.last_offset
                ),
            },
            false,
        ));
    }
    Ok((response, attempts))
}
