//! Membership's durable form: each [`Change`] is a record of the internal topic
//! `__consumer_groups`, appended through the partition's write path before the member is
//! answered, and replayed into a [`Membership`] at start by the replay hook.
//!
//! ```text
//! member record     key = "m" NUL group NUL member_id   value = MemberRecord as JSON, or null (gone)
//! generation record key = "g" NUL group                 value = {"generation": n}, or null (deleted)
//! ```
//!
//! The latest record per key wins, so the topic can be compacted by key.

use super::membership::{Change, MemberRecord, Membership};
use crate::error::{Error, Result};
use crate::partition::{Origin, Partition};
use serde::{Deserialize, Serialize};
use sluice_storage::format::{BatchBuilder, BatchView};
use sluice_storage::replay::StateMachine;
use std::sync::Arc;

/// Name of the internal topic.
pub const GROUPS_TOPIC: &str = "__consumer_groups";

#[derive(Debug, Serialize, Deserialize)]
struct GenerationRecord {
    generation: u32,
}

fn encode(change: &Change) -> Result<(String, Option<Vec<u8>>)> {
    Ok(match change {
        Change::Member {
            group,
            member_id,
            record,
        } => (
            format!("m\0{group}\0{member_id}"),
            record.as_ref().map(to_json).transpose()?,
        ),
        Change::Generation { group, generation } => (
            format!("g\0{group}"),
            generation
                .map(|generation| to_json(&GenerationRecord { generation }))
                .transpose()?,
        ),
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::BadMetadata {
        path: GROUPS_TOPIC.into(),
        reason: e.to_string(),
    })
}

fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Change> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.split('\0');
    match (parts.next()?, parts.next(), parts.next(), parts.next()) {
        ("m", Some(group), Some(member), None) => Some(Change::Member {
            group: group.to_owned(),
            member_id: member.to_owned(),
            record: match value {
                Some(bytes) => Some(serde_json::from_slice::<MemberRecord>(bytes).ok()?),
                None => None,
            },
        }),
        ("g", Some(group), None, None) => Some(Change::Generation {
            group: group.to_owned(),
            generation: match value {
                Some(bytes) => Some(
                    serde_json::from_slice::<GenerationRecord>(bytes)
                        .ok()?
                        .generation,
                ),
                None => None,
            },
        }),
        _ => None,
    }
}

/// Appends `changes` as one batch and waits until it is durable.
pub async fn persist(partition: &Arc<Partition>, now_ms: i64, changes: &[Change]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut builder = BatchBuilder::new();
    for change in changes {
        let (key, value) = encode(change)?;
        builder
            .push(now_ms, Some(key.as_bytes()), value.as_deref(), &[])
            .map_err(sluice_storage::Error::from)?;
    }
    let batch = builder
        .finish()
        .map_err(sluice_storage::Error::from)?
        .freeze();
    partition.append(batch, Origin::Broker).await?;
    Ok(())
}

/// Replays `__consumer_groups` into a membership.
pub struct Replaying<'a>(pub &'a mut Membership);

impl StateMachine for Replaying<'_> {
    type Error = Error;

    fn restore(&mut self, _state: &[u8]) -> Result<()> {
        Err(Error::BadMetadata {
            path: GROUPS_TOPIC.into(),
            reason: "group membership takes no snapshot, but one was found".into(),
        })
    }

    fn apply(&mut self, batch: &BatchView<'_>) -> Result<()> {
        for record in batch.records() {
            match record.key.and_then(|key| decode(key, record.value)) {
                Some(change) => self.0.apply(change),
                None => tracing::warn!(offset = record.offset, "skipping a malformed group record"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_records() {
        let changes = [
            Change::Member {
                group: "g".into(),
                member_id: "m-1".into(),
                record: Some(MemberRecord {
                    client_id: "c".into(),
                    topics: vec!["t".into()],
                    session_timeout_ms: 10_000,
                    generation: 3,
                    joined_generation: 2,
                    assigned: vec![("t".into(), 2)],
                }),
            },
            Change::Member {
                group: "g".into(),
                member_id: "m-2".into(),
                record: None,
            },
            Change::Generation {
                group: "g".into(),
                generation: Some(7),
            },
            Change::Generation {
                group: "g".into(),
                generation: None,
            },
        ];
        for change in changes {
            let (key, value) = encode(&change).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decode(key.as_bytes(), value.as_deref()), Some(change));
        }
        assert_eq!(decode(b"x\0g", None), None);
        assert_eq!(decode(b"m\0g\0m\0extra", None), None);
        assert_eq!(decode(b"m\0g\0m", Some(b"not json")), None);
    }
}
