//! [`Producer`]: batches records per partition and sends them with one `Produce` per batch,
//! up to `max_in_flight` per partition at once.
//!
//! ```text
//! send() ─ partition ─ buffer permit ─ mpsc(partition_queue_records) ─▶ partition task
//!     partition task: Accumulator (linger, batch_bytes; stamps id, epoch, sequence) ─▶ ready
//!                     ─▶ window of up to max_in_flight Produce requests
//!                     ─▶ ack: every record's DeliveryFuture gets base_offset + index
//! ```
//!
//! Invariants:
//! - One task per (topic, partition), started on the first record for it.
//! - Idempotent (the default): the producer takes an id and epoch from the broker
//!   (`InitProducer`) and each sealed batch the next sequence numbers of its partition. The
//!   broker appends a batch only if its sequence follows the last one appended, answers a
//!   retry of one of the last 5 with the original offsets, and makes a batch that overtook
//!   its predecessor wait for it. So up to 5 requests per partition are in flight, every
//!   retry (lost connection, timeout, broker restart) is safe, and records of a partition are
//!   appended once, in `send` order. A batch refused as out of order while one before it is
//!   unanswered is sent again; a batch that fails for good fails its records, and the batches
//!   after it are renumbered under a fresh producer id once none is in flight (their old
//!   sequences can never be accepted).
//! - Not idempotent: a produce lost with its connection (`UNAVAILABLE`) is retried and may be
//!   appended twice; one that timed out is not retried (it fails with `DEADLINE_EXCEEDED`);
//!   with more than one request in flight a retried batch may land after a later one.
//! - Memory is bounded: `buffer_bytes` of records (a semaphore, released when a batch is
//!   acknowledged or failed), `partition_queue_records` queued per partition, and per partition
//!   `max_in_flight` batches in flight, at most two sealed and one open.
//! - A topic's partition count and `max_batch_bytes` are read once with `DescribeTopic` and
//!   cached for the producer's life.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_proto::v1::log_client::LogClient;
use sluice_proto::v1::{DescribeTopicRequest, admin_client::AdminClient};
use sluice_storage::format::HEADER_LEN;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::config::{BROKER_MAX_BATCH_BYTES, ProducerConfig};
use crate::connection::{self, Idempotency};
use crate::error::{Error, Result};
use crate::lane::{Command, Identity, PartitionTask, Pending, init_producer, produce};

/// Bytes a record is charged in the buffer beyond its key, value and header bytes: its varints
/// and attribute byte (an upper bound for a record with small deltas).
const RECORD_OVERHEAD_BYTES: usize = 24;
/// Bytes charged per header beyond its key and value.
const HEADER_OVERHEAD_BYTES: usize = 8;

/// One record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The key; records with the same key go to the same partition under
    /// [`Partitioner::KeyHash`](crate::Partitioner::KeyHash). `None` is null.
    pub key: Option<Bytes>,
    /// The value; `None` is null (a tombstone in compacted topics).
    pub value: Option<Bytes>,
    /// Headers in order; keys are UTF-8, `sluice.*` keys carry queue-mode options (design.md §2).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time, ms since the Unix epoch; `None` takes the time of `send`.
    pub timestamp_ms: Option<i64>,
    /// The partition; `None` lets the producer's partitioner choose.
    pub partition: Option<u32>,
}

impl ProducerRecord {
    /// A keyless record holding `value`.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// A record with `key` and `value`.
    pub fn with_key(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Appends a header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: Option<Bytes>) -> Self {
        self.headers.push((key.into(), value));
        self
    }

    /// Sets the create time, ms since the Unix epoch.
    #[must_use]
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Sends the record to `partition`, bypassing the partitioner.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Bytes the record is charged in the producer's buffer: key, value and headers plus a
    /// fixed overhead per record and per header.
    pub fn buffer_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(key, value)| key.len() + value.as_ref().map_or(0, Bytes::len))
            .sum();
        RECORD_OVERHEAD_BYTES
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers
            + HEADER_OVERHEAD_BYTES * self.headers.len()
    }
}

/// Where an acknowledged record was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The record's offset: its batch's base offset plus its index in the batch.
    pub offset: u64,
    /// The broker's append time of the batch, ms since the Unix epoch.
    pub append_time_ms: i64,
}

