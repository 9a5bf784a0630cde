//! A data directory of logs: the directory lock, the shared bound on open segments, and the
//! background flusher for logs synced on an interval.

use crate::cache::FileCache;
use crate::config::{Durability, LogConfig, StoreConfig};
use crate::error::{Error, Result};
use crate::io::{FaultOp, sync_dir};
use crate::log::Log;
use crate::shared::Shared;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of the lock file at the root of a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// A log directory's entry in the store's table.
#[derive(Debug)]
enum Slot {
    /// A thread is opening (recovering) it now.
    Opening,
    /// Open, as long as someone holds it.
    Open(Weak<Log>),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Slot {
    fn log(&self) -> Option<Arc<Log>> {
        match self {
            Self::Opening => None,
            Self::Open(log) => log.upgrade(),
        }
    }
}

/// The background flusher thread and the flag that stops it.
#[derive(Debug)]
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

/// A data directory holding any number of logs, each in its own subdirectory.
///
/// The store locks the directory (one process at a time: the mmap invariants rely on it),
/// bounds the segment files and maps open at once across all its logs, and runs one flusher
/// thread that syncs the logs whose durability is [`Durability::Interval`].
///
/// ```
/// use sluice_storage::{LogConfig, Store, StoreConfig, format::BatchBuilder};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), StoreConfig::default())?;
/// let log = store.open_log("orders/0", LogConfig::default())?;
/// let mut builder = BatchBuilder::new();
/// builder.push(1_700_000_000_000, Some(b"k"), Some(b"v"), &[])?;
/// let mut batch = builder.finish()?;
/// let appended = log.append(&mut batch)?;
/// log.flush()?; // durability Always: readable once synced
/// let read = log.read(appended.base_offset, 1 << 20)?;
/// assert_eq!(&read.batches[..], &batch[..]);
/// store.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    shared: Arc<Shared>,
    logs: Arc<Mutex<HashMap<PathBuf, Slot>>>,
    /// Entries in `logs` after its last prune.
    pruned_len: Mutex<usize>,
    next_id: AtomicU64,
    flusher: Option<Flusher>,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the data directory `root`, locking it against other
    /// processes.
    pub fn open(root: impl AsRef<Path>, config: StoreConfig) -> Result<Self> {
        config.validate()?;
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", lock_path, e)),
        }
        let shared = Arc::new(Shared {
            cache: FileCache::new(config.max_open_segments),
            clock: config.clock.clone(),
            faults: config.faults.clone(),
        });
        let logs: Arc<Mutex<HashMap<PathBuf, Slot>>> = Arc::default();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let logs = Arc::clone(&logs);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("sluice-flusher".into())
                .spawn(move || run_flusher(&logs, &stop))
                .map_err(|e| Error::io("spawn flusher thread", &root, e))?
        };
        Ok(Self {
            root,
            shared,
            logs,
            pruned_len: Mutex::new(0),
            next_id: AtomicU64::new(1),
            flusher: Some(Flusher { stop, thread }),
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (creating if needed) the log in subdirectory `name` (relative, plain components,
    /// such as `"orders/0"`), recovering it if it was not closed cleanly.
    pub fn open_log(&self, name: &str, config: LogConfig) -> Result<Arc<Log>> {
        let relative = Path::new(name);
        let plain = !name.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(Error::config(
                "log name",
                name,
                "must be a relative path of plain components",
            ));
        }
        let dir = self.root.join(relative);
        {
            // Reserve the name, then open without the lock: opening recovers, which may take
            // syncs, and a broker opens thousands of logs in parallel at start.
            let mut logs = self.lock_logs();
            match logs.get(&dir) {
                Some(Slot::Opening) => {
                    return Err(Error::config("log name", name, "is being opened"));
                }
                Some(Slot::Open(log)) if log.upgrade().is_some_and(|log| !log.is_closed()) => {
                    return Err(Error::config("log name", name, "is already open"));
                }
                _ => {}
            }
            logs.insert(dir.clone(), Slot::Opening);
        }
        let opened = self.open_reserved(&dir, config);
        let mut logs = self.lock_logs();
        match &opened {
            Ok(log) => {
                logs.insert(dir, Slot::Open(Arc::downgrade(log)));
                // Entries of dropped logs are pruned when the table has doubled since the
                // last prune: amortized O(1) an open (a prune on every open made opening
                // 10,000 logs quadratic).
                let mut pruned = lock(&self.pruned_len);
                if logs.len() >= 2 * *pruned + 64 {
                    logs.retain(|_, slot| match slot {
                        Slot::Opening => true,
                        Slot::Open(log) => log.strong_count() > 0,
                    });
                    *pruned = logs.len();
                }
            }
            Err(_) => {
                logs.remove(&dir);
            }
        }
        drop(logs);
        opened
    }

    fn open_reserved(&self, dir: &Path, config: LogConfig) -> Result<Arc<Log>> {
        self.shared
            .faults
            .check(FaultOp::Create, || dir.to_path_buf())
            .map_err(|e| Error::io("create log", dir, e))?;
        if !dir.exists() {
            // Every directory that gains an entry must be fsynced for the entry to survive a
            // crash: the deepest one that existed, and each new one above the log's own
            // (which open_log syncs).
            let existing = dir
                .ancestors()
                .find(|a| a.exists())
                .unwrap_or(&self.root)
                .to_path_buf();
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            for ancestor in dir.ancestors().skip(1) {
                sync_dir(ancestor)?;
                if ancestor == existing {
                    break;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Log::open(
            id,
            dir,
            config,
            Arc::clone(&self.shared),
        )?))
    }

    fn lock_logs(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Slot>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Segments whose files are open now, across all logs (bounded by `max_open_segments`,
    /// plus any still held by an in-flight read or write).
    pub fn open_segments(&self) -> usize {
        self.shared.cache.len()
    }

    /// Closes every open log cleanly (see [`Log::close`]) and stops the flusher; the first
    /// error is returned after every log was tried.
    pub fn close(mut self) -> Result<()> {
        self.stop_flusher();
        let logs: Vec<Arc<Log>> = self.lock_logs().values().filter_map(Slot::log).collect();
        let mut first_error = None;
        for log in logs {
            if let Err(error) = log.close() {
                tracing::error!(dir = %log.dir().display(), %error, "closing log failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn stop_flusher(&mut self) {
        if let Some(Flusher { stop, thread }) = self.flusher.take() {
            let (flag, wake) = &*stop;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            wake.notify_all();
            let _ = thread.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

/// Syncs `Interval` logs when their interval has passed, until told to stop.
fn run_flusher(logs: &Mutex<HashMap<PathBuf, Slot>>, stop: &(Mutex<bool>, Condvar)) {
    const IDLE_TICK: Duration = Duration::from_millis(100);
    let mut last_sync: HashMap<PathBuf, Instant> = HashMap::new();
    let (flag, wake) = stop;
    loop {
        let interval_logs: Vec<(Arc<Log>, Duration)> = logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(Slot::log)
            .filter_map(|log| match log.durability() {
                Durability::Interval(every) => Some((log, every)),
                _ => None,
            })
            .collect();
        let now = Instant::now();
        let mut next_due = now + IDLE_TICK;
        for (log, every) in &interval_logs {
            let last = *last_sync.entry(log.dir().to_path_buf()).or_insert(now);
            if now.duration_since(last) >= *every {
                if !log.is_poisoned()
                    && !log.is_closed()
                    && let Err(error) = log.flush()
                {
                    tracing::error!(dir = %log.dir().display(), %error, "interval flush failed");
                }
                last_sync.insert(log.dir().to_path_buf(), now);
                next_due = next_due.min(now + *every);
            } else {
                next_due = next_due.min(last + *every);
            }
        }
        last_sync.retain(|dir, _| interval_logs.iter().any(|(log, _)| log.dir() == dir));
        drop(interval_logs);
        let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
        if *guard {
            return;
        }
        let wait = next_due.saturating_duration_since(Instant::now());
        let (guard, _) = wake
            .wait_timeout(guard, wait)
            .unwrap_or_else(|p| p.into_inner());
        if *guard {
            return;
        }
    }
}
