//! Replacing sealed segments on disk so that a crash at any point leaves the old set of
//! segments or the new one, never neither and never both (Kafka's `.cleaned`/`.swap` files,
//! with the replaced range in the commit record's name).
//!
//! A swap replaces every segment whose base offset is in `[base, end)` — consecutive sealed
//! segments, `end` the base of the segment after them — with one new segment of base offset
//! `base`. Its files, in the partition directory:
//!
//! ```text
//! {base:020}.log.cleaned        the new segment's log       (written, fsynced; uncommitted)
//! {base:020}.index.cleaned      its offset index            (written, fsynced)
//! {base:020}.timeindex.cleaned  its time index              (written, fsynced)
//! {base:020}.{end:020}.swap     the new log, committed: it replaces [base, end)
//! ```
//!
//! The protocol, each step a rename, unlink or directory fsync:
//!
//! | step | what | a crash after it leaves |
//! |------|------|-------------------------|
//! | 0 | the caller writes and fsyncs the three `.cleaned` files | old set (recovery removes `.cleaned`) |
//! | 1 | **commit**: rename `{base}.log.cleaned` → `{base}.{end}.swap` | old set, to be completed |
//! | 2 | fsync the directory (the commit is durable) | swap committed: recovery completes it |
//! | 3 | unlink `.index`, `.timeindex`, then `.log` of each replaced segment but `base` | (the same) |
//! | 4 | rename `{base}.index.cleaned` → `{base}.index`, and the time index | (the same) |
//! | 5 | fsync the directory (steps 3–4 are durable) | (the same) |
//! | 6 | rename `{base}.{end}.swap` → `{base}.log`, over the old one | new set |
//!
//! Steps 3–6 ([`Swap::complete`]) are idempotent: each unlink or rename is skipped when it was
//! already done, so [`recover`] reruns them for every `.swap` it finds before the log opens,
//! then removes leftover `.cleaned` files (a swap that never committed). A replaced segment's
//! `.log` goes last, so a `.log` without its indexes is never left behind (its indexes would be
//! rebuilt anyway). Renames and unlinks never shorten a file under a map: a reader still
//! holding a slice of a replaced segment keeps its inode.
//!
//! The fsyncs are where the order must hold even on a file system that persists directory
//! changes out of order: the commit before any old file goes (2), and the unlinks and index
//! renames before the commit record does (5) — else a crash could leave the new `{base}.log`
//! beside a replaced segment with no record left saying which wins. Step 6 needs none: if it
//! is lost, the record is still there and recovery redoes it (the next directory fsync, of
//! the next swap or of retention, makes it durable).

use crate::error::{Error, Result};
use crate::io::{FaultOp, Faults, remove_if_exists, sync_dir};
use crate::segment::{file_name, parse_log_name};
use std::path::{Path, PathBuf};

/// Suffix of a new segment's files before the swap commits.
pub(crate) const CLEANED_SUFFIX: &str = "cleaned";
/// Extension of the commit record.
const SWAP_EXTENSION: &str = "swap";
/// The index files a segment has besides its log.
const INDEX_EXTENSIONS: [&str; 2] = ["index", "timeindex"];

/// `{base:020}.{extension}.cleaned`.
pub(crate) fn cleaned_name(base: u64, extension: &str) -> String {
    format!("{}.{CLEANED_SUFFIX}", file_name(base, extension))
}

/// Whether `name` is a file of a swap in progress (a `.cleaned` or `.swap` file), which
/// [`recover`] must deal with before the log's segments are listed.
pub(crate) fn is_swap_file(name: &str) -> bool {
    name.ends_with(".cleaned") || name.ends_with(".swap")
}

/// `{base:020}.{end:020}.swap`.
fn swap_name(base: u64, end: u64) -> String {
    format!("{base:020}.{end:020}.{SWAP_EXTENSION}")
}

/// The `(base, end)` a `.swap` file name stands for.
fn parse_swap_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".swap")?;
    let (base, end) = stem.split_once('.')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(base) || !digits(end) {
        return None;
    }
    let (base, end) = (base.parse().ok()?, end.parse().ok()?);
    (base < end).then_some((base, end))
}

/// One step of a swap.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Rename { from: PathBuf, to: PathBuf },
    Unlink(PathBuf),
    SyncDir,
}

/// The replacement of the segments in `[base, end)` of the log in `dir` by the new segment
/// `base` (see the module doc).
#[derive(Debug)]
pub(crate) struct Swap<'a> {
    dir: &'a Path,
    base: u64,
    end: u64,
    faults: &'a Faults,
}

