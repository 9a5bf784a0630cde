//! Consumer groups (design.md §4). Today: committed offsets, kept in the internal topic
//! `__consumer_offsets` and rebuilt from it at start by the replay hook. Membership,
//! generations and assignment come next, as state machines of their own beside `offsets`
//! that take `now` as an argument and keep their state in the same kind of internal log.

mod offsets;

pub use offsets::{Committed, OFFSETS_TOPIC, Offsets};

use crate::error::{Error, Result};
use sluice_proto::limits::{MAX_COMMIT_METADATA_BYTES, group_problem};

/// Checks a group id: 1–249 bytes of UTF-8 without NUL (the client checks the same).
pub fn validate_group(group: &str) -> Result<()> {
    match group_problem(group) {
        Some(reason) => Err(Error::invalid("group", group, reason)),
        None => Ok(()),
    }
}

/// Checks a commit's metadata: at most 4 KiB.
pub fn validate_metadata(metadata: &str) -> Result<()> {
    if metadata.len() > MAX_COMMIT_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("{} bytes", metadata.len()),
            "must be at most 4096 bytes",
        ));
    }
    Ok(())
}
