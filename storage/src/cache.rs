//! The bound on open segment files and mappings across all logs of a store (design.md §3).
//!
//! A least-recently-used table of open [`SegmentFiles`]. A log asks it for a segment's files
//! on every append and read; a miss opens them (outside the table's lock) and may close the
//! least recently used. Closing only drops the table's `Arc`: a reader still holding a `Bytes`
//! of a map keeps that map alive until it is done, and an appender holds its files for the
//! duration of one write.

use crate::segment::SegmentFiles;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Which segment: the log's id in its store and the segment's id (unique in the process, so a
/// compacted segment never meets the files of the one it replaced).
pub(crate) type Key = (u64, u64);

#[derive(Debug)]
pub(crate) struct FileCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, (Arc<SegmentFiles>, u64)>,
    /// Last-use tick to key; the first entry is the least recently used.
    order: BTreeMap<u64, Key>,
    tick: u64,
}

impl FileCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The table holds no invariant that a panic half-way could break beyond an extra or
        // missing entry, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The open files of `key`, marking them most recently used.
    pub(crate) fn get(&self, key: Key) -> Option<Arc<SegmentFiles>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let (files, old_tick) = inner.entries.get_mut(&key)?;
        let files = Arc::clone(files);
        let old = std::mem::replace(old_tick, tick);
        inner.order.remove(&old);
        inner.order.insert(tick, key);
        Some(files)
    }

    /// Adds freshly opened files, closing the least recently used beyond the capacity. If
    /// another thread added files for `key` meanwhile, those are kept and returned.
    pub(crate) fn insert(&self, key: Key, files: Arc<SegmentFiles>) -> Arc<SegmentFiles> {
        let mut evicted = Vec::new();
        let result = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((existing, old_tick)) = inner.entries.get_mut(&key) {
                let existing = Arc::clone(existing);
                let old = std::mem::replace(old_tick, tick);
                inner.order.remove(&old);
                inner.order.insert(tick, key);
                return existing;
            }
            inner.entries.insert(key, (Arc::clone(&files), tick));
            inner.order.insert(tick, key);
            while inner.entries.len() > self.capacity {
                let Some((_, lru)) = inner.order.pop_first() else {
                    break;
                };
                if let Some((files, _)) = inner.entries.remove(&lru) {
                    evicted.push(files);
                }
            }
            files
        };
        // Unmap and close outside the lock.
        drop(evicted);
        result
    }

    /// Forgets `key`'s files (a segment sealed, deleted or its log closed).
    pub(crate) fn remove(&self, key: Key) -> Option<Arc<SegmentFiles>> {
        let mut inner = self.lock();
        let (files, tick) = inner.entries.remove(&key)?;
        inner.order.remove(&tick);
        Some(files)
    }

    /// Forgets every segment of one log.
    pub(crate) fn remove_log(&self, log_id: u64) {
        let removed: Vec<_> = {
            let mut inner = self.lock();
            let keys: Vec<Key> = inner
                .entries
                .keys()
                .filter(|(log, _)| *log == log_id)
                .copied()
                .collect();
            keys.into_iter()
                .filter_map(|key| {
                    let (files, tick) = inner.entries.remove(&key)?;
                    inner.order.remove(&tick);
                    Some(files)
                })
                .collect()
        };
        drop(removed);
    }

    /// Segments open now.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}
