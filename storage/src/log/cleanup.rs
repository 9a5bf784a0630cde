//! Dropping whole segments from the front of a log: the one mechanism behind retention and
//! `delete_before`, carrying out what `retention.rs` decides. A reader that still holds a
//! slice of a dropped segment keeps its map alive until the slice drops; the files are
//! unlinked at once.

use super::Log;
use crate::error::Result;
use crate::io::{remove_if_exists, sync_dir};
use crate::retention::{self, Rule, SegmentStat};
use crate::segment::Segment;
use crate::stats::Stats;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Log {
    /// Deletes the oldest sealed segments that retention no longer keeps: while the log
    /// holds more than `retention_bytes` without them, or their newest batch is older than
    /// `retention_age`. Whole segments only; the active segment is never deleted, nor data not
    /// yet below the high watermark. Returns the segments deleted.
    pub fn enforce_retention(&self) -> Result<usize> {
        self.cleanup(Rule::Retention {
            bytes: self.config.retention_bytes,
            age_ms: self
                .config
                .retention_age
                .map(|age| i64::try_from(age.as_millis()).unwrap_or(i64::MAX)),
            now_ms: self.shared.clock.now_ms(),
        })
    }

    /// Deletes the oldest sealed segments that hold only offsets below `offset` (and below the
    /// high watermark): the log's owner no longer needs them, as when it has copied what it
    /// keeps forward. Whole segments only; returns the segments deleted.
    pub fn delete_before(&self, offset: u64) -> Result<usize> {
        self.cleanup(Rule::Before(offset))
    }

    fn cleanup(&self, rule: Rule) -> Result<usize> {
        let _maintenance = self.lock_maintenance();
        let segments: Vec<Arc<Segment>> = self.read_segments().clone();
        let stats: Vec<SegmentStat> = segments
            .iter()
            .map(|s| SegmentStat {
                len: s.len(),
                next_offset: s.next_offset(),
                sealed: s.is_sealed(),
            })
            .collect();
        let count = retention::oldest_to_drop(rule, &stats, self.high_watermark(), |i| {
            // Opening a sealed segment loads its newest append time from its time index.
            self.files(&segments[i])?;
            Ok(segments[i].last_append_ms())
        })?;
        let mut deleted = 0;
        for oldest in &segments[..count] {
            if self.drop_oldest(oldest)? {
                deleted += 1;
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Unlinks `oldest` if it is still the log's first segment; whether it did.
    fn drop_oldest(&self, oldest: &Arc<Segment>) -> Result<bool> {
        {
            let mut segments = self.write_segments();
            if segments.len() <= 1 || !segments.first().is_some_and(|s| Arc::ptr_eq(s, oldest)) {
                return Ok(false);
            }
            segments.remove(0);
            let earliest = segments
                .first()
                .map_or(oldest.next_offset(), |s| s.base_offset);
            self.earliest.store(earliest, Ordering::Release);
        }
        oldest.mark_deleted();
        self.shared.cache.remove(self.key(oldest));
        for extension in ["log", "index", "timeindex"] {
            remove_if_exists(&oldest.path(extension))?;
        }
        Stats::add(&self.stats.deleted_segments, 1);
        tracing::info!(
            dir = %self.dir.display(),
            base_offset = oldest.base_offset,
            "deleted segment"
        );
        Ok(true)
    }
}
