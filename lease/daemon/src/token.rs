//! Lease ids and bearer tokens. A token is 256 random bits shown once; the ledger keeps only
//! its SHA-256, compared in constant time.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use subtle::ConstantTimeEq;

/// A fresh bearer token: 64 hex characters.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A fresh lease id: `l` + 16 hex characters (64 random bits).
pub fn new_lease_id() -> String {
    let mut bytes = [0u8; 8];
    OsRng.fill_bytes(&mut bytes);
    format!("l{}", hex::encode(bytes))
}

pub fn token_hash(token: &str) -> [u8; 32] {
    sha256::Hash::hash(token.as_bytes()).to_byte_array()
}

/// Whether `token` hashes to `stored` (constant time in the hash comparison).
pub fn token_matches(token: &str, stored: &[u8]) -> bool {
    let h = token_hash(token);
    stored.len() == 32 && bool::from(h.as_slice().ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_verify_by_hash() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let h = token_hash(&a);
        assert!(token_matches(&a, &h));
        assert!(!token_matches(&b, &h));
        assert!(!token_matches(&a, &h[..31]));
    }
}
