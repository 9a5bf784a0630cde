//! A partition: an ordered list of segments, the last one active, and the offsets they hold.
//!
//! One writer appends at a time (a `Mutex` held for one positioned write per batch); any
//! number of readers read at the same time without taking it: they find their segment under a
//! read lock held for a binary search, load the published lengths with `Acquire` and slice the
//! segment's map. A reader never sees an offset at or past the high watermark.
//!
//! Three offsets move forward, never back: the **log end** (one past the last offset written),
//! the **durable offset** (one past the last offset an fdatasync covered) and the **high
//! watermark** (one past the last offset readers may see). Under [`Durability::Always`] the
//! high watermark follows the durable offset; under `Interval` and `Never` it follows the log
//! end. A replicated partition will move it by its own rule (the commit index), which is why
//! the durable offset is exposed on its own.
//!
//! The work is split by concern: `append.rs` (the writer, rolls, index buffering), `sync.rs`
//! (group commit), `read.rs` (reads and time search), `cleanup.rs` (dropping whole segments,
//! as [`retention`](crate::retention) decides), `compact.rs` (rewriting sealed segments, as
//! [`compaction`](crate::compaction) decides).
//!
//! Segment maintenance (retention, compaction) runs one pass at a time per log, under the
//! `maintenance` lock, and only on sealed segments. Compaction replaces segments: a replaced
//! segment is marked deleted before its files change, under the `swap` lock held for writing;
//! opening a sealed segment's files holds it for reading, so no reader ever opens a mix of old
//! and new files, and one that meets a replaced segment looks its offset up again.

mod append;
mod cleanup;
mod compact;
mod read;
mod sync;

pub use append::AppendInfo;
pub use read::ReadResult;

use crate::cache::Key;
use crate::config::{Durability, LogConfig};
use crate::error::{Error, Result};
use crate::io::sync_dir;
use crate::recovery::{self, CLEAN_MARKER, Report};
use crate::segment::{Segment, SegmentFiles};
use crate::shared::Shared;
use crate::stats::{Stats, StatsSnapshot};
use append::Writer;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use sync::SyncState;

/// One partition log. Open it through a [`Store`](crate::Store).
#[derive(Debug)]
pub struct Log {
    id: u64,
    dir: Arc<Path>,
    config: LogConfig,
    shared: Arc<Shared>,
    /// Segments in offset order; the last is active. Never empty.
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    /// One past the last readable offset.
    high_watermark: AtomicU64,
    /// One past the last offset written.
    log_end: AtomicU64,
    /// One past the last offset on disk (an fdatasync covered it).
    durable: AtomicU64,
    /// First offset retained.
    earliest: AtomicU64,
    sync: Mutex<SyncState>,
    synced: Condvar,
    poisoned: AtomicBool,
    closed: AtomicBool,
    stats: Stats,
    /// Called with the new high watermark each time it advances (see `on_high_watermark`).
    listener: OnceLock<Listener>,
    /// One segment-maintenance pass at a time (retention, compaction); `close` and `discard`
    /// take it to wait for a pass to stop.
    maintenance: Mutex<()>,
    /// Read while a sealed segment's files are opened, written while compaction swaps
    /// segment files (see the module doc).
    swap: RwLock<()>,
    /// What opening the log found and did.
    recovery: Report,
}

/// The registered listener (a newtype, so the log can derive `Debug`).
struct Listener(HighWatermarkListener);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

