//! Sluice's integration tests (`tests/*.rs`) run against a real broker on loopback. The
//! harness is `sluice_server::testing` (feature `testing`), shared with the broker's own tests,
//! the CLI tests and the e2e bench; it is re-exported here for the tests of this crate.

pub use sluice_server::testing::*;
