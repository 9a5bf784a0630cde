//! Atomic counters a log keeps about itself; the server exports them (no global registry).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one log, updated with relaxed atomics on the hot path (once per batch).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub appended_batches: AtomicU64,
    pub appended_records: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub read_bytes: AtomicU64,
    pub rolled_segments: AtomicU64,
    pub deleted_segments: AtomicU64,
    pub compactions: AtomicU64,
    pub compacted_segments: AtomicU64,
}

/// A copy of a log's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Batches appended since the log was opened.
    pub appended_batches: u64,
    /// Records appended since the log was opened.
    pub appended_records: u64,
    /// Bytes appended since the log was opened.
    pub appended_bytes: u64,
    /// `fdatasync` calls made by group commit.
    pub syncs: u64,
    /// Bytes handed out by reads.
    pub read_bytes: u64,
    /// Segments rolled.
    pub rolled_segments: u64,
    /// Segments deleted by retention.
    pub deleted_segments: u64,
    /// Compaction passes that ran.
    pub compactions: u64,
    /// Segments replaced by compaction.
    pub compacted_segments: u64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            appended_batches: load(&self.appended_batches),
            appended_records: load(&self.appended_records),
            appended_bytes: load(&self.appended_bytes),
            syncs: load(&self.syncs),
            read_bytes: load(&self.read_bytes),
            rolled_segments: load(&self.rolled_segments),
            deleted_segments: load(&self.deleted_segments),
            compactions: load(&self.compactions),
            compacted_segments: load(&self.compacted_segments),
        }
    }
}