impl<'a> Swap<'a> {
    pub(crate) fn new(dir: &'a Path, base: u64, end: u64, faults: &'a Faults) -> Self {
        debug_assert!(base < end);
        Self {
            dir,
            base,
            end,
            faults,
        }
    }

    /// Where the new segment's `extension` file is written before the commit.
    pub(crate) fn cleaned(&self, extension: &str) -> PathBuf {
        self.dir.join(cleaned_name(self.base, extension))
    }

    fn swap_path(&self) -> PathBuf {
        self.dir.join(swap_name(self.base, self.end))
    }

    /// Steps 1–2: commits the swap, durably. The `.cleaned` files must be whole and synced.
    pub(crate) fn commit(&self) -> Result<()> {
        self.run(&self.commit_steps())
    }

    fn commit_steps(&self) -> Vec<Step> {
        vec![
            Step::Rename {
                from: self.cleaned("log"),
                to: self.swap_path(),
            },
            Step::SyncDir,
        ]
    }

    /// Steps 3–6: puts the committed swap in place (idempotent; [`recover`] reruns it).
    pub(crate) fn complete(&self) -> Result<()> {
        self.run(&self.complete_steps()?)
    }

    fn complete_steps(&self) -> Result<Vec<Step>> {
        let mut steps = Vec::new();
        for replaced in self.replaced()? {
            for extension in INDEX_EXTENSIONS.into_iter().chain(["log"]) {
                steps.push(Step::Unlink(self.dir.join(file_name(replaced, extension))));
            }
        }
        for extension in INDEX_EXTENSIONS {
            steps.push(Step::Rename {
                from: self.cleaned(extension),
                to: self.dir.join(file_name(self.base, extension)),
            });
        }
        steps.push(Step::SyncDir);
        steps.push(Step::Rename {
            from: self.swap_path(),
            to: self.dir.join(file_name(self.base, "log")),
        });
        Ok(steps)
    }

    /// Base offsets of the segments in `(base, end)` still on disk.
    fn replaced(&self) -> Result<Vec<u64>> {
        let mut bases = Vec::new();
        let entries = std::fs::read_dir(self.dir).map_err(|e| Error::io("list", self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", self.dir, e))?;
            if let Some(base) = entry.file_name().to_str().and_then(parse_log_name)
                && base > self.base
                && base < self.end
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        Ok(bases)
    }

    /// Removes the `.cleaned` files of a swap that will not commit (best effort: recovery
    /// removes what is left).
    pub(crate) fn abort(&self) {
        for extension in INDEX_EXTENSIONS.into_iter().chain(["log"]) {
            let path = self.cleaned(extension);
            if let Err(error) = remove_if_exists(&path) {
                tracing::warn!(file = %path.display(), %error, "cannot remove an abandoned compaction file");
            }
        }
    }

    fn run(&self, steps: &[Step]) -> Result<()> {
        for step in steps {
            self.run_step(step)?;
        }
        Ok(())
    }

    /// Runs one step; a rename whose source is gone was done before (a rerun after a crash).
    fn run_step(&self, step: &Step) -> Result<()> {
        match step {
            Step::Rename { from, to } => {
                self.faults
                    .check(FaultOp::Rename, || to.clone())
                    .map_err(|e| Error::io("rename", to, e))?;
                match std::fs::rename(from, to) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::io("rename", from, e)),
                }
            }
            Step::Unlink(path) => {
                self.faults
                    .check(FaultOp::Unlink, || path.clone())
                    .map_err(|e| Error::io("unlink", path, e))?;
                remove_if_exists(path)
            }
            Step::SyncDir => sync_dir(self.dir),
        }
    }
}

