//! A topic's settings: the domain type ([`TopicSettings`]) and how `topic.json` stores it
//! ([`StoredSettings`], whose fields old files may lack and get defaults for).

use crate::error::{Error, Result};
use crate::queue::RetryPolicy;
use serde::{Deserialize, Serialize};
use sluice_storage::{Durability, LogConfig};
use std::time::Duration;

/// Default retention by age: 7 days.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// Default time a tombstone stays on a compacted topic after it was appended: 1 day.
pub const DEFAULT_DELETE_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Default fsync interval for `Durability::Interval`, when a request names none.
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1000;

/// What a topic does with old records (`cleanup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cleanup {
    /// Delete whole segments by `retention_bytes` and `retention_ms`.
    #[default]
    Delete,
    /// Keep the latest record per key; tombstones go `delete_retention_ms` after they were
    /// appended. Nothing is deleted by retention. Every produced record needs a key.
    Compact,
    /// Both: compact, and delete whole segments by retention.
    CompactDelete,
}

impl Cleanup {
    /// Whether the topic is compacted (and its records need keys).
    pub fn compacts(self) -> bool {
        matches!(self, Self::Compact | Self::CompactDelete)
    }

    /// Whether retention deletes the topic's old segments.
    pub fn deletes(self) -> bool {
        matches!(self, Self::Delete | Self::CompactDelete)
    }

    /// The name `topic.json` and the CLI use: `delete`, `compact` or `compact,delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
            Self::CompactDelete => "compact,delete",
        }
    }

    /// The policy a name stands for (`delete,compact` is `compact,delete` too).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "delete" => Some(Self::Delete),
            "compact" => Some(Self::Compact),
            "compact,delete" | "delete,compact" => Some(Self::CompactDelete),
            _ => None,
        }
    }
}

/// A topic's settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    /// Delete old segments beyond this many bytes per partition; `None`: no limit.
    pub retention_bytes: Option<u64>,
    /// Delete segments older than this, ms; `None`: keep forever.
    pub retention_ms: Option<u64>,
    /// Segment size, bytes.
    pub segment_bytes: u64,
    /// When appends are fsynced, and so acknowledged (design.md §3).
    pub durability: Durability,
    /// Largest batch accepted, bytes.
    pub max_batch_bytes: u32,
    /// What happens to old records: deleted by retention, compacted, or both.
    pub cleanup: Cleanup,
    /// On compacted topics: how long a tombstone stays after it was appended, ms.
    pub delete_retention_ms: u64,
    /// Queue mode: deliveries before a message is dead-lettered, and the backoff between.
    pub retry: RetryPolicy,
}

impl Default for TopicSettings {
    fn default() -> Self {
        let log = LogConfig::default();
        Self {
            retention_bytes: None,
            retention_ms: Some(DEFAULT_RETENTION_MS),
            segment_bytes: log.segment_bytes,
            durability: Durability::Always,
            max_batch_bytes: log.max_batch_bytes,
            cleanup: Cleanup::Delete,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            retry: RetryPolicy::default(),
        }
    }
}

impl TopicSettings {
    /// The storage configuration of each partition, checked; bad values are
    /// `INVALID_ARGUMENT`s naming the field. Retention applies only if `cleanup` deletes
    /// (`retention_bytes` and `retention_ms` are kept, and shown, either way).
    pub fn log_config(&self) -> Result<LogConfig> {
        let deletes = self.cleanup.deletes();
        let config = LogConfig {
            segment_bytes: self.segment_bytes,
            max_batch_bytes: self.max_batch_bytes,
            retention_bytes: self.retention_bytes.filter(|_| deletes),
            retention_age: self
                .retention_ms
                .filter(|_| deletes)
                .map(Duration::from_millis),
            durability: self.durability,
            ..LogConfig::default()
        };
        config.validate().map_err(|error| match error {
            sluice_storage::Error::InvalidConfig {
                field,
                value,
                reason,
            } => Error::InvalidArgument {
                field: match field {
                    "durability" => "fsync_interval_ms",
                    other => other,
                },
                value,
                reason,
            },
            other => Error::Storage(other),
        })?;
        Ok(config)
    }
}

