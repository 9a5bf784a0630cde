//! Every broker error as a gRPC status (design.md §4): the code is the contract, the message
//! names the problem and the value that caused it.

use crate::error::Error;
use sluice_proto::{ERROR_KIND, RETRY_AFTER_MS};
use sluice_storage::Error as StorageError;
use tonic::{Code, Status};

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let code = match &error {
            Error::UnknownTopic { .. }
            | Error::UnknownPartition { .. }
            | Error::TopicDeleted { .. }
            | Error::UnknownMember { .. }
            | Error::UnknownGroup { .. } => Code::NotFound,
            Error::Fenced { .. } => Code::FailedPrecondition,
            Error::OutOfOrderSequence { .. } => {
                return with_kind(Code::FailedPrecondition, message, "out-of-order-sequence");
            }
            Error::ProducerFenced { .. } => {
                return with_kind(Code::FailedPrecondition, message, "producer-fenced");
            }
            Error::DuplicateBatch(_) => Code::AlreadyExists,
            Error::TopicExists { .. } => Code::AlreadyExists,
            Error::InvalidArgument { .. } | Error::KeylessRecord { .. } => Code::InvalidArgument,
            Error::Conflict { .. } => Code::Aborted,
            Error::Busy { retry_after_ms, .. } => return busy_status(message, *retry_after_ms),
            Error::Storage(storage) => storage_code(storage),
            Error::Io { .. } | Error::BadMetadata { .. } | Error::Task(_) => Code::Internal,
        };
        if code == Code::Internal || code == Code::DataLoss {
            tracing::error!(%error, "request failed");
        }
        Status::new(code, message)
    }
}

/// A status whose metadata names the kind of failure, for clients that act on it.
fn with_kind(code: Code, message: String, kind: &'static str) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        ERROR_KIND,
        tonic::metadata::MetadataValue::from_static(kind),
    );
    status
}

/// `RESOURCE_EXHAUSTED` with `message` and the `retry-after-ms` hint: the one shape of every
/// back-pressure answer (in-flight bytes, admission, connections).
pub fn busy_status(message: String, retry_after_ms: u32) -> Status {
    let mut status = Status::resource_exhausted(message);
    if let Ok(value) = retry_after_ms.to_string().parse() {
        status.metadata_mut().insert(RETRY_AFTER_MS, value);
    }
    status
}

fn storage_code(error: &StorageError) -> Code {
    match error {
        StorageError::InvalidBatch(_) | StorageError::InvalidConfig { .. } => Code::InvalidArgument,
        StorageError::OffsetOutOfRange { .. } => Code::OutOfRange,
        StorageError::Corrupt { .. } => Code::DataLoss,
        // The partition was closed under the request (topic deleted, broker stopping).
        StorageError::Closed { .. } => Code::Unavailable,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retry_hint() {
        let status = Status::from(Error::UnknownTopic {
            topic: "nope".into(),
        });
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("\"nope\""));
        let status = Status::from(Error::Busy {
            scope: "broker".into(),
            inflight: 10,
            limit: 10,
            retry_after_ms: 75,
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER_MS)
                .and_then(|v| v.to_str().ok()),
            Some("75")
        );
        let status = Status::from(Error::Storage(StorageError::OffsetOutOfRange {
            offset: 9,
            earliest: 0,
            latest: 3,
        }));
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(status.message().contains("offset 9"));
        let status = Status::from(Error::Storage(StorageError::InvalidBatch(
            sluice_storage::format::FormatError::Empty,
        )));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("record_count is 0"));
    }
}
