//! Sluice's storage engine: an append-only, segmented log of record batches.
//!
//! - [`format`]: the record batch, one format on the wire and on disk (design.md §2).
//! - [`Log`]: one partition — segments, sparse indexes, offsets, group commit, zero-copy reads.
//! - [`Store`]: a data directory of logs sharing one bound on open files and mappings.
//!
//! The crate is synchronous and knows nothing of the network: calls that write or sync block the
//! calling thread, so an async caller runs them on a blocking pool (design.md §3).
#![deny(unsafe_code)]

mod cache;
pub mod config;
mod error;
pub mod format;
mod index;
mod log;
mod mmap;
mod recovery;
mod segment;
mod stats;
mod store;

pub use config::{Durability, LogConfig, StoreConfig};
pub use error::{Corruption, Error, Result};
pub use log::{AppendInfo, HighWatermarkListener, Log, ReadResult};
pub use stats::StatsSnapshot;
pub use store::Store;