/// Completes every committed swap in `dir` and removes the files of swaps that never
/// committed, before the log's segments are listed. Returns whether it changed anything.
pub(crate) fn recover(dir: &Path) -> Result<bool> {
    let names = |dir: &Path| -> Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list", dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    };
    let mut swaps: Vec<(u64, u64)> = names(dir)?
        .iter()
        .filter_map(|name| parse_swap_name(name))
        .collect();
    swaps.sort_unstable();
    let faults = Faults::default();
    for &(base, end) in &swaps {
        tracing::warn!(dir = %dir.display(), base, end, "completing an interrupted compaction swap");
        Swap::new(dir, base, end, &faults).complete()?;
    }
    let mut changed = !swaps.is_empty();
    for name in names(dir)? {
        if name.ends_with(&format!(".{CLEANED_SUFFIX}")) {
            tracing::warn!(dir = %dir.display(), file = name, "removing an uncommitted compaction file");
            remove_if_exists(&dir.join(name))?;
            changed = true;
        }
    }
    if changed {
        sync_dir(dir)?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::BTreeMap;

    /// Every file in `dir` with its contents.
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn write(dir: &Path, name: &str, contents: &str) {
        std::fs::write(dir.join(name), contents).unwrap();
    }

    /// Old segments 0, 10 and 20 (20 outside the swap), and the swap's cleaned files.
    fn prepare(dir: &Path) {
        for base in [0, 10, 20] {
            for extension in ["log", "index", "timeindex"] {
                write(
                    dir,
                    &file_name(base, extension),
                    &format!("old {base} {extension}"),
                );
            }
        }
        for extension in ["log", "index", "timeindex"] {
            write(
                dir,
                &cleaned_name(0, extension),
                &format!("new 0 {extension}"),
            );
        }
    }

    fn old_set() -> BTreeMap<String, Vec<u8>> {
        let mut set = BTreeMap::new();
        for base in [0, 10, 20] {
            for extension in ["log", "index", "timeindex"] {
                set.insert(
                    file_name(base, extension),
                    format!("old {base} {extension}").into_bytes(),
                );
            }
        }
        set
    }

    fn new_set() -> BTreeMap<String, Vec<u8>> {
        let mut set = old_set();
        for extension in ["log", "index", "timeindex"] {
            set.remove(&file_name(10, extension));
            set.insert(
                file_name(0, extension),
                format!("new 0 {extension}").into_bytes(),
            );
        }
        set
    }

    #[test]
    fn a_crash_after_any_step_recovers_to_the_old_or_the_new_set() {
        let faults = Faults::default();
        let probe = tempfile::tempdir().unwrap();
        prepare(probe.path());
        let swap = Swap::new(probe.path(), 0, 20, &faults);
        let mut steps = swap.commit_steps();
        steps.extend(swap.complete_steps().unwrap());
        let commit_at = 1; // after the commit rename
        // Commit (2), unlink segment 10's three files, install two indexes, sync, the log.
        assert_eq!(steps.len(), 2 + 3 + 2 + 1 + 1);
        for crash_after in 0..=steps.len() {
            let dir = tempfile::tempdir().unwrap();
            prepare(dir.path());
            let swap = Swap::new(dir.path(), 0, 20, &faults);
            let mut all = swap.commit_steps();
            all.extend(swap.complete_steps().unwrap());
            swap.run(&all[..crash_after]).unwrap();
            recover(dir.path()).unwrap();
            let expected = if crash_after >= commit_at {
                new_set()
            } else {
                old_set()
            };
            assert_eq!(
                files(dir.path()),
                expected,
                "crash after {crash_after} steps"
            );
            // Recovery again changes nothing.
            assert!(!recover(dir.path()).unwrap());
            assert_eq!(files(dir.path()), expected);
        }
    }

    #[test]
    fn a_crash_inside_recovery_is_recovered_again() {
        let faults = Faults::default();
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let swap = Swap::new(dir.path(), 0, 20, &faults);
        swap.commit().unwrap();
        // Recovery stopped after its first unlinks and the index rename.
        let steps = swap.complete_steps().unwrap();
        swap.run(&steps[..4]).unwrap();
        recover(dir.path()).unwrap();
        assert_eq!(files(dir.path()), new_set());
    }

    #[test]
    fn injected_failures_stop_the_swap_where_they_hit() {
        let faults = Faults::armed();
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let swap = Swap::new(dir.path(), 0, 20, &faults);
        faults.fail(FaultOp::Rename, ".swap", 1);
        assert!(swap.commit().is_err());
        swap.abort();
        assert_eq!(files(dir.path()), old_set());

        prepare(dir.path());
        swap.commit().unwrap();
        faults.fail(FaultOp::Unlink, &file_name(10, "log"), 1);
        assert!(swap.complete().is_err());
        recover(dir.path()).unwrap();
        assert_eq!(files(dir.path()), new_set());
    }

    #[test]
    fn swap_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_swap_name(&swap_name(5, 70)), Some((5, 70)));
        assert_eq!(parse_swap_name("00000000000000000005.swap"), None);
        assert_eq!(
            parse_swap_name("00000000000000000070.00000000000000000005.swap"),
            None
        );
        assert_eq!(
            parse_swap_name("x0000000000000000005.00000000000000000070.swap"),
            None
        );
        assert_eq!(cleaned_name(3, "log"), "00000000000000000003.log.cleaned");
    }
}
