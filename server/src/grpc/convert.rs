//! Every translation between the generated `sluice.v1` types and the broker's domain types, in
//! one place: domain modules never import protobuf types, handlers call these.

use crate::error::{Error, Result};
use crate::groups::{DEFAULT_SESSION_TIMEOUT_MS, GroupDescription, Join, ResetTo, TopicPartition};
use crate::queue::RetryPolicy;
use crate::topics::{Cleanup, DEFAULT_FSYNC_INTERVAL_MS, Topic, TopicSettings, multiplier_milli};
use sluice_proto::v1 as pb;
use sluice_storage::Durability;
use std::collections::BTreeSet;
use std::time::Duration;

/// The settings a create request's config asks for, defaults filled in and checked; bad
/// values are `INVALID_ARGUMENT`s naming the field.
pub fn topic_settings(config: Option<&pb::TopicConfig>) -> Result<TopicSettings> {
    let defaults = TopicSettings::default();
    let config = config.cloned().unwrap_or_default();
    let non_negative = |field: &'static str, value: Option<i64>| -> Result<Option<u64>> {
        match value {
            None | Some(-1) => Ok(None),
            Some(v) if v >= 0 => Ok(Some(v as u64)),
            Some(v) => Err(Error::invalid(
                field,
                v,
                "must be -1 (no limit) or at least 0",
            )),
        }
    };
    let retention_bytes = non_negative("retention_bytes", config.retention_bytes)?;
    let retention_ms = match config.retention_ms {
        None => defaults.retention_ms,
        value => non_negative("retention_ms", value)?,
    };
    let durability = match pb::FsyncPolicy::try_from(config.fsync) {
        Ok(pb::FsyncPolicy::Unspecified | pb::FsyncPolicy::Always) => Durability::Always,
        Ok(pb::FsyncPolicy::Interval) => Durability::Interval(Duration::from_millis(
            config
                .fsync_interval_ms
                .unwrap_or(DEFAULT_FSYNC_INTERVAL_MS),
        )),
        Ok(pb::FsyncPolicy::Never) => Durability::Never,
        Err(_) => {
            return Err(Error::invalid(
                "fsync",
                config.fsync,
                "unknown fsync policy",
            ));
        }
    };
    let cleanup = match pb::CleanupPolicy::try_from(config.cleanup) {
        Ok(pb::CleanupPolicy::Unspecified | pb::CleanupPolicy::Delete) => Cleanup::Delete,
        Ok(pb::CleanupPolicy::Compact) => Cleanup::Compact,
        Ok(pb::CleanupPolicy::CompactDelete) => Cleanup::CompactDelete,
        Err(_) => {
            return Err(Error::invalid(
                "cleanup",
                config.cleanup,
                "unknown cleanup policy: use DELETE (1), COMPACT (2) or COMPACT_DELETE (3)",
            ));
        }
    };
    let segment_bytes = config.segment_bytes.unwrap_or(defaults.segment_bytes);
    // A batch must fit a segment: with small segments the default shrinks to match.
    let default_batch = u64::from(defaults.max_batch_bytes).min(segment_bytes);
    let max_batch_bytes = config
        .max_batch_bytes
        .unwrap_or(u32::try_from(default_batch).unwrap_or(defaults.max_batch_bytes));
    let settings = TopicSettings {
        retention_bytes,
        retention_ms,
        segment_bytes,
        durability,
        max_batch_bytes,
        cleanup,
        delete_retention_ms: config
            .delete_retention_ms
            .unwrap_or(defaults.delete_retention_ms),
        retry: retry_policy(&config, defaults.retry)?,
    };
    settings.log_config()?;
    Ok(settings)
}

/// The queue retry policy `config` sets over `base`, checked.
pub fn retry_policy(config: &pb::TopicConfig, base: RetryPolicy) -> Result<RetryPolicy> {
    let retry = RetryPolicy {
        max_attempts: config.max_attempts.unwrap_or(base.max_attempts),
        backoff_initial_ms: config.backoff_initial_ms.unwrap_or(base.backoff_initial_ms),
        backoff_multiplier_milli: config
            .backoff_multiplier
            .map_or(base.backoff_multiplier_milli, multiplier_milli),
        backoff_max_ms: config.backoff_max_ms.unwrap_or(base.backoff_max_ms),
    };
    if let Some((field, value, reason)) = retry.problem() {
        return Err(Error::invalid(field, value, reason));
    }
    Ok(retry)
}

