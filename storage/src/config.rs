//! Configuration of a [`Store`](crate::Store) and of each [`Log`](crate::Log).
//!
//! `Default` is the production setting; `validate()` rejects values out of bounds, naming the
//! field and the value. Nothing is clamped.

use crate::error::{Error, Result};
use crate::io::Faults;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When appended data is fsynced, and so when it is acknowledged and readable (design.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Group commit: an append is readable and acknowledged once `fdatasync` covered it. One
    /// sync covers every append written before it began, never one sync per record.
    #[default]
    Always,
    /// Appends are readable at once; a flusher fdatasyncs every `Duration`. A crash loses at
    /// most that much acknowledged data.
    Interval(Duration),
    /// Appends are readable at once; the OS writes back when it likes.
    Never,
}

/// Per-log (per-partition) settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Size at which the active segment rolls; the active segment file is preallocated
    /// (sparsely) to this size. Default 1 GiB; 4 KiB ..= 4 GiB − 1 (positions are `u32`).
    pub segment_bytes: u64,
    /// Age of the first batch in the active segment at which it rolls. Default 7 days; ≥ 1 ms.
    pub segment_age: Duration,
    /// Bytes between sparse index entries. Default 4 KiB; 64 B ..= `segment_bytes`.
    pub index_interval_bytes: u32,
    /// Largest batch accepted. Default 4 MiB; `HEADER_LEN` ..= `segment_bytes`.
    pub max_batch_bytes: u32,
    /// Delete the oldest sealed segments while the log holds more than this. Default none.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest batch is older than this. Default 7 days.
    pub retention_age: Option<Duration>,
    /// Durability policy. Default [`Durability::Always`].
    pub durability: Durability,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_age: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            max_batch_bytes: 4 << 20,
            retention_bytes: None,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            durability: Durability::Always,
        }
    }
}

impl LogConfig {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<()> {
        if !(4096..=u64::from(u32::MAX)).contains(&self.segment_bytes) {
            return Err(Error::config(
                "segment_bytes",
                self.segment_bytes,
                "must be within 4096..=4294967295",
            ));
        }
        if self.segment_age < Duration::from_millis(1) {
            return Err(Error::config(
                "segment_age",
                format!("{:?}", self.segment_age),
                "must be at least 1 ms",
            ));
        }
        if self.index_interval_bytes < 64
            || u64::from(self.index_interval_bytes) > self.segment_bytes
        {
            return Err(Error::config(
                "index_interval_bytes",
                self.index_interval_bytes,
                "must be within 64..=segment_bytes",
            ));
        }
        if (self.max_batch_bytes as usize) < crate::format::HEADER_LEN
            || u64::from(self.max_batch_bytes) > self.segment_bytes
        {
            return Err(Error::config(
                "max_batch_bytes",
                self.max_batch_bytes,
                "must be within 61..=segment_bytes",
            ));
        }
        if let Durability::Interval(interval) = self.durability
            && interval < Duration::from_millis(1)
        {
            return Err(Error::config(
                "durability",
                format!("interval({interval:?})"),
                "the fsync interval must be at least 1 ms",
            ));
        }
        Ok(())
    }

    /// Most offset-index entries a segment of `segment_bytes` can need: one at position 0 and
    /// at most one per `index_interval_bytes` after it.
    pub(crate) fn index_capacity(&self) -> u64 {
        self.segment_bytes / u64::from(self.index_interval_bytes) + 1
    }
}

/// Settings shared by all logs of a [`Store`](crate::Store).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Segments whose files and mappings stay open at once, across all logs; the least recently
    /// used are closed beyond it (a segment still being read stays mapped until its last reader
    /// is done). Default 1024; ≥ 2. An active segment holds three descriptors, a sealed one none.
    pub max_open_segments: usize,
    /// Where "now" comes from: the system clock, a manual one for tests, or the embedding
    /// program's clock (the broker's, which follows tokio's paused time in its tests).
    pub clock: Clock,
    /// I/O failures to inject, for tests of the failure paths. Default inert.
    pub faults: Faults,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_open_segments: 1024,
            clock: Clock::System,
            faults: Faults::default(),
        }
    }
}

impl StoreConfig {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<()> {
        if self.max_open_segments < 2 {
            return Err(Error::config(
                "max_open_segments",
                self.max_open_segments,
                "must be at least 2",
            ));
        }
        Ok(())
    }
}

/// The time source for append times, segment age and retention.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Wall-clock time.
    #[default]
    System,
    /// A clock that moves only when told; for tests.
    Manual(Arc<AtomicI64>),
    /// Another clock, such as the embedding server's.
    Source(Arc<dyn TimeSource>),
}

/// A clock kept outside the storage engine (the broker's), in ms since the Unix epoch. It must
/// be callable from any thread that appends or runs retention.
pub trait TimeSource: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

impl Clock {
    /// A manual clock starting at `now_ms`; advance it through the returned handle.
    pub fn manual(now_ms: i64) -> (Self, Arc<AtomicI64>) {
        let handle = Arc::new(AtomicI64::new(now_ms));
        (Self::Manual(Arc::clone(&handle)), handle)
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Self::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as i64),
            Self::Manual(now) => now.load(Ordering::Relaxed),
            Self::Source(source) => source.now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(LogConfig::default().validate().is_ok());
        assert!(StoreConfig::default().validate().is_ok());
    }

    #[test]
    fn rejects_out_of_bounds_naming_the_field() {
        let cases = [
            LogConfig {
                segment_bytes: 100,
                ..LogConfig::default()
            },
            LogConfig {
                index_interval_bytes: 8,
                ..LogConfig::default()
            },
            LogConfig {
                segment_bytes: 1 << 20,
                max_batch_bytes: 2 << 20,
                ..LogConfig::default()
            },
            LogConfig {
                durability: Durability::Interval(Duration::ZERO),
                ..LogConfig::default()
            },
        ];
        let fields = [
            "segment_bytes",
            "index_interval_bytes",
            "max_batch_bytes",
            "durability",
        ];
        for (config, field) in cases.iter().zip(fields) {
            match config.validate() {
                Err(Error::InvalidConfig { field: got, .. }) => assert_eq!(got, field),
                other => panic!("expected InvalidConfig for {field}, got {other:?}"),
            }
        }
    }
}
