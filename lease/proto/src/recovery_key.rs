//! The recovery key a create may carry (`recovery_key` in `lease/openapi.yaml`): 256 random
//! bits the tenant keeps, sent as 64 hex digits. The daemon stores only its SHA-256; the CLI
//! keeps the key until the create is answered. Both sides check the form here, so they
//! cannot disagree about which keys are valid.

use bitcoin::hashes::{sha256, Hash};
use thiserror::Error;

/// Hex digits in a recovery key (256 bits).
pub const KEY_HEX_LEN: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
/// Why a string is not a recovery key.
pub enum RecoveryKeyError {
    #[error(
        "recovery_key must be {KEY_HEX_LEN} hex digits (256 random bits), got {len} characters"
    )]
    Length { len: usize },
    #[error("recovery_key must be hex digits 0-9a-f")]
    NotHex,
}

/// The SHA-256 the ledger keeps of a recovery key, after checking its form. Case is
/// ignored so that the same key written in upper case still matches.
pub fn recovery_hash(key: &str) -> Result<[u8; 32], RecoveryKeyError> {
    if key.len() != KEY_HEX_LEN {
        return Err(RecoveryKeyError::Length { len: key.len() });
    }
    let bytes = hex::decode(key.to_ascii_lowercase()).map_err(|_| RecoveryKeyError::NotHex)?;
    Ok(sha256::Hash::hash(&bytes).to_byte_array())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_256_bits_of_hex() {
        let key = "ab".repeat(32);
        assert_eq!(
            recovery_hash("abc"),
            Err(RecoveryKeyError::Length { len: 3 })
        );
        assert_eq!(
            recovery_hash(&"g".repeat(KEY_HEX_LEN)),
            Err(RecoveryKeyError::NotHex)
        );
        assert_ne!(
            recovery_hash(&key).expect("key"),
            recovery_hash(&"cd".repeat(32)).expect("key")
        );
        // Case is ignored: the same key in upper case is the same key.
        assert_eq!(recovery_hash(&key), recovery_hash(&key.to_uppercase()));
    }
}