/// The first field of an alter request's config that cannot be altered, if any: only the
/// queue settings can.
pub fn unalterable(config: &pb::TopicConfig) -> Option<&'static str> {
    let fields = [
        ("retention_bytes", config.retention_bytes.is_some()),
        ("retention_ms", config.retention_ms.is_some()),
        ("segment_bytes", config.segment_bytes.is_some()),
        ("fsync", config.fsync != 0),
        ("fsync_interval_ms", config.fsync_interval_ms.is_some()),
        ("max_batch_bytes", config.max_batch_bytes.is_some()),
        ("cleanup", config.cleanup != 0),
        ("delete_retention_ms", config.delete_retention_ms.is_some()),
    ];
    fields.into_iter().find(|(_, set)| *set).map(|(f, _)| f)
}

/// Settings as the wire shows them.
pub fn topic_config(settings: &TopicSettings) -> pb::TopicConfig {
    let (fsync, interval) = match settings.durability {
        Durability::Always => (pb::FsyncPolicy::Always, None),
        Durability::Interval(every) => (
            pb::FsyncPolicy::Interval,
            Some(u64::try_from(every.as_millis()).unwrap_or(u64::MAX)),
        ),
        Durability::Never => (pb::FsyncPolicy::Never, None),
    };
    pb::TopicConfig {
        retention_bytes: Some(settings.retention_bytes.map_or(-1, to_i64)),
        retention_ms: Some(settings.retention_ms.map_or(-1, to_i64)),
        segment_bytes: Some(settings.segment_bytes),
        fsync: fsync as i32,
        fsync_interval_ms: interval,
        max_batch_bytes: Some(settings.max_batch_bytes),
        cleanup: match settings.cleanup {
            Cleanup::Delete => pb::CleanupPolicy::Delete,
            Cleanup::Compact => pb::CleanupPolicy::Compact,
            Cleanup::CompactDelete => pb::CleanupPolicy::CompactDelete,
        } as i32,
        delete_retention_ms: Some(settings.delete_retention_ms),
        max_attempts: Some(settings.retry.max_attempts),
        backoff_initial_ms: Some(settings.retry.backoff_initial_ms),
        backoff_multiplier: Some(f64::from(settings.retry.backoff_multiplier_milli) / 1000.0),
        backoff_max_ms: Some(settings.retry.backoff_max_ms),
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A topic's description: config and per-partition offsets and sizes.
pub fn topic_description(topic: &Topic) -> pb::TopicDescription {
    pb::TopicDescription {
        name: topic.name.clone(),
        config: Some(topic_config(&topic.settings)),
        partitions: topic
            .partitions
            .iter()
            .map(|p| pb::PartitionDescription {
                partition: p.id(),
                earliest_offset: p.earliest_offset(),
                latest_offset: p.high_watermark(),
                log_end_offset: p.log_end_offset(),
                size_bytes: p.size_bytes(),
                segments: p.segment_count() as u32,
            })
            .collect(),
    }
}

/// A join request as the membership takes it (bounds are checked there).
pub fn join(request: pb::JoinRequest) -> Join {
    Join {
        group: request.group,
        member_id: (!request.member_id.is_empty()).then_some(request.member_id),
        topics: request.topics.into_iter().collect(),
        session_timeout_ms: if request.session_timeout_ms == 0 {
            DEFAULT_SESSION_TIMEOUT_MS
        } else {
            request.session_timeout_ms
        },
        client_id: request.client_id,
    }
}

/// Partitions grouped by topic, for the wire.
pub fn topic_partitions<'a>(
    partitions: impl IntoIterator<Item = &'a TopicPartition>,
) -> Vec<pb::TopicPartitions> {
    let mut out: Vec<pb::TopicPartitions> = Vec::new();
    for (topic, partition) in partitions {
        match out.last_mut() {
            Some(last) if &last.topic == topic => last.partitions.push(*partition),
            _ => out.push(pb::TopicPartitions {
                topic: topic.clone(),
                partitions: vec![*partition],
            }),
        }
    }
    out
}

/// Partitions from the wire, as a set.
pub fn partition_set(partitions: &[pb::TopicPartitions]) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
        .collect()
}

/// A reset target from the wire.
pub fn reset_to(to: Option<pb::reset_group_offsets_request::To>) -> Result<ResetTo> {
    use pb::reset_group_offsets_request::To;
    match to {
        Some(To::Earliest(true)) => Ok(ResetTo::Earliest),
        Some(To::Latest(true)) => Ok(ResetTo::Latest),
        Some(To::Offset(offset)) => Ok(ResetTo::Offset(offset)),
        Some(To::TimestampMs(ms)) => Ok(ResetTo::Timestamp(ms)),
        _ => Err(Error::invalid(
            "to",
            "unset",
            "must be earliest, latest, an offset or a timestamp",
        )),
    }
}