/// A callback run with the new high watermark each time it advances.
pub type HighWatermarkListener = Box<dyn Fn(u64) + Send + Sync>;

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering its tail first if it was not
    /// closed cleanly (`recovery.rs`).
    pub(crate) fn open(
        id: u64,
        dir: &Path,
        config: LogConfig,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let dir: Arc<Path> = Arc::from(dir);
        let recovered = recovery::recover(&dir, &config, shared.clock.now_ms())?;
        let segments = recovered.segments;
        let tail = recovered.tail;
        let recovery = recovered.report;
        let earliest = segments.first().map_or(tail.next_offset, |s| s.base_offset);
        let active = segments
            .last()
            .map(Arc::clone)
            .ok_or_else(|| Error::io("recover", &*dir, std::io::Error::other("no segment")))?;
        let next = tail.next_offset;
        Ok(Self {
            id,
            dir,
            config,
            shared,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer::new(active, tail)),
            high_watermark: AtomicU64::new(next),
            log_end: AtomicU64::new(next),
            durable: AtomicU64::new(next),
            earliest: AtomicU64::new(earliest),
            sync: Mutex::new(SyncState::new(next)),
            synced: Condvar::new(),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stats: Stats::default(),
            listener: OnceLock::new(),
            maintenance: Mutex::new(()),
            swap: RwLock::new(()),
            recovery,
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// First offset retained.
    pub fn earliest_offset(&self) -> u64 {
        self.earliest.load(Ordering::Acquire)
    }

    /// One past the last offset written (acknowledged or not).
    pub fn log_end_offset(&self) -> u64 {
        self.log_end.load(Ordering::Acquire)
    }

    /// One past the last offset an fdatasync covered. Never ahead of the log end; under
    /// `Always` the high watermark equals it.
    pub fn durable_offset(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// One past the last readable (under `Always`: durable) offset.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Bytes held in segment files.
    pub fn size_bytes(&self) -> u64 {
        self.read_segments().iter().map(|s| s.len()).sum()
    }

    /// Segments held, the active one included.
    pub fn segment_count(&self) -> usize {
        self.read_segments().len()
    }

    /// Base offsets of the segments, oldest first; the last is the active segment's.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.read_segments().iter().map(|s| s.base_offset).collect()
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// What opening the log found and did: clean or recovered, bytes cut, syncs, indexes.
    pub fn recovery(&self) -> Report {
        self.recovery
    }

    /// Whether the log was poisoned by a failed write or fsync.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Whether [`close`](Self::close) ran.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn durability(&self) -> Durability {
        self.config.durability
    }

    /// Registers the callback run (on the thread that advanced it: an appender or a flusher,
    /// never under a lock) with the new high watermark each time it advances, so an async
    /// caller can wake long polls without polling. One listener per log; returns `false` if
    /// one was already set. The callback must be cheap and must not call back into the log.
    pub fn on_high_watermark(&self, listener: HighWatermarkListener) -> bool {
        self.listener.set(Listener(listener)).is_ok()
    }

    /// Moves the high watermark forward to `to`, never back; returns whether it moved.
    fn advance_high_watermark(&self, to: u64) -> bool {
        self.high_watermark.fetch_max(to, Ordering::AcqRel) < to
    }

    /// Tells the listener, if any, the current high watermark. Called with no lock held.
    fn notify_listener(&self) {
        if let Some(Listener(listener)) = self.listener.get() {
            listener(self.high_watermark());
        }
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        // Writers of this lock swap whole Arcs, so a panic cannot leave it half-changed.
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_segments(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, segment: &Segment) -> Key {
        (self.id, segment.id)
    }

    fn lock_maintenance(&self) -> MutexGuard<'_, ()> {
        self.maintenance.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open files of `segment`, from the store's cache or freshly opened. A segment that
    /// retention or compaction removed is not opened (its files are gone or are another
    /// segment's now): the error is `NotFound`, and the caller, seeing
    /// [`Segment::is_deleted`], looks its offset up again.
    fn files(&self, segment: &Segment) -> Result<Arc<SegmentFiles>> {
        let key = self.key(segment);
        if let Some(files) = self.shared.cache.get(key) {
            return Ok(files);
        }
        // Compaction swaps files under the write side: never open half of a swap.
        let _swap = self.swap.read().unwrap_or_else(|p| p.into_inner());
        if segment.is_deleted() {
            return Err(Error::io(
                "open",
                segment.path("log"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let files = if segment.is_sealed() {
            segment.open_sealed(self.config.index_interval_bytes)?
        } else {
            segment.open_active()?
        };
        Ok(self.shared.cache.insert(key, Arc::new(files)))
    }

    /// The active segment's files with their write handles.
    fn write_files(&self, segment: &Segment) -> Result<Arc<SegmentFiles>> {
        let files = self.files(segment)?;
        if files.writer.is_some() {
            return Ok(files);
        }
        // A reader that raced a roll may have cached the segment read-only; reopen it for
        // writing (only reached for the active segment, which is never sealed).
        self.shared.cache.remove(self.key(segment));
        Ok(self
            .shared
            .cache
            .insert(self.key(segment), Arc::new(segment.open_active()?)))
    }

    /// Marks the log as refusing writes after `error`, a failed write or sync, and returns it.
    fn poison(&self, error: Error) -> Error {
        self.poisoned.store(true, Ordering::Release);
        tracing::error!(dir = %self.dir.display(), %error, "log poisoned: refusing writes until reopened");
        error
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                dir: self.dir.to_path_buf(),
            });
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                dir: self.dir.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Syncs everything, cuts the active segment's files to their lengths and writes the
    /// clean-shutdown marker, so the next open skips recovery. Later appends fail. A poisoned
    /// log is not closed cleanly (the error is returned): its next open recovers the tail.
    pub fn close(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.flush()?;
        let mut writer = self.lock_writer();
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.seal_active(&mut writer)?;
        drop(writer);
        // A maintenance pass sees `closed` and stops; wait for it, so nothing writes the
        // directory after the marker.
        drop(self.lock_maintenance());
        self.shared.cache.remove_log(self.id);
        let marker = self.dir.join(CLEAN_MARKER);
        std::fs::File::create(&marker)
            .and_then(|file| file.sync_all())
            .map_err(|e| Error::io("create", &marker, e))?;
        sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), "log closed cleanly");
        Ok(())
    }
}

impl Log {
    /// Stops the log without making anything durable, for a log whose files are about to be
    /// deleted (its topic is): later appends fail as after `close`, reads of what is mapped go
    /// on until their slices drop, and no sync, truncation or marker is spent on it.
    pub fn discard(&self) {
        {
            let _writer = self.lock_writer();
            self.closed.store(true, Ordering::Release);
        }
        // Wait for a maintenance pass to stop: the directory is about to be removed.
        drop(self.lock_maintenance());
        self.shared.cache.remove_log(self.id);
    }
}

impl Drop for Log {
    /// Releases the log's cached files. Dropping without [`Log::close`] is like a crash: the
    /// next open recovers the tail.
    fn drop(&mut self) {
        self.shared.cache.remove_log(self.id);
    }
}
