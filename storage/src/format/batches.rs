//! [`Batches`]: the one walk over a run of back-to-back batches (a fetch response, a slice of a
//! segment, a replayed log), so framing is checked in one place.
//!
//! ```text
//! run = batch*      batch = { u64 base_offset | u32 batch_len | batch_len bytes }
//! ```
//!
//! The walk reads each batch's [`BatchPrefix`] and steps `12 + batch_len` bytes; it checks only
//! that the prefix is whole and the batch fits in what is left. What else a caller checks is its
//! choice: [`Framed::checked`] (header and CRC: a batch a broker validated in full),
//! [`Framed::stored`] (every check, as a batch read back from a log, compacted or not) or
//! [`Framed::validated`] (every check of `BatchView::new`: a producer's untrusted bytes).

use super::{BatchPrefix, BatchView, FormatError, HEADER_LEN};

/// Iterator over the batches of a run; yields each batch's bytes and prefix, or one
/// [`FormatError`] where the framing breaks (and nothing after it).
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
    position: usize,
    failed: bool,
}

/// One batch of a run, framed but not yet checked.
#[derive(Debug, Clone, Copy)]
pub struct Framed<'a> {
    /// The batch's prefix fields.
    pub prefix: BatchPrefix,
    /// The batch's bytes, `prefix.total_len` of them.
    pub bytes: &'a [u8],
    /// Byte position of the batch in the run.
    pub position: usize,
}

impl<'a> Batches<'a> {
    /// Walks `run` from its first byte.
    pub fn new(run: &'a [u8]) -> Self {
        Self {
            rest: run,
            position: 0,
            failed: false,
        }
    }

    /// Byte position in the run of the next batch: where a framing error was found, once one
    /// was.
    pub fn position(&self) -> usize {
        self.position
    }

    /// One past the last offset of the run's last whole batch, `None` for an empty run. Stops
    /// at the first framing error (the batches before it count).
    pub fn next_offset(run: &'a [u8]) -> Option<u64> {
        Self::new(run)
            .map_while(Result::ok)
            .last()
            .map(|batch| batch.prefix.next_offset())
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<Framed<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let Some(prefix) = BatchPrefix::parse(self.rest) else {
            self.failed = true;
            return Some(Err(FormatError::TooShort {
                len: self.rest.len(),
            }));
        };
        let len = usize::try_from(prefix.total_len)
            .ok()
            .filter(|&len| len >= HEADER_LEN && len <= self.rest.len());
        let Some(len) = len else {
            self.failed = true;
            return Some(Err(FormatError::LengthMismatch {
                declared: prefix.total_len,
                actual: self.rest.len(),
            }));
        };
        let (bytes, rest) = self.rest.split_at(len);
        let framed = Framed {
            prefix,
            bytes,
            position: self.position,
        };
        self.rest = rest;
        self.position += len;
        Some(Ok(framed))
    }
}

impl<'a> Framed<'a> {
    /// Header and CRC checked, records not walked: for batches a broker validated in full on
    /// produce, whose CRC proves they are those bytes (see [`BatchView::with_checksum`]).
    pub fn checked(&self) -> Result<BatchView<'a>, FormatError> {
        BatchView::with_checksum(self.bytes)
    }

    /// Every check of [`BatchView::new`], against `max_batch_bytes`: for a producer's
    /// untrusted bytes, whose offsets must be dense.
    pub fn validated(&self, max_batch_bytes: usize) -> Result<BatchView<'a>, FormatError> {
        BatchView::new(self.bytes, max_batch_bytes)
    }

    /// Every check of [`BatchView::stored`]: for a batch read back from a log, which
    /// compaction may have thinned (offset gaps inside it).
    pub fn stored(&self) -> Result<BatchView<'a>, FormatError> {
        BatchView::stored(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::format::{BatchBuilder, stamp_base_offset};

    fn run(counts: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut next = 0;
        for &count in counts {
            let mut builder = BatchBuilder::new();
            for i in 0..count {
                builder
                    .push(1_000, None, Some(format!("v{i}").as_bytes()), &[])
                    .unwrap();
            }
            let mut batch = builder.finish().unwrap();
            stamp_base_offset(&mut batch, next);
            next += u64::from(count);
            out.extend_from_slice(&batch);
        }
        out
    }

    #[test]
    fn walks_every_batch_and_reports_broken_framing_once() {
        let bytes = run(&[2, 1, 3]);
        let framed: Vec<Framed<'_>> = Batches::new(&bytes).map(Result::unwrap).collect();
        assert_eq!(framed.len(), 3);
        assert_eq!(
            framed
                .iter()
                .map(|b| b.prefix.base_offset)
                .collect::<Vec<_>>(),
            [0, 2, 3]
        );
        assert_eq!(framed[1].position, framed[0].bytes.len());
        assert!(framed.iter().all(|b| b.checked().is_ok()));
        assert_eq!(Batches::next_offset(&bytes), Some(6));
        assert_eq!(Batches::next_offset(&[]), None);

        // Cut inside the last batch: two batches, then one error, then nothing.
        let cut = &bytes[..bytes.len() - 5];
        let items: Vec<_> = Batches::new(cut).collect();
        assert_eq!(items.len(), 3);
        assert!(matches!(items[2], Err(FormatError::LengthMismatch { .. })));
        assert_eq!(Batches::next_offset(cut), Some(3));
        // Cut inside a prefix.
        let short = &bytes[..framed[0].bytes.len() + 10];
        let items: Vec<_> = Batches::new(short).collect();
        assert!(matches!(items[1], Err(FormatError::TooShort { len: 10 })));
        let mut walk = Batches::new(short);
        assert!(walk.next().is_some_and(|b| b.is_ok()));
        assert!(walk.next().is_some_and(|b| b.is_err()));
        assert_eq!(walk.position(), framed[0].bytes.len());
    }

    #[test]
    fn a_declared_length_below_the_header_is_a_framing_error() {
        let mut bytes = run(&[1]);
        bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
        let items: Vec<_> = Batches::new(&bytes).collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }
}
