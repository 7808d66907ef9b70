//! Blind-signed credit (built by the credit issue).
