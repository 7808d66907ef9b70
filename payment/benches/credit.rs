//! credit benchmarks (built by its issue).
fn main() {}
