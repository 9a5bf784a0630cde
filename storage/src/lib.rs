//! Sluice's storage engine: an append-only, segmented log of record batches.
//!
//! - [`format`]: the record batch, one format on the wire and on disk (design.md §2).
//! - [`Log`]: one partition — segments, sparse indexes, offsets, group commit, zero-copy reads.
//! - [`Store`]: a data directory of logs sharing one bound on open files and mappings.
//! - [`replay`]: rebuilding a caller's state machine from a log (and an optional snapshot).
//! - [`Log::compact`]: keeping the latest record per key (compacted topics).
//!
//! Modules depend one way: `format`, `index`, `mmap`, `io` at the bottom; `segment` on them;
//! `swap` (crash-safe replacement of segment files) on `segment`; `recovery` on `segment` and
//! `swap` (it returns what it found, it builds no log); `retention` and `compaction` are pure
//! policy; `log` on all of those; `replay` and `store` on `log`.
//!
//! The crate is synchronous and knows nothing of the network: calls that write or sync block the
//! calling thread, so an async caller runs them on a blocking pool (design.md §3).
#![deny(unsafe_code)]

mod cache;
mod compaction;
pub mod config;
mod error;
pub mod format;
mod index;
pub mod io;
mod log;
mod mmap;
mod recovery;
pub mod replay;
mod retention;
mod segment;
mod shared;
mod stats;
mod store;
mod swap;

pub use compaction::{CHECKPOINT_VERSION, CompactionLimits, CompactionReport};
pub use config::{Clock, Durability, LogConfig, StoreConfig, TimeSource};
pub use error::{Corruption, Error, Result};
pub use io::{FaultOp, Faults};
pub use log::{AppendInfo, HighWatermarkListener, Log, ReadResult};
pub use recovery::Report as RecoveryReport;
pub use stats::StatsSnapshot;
pub use store::Store;
