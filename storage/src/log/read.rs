//! The read side of a log: whole batches from an offset, and the offset for a time. Readers
//! take no writer lock: a read lock on the segment list for a binary search, then the
//! segment's published lengths (`Acquire`) and a slice of its map. A reader that meets a
//! segment compaction replaced after it looked looks again in the new list.

use super::Log;
use crate::error::{Error, Result};
use crate::segment::Segment;
use crate::stats::Stats;
use bytes::Bytes;
use std::sync::Arc;

/// Times a read looks its offset up again after the segment it found was replaced by
/// compaction meanwhile; each retry means another swap finished during the read, so this is
/// never reached but under a storm of swaps, and then the error says so.
const REPLACED_RETRIES: usize = 16;

/// Where one attempt at a read ended.
enum Attempt<T> {
    Done(T),
    /// A segment it used was replaced by compaction: look again.
    Replaced(Error),
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches, starting with the one that holds the offset asked for; empty at the high
    /// watermark. A slice of the segment's map: no copy.
    pub batches: Bytes,
    /// The high watermark when the read began.
    pub high_watermark: u64,
}

impl Log {
    /// Whole batches starting with the one that holds `offset`, as many as fit in
    /// `max_bytes` (at least one, however large, so a consumer always progresses), all below
    /// the high watermark and within one segment. Empty at the high watermark; an error below
    /// the earliest offset or past the high watermark. In a segment with offset gaps (a
    /// compacted one) an offset in a gap reads from the next batch after it.
    pub fn read(&self, offset: u64, max_bytes: u64) -> Result<ReadResult> {
        let high_watermark = self.high_watermark();
        let empty = ReadResult {
            batches: Bytes::new(),
            high_watermark,
        };
        self.check_range(offset, high_watermark)?;
        if offset == high_watermark {
            return Ok(empty);
        }
        let mut attempts = 0;
        let batches = loop {
            match self.try_read(offset, max_bytes, high_watermark)? {
                Attempt::Done(batches) => break batches,
                Attempt::Replaced(error) => {
                    attempts += 1;
                    if attempts > REPLACED_RETRIES {
                        return Err(error);
                    }
                }
            }
        };
        Stats::add(&self.stats.read_bytes, batches.len() as u64);
        Ok(ReadResult {
            batches,
            high_watermark,
        })
    }

    /// One attempt at [`read`](Self::read) on the segment list as it is now.
    fn try_read(&self, offset: u64, max_bytes: u64, high_watermark: u64) -> Result<Attempt<Bytes>> {
        let mut segment = {
            let segments = self.read_segments();
            match segments
                .partition_point(|s| s.base_offset <= offset)
                .checked_sub(1)
            {
                Some(i) => Arc::clone(&segments[i]),
                None => return Err(self.out_of_range(offset)),
            }
        };
        // Usually the segment holding the offset has a batch for it; after a gap at the end of
        // a compacted segment, a later one does.
        loop {
            if segment.base_offset >= high_watermark {
                return Ok(Attempt::Done(Bytes::new()));
            }
            let files = match self.files(&segment) {
                Ok(files) => files,
                // Retention deleted it between the lookup and the open.
                Err(_) if segment.is_deleted() && offset < self.earliest_offset() => {
                    return Err(self.out_of_range(offset));
                }
                // Compaction replaced it: the new list has its offsets.
                Err(error) if segment.is_deleted() => return Ok(Attempt::Replaced(error)),
                Err(e) => return Err(e),
            };
            if let Some(found) = segment.read(&files, offset, max_bytes, high_watermark)? {
                return Ok(Attempt::Done(found));
            }
            // The list may have lost segments at its front meanwhile: find the next by offset.
            let next = self
                .read_segments()
                .iter()
                .find(|s| s.base_offset > segment.base_offset)
                .map(Arc::clone);
            match next {
                Some(next) => segment = next,
                None => return Ok(Attempt::Done(Bytes::new())),
            }
        }
    }

    fn check_range(&self, offset: u64, high_watermark: u64) -> Result<()> {
        if offset < self.earliest_offset() || offset > high_watermark {
            return Err(self.out_of_range(offset));
        }
        Ok(())
    }

    fn out_of_range(&self, offset: u64) -> Error {
        Error::OffsetOutOfRange {
            offset,
            earliest: self.earliest_offset(),
            latest: self.high_watermark(),
        }
    }

    /// The first readable offset whose batch was appended at or after `time_ms`, or `None` if
    /// every readable batch is older.
    ///
    /// The time index (broker append times, which never decrease) narrows the search to the
    /// batches between two index entries; among those, the first whose records' own
    /// timestamps reach `time_ms` is the answer, else the next indexed batch. So the answer is
    /// never later than the first batch appended at or after `time_ms`.
    pub fn offset_for_time(&self, time_ms: i64) -> Result<Option<u64>> {
        let high_watermark = self.high_watermark();
        let mut attempts = 0;
        loop {
            match self.try_offset_for_time(time_ms, high_watermark)? {
                Attempt::Done(found) => return Ok(found),
                Attempt::Replaced(error) => {
                    attempts += 1;
                    if attempts > REPLACED_RETRIES {
                        return Err(error);
                    }
                }
            }
        }
    }

    fn try_offset_for_time(
        &self,
        time_ms: i64,
        high_watermark: u64,
    ) -> Result<Attempt<Option<u64>>> {
        let segments: Vec<Arc<Segment>> = self.read_segments().clone();
        for segment in segments {
            if segment.base_offset >= high_watermark {
                break;
            }
            let files = match self.files(&segment) {
                Ok(files) => files,
                // Retention deleted it: its offsets are gone, the next segment answers.
                Err(_) if segment.is_deleted() && segment.base_offset < self.earliest_offset() => {
                    continue;
                }
                // Compaction replaced it: search the new list.
                Err(error) if segment.is_deleted() => return Ok(Attempt::Replaced(error)),
                Err(e) => return Err(e),
            };
            if segment.last_append_ms() < time_ms {
                continue;
            }
            if let Some(offset) = segment.find_time(&files, time_ms, high_watermark)? {
                return Ok(Attempt::Done(Some(offset)));
            }
        }
        Ok(Attempt::Done(None))
    }
}