/// `topic.json`'s settings, as written since the first release: durability as a string
/// (`"always"`, `"interval"`, `"never"`) and its interval beside it. `cleanup` (a
/// [`Cleanup`] name) and `delete_retention_ms` came with compaction: files without them read
/// as `delete` and the default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredSettings {
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    segment_bytes: u64,
    fsync: String,
    fsync_interval_ms: u64,
    max_batch_bytes: u32,
    #[serde(default = "default_cleanup")]
    cleanup: String,
    #[serde(default = "default_delete_retention_ms")]
    delete_retention_ms: u64,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff_initial_ms: Option<u64>,
    #[serde(default)]
    backoff_multiplier: Option<f64>,
    #[serde(default)]
    backoff_max_ms: Option<u64>,
}

fn default_cleanup() -> String {
    Cleanup::Delete.as_str().to_owned()
}

fn default_delete_retention_ms() -> u64 {
    DEFAULT_DELETE_RETENTION_MS
}

impl StoredSettings {
    pub(super) fn new(settings: &TopicSettings) -> Self {
        let (fsync, interval) = match settings.durability {
            Durability::Always => ("always", DEFAULT_FSYNC_INTERVAL_MS),
            Durability::Interval(every) => ("interval", every.as_millis() as u64),
            Durability::Never => ("never", DEFAULT_FSYNC_INTERVAL_MS),
        };
        Self {
            retention_bytes: settings.retention_bytes,
            retention_ms: settings.retention_ms,
            segment_bytes: settings.segment_bytes,
            fsync: fsync.to_owned(),
            fsync_interval_ms: interval,
            max_batch_bytes: settings.max_batch_bytes,
            cleanup: settings.cleanup.as_str().to_owned(),
            delete_retention_ms: settings.delete_retention_ms,
            max_attempts: Some(settings.retry.max_attempts),
            backoff_initial_ms: Some(settings.retry.backoff_initial_ms),
            backoff_multiplier: Some(f64::from(settings.retry.backoff_multiplier_milli) / 1000.0),
            backoff_max_ms: Some(settings.retry.backoff_max_ms),
        }
    }

    pub(super) fn settings(&self) -> std::result::Result<TopicSettings, String> {
        let durability = match self.fsync.as_str() {
            "always" => Durability::Always,
            "interval" => Durability::Interval(Duration::from_millis(self.fsync_interval_ms)),
            "never" => Durability::Never,
            other => return Err(format!("unknown fsync policy {other:?}")),
        };
        let cleanup = Cleanup::parse(&self.cleanup)
            .ok_or_else(|| format!("unknown cleanup policy {:?}", self.cleanup))?;
        let defaults = RetryPolicy::default();
        let retry = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff_initial_ms: self
                .backoff_initial_ms
                .unwrap_or(defaults.backoff_initial_ms),
            backoff_multiplier_milli: self
                .backoff_multiplier
                .map_or(defaults.backoff_multiplier_milli, multiplier_milli),
            backoff_max_ms: self.backoff_max_ms.unwrap_or(defaults.backoff_max_ms),
        };
        if let Some((field, value, reason)) = retry.problem() {
            return Err(format!("invalid {field} {value}: {reason}"));
        }
        Ok(TopicSettings {
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
            segment_bytes: self.segment_bytes,
            durability,
            max_batch_bytes: self.max_batch_bytes,
            cleanup,
            delete_retention_ms: self.delete_retention_ms,
            retry,
        })
    }
}

/// A backoff multiplier in thousandths (saturating; out-of-range values fail validation).
pub fn multiplier_milli(multiplier: f64) -> u32 {
    if multiplier.is_nan() {
        return 0;
    }
    (multiplier * 1000.0)
        .round()
        .clamp(0.0, f64::from(u32::MAX)) as u32
}
