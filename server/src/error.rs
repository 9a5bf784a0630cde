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
    /// The topic was deleted while the request used it (a long poll, a subscription).
    #[error("topic {topic:?} was deleted")]
    TopicDeleted {
        /// The topic.
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
    /// A producer's batch for a compacted topic holds a record without a key.
    #[error(
        "invalid batch for compacted topic {topic:?}: record {index} has no key (compacted topics need a key on every record)"
    )]
    KeylessRecord {
        /// The topic.
        topic: String,
        /// The record's index in the batch.
        index: u32,
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
    /// A group member that is not (or no longer) in its group.
    #[error(
        "unknown member {member:?} of group {group:?} (it left or its session expired): join again"
    )]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id.
        member: String,
    },
    /// A group the broker does not know.
    #[error("unknown group {group:?}")]
    UnknownGroup {
        /// The group.
        group: String,
    },
    /// A request from a fenced party (a stale generation, a member that left, a commit from
    /// outside a group with live members, live members in the way of a reset).
    #[error("{reason}")]
    Fenced {
        /// What was fenced, and by what.
        reason: String,
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
    /// A batch of an idempotent producer whose base sequence is not the next one.
    #[error(
        "out of order sequence for producer {producer_id} (epoch {epoch}) on {partition}: expected base_sequence {expected}, received {received}"
    )]
    OutOfOrderSequence {
        /// `topic/partition`.
        partition: String,
        /// The producer.
        producer_id: i64,
        /// Its epoch.
        epoch: i16,
        /// The sequence the partition expects.
        expected: i32,
        /// The batch's base sequence.
        received: i32,
    },
    /// A batch of an idempotent producer whose epoch is older than one seen since.
    #[error(
        "producer {producer_id} with epoch {epoch} is fenced on {partition}: a newer instance has epoch {current}"
    )]
    ProducerFenced {
        /// `topic/partition`.
        partition: String,
        /// The producer.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch seen.
        current: i16,
    },
    /// A retry of a batch already appended (the write path answers it with the original's
    /// offsets; never sent to a client as an error).
    #[error("duplicate of the batch at offsets {}..={}", .0.base_offset, .0.last_offset)]
    DuplicateBatch(crate::producers::state::BatchMeta),
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

/// Longest part of a client's input echoed back in an error message, bytes: a 10 KB topic
/// name must not come back whole and overflow the client's metadata limits.
pub const MAX_ECHO_BYTES: usize = 200;

/// `value` as an error message may repeat it: whole if short, else its first
/// [`MAX_ECHO_BYTES`] (cut at a character boundary) and its length.
pub fn echo(value: &str) -> String {
    if value.len() <= MAX_ECHO_BYTES {
        return value.to_owned();
    }
    let mut end = MAX_ECHO_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &value[..end], value.len())
}

impl Error {
    pub(crate) fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> Self {
        Self::InvalidArgument {
            field,
            value: echo(&value.to_string()),
            reason,
        }
    }

    /// `NOT_FOUND` for a topic, its name echoed at most [`MAX_ECHO_BYTES`].
    pub(crate) fn unknown_topic(topic: &str) -> Self {
        Self::UnknownTopic { topic: echo(topic) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_echoed_cut_with_its_length() {
        assert_eq!(echo("orders"), "orders");
        let long = "é".repeat(5000);
        let echoed = echo(&long);
        assert!(echoed.len() < MAX_ECHO_BYTES + 32, "{}", echoed.len());
        assert!(echoed.ends_with("... (10000 bytes)"), "{echoed}");
        let error = Error::invalid("topic", "x".repeat(10_000), "too long");
        assert!(error.to_string().len() < 300);
    }
}
