//! Read-only memory maps: the workspace's only `unsafe` code.
//!
//! A map is sound only while the bytes under it do not change and the file is not shortened
//! below what is read. Sluice keeps that with these invariants, kept by `log.rs` and
//! `segment.rs`:
//! - writes go through the file (`write_all_at`), never through a mutable map; maps are
//!   read-only;
//! - a map covers at most the file's length when it was made (the active segment is
//!   preallocated to its full size first), so no page of it lies past end of file (no SIGBUS);
//! - nothing is read past a published length (stored with `Release`, loaded with `Acquire`),
//!   and bytes below it are never written again;
//! - a file is truncated only down to its published length, never below it; retention unlinks
//!   whole files, and a map lives until the last `Bytes` over it drops;
//! - the data directory is locked (`Store` holds `LOCK`), so no other process of ours writes it.
#![allow(unsafe_code)]

use bytes::Bytes;
use std::fs::File;
use std::io;

/// How a map will be read, so the kernel reads ahead only where that pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Consumers reading on from an offset: the kernel's readahead helps.
    Sequential,
    /// A few pages here and there (recovery probing a preallocated, mostly sparse file):
    /// without this, each fault on a hole makes the kernel allocate and zero a whole readahead
    /// window, which made an unclean restart of 10,000 idle partitions take minutes.
    Random,
}

/// Maps the first `len` bytes of `file` read-only, as a `Bytes` that owns the map.
///
/// `len` must not exceed the file's length. A zero length gives an empty `Bytes` (mmap(2)
/// rejects empty maps).
pub(crate) fn map_read_only(file: &File, len: u64) -> io::Result<Bytes> {
    map_read_only_as(file, len, Access::Sequential)
}

/// [`map_read_only`], with the kernel told how the map will be read.
pub(crate) fn map_read_only_as(file: &File, len: u64, access: Access) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("map length exceeds usize"))?;
    let file_len = file.metadata()?.len();
    if (len as u64) > file_len {
        return Err(io::Error::other(format!(
            "map of {len} bytes past end of file ({file_len} bytes)"
        )));
    }
    // SAFETY: the map is read-only and covers no byte past the file's current end (checked
    // just above). The invariants in this module's doc, kept by segment.rs and log.rs, ensure
    // that the file is never shortened below what readers may touch and that bytes readers can
    // see are never rewritten, so the `&[u8]` that `Bytes` hands out stays valid and unchanging
    // for as long as it lives.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
    if access == Access::Random {
        map.advise(memmap2::Advice::Random)?;
    }
    Ok(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_file_bytes_and_refuses_past_end() -> io::Result<()> {
        let mut file = tempfile::tempfile()?;
        file.write_all(b"hello, map")?;
        let map = map_read_only(&file, 5)?;
        assert_eq!(&map[..], b"hello");
        assert!(map_read_only(&file, 11).is_err());
        assert!(map_read_only(&file, 0)?.is_empty());
        Ok(())
    }
}