/// Where a batch sent with [`Producer::send_batch`] was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// The broker's append time, ms since the Unix epoch.
    pub append_time_ms: i64,
    /// Attempts the send took (more than 1 after back pressure or a lost connection).
    pub attempts: u32,
}

/// Resolves once the broker acknowledged (or finally refused) the batch holding a record.
///
/// Dropping it does not cancel the record: it is sent all the same.
#[derive(Debug)]
#[must_use = "a DeliveryFuture tells whether the record was appended"]
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Error::Closed)))
    }
}

/// An async producer: cheap to clone (clones share batches, buffer and connection), `Send` and
/// `Sync`.
///
/// ```no_run
/// # async fn example() -> sluice_client::Result<()> {
/// use sluice_client::{Producer, ProducerConfig, ProducerRecord};
/// let producer = Producer::connect(ProducerConfig::new().broker("127.0.0.1:7070")).await?;
/// let delivery = producer.send("orders", ProducerRecord::with_key("user-1", "paid")).await?;
/// let metadata = delivery.await?;
/// println!("appended at {}/{}", metadata.partition, metadata.offset);
/// producer.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("broker", &self.inner.config.connection.address)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: ProducerConfig,
    log: LogClient<Channel>,
    admin: AdminClient<Channel>,
    /// `buffer_bytes` permits; a record holds its share until its batch is answered.
    buffer: Arc<Semaphore>,
    /// The idempotent producer's id and epoch (idempotence on).
    identity: Option<Identity>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    topics: HashMap<Arc<str>, TopicEntry>,
    tasks: Vec<JoinHandle<()>>,
}

struct TopicEntry {
    meta: Arc<TopicMeta>,
    /// One queue per partition, created with its task on the partition's first record.
    partitions: Vec<Option<mpsc::Sender<Command>>>,
}

/// What the producer knows of a topic, from `DescribeTopic`.
#[derive(Debug)]
struct TopicMeta {
    name: Arc<str>,
    partitions: u32,
    max_batch_bytes: usize,
    /// Round-robin cursor for records without a key (or all, under `RoundRobin`).
    cursor: AtomicU32,
}

