//! Group commit: one `fdatasync` for every append written before it began.
//!
//! Callers of [`Log::flush`] that arrive while a sync runs wait for it and, if it did not cover
//! their writes, one of them runs the next, so concurrent appenders share syncs (never one per
//! record). After a successful sync the durable offset advances (and under `Always` the high
//! watermark with it) and the active segment's checkpoint is rewritten, unsynced: losing it only
//! makes the next recovery scan further. A failed sync poisons the log; fsync is never retried,
//! because a retry can report success for pages the kernel already dropped.

use super::Log;
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::io::FaultOp;
use crate::segment::{CHECKPOINT, Checkpoint};
use crate::stats::Stats;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

/// Who is syncing, and how far the last sync reached.
#[derive(Debug)]
pub(super) struct SyncState {
    /// A caller is in fdatasync now.
    syncing: bool,
    /// Offsets below this are on disk.
    durable: u64,
}

impl SyncState {
    pub(super) fn new(durable: u64) -> Self {
        Self {
            syncing: false,
            durable,
        }
    }
}

impl Log {
    fn lock_sync(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Group commit: fdatasyncs everything written so far and advances the durable offset (and,
    /// under `Always`, the high watermark) to it. Returns the durable offset.
    ///
    /// Callers that arrive while a sync is running wait for it and, if it did not cover their
    /// writes, one of them runs the next: one fdatasync per group of appends, never one per
    /// record. After a failed fdatasync the log is poisoned: the data may be lost, so this and
    /// every later write fails until the log is reopened (no retry of fsync).
    pub fn flush(&self) -> Result<u64> {
        let target = self.log_end.load(Ordering::Acquire);
        let mut state = self.lock_sync();
        loop {
            if state.durable >= target {
                return Ok(state.durable);
            }
            if self.poisoned.load(Ordering::Acquire) {
                return Err(Error::Poisoned {
                    dir: self.dir.to_path_buf(),
                });
            }
            if !state.syncing {
                state.syncing = true;
                break;
            }
            state = self.synced.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        drop(state);
        let result = self.sync_written();
        let mut state = self.lock_sync();
        state.syncing = false;
        let mut advanced = false;
        let outcome = match result {
            Ok(synced) => {
                state.durable = state.durable.max(synced);
                self.durable.store(state.durable, Ordering::Release);
                // Under the lock, so a waiter that sees its offset durable also sees it
                // readable.
                advanced = self.config.durability == Durability::Always
                    && self.advance_high_watermark(state.durable);
                Stats::add(&self.stats.syncs, 1);
                Ok(state.durable)
            }
            Err(error) => Err(self.poison(error)),
        };
        drop(state);
        self.synced.notify_all();
        if advanced {
            self.notify_listener();
        }
        outcome
    }

    /// fdatasyncs the active segment; returns the offset it covers. Earlier segments were
    /// synced when they were sealed.
    fn sync_written(&self) -> Result<u64> {
        let (snapshot, position, active, files) = {
            // Index entries stay buffered: they need no sync (recovery checks and rebuilds
            // them), and writing them here would cost two syscalls per group commit.
            let writer = self.lock_writer();
            let active = Arc::clone(&writer.active);
            let files = self.write_files(&active)?;
            (writer.tail.next_offset, writer.tail.position, active, files)
        };
        if let Some(handles) = &files.writer {
            self.shared
                .faults
                .check(FaultOp::Sync, || active.path("log"))
                .and_then(|()| handles.log.sync_data())
                .map_err(|e| Error::io("fdatasync", active.path("log"), e))?;
            // Only now, with the bytes on disk, may the checkpoint say so.
            let checkpoint = Checkpoint {
                position,
                next_offset: snapshot,
            };
            handles
                .checkpoint
                .write_all_at(&checkpoint.encode(), 0)
                .map_err(|e| Error::io("write", active.path(CHECKPOINT), e))?;
        }
        Ok(snapshot)
    }
}
