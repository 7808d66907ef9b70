//! Any bytes, as proof hex and as raw proof, through parsing and the merkle check: typed
//! errors only, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payment::onchain::proof::{parse_proof, verify_proof};

fuzz_target!(|data: &[u8]| {
    // As the hex a tenant would send.
    let as_hex = hex_encode(data);
    if let Ok(proof) = parse_proof(&as_hex) {
        let _ = verify_proof(&proof);
    }
    // And as text, for the hex decoder itself.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_proof(text);
    }
});

fn hex_encode(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}
