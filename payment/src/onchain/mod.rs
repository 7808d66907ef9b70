//! On-chain payments (built by the on-chain issue).
