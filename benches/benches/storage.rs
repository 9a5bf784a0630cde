//! Storage benches (placeholder until written).
fn main() {}
