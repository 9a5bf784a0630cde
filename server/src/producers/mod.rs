//! Idempotent producers (design.md §2, issue "idempotent pipelined producers"): producer ids
//! issued by `InitProducer` and kept in the internal compacted topic `__producer_ids`, and the
//! settings every partition's sequence check shares. The per-partition state is
//! [`state::ProducerStates`]; the check itself runs in the write path
//! ([`Partition::produce`](crate::partition::Partition::produce)).
//!
//! `__producer_ids` holds two kinds of records, both keyed, so compaction keeps one per key:
//! - key `next`: value `u64` LE, the next producer id to issue;
//! - key `t:` + transactional id: value `i64` id + `i16` epoch LE, the producer that id has now.
//!
//! A producer without a transactional id gets a new id with epoch 0. One with a transactional
//! id gets the same id with the epoch bumped, which fences the older instance on every
//! partition that sees the newer one (the older epoch's batches are refused there).

pub mod state;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::partition::{Origin, Partition};
use crate::topics::Topics;
use bytes::Bytes;
use sluice_storage::format::{BatchBuilder, BatchView};
use sluice_storage::replay::StateMachine;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The internal topic of issued producer ids.
pub const PRODUCER_IDS_TOPIC: &str = "__producer_ids";
/// Longest transactional id, bytes.
pub const MAX_TRANSACTIONAL_ID_BYTES: usize = 249;
const NEXT_KEY: &[u8] = b"next";
const TRANSACTIONAL_PREFIX: &[u8] = b"t:";

/// What every partition's sequence check shares.
#[derive(Debug)]
pub struct Sequencing {
    /// The next producer id to issue: a batch naming an id at or above it was not issued by
    /// this broker.
    pub issued: AtomicI64,
    /// A producer not seen for this long is forgotten by a partition.
    pub idle_ms: i64,
    /// Most producers a partition keeps state for.
    pub max_per_partition: usize,
    /// How long a batch ahead of its producer's expected sequence waits for the batches before
    /// it (pipelined requests may arrive out of order) before it is refused as out of order.
    pub reorder_wait: Duration,
    /// The broker's clock.
    pub clock: Clock,
}

impl Sequencing {
    /// Settings with nothing issued yet (ids start at 0).
    pub fn new(
        idle_ms: i64,
        max_per_partition: usize,
        reorder_wait: Duration,
        clock: Clock,
    ) -> Self {
        Self {
            issued: AtomicI64::new(0),
            idle_ms,
            max_per_partition,
            reorder_wait,
            clock,
        }
    }
}

/// An issued producer identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// The producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
}

/// Issues producer ids, durably, through the write path.
#[derive(Debug)]
pub struct ProducerIds {
    log: Arc<Partition>,
    sequencing: Arc<Sequencing>,
    /// Serialises issuing: each one reads, appends and updates the map.
    issuing: tokio::sync::Mutex<HashMap<String, ProducerIdentity>>,
}

/// `__producer_ids` replayed: the next id and the transactional ids' producers.
#[derive(Default)]
struct Issued {
    next: i64,
    transactional: HashMap<String, ProducerIdentity>,
}

impl StateMachine for Issued {
    type Error = Error;

    fn restore(&mut self, _state: &[u8]) -> Result<()> {
        // This topic is compacted, never snapshotted.
        Ok(())
    }

    fn apply(&mut self, batch: &BatchView<'_>) -> Result<()> {
        for record in batch.records() {
            let (Some(key), Some(value)) = (record.key, record.value) else {
                continue;
            };
            if key == NEXT_KEY {
                if let Ok(bytes) = <[u8; 8]>::try_from(value) {
                    self.next = self.next.max(i64::from_le_bytes(bytes));
                }
            } else if let Some(id) = key.strip_prefix(TRANSACTIONAL_PREFIX)
                && let Ok(id) = std::str::from_utf8(id)
                && let Some((pid, epoch)) = value.split_first_chunk::<8>()
                && let Ok(epoch) = <[u8; 2]>::try_from(epoch)
            {
                let identity = ProducerIdentity {
                    producer_id: i64::from_le_bytes(*pid),
                    epoch: i16::from_le_bytes(epoch),
                };
                self.next = self.next.max(identity.producer_id + 1);
                self.transactional.insert(id.to_owned(), identity);
            }
        }
        Ok(())
    }
}

impl ProducerIds {
    /// Opens (creating if needed) `__producer_ids` and replays it (blocking); sets
    /// `sequencing.issued`.
    pub fn open(topics: &Topics, segment_bytes: u64, sequencing: Arc<Sequencing>) -> Result<Self> {
        let topic = crate::groups::internal_topic(topics, PRODUCER_IDS_TOPIC, segment_bytes)?;
        let log = Arc::clone(topic.partition(0)?);
        let mut issued = Issued::default();
        log.replay(&mut issued)?;
        sequencing.issued.store(issued.next, Ordering::Release);
        tracing::info!(
            next_producer_id = issued.next,
            transactional_ids = issued.transactional.len(),
            "replayed producer ids"
        );
        Ok(Self {
            log,
            sequencing,
            issuing: tokio::sync::Mutex::new(issued.transactional),
        })
    }

    /// Issues a producer identity: a new id with epoch 0, or for `transactional_id` the id it
    /// had with the epoch bumped (a new id once the epoch would overflow). Answers once the
    /// issue is durable.
    pub async fn init(&self, transactional_id: Option<&str>) -> Result<ProducerIdentity> {
        if let Some(id) = transactional_id
            && (id.is_empty() || id.len() > MAX_TRANSACTIONAL_ID_BYTES || id.contains('\0'))
        {
            return Err(Error::invalid(
                "transactional_id",
                id,
                "must be 1 to 249 bytes without NUL",
            ));
        }
        let mut transactional = self.issuing.lock().await;
        let next = self.sequencing.issued.load(Ordering::Acquire);
        let previous = transactional_id.and_then(|id| transactional.get(id).copied());
        let identity = match previous {
            Some(p) if p.epoch < i16::MAX => ProducerIdentity {
                producer_id: p.producer_id,
                epoch: p.epoch + 1,
            },
            _ => ProducerIdentity {
                producer_id: next,
                epoch: 0,
            },
        };
        let new_next = next.max(identity.producer_id + 1);
        let mut builder = BatchBuilder::new();
        let now = self.sequencing.clock.now_ms();
        let next_bytes = new_next.to_le_bytes();
        builder
            .push(now, Some(NEXT_KEY), Some(&next_bytes), &[])
            .map_err(sluice_storage::Error::InvalidBatch)?;
        if let Some(id) = transactional_id {
            let key = [TRANSACTIONAL_PREFIX, id.as_bytes()].concat();
            let mut value = identity.producer_id.to_le_bytes().to_vec();
            value.extend_from_slice(&identity.epoch.to_le_bytes());
            builder
                .push(now, Some(&key), Some(&value), &[])
                .map_err(sluice_storage::Error::InvalidBatch)?;
        }
        let batch = builder
            .finish()
            .map_err(sluice_storage::Error::InvalidBatch)?;
        self.log.append(Bytes::from(batch), Origin::Broker).await?;
        self.sequencing.issued.store(new_next, Ordering::Release);
        if let Some(id) = transactional_id {
            transactional.insert(id.to_owned(), identity);
        }
        Ok(identity)
    }
}
