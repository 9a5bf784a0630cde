//! Sluice's wire protocol (`sluice.v1`).
//!
//! The `.proto` files and the tonic/prost code generated from them (compiled with `protox`, no
//! system `protoc`) arrive with the broker issue (#4); until then this crate only reserves its place
//! in the workspace so that the dependency graph of design.md §1 is fixed from the start.
