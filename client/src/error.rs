//! [`Error`]: everything the client can fail at, each variant naming what failed and the values
//! that made it fail.
//!
//! Broker errors keep the gRPC code and message, which are the wire contract (design.md §4):
//! match on [`Error::code`] rather than on message text. The enum is `Clone` because one failed
//! batch fails every record in it, and each record's [`DeliveryFuture`](crate::DeliveryFuture)
//! gets its own copy.

use std::sync::Arc;
use std::time::Duration;

use sluice_storage::format::FormatError;
use tonic::Code;

/// A `Result` whose error is the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the client can fail at.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config value was rejected by `validate()`.
    #[error("invalid config: {field} = {value}: {reason}")]
    InvalidConfig {
        /// The field, as named by its setter.
        field: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// The broker address is not a valid URI.
    #[error("invalid broker address {address:?}")]
    InvalidAddress {
        /// The address as configured.
        address: String,
        /// Why tonic rejected it.
        #[source]
        source: Arc<tonic::transport::Error>,
    },
    /// Connecting to the broker failed (refused, unreachable, or the connect timeout passed).
    #[error("connect to broker {address} failed")]
    Connect {
        /// The address connected to.
        address: String,
        /// The transport error.
        #[source]
        source: Arc<tonic::transport::Error>,
    },
    /// The broker answered a request with an error status (after retries, if it was retriable).
    #[error(
        "{operation} {topic}{partition} failed after {attempts} attempt(s): {code:?}: {message}",
        partition = partition.map(|p| format!("/{p}")).unwrap_or_default()
    )]
    Broker {
        /// The request, e.g. `"produce to"`, `"fetch from"`, `"describe topic"`.
        operation: &'static str,
        /// The topic the request was about.
        topic: String,
        /// The partition, for per-partition requests.
        partition: Option<u32>,
        /// The gRPC status code.
        code: Code,
        /// The broker's message (it names the problem, design.md §4).
        message: String,
        /// Attempts made, the first included.
        attempts: u32,
    },
    /// A fetch asked for an offset the partition does not hold: below the earliest offset
    /// retained (retention deleted it) or past the high watermark.
    #[error(
        "offset {offset} of {topic}/{partition} is out of range: the partition holds \
         [{earliest}, {high_watermark})"
    )]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// The earliest offset retained, as the broker reported it after the failure.
        earliest: u64,
        /// One past the last readable offset, as the broker reported it after the failure.
        high_watermark: u64,
    },
    /// The producer could not encode a record into a batch.
    #[error("encode record for {topic}/{partition} failed")]
    Encode {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// What the format could not hold.
        #[source]
        source: FormatError,
    },
    /// A fetched batch failed its checksum or structure check.
    #[error(
        "corrupt batch from {topic}/{partition} at byte {position} of a fetch from offset {offset}"
    )]
    CorruptBatch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The offset the fetch asked for.
        offset: u64,
        /// Byte position of the bad batch in the fetched bytes.
        position: usize,
        /// The check that failed.
        #[source]
        source: FormatError,
    },
    /// A record is larger than a limit it must fit in.
    #[error("record of {len} bytes for topic {topic} exceeds {limit} = {max} bytes")]
    RecordTooLarge {
        /// Topic.
        topic: String,
        /// The record's size (encoded, or estimated for the buffer).
        len: usize,
        /// The limit's name: `"buffer_bytes"` or the topic's `"max_batch_bytes"`.
        limit: &'static str,
        /// The limit.
        max: usize,
    },
    /// `send` waited `max_block` for buffer space and found none.
    #[error("producer buffer full: waited {waited:?} for {len} of {buffer_bytes} bytes")]
    BufferFull {
        /// How long `send` waited.
        waited: Duration,
        /// Bytes the record needed.
        len: usize,
        /// The buffer's size.
        buffer_bytes: usize,
    },
    /// A record named a partition the topic does not have.
    #[error("topic {topic} has {partitions} partition(s); partition {partition} does not exist")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// Partitions the topic has.
        partitions: u32,
    },
    /// A consumer call named a partition that is not assigned to it.
    #[error("{topic}/{partition} is not assigned to this consumer")]
    NotAssigned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// A group operation was called on a consumer configured without a group id.
    #[error("{operation} needs a consumer group id, and none is configured")]
    NoGroup {
        /// The operation, e.g. `"commit"`.
        operation: &'static str,
    },
    /// The broker answered with something that breaks the protocol.
    #[error("unexpected response to {operation} {topic}: {what}")]
    UnexpectedResponse {
        /// The request.
        operation: &'static str,
        /// The topic it was about.
        topic: String,
        /// What was wrong with the answer.
        what: String,
    },
    /// A background task of the client failed (it panicked or was cancelled).
    #[error("{task} task failed: {message}")]
    Task {
        /// The task, e.g. `"fetch"`.
        task: &'static str,
        /// The join error, formatted.
        message: String,
    },
    /// The producer was closed (or its partition task stopped) before the record was sent.
    #[error("producer closed")]
    Closed,
}

impl Error {
    /// The gRPC status code of a broker error, `None` for errors raised by the client itself.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            Self::OffsetOutOfRange { .. } => Some(Code::OutOfRange),
            _ => None,
        }
    }

    /// Builds [`Error::Broker`] from a status: what was asked, about what, after how many tries.
    pub(crate) fn broker(
        operation: &'static str,
        topic: &str,
        partition: Option<u32>,
        status: &tonic::Status,
        attempts: u32,
    ) -> Self {
        Self::Broker {
            operation,
            topic: topic.to_owned(),
            partition,
            code: status.code(),
            message: status.message().to_owned(),
            attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_sync_and_names_what_failed() {
        assert_send_sync_static::<Error>();
        let error = Error::broker(
            "produce to",
            "orders",
            Some(3),
            &tonic::Status::invalid_argument("batch checksum mismatch"),
            1,
        );
        assert_eq!(error.code(), Some(Code::InvalidArgument));
        let text = error.to_string();
        assert!(text.contains("produce to orders/3"), "{text}");
        assert!(text.contains("batch checksum mismatch"), "{text}");
        let error = Error::broker(
            "describe topic",
            "orders",
            None,
            &tonic::Status::not_found("no topic"),
            1,
        );
        assert!(
            error
                .to_string()
                .starts_with("describe topic orders failed")
        );
        let error = Error::OffsetOutOfRange {
            topic: "t".into(),
            partition: 0,
            offset: 3,
            earliest: 10,
            high_watermark: 20,
        };
        assert_eq!(error.code(), Some(Code::OutOfRange));
        assert!(error.to_string().contains("offset 3"));
        assert!(error.to_string().contains("[10, 20)"));
    }
}
