//! `coinop-bench` (built by the benchmark issue).
fn main() {}