/// A group's description for the wire.
pub fn group_description(group: &str, description: GroupDescription) -> pb::DescribeGroupResponse {
    pb::DescribeGroupResponse {
        group: group.to_owned(),
        generation: description.generation,
        last_rebalance_ms: description.last_rebalance_ms,
        members: description
            .members
            .into_iter()
            .map(|m| pb::GroupMember {
                member_id: m.member_id,
                client_id: m.client_id,
                generation: m.generation,
                topics: m.topics,
                assignment: topic_partitions(&m.assignment),
                session_timeout_ms: m.session_timeout_ms,
                since_heartbeat_ms: m.since_heartbeat_ms,
            })
            .collect(),
        partitions: description
            .partitions
            .into_iter()
            .map(|p| pb::GroupPartition {
                topic: p.partition.0,
                partition: p.partition.1,
                member_id: p.owner.unwrap_or_default(),
                committed_offset: p.committed,
                log_end_offset: p.log_end,
                lag: p.lag,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_bounds_and_round_trip() {
        let defaults = topic_settings(None).map_err(|e| e.to_string());
        assert_eq!(defaults, Ok(TopicSettings::default()));
        let bad = pb::TopicConfig {
            segment_bytes: Some(10),
            ..Default::default()
        };
        match topic_settings(Some(&bad)) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "segment_bytes"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        // Small segments: the default batch limit shrinks to fit one.
        let small = pb::TopicConfig {
            segment_bytes: Some(1 << 20),
            ..Default::default()
        };
        assert_eq!(
            topic_settings(Some(&small)).map(|s| s.max_batch_bytes).ok(),
            Some(1 << 20)
        );
        let negative = pb::TopicConfig {
            retention_ms: Some(-1),
            retention_bytes: Some(-7),
            ..Default::default()
        };
        match topic_settings(Some(&negative)) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "retention_bytes"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        let interval = pb::TopicConfig {
            fsync: pb::FsyncPolicy::Interval as i32,
            fsync_interval_ms: Some(250),
            retention_ms: Some(-1),
            ..Default::default()
        };
        let settings = topic_settings(Some(&interval)).map_err(|e| e.to_string());
        let shown = settings.as_ref().map(topic_config);
        assert_eq!(
            shown
                .as_ref()
                .map(|c| (c.fsync, c.fsync_interval_ms, c.retention_ms)),
            Ok((pb::FsyncPolicy::Interval as i32, Some(250), Some(-1)))
        );
        assert_eq!(
            settings.as_ref().map(|s| s.durability),
            Ok(Durability::Interval(Duration::from_millis(250)))
        );
    }

    #[test]
    fn cleanup_policies_convert_both_ways_and_unknown_ones_are_refused() {
        for (wire, cleanup) in [
            (pb::CleanupPolicy::Unspecified, Cleanup::Delete),
            (pb::CleanupPolicy::Delete, Cleanup::Delete),
            (pb::CleanupPolicy::Compact, Cleanup::Compact),
            (pb::CleanupPolicy::CompactDelete, Cleanup::CompactDelete),
        ] {
            let config = pb::TopicConfig {
                cleanup: wire as i32,
                ..Default::default()
            };
            let settings = topic_settings(Some(&config)).map_err(|e| e.to_string());
            assert_eq!(settings.as_ref().map(|s| s.cleanup), Ok(cleanup));
            assert_eq!(
                settings.as_ref().map(|s| s.delete_retention_ms),
                Ok(crate::topics::DEFAULT_DELETE_RETENTION_MS)
            );
            let shown = settings.map(|s| topic_config(&s).cleanup);
            let expected = match wire {
                pb::CleanupPolicy::Unspecified => pb::CleanupPolicy::Delete,
                other => other,
            };
            assert_eq!(shown, Ok(expected as i32));
        }
        let config = pb::TopicConfig {
            cleanup: pb::CleanupPolicy::Compact as i32,
            delete_retention_ms: Some(60_000),
            ..Default::default()
        };
        let shown = topic_settings(Some(&config)).map(|s| topic_config(&s).delete_retention_ms);
        assert_eq!(shown.ok().flatten(), Some(60_000));
        let bad = pb::TopicConfig {
            cleanup: 9,
            ..Default::default()
        };
        match topic_settings(Some(&bad)) {
            Err(Error::InvalidArgument { field, value, .. }) => {
                assert_eq!((field, value.as_str()), ("cleanup", "9"));
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}
