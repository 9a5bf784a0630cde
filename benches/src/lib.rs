//! Shared helpers for Sluice's criterion benches (`benches/benches/*.rs`).
