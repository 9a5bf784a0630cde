//! The background compactor: every `compaction_check_interval_ms` of the broker's clock, one
//! compaction pass (if one is due) on each partition of each compacted topic, on the blocking
//! pool, one partition at a time, so the broker holds at most one pass's key map
//! (`compaction_max_map_entries`). Tombstones are judged by the broker's clock
//! ([`Broker::clock`]), so tests on paused tokio time move compaction with `advance`.
//!
//! While no topic is compacted it waits for one with no timer armed: a broker without
//! compacted topics never wakes for them, and on paused time an idle runtime's clock does not
//! jump to a compactor tick that nothing needs.
//!
//! A pass over a partition is bounded by the storage engine's [`CompactionLimits`]; between
//! partitions the compactor stops if the broker is shutting down, and a pass in progress
//! stops at its next batch once its log is closed.

use crate::Broker;
use crate::error::blocking;
use sluice_storage::CompactionLimits;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Runs compaction passes on the configured interval until `stop` turns true.
pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(broker.config.compaction_check_interval_ms);
    let limits: CompactionLimits = broker.config.compaction_limits();
    let mut compacted = broker.topics.watch_compacted();
    loop {
        tokio::select! {
            some = compacted.wait_for(|count| *count > 0) => {
                if some.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        // Read on the runtime's own thread: a clock that follows paused tokio time reads it
        // here.
        let now_ms = broker.clock.now_ms();
        let pass = Arc::clone(&broker);
        let stopping = stop.clone();
        let passed =
            blocking(move || Ok(pass.topics.compact(now_ms, &limits, || *stopping.borrow()))).await;
        match passed {
            Ok(0) => {}
            Ok(partitions) => tracing::debug!(partitions, "compaction passes ran"),
            Err(error) => tracing::warn!(%error, "compaction pass failed"),
        }
    }
}
