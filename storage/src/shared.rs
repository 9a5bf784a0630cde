//! What every log of a store shares: the bound on open segment files, the clock, and the
//! injected faults of tests. Owned by the [`Store`](crate::Store), handed to each log it opens.

use crate::cache::FileCache;
use crate::config::Clock;
use crate::io::Faults;

/// The store-wide parts of a log.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Open segment files and maps, across all logs (LRU, `max_open_segments`).
    pub cache: FileCache,
    /// Where append times and retention ages come from.
    pub clock: Clock,
    /// Injected I/O failures (inert outside tests).
    pub faults: Faults,
}
