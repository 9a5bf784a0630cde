//! The Sluice client: an async [`Producer`] that batches per partition, and a [`Consumer`] that
//! fetches, decodes and tracks offsets (design.md §5).
//!
//! - [`connection`]: the HTTP/2 channel to the broker and the [`RetryPolicy`] every request
//!   goes through.
//! - [`Producer`]: per-partition batching (linger and size bounds), key-hash or round-robin
//!   partitioning, a bounded buffer, retries with backoff; one `Produce` in flight per
//!   partition, so order within a partition holds.
//! - [`Admin`]: topics: create, delete, list, describe.
//! - [`Queue`] and [`Worker`]: queue mode — leases, acks, nacks, and a pool of handlers that
//!   extends leases while it works, batches acks and drains on shutdown.
//! - [`Consumer`]: assigned partitions, long-poll fetches, checksum-verified zero-copy decoding,
//!   positions, seeks, and group offset commits.
//!
//! The batch encoder is the storage crate's, re-exported here: the bytes a producer builds are
//! the bytes the broker validates and appends, so both sides share one implementation.
#![forbid(unsafe_code)]

mod accumulator;
pub mod admin;
pub mod config;
pub mod connection;
mod consumer;
mod error;
mod group;
mod lane;
pub mod partitioner;
mod producer;
pub mod queue;
mod worker;

pub use admin::Admin;
pub use config::{ConnectionConfig, ConsumerConfig, ProducerConfig};
pub use connection::{Idempotency, RetryPolicy};
pub use consumer::{ConsumedRecord, Consumer, OffsetReset, StartFrom};
pub use error::{Error, Result};
pub use group::{Rebalance, TopicPartition};
pub use partitioner::Partitioner;
pub use producer::{BatchMetadata, DeliveryFuture, Producer, ProducerRecord, RecordMetadata};
pub use queue::{Job, Queue, RedriveRange};
pub use sluice_storage::format::{BatchBuilder, BatchView, FormatError, Header, Record};
pub use worker::{Worker, WorkerStats};
