//! Sluice's wire protocol, package `sluice.v1`: the generated prost messages and tonic
//! services of `proto/sluice/v1/*.proto` (compiled by `build.rs` with protox).
//!
//! `bytes` fields are `bytes::Bytes`, so a produced batch is a slice of the request buffer and
//! a fetched one a slice of a segment's map until the transport writes it.
#![deny(unsafe_code)]

/// The `sluice.v1` messages and services.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `sluice.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));

/// gRPC metadata key of the retry hint the broker sends with `RESOURCE_EXHAUSTED`: how many
/// milliseconds to wait before retrying (ASCII decimal). Clients honour it (with jitter).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// gRPC metadata key naming the kind of a failure a client acts on, where the code alone is
/// ambiguous: `out-of-order-sequence` and `producer-fenced` (both `FAILED_PRECONDITION`) for
/// an idempotent producer's batch.
pub const ERROR_KIND: &str = "sluice-error";

/// Limits on names and values that the broker enforces and clients check before sending, so
/// both count the same way (bytes of UTF-8, not characters).
pub mod limits {
    /// Longest topic name, bytes.
    pub const MAX_TOPIC_NAME_BYTES: usize = 249;
    /// Longest group id, bytes.
    pub const MAX_GROUP_BYTES: usize = 249;
    /// Longest metadata stored with a committed offset, bytes.
    pub const MAX_COMMIT_METADATA_BYTES: usize = 4096;
    /// Most partitions a topic may have.
    pub const MAX_PARTITIONS: u32 = 10_000;

    /// Why `name` is not a valid topic name, if it is not: 1–249 bytes of `[a-zA-Z0-9._-]`,
    /// not `.` or `..`; names starting with `__` are the broker's own unless `internal`.
    pub fn topic_name_problem(name: &str, internal: bool) -> Option<&'static str> {
        if name.is_empty() || name.len() > MAX_TOPIC_NAME_BYTES {
            Some("must be 1 to 249 characters")
        } else if name == "." || name == ".." {
            Some("must not be \".\" or \"..\"")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            Some("may hold only ASCII letters, digits, '.', '_' and '-'")
        } else if name.starts_with("__") && !internal {
            Some("names starting with \"__\" are reserved for internal topics")
        } else {
            None
        }
    }

    /// Why `group` is not a valid group id, if it is not: 1–249 bytes of UTF-8, no NUL.
    pub fn group_problem(group: &str) -> Option<&'static str> {
        (group.is_empty() || group.len() > MAX_GROUP_BYTES || group.contains('\0'))
            .then_some("must be 1 to 249 bytes without NUL")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_and_groups_are_counted_in_bytes() {
            for good in ["orders", "a", "a.b-c_d", &"x".repeat(249)] {
                assert_eq!(topic_name_problem(good, false), None, "{good}");
            }
            for bad in [
                "",
                ".",
                "..",
                "a/b",
                "a b",
                "é",
                "__internal",
                &"x".repeat(250),
            ] {
                assert!(topic_name_problem(bad, false).is_some(), "{bad}");
            }
            assert_eq!(topic_name_problem("__consumer_offsets", true), None);
            assert_eq!(group_problem(&"g".repeat(249)), None);
            // 125 two-byte characters: 250 bytes, one over.
            assert!(group_problem(&"é".repeat(125)).is_some());
            assert!(group_problem("").is_some());
            assert!(group_problem("a\0b").is_some());
        }
    }
}
