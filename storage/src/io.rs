//! File-system helpers shared by the log, recovery, the store and the engine's users (the
//! broker's topic metadata), and [`Faults`]: injected I/O errors, so that what a failed write
//! or fsync does is tested rather than claimed.
//!
//! Every write and sync on a log's write path asks its store's `Faults` first. An inert
//! `Faults` (the default) costs one branch per batch; an armed one fails the next matching
//! operations with an `io::Error` as the OS would, and the log reacts exactly as it does to a
//! real failure (it is poisoned, design.md §3).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// fsyncs a directory, so that files created, renamed or removed in it stay so after a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", PathBuf::from(dir), e))
}

/// Removes a file; one that is already gone is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("unlink", path, e)),
    }
}

/// Writes `bytes` to `path` through a temporary file that is fsynced and renamed over it, then
/// fsyncs the directory: after a crash the file is the old one or the new one, whole.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp).map_err(|e| Error::io("create", &temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", &temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| Error::io("rename", &temp, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Which operation a [`Faults`] entry fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultOp {
    /// A positioned write of batch or index bytes.
    Write,
    /// An `fdatasync`/`fsync` of a segment file.
    Sync,
    /// Opening or creating a log (its directory and first files), as on a full disk.
    Create,
    /// A rename of a segment file while compaction swaps segments (matched on the target).
    Rename,
    /// An unlink of a replaced segment's file while compaction swaps segments.
    Unlink,
}

/// Injected I/O failures for tests. Clones share their state, so a test keeps one handle and
/// gives a clone to the store ([`StoreConfig::faults`](crate::StoreConfig::faults)).
///
/// ```
/// use sluice_storage::{FaultOp, Faults};
/// let faults = Faults::armed();
/// // The next fdatasync of a file whose path contains "orders/0" fails once.
/// faults.fail(FaultOp::Sync, "orders/0", 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Option<Arc<Armed>>,
}

#[derive(Debug, Default)]
struct Armed {
    /// Failures still to inject; read without the lock on every operation.
    pending: AtomicUsize,
    rules: Mutex<Vec<Rule>>,
}

#[derive(Debug)]
struct Rule {
    op: FaultOp,
    path_contains: String,
    remaining: u32,
}

impl Faults {
    /// A handle that injects nothing until told to with [`fail`](Self::fail).
    pub fn armed() -> Self {
        Self {
            inner: Some(Arc::default()),
        }
    }

    /// Fails the next `times` operations `op` on files whose path contains `path_contains`.
    /// Does nothing on an inert (default) handle.
    pub fn fail(&self, op: FaultOp, path_contains: &str, times: u32) {
        let Some(armed) = &self.inner else { return };
        let mut rules = armed.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules.push(Rule {
            op,
            path_contains: path_contains.to_owned(),
            remaining: times,
        });
        armed.pending.fetch_add(times as usize, Ordering::Release);
    }

    /// Forgets every failure not yet injected.
    pub fn clear(&self) {
        let Some(armed) = &self.inner else { return };
        armed
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        armed.pending.store(0, Ordering::Release);
    }

    /// `Err` if an injected failure matches `op` on the file `path()` names (computed only
    /// when a failure is pending).
    pub(crate) fn check(&self, op: FaultOp, path: impl FnOnce() -> PathBuf) -> std::io::Result<()> {
        let Some(armed) = &self.inner else {
            return Ok(());
        };
        if armed.pending.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let path = path();
        let text = path.to_string_lossy();
        let mut rules = armed.rules.lock().unwrap_or_else(|p| p.into_inner());
        let hit = rules
            .iter_mut()
            .find(|rule| rule.op == op && rule.remaining > 0 && text.contains(&rule.path_contains));
        let Some(rule) = hit else { return Ok(()) };
        rule.remaining -= 1;
        armed.pending.fetch_sub(1, Ordering::AcqRel);
        rules.retain(|rule| rule.remaining > 0);
        // EIO, as a disk that failed the write or the flush reports it.
        const EIO: i32 = 5;
        Err(std::io::Error::from_raw_os_error(EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inert_faults_never_fail_and_armed_ones_fail_as_told() {
        let inert = Faults::default();
        inert.fail(FaultOp::Sync, "", 5);
        assert!(inert.check(FaultOp::Sync, || PathBuf::from("a/b")).is_ok());

        let faults = Faults::armed();
        let handle = faults.clone();
        handle.fail(FaultOp::Sync, "orders/0", 2);
        let path = || PathBuf::from("/data/topics/orders/0/00000000000000000000.log");
        assert!(faults.check(FaultOp::Write, path).is_ok(), "other op");
        assert!(
            faults
                .check(FaultOp::Sync, || PathBuf::from(
                    "/data/topics/orders/1/x.log"
                ))
                .is_ok(),
            "other path"
        );
        assert!(faults.check(FaultOp::Sync, path).is_err());
        assert!(faults.check(FaultOp::Sync, path).is_err());
        assert!(faults.check(FaultOp::Sync, path).is_ok(), "used up");
        handle.fail(FaultOp::Write, "", 1);
        handle.clear();
        assert!(faults.check(FaultOp::Write, path).is_ok(), "cleared");
    }
}
