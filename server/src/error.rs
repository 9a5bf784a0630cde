//! The broker's one error type; `grpc/status.rs` turns each variant into a gRPC status.

use std::path::PathBuf;

/// Result with the broker [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a broker request or start-up can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such topic.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The name asked for.
        topic: String,
    },
    /// No such partition.
    #[error("unknown partition {partition} of topic {topic:?} (it has {partitions})")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many it has.
        partitions: u32,
    },
    /// A topic of that name exists.
    #[error("topic {topic:?} already exists")]
    TopicExists {
        /// The name.
        topic: String,
    },
    /// A request field out of bounds.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// The bound it broke.
        reason: &'static str,
    },
    /// Too many bytes in flight: retry later.
    #[error(
        "{scope} has {inflight} bytes of produce requests in flight, limit {limit}: retry after {retry_after_ms} ms"
    )]
    Busy {
        /// Which bound: `"partition orders/3"`, `"connection 127.0.0.1:5000"`, `"broker"`.
        scope: String,
        /// Bytes in flight there now.
        inflight: u64,
        /// The bound.
        limit: u64,
        /// When to retry.
        retry_after_ms: u32,
    },
    /// A pre-append check found that a concurrent write changed what it relied on; nothing
    /// was written, and the caller may retry.
    #[error("conflict: {what} ({keys} keys)")]
    Conflict {
        /// What raced what.
        what: &'static str,
        /// How many keys were affected.
        keys: usize,
    },
    /// The storage engine refused or failed.
    #[error(transparent)]
    Storage(#[from] sluice_storage::Error),
    /// A file operation outside the storage engine failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A metadata file that cannot be read.
    #[error("bad metadata file {path}: {reason}")]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> Self {
        Self::InvalidArgument {
            field,
            value: value.to_string(),
            reason,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Runs blocking storage work on tokio's blocking pool (never on a worker thread).
pub(crate) async fn blocking<T, F>(work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}