impl Producer {
    /// Validates `config` and connects to the broker.
    pub async fn connect(config: ProducerConfig) -> Result<Self> {
        config.validate()?;
        let channel = connection::connect(&config.connection).await?;
        let log = connection::log_client(channel.clone(), &config.connection);
        let identity = if config.idempotence {
            Some(
                init_producer(
                    &log,
                    &config.retry,
                    config.request_timeout,
                    config.transactional_id.as_deref(),
                )
                .await?,
            )
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                identity,
                log,
                admin: connection::admin_client(channel, &config.connection),
                buffer: Arc::new(Semaphore::new(config.buffer_bytes)),
                state: Mutex::new(State::default()),
                config,
            }),
        })
    }

    /// The config the producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// The id and epoch the broker gave this producer, if it is idempotent. Batches sent with
    /// [`send_batch`](Self::send_batch) may carry them (with their own per-partition
    /// sequences) to get the broker's sequence check.
    pub fn identity(&self) -> Option<(i64, i16)> {
        self.inner.identity.map(|i| (i.producer_id, i.epoch))
    }

    /// Queues `record` for `topic` and returns once it is in its partition's queue; the
    /// returned future resolves when the broker acknowledged (or refused) it.
    ///
    /// Waits while the buffer is full, at most `max_block`. Fails at once if the topic does not
    /// exist, the record names a partition the topic lacks, or the record cannot fit the
    /// buffer or the topic's `max_batch_bytes`.
    pub async fn send(&self, topic: &str, record: ProducerRecord) -> Result<DeliveryFuture> {
        let inner = &self.inner;
        let meta = self.topic(topic).await?;
        let partition = match record.partition {
            Some(partition) if partition >= meta.partitions => {
                return Err(Error::UnknownPartition {
                    topic: topic.to_owned(),
                    partition,
                    partitions: meta.partitions,
                });
            }
            Some(partition) => partition,
            None => inner.config.partitioner.partition(
                record.key.as_deref(),
                meta.partitions,
                &meta.cursor,
            ),
        };
        let len = record.buffer_len();
        // The charge includes an overhead that may overstate; refuse only what surely fails.
        let min_batch_len = HEADER_LEN + len - RECORD_OVERHEAD_BYTES;
        if min_batch_len > meta.max_batch_bytes {
            return Err(Error::RecordTooLarge {
                topic: topic.to_owned(),
                len: min_batch_len,
                limit: "max_batch_bytes",
                max: meta.max_batch_bytes,
            });
        }
        if len > inner.config.buffer_bytes {
            return Err(Error::RecordTooLarge {
                topic: topic.to_owned(),
                len,
                limit: "buffer_bytes",
                max: inner.config.buffer_bytes,
            });
        }
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let started = Instant::now();
        let deadline = started + inner.config.max_block;
        let buffer_full = || Error::BufferFull {
            waited: started.elapsed(),
            len,
            buffer_bytes: inner.config.buffer_bytes,
        };
        // `len <= buffer_bytes <= u32::MAX`, checked above and by validate().
        let permits = u32::try_from(len).map_err(|_| buffer_full())?;
        // The fast paths take no timer: most sends find space at once.
        let permit = match inner.buffer.clone().try_acquire_many_owned(permits) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(Error::Closed),
            Err(TryAcquireError::NoPermits) => {
                tokio::time::timeout_at(deadline, inner.buffer.clone().acquire_many_owned(permits))
                    .await
                    .map_err(|_| buffer_full())?
                    .map_err(|_| Error::Closed)?
            }
        };
        let sender = self.partition_queue(&meta, partition)?;
        let (reply, receiver) = oneshot::channel();
        let command = Command::Record {
            record,
            timestamp_ms,
            pending: Pending {
                reply,
                _permit: permit,
            },
        };
        match sender.try_send(command) {
            Ok(()) => Ok(DeliveryFuture { receiver }),
            Err(TrySendError::Closed(_)) => Err(Error::Closed),
            Err(TrySendError::Full(command)) => {
                match tokio::time::timeout_at(deadline, sender.send(command)).await {
                    Ok(Ok(())) => Ok(DeliveryFuture { receiver }),
                    Ok(Err(_)) => Err(Error::Closed),
                    Err(_) => Err(buffer_full()),
                }
            }
        }
    }

    /// Sends one batch already encoded (a [`BatchBuilder`](crate::BatchBuilder) batch,
    /// `base_offset` 0) to `topic`/`partition` as it is, outside the per-partition batching,
    /// with the retry policy (back pressure honoured). For load generators and tools that
    /// build their own batches: concurrent calls may land in any order.
    pub async fn send_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<BatchMetadata> {
        let config = &self.inner.config;
        let (response, attempts) = produce(
            &self.inner.log,
            &config.retry,
            Idempotency::NonIdempotent,
            config.request_timeout,
            topic,
            partition,
            batch,
            None,
        )
        .await
        .map_err(|(error, _)| error)?;
        Ok(BatchMetadata {
            base_offset: response.base_offset,
            last_offset: response.last_offset,
            append_time_ms: response.append_time_ms,
            attempts,
        })
    }

    /// Sends every record queued so far without waiting for `linger`, and waits until each was
    /// acknowledged or failed (their `DeliveryFuture`s are resolved when this returns).
    pub async fn flush(&self) {
        let senders: Vec<mpsc::Sender<Command>> = {
            let state = lock(&self.inner.state);
            state
                .topics
                .values()
                .flat_map(|entry| entry.partitions.iter().flatten().cloned())
                .collect()
        };
        let mut waits = Vec::with_capacity(senders.len());
        for sender in senders {
            let (done, wait) = oneshot::channel();
            if sender.send(Command::Flush(done)).await.is_ok() {
                waits.push(wait);
            }
        }
        for wait in waits {
            // An error means the task ended, which it does only after finishing its records.
            let _ = wait.await;
        }
    }

    /// Refuses further sends, sends everything queued, waits for every answer and stops the
    /// partition tasks. Clones of this producer are closed too. A batch still being retried
    /// is waited for, so this takes at most the retry policy's attempts times
    /// `request_timeout`, plus backoff.
    pub async fn close(&self) {
        let tasks = {
            let mut state = lock(&self.inner.state);
            state.closed = true;
            // Dropping the queues' senders ends each task once it has drained its queue.
            state.topics.clear();
            std::mem::take(&mut state.tasks)
        };
        for task in tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "producer partition task failed");
            }
        }
    }

    /// The topic's metadata, from the cache or `DescribeTopic`.
    async fn topic(&self, topic: &str) -> Result<Arc<TopicMeta>> {
        {
            let state = lock(&self.inner.state);
            if state.closed {
                return Err(Error::Closed);
            }
            if let Some(entry) = state.topics.get(topic) {
                return Ok(entry.meta.clone());
            }
        }
        let config = &self.inner.config;
        let response = connection::with_retry(
            &config.retry,
            Idempotency::Idempotent,
            config.request_timeout,
            || {
                let request = DescribeTopicRequest {
                    name: topic.to_owned(),
                };
                let mut admin = self.inner.admin.clone();
                async move {
                    admin
                        .describe_topic(connection::request(request, config.request_timeout))
                        .await
                }
            },
        )
        .await
        .map_err(|f| Error::broker("describe topic", topic, None, &f.status, f.attempts))?;
        let description = response.topic.ok_or_else(|| Error::UnexpectedResponse {
            operation: "describe topic",
            topic: topic.to_owned(),
            what: "no topic description".to_owned(),
        })?;
        let partitions = u32::try_from(description.partitions.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::UnexpectedResponse {
                operation: "describe topic",
                topic: topic.to_owned(),
                what: format!("{} partitions", description.partitions.len()),
            })?;
        let max_batch_bytes = description
            .config
            .and_then(|c| c.max_batch_bytes)
            .map_or(BROKER_MAX_BATCH_BYTES, |bytes| bytes as usize);
        let meta = Arc::new(TopicMeta {
            name: Arc::from(topic),
            partitions,
            max_batch_bytes,
            cursor: AtomicU32::new(rand::random()),
        });
        let mut state = lock(&self.inner.state);
        if state.closed {
            return Err(Error::Closed);
        }
        let entry = state
            .topics
            .entry(meta.name.clone())
            .or_insert_with(|| TopicEntry {
                meta,
                partitions: vec![None; partitions as usize],
            });
        Ok(entry.meta.clone())
    }

    /// The queue of `partition`'s task, starting the task if this is its first record.
    fn partition_queue(&self, meta: &TopicMeta, partition: u32) -> Result<mpsc::Sender<Command>> {
        let inner = &self.inner;
        let mut state = lock(&inner.state);
        let State {
            closed,
            topics,
            tasks,
        } = &mut *state;
        if *closed {
            return Err(Error::Closed);
        }
        let slot = topics
            .get_mut(&*meta.name)
            .and_then(|entry| entry.partitions.get_mut(partition as usize))
            .ok_or(Error::Closed)?;
        if let Some(sender) = slot {
            return Ok(sender.clone());
        }
        let (sender, receiver) = mpsc::channel(inner.config.partition_queue_records);
        let task = PartitionTask {
            topic: meta.name.clone(),
            partition,
            log: inner.log.clone(),
            retry: inner.config.retry,
            request_timeout: inner.config.request_timeout,
            linger: inner.config.linger,
            batch_bytes: inner.config.batch_bytes.min(meta.max_batch_bytes),
            max_in_flight: inner.config.max_in_flight,
            identity: inner.identity,
        };
        tasks.push(tokio::spawn(task.run(receiver)));
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No code panics while holding the lock; if one did, the state is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_len_counts_payload_and_overhead() {
        let rec = ProducerRecord::with_key("key", "value").header("h", Some(Bytes::from("vv")));
        assert_eq!(
            rec.buffer_len(),
            RECORD_OVERHEAD_BYTES + 3 + 5 + 1 + 2 + HEADER_OVERHEAD_BYTES
        );
        assert_eq!(
            ProducerRecord::default().buffer_len(),
            RECORD_OVERHEAD_BYTES
        );
    }

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn producer_is_send_sync_clone() {
        assert_send_sync::<Producer>();
    }
}
