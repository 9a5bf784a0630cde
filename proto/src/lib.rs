//! Sluice's wire protocol, package `sluice.v1`: the generated prost messages and tonic
//! services of `proto/sluice/v1/*.proto` (compiled by `build.rs` with protox).
//!
//! `bytes` fields are `bytes::Bytes`, so a produced batch is a slice of the request buffer and
//! a fetched one a slice of a segment's map until the transport writes it.
#![deny(unsafe_code)]

/// The `sluice.v1` messages and services.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `sluice.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_v1_descriptor.bin"));
