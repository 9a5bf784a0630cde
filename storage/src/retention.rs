//! Which whole segments a log may drop: the policy, apart from the mechanism that drops them
//! (`log/cleanup.rs`). A pure function of the segments' sizes, offsets and ages, so it is tested
//! without files. Compaction's policy, which rewrites segments rather than drops them, is
//! `compaction.rs` (its mechanism `log/compact.rs`).
//!
//! Only the oldest segments go, in order, so the log stays one contiguous run of offsets; the
//! active segment never goes, nor any segment holding offsets at or past the high watermark.

use crate::error::Result;

/// Why segments may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The topic's retention: drop while the log holds more than `bytes` without the segment,
    /// or the segment's newest batch was appended more than `age_ms` before `now_ms`.
    Retention {
        bytes: Option<u64>,
        age_ms: Option<i64>,
        now_ms: i64,
    },
    /// The owner no longer needs offsets below this (it copied what it keeps forward).
    Before(u64),
}

/// A segment as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentStat {
    /// Bytes in its log file.
    pub len: u64,
    /// One past its last offset.
    pub next_offset: u64,
    /// Whether it is sealed (every segment but the active one).
    pub sealed: bool,
}

/// How many of the oldest `segments` to drop under `rule`. `last_append_ms(i)` gives segment
/// `i`'s newest append time; it is asked only for segments the age rule must judge, oldest
/// first, because finding it may open the segment's files.
pub(crate) fn oldest_to_drop(
    rule: Rule,
    segments: &[SegmentStat],
    high_watermark: u64,
    mut last_append_ms: impl FnMut(usize) -> Result<i64>,
) -> Result<usize> {
    let mut remaining: u64 = segments.iter().map(|s| s.len).sum();
    let mut drop = 0;
    // The last segment is the active one and always stays.
    for (i, segment) in segments
        .iter()
        .enumerate()
        .take(segments.len().saturating_sub(1))
    {
        if !segment.sealed || segment.next_offset > high_watermark {
            break;
        }
        let goes = match rule {
            Rule::Before(offset) => segment.next_offset <= offset,
            Rule::Retention {
                bytes,
                age_ms,
                now_ms,
            } => {
                let over_bytes = bytes.is_some_and(|limit| remaining - segment.len >= limit);
                over_bytes
                    || match age_ms {
                        Some(age) => last_append_ms(i)? < now_ms.saturating_sub(age),
                        None => false,
                    }
            }
        };
        if !goes {
            break;
        }
        remaining -= segment.len;
        drop += 1;
    }
    Ok(drop)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn segments(lens: &[u64]) -> Vec<SegmentStat> {
        let mut next = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                next += 10;
                SegmentStat {
                    len,
                    next_offset: next,
                    sealed: i + 1 < lens.len(),
                }
            })
            .collect()
    }

    #[test]
    fn bytes_rule_keeps_the_newest_segments_over_the_limit() {
        let all = segments(&[100, 100, 100, 50]);
        let rule = |bytes| Rule::Retention {
            bytes: Some(bytes),
            age_ms: None,
            now_ms: 0,
        };
        let never = |_| -> Result<i64> { panic!("age not asked") };
        assert_eq!(oldest_to_drop(rule(150), &all, 40, never).unwrap(), 2);
        assert_eq!(oldest_to_drop(rule(1000), &all, 40, never).unwrap(), 0);
        // Never the active segment, however small the limit.
        assert_eq!(oldest_to_drop(rule(0), &all, 40, never).unwrap(), 3);
        // Never a segment past the high watermark.
        assert_eq!(oldest_to_drop(rule(0), &all, 15, never).unwrap(), 1);
    }

    #[test]
    fn age_rule_stops_at_the_first_young_segment_and_asks_no_further() {
        let all = segments(&[10, 10, 10, 10]);
        let ages = [100, 800, 100, 900];
        let mut asked = Vec::new();
        let rule = Rule::Retention {
            bytes: None,
            age_ms: Some(300),
            now_ms: 1000,
        };
        let dropped = oldest_to_drop(rule, &all, 40, |i| {
            asked.push(i);
            Ok(ages[i])
        })
        .unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(asked, [0, 1]);
    }

    #[test]
    fn before_rule_drops_segments_wholly_below_the_offset() {
        let all = segments(&[10, 10, 10, 10]);
        let never = |_| -> Result<i64> { panic!("age not asked") };
        assert_eq!(
            oldest_to_drop(Rule::Before(25), &all, 40, never).unwrap(),
            2
        );
        assert_eq!(oldest_to_drop(Rule::Before(9), &all, 40, never).unwrap(), 0);
        assert_eq!(
            oldest_to_drop(Rule::Before(100), &all, 20, never).unwrap(),
            2
        );
    }
}
