//! Fuzz target for `BatchView::new`, the parser of untrusted batch bytes (design.md §2).
//!
//! The checks live in `../check.rs`, which `storage/tests/fuzz_seeds.rs` includes too, so every
//! seed in `seeds/batch/` replays under plain `cargo test`. Run from `storage/`:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run batch fuzz/seeds/batch`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../check.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check_batch(data));
