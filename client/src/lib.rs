//! The Sluice client.
//!
//! The producer, consumer and worker pool arrive with the broker issue (#4). What a client needs
//! today is the batch encoder, which is the storage crate's: the bytes a producer builds are the
//! bytes the broker validates and appends, so both sides share one implementation.
#![forbid(unsafe_code)]

pub use sluice_storage::format::{BatchBuilder, BatchView, FormatError, Header, Record};
