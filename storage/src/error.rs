//! The storage crate's one error type.
//!
//! Request errors (a bad batch, an offset out of range) leave the log as it was. I/O errors on
//! the write path poison the log ([`Error::Poisoned`]) until it is reopened, because after a
//! failed write or fsync the page cache and the disk may disagree and retrying fsync can report
//! success for data that is gone.

use crate::format::FormatError;
use std::path::PathBuf;

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The batch failed a check of design.md §2; nothing of it was written.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] FormatError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done: `"open"`, `"write"`, `"fdatasync"`, ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bytes on disk that cannot be what this engine wrote.
    #[error("corrupt segment file {path} at byte {position}: {corruption}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// What is wrong there.
        corruption: Corruption,
    },
    /// A read asked for an offset the log does not hold.
    #[error("offset {offset} out of range: the log holds offsets {earliest}..{latest}")]
    OffsetOutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Earliest offset retained.
        earliest: u64,
        /// The high watermark: one past the last readable offset.
        latest: u64,
    },
    /// An earlier write or fsync failed; the log refuses writes until it is reopened.
    #[error("log {dir} refuses writes after an earlier I/O failure; reopen it to recover")]
    Poisoned {
        /// The partition directory.
        dir: PathBuf,
    },
    /// A configuration value out of its bounds.
    #[error("invalid config {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// The bound it broke.
        reason: &'static str,
    },
    /// Another process holds the data directory.
    #[error("data directory {path} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A batch read back from a log failed its checks (replay checks every batch in full).
    #[error("log {dir}: the batch at offset {offset} failed its checks: {error}")]
    BadStoredBatch {
        /// The partition directory.
        dir: PathBuf,
        /// Where the replay had got to.
        offset: u64,
        /// The failed check.
        error: FormatError,
    },
    /// A replay cannot rebuild the state: the snapshot is older than the log's earliest
    /// offset, or damaged while the log no longer starts at 0. Records are missing either way.
    #[error(
        "log {dir}: cannot rebuild state: the snapshot at offset {snapshot} is damaged or older than the earliest offset {earliest}, and the records before {earliest} are gone"
    )]
    SnapshotGap {
        /// The partition directory.
        dir: PathBuf,
        /// The snapshot's offset.
        snapshot: u64,
        /// The log's earliest offset.
        earliest: u64,
    },
    /// The log was closed.
    #[error("log {dir} is closed")]
    Closed {
        /// The partition directory.
        dir: PathBuf,
    },
}

/// What is wrong with bytes found in a segment or index file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// A batch failed validation.
    #[error("{0}")]
    Batch(FormatError),
    /// A batch header whose length or magic cannot be right.
    #[error(
        "batch header out of bounds: length {total_len}, magic {magic}, {available} bytes left"
    )]
    BadHeader {
        /// `12 + batch_len` as read.
        total_len: u64,
        /// Magic byte as read.
        magic: u8,
        /// Bytes left in the segment from this position.
        available: u64,
    },
    /// In the active segment, which the appender writes densely: a batch's base offset is
    /// not where the previous batch ended.
    #[error("offset gap: expected base offset {expected}, found {found}")]
    OffsetGap {
        /// The offset that should come next.
        expected: u64,
        /// The base offset found.
        found: u64,
    },
    /// In a sealed segment, where compaction may leave gaps: a batch's base offset is below
    /// where the previous batch ended.
    #[error(
        "offsets go backwards: expected a base offset of at least {expected_at_least}, found {found}"
    )]
    OffsetBackwards {
        /// One past the previous batch's last offset.
        expected_at_least: u64,
        /// The base offset found.
        found: u64,
    },
    /// The segment ends inside a batch header.
    #[error("segment ends inside a batch header: {available} bytes left")]
    Truncated {
        /// Bytes left in the segment from this position.
        available: u64,
    },
    /// Zeros where a sealed segment should hold its next batch.
    #[error("zero-filled where a batch should start: {available} bytes left")]
    ZeroFill {
        /// Bytes left in the segment from this position.
        available: u64,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &'static str, value: impl ToString, reason: &'static str) -> Self {
        Self::InvalidConfig {
            field,
            value: value.to_string(),
            reason,
        }
    }
}
