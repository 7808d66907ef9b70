//! Cashu's `hash_to_curve` (NUT-00): maps a message to a secp256k1 point with unknown
//! discrete log, by hashing with a domain separator and trying counters until the hash is
//! the x coordinate of a point with even y.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::PublicKey;

use super::error::CreditError;

/// Domain separator of NUT-00's `hash_to_curve`.
pub const DOMAIN_SEPARATOR: &[u8] = b"Secp256k1_HashToCurve_Cashu_";

/// `Y = PublicKey(0x02 || SHA256(SHA256(DOMAIN_SEPARATOR || message) || counter_le_u32))`
/// for the first counter that gives a valid point.
///
/// Real proof secrets are passed as the UTF-8 bytes of the secret string (see
/// [`secret_to_curve`]); the NUT-00 test vectors pass hex-decoded bytes.
pub fn hash_to_curve(message: &[u8]) -> Result<PublicKey, CreditError> {
    let mut engine = sha256::Hash::engine();
    engine.input(DOMAIN_SEPARATOR);
    engine.input(message);
    let msg_hash = sha256::Hash::from_engine(engine);

    let mut candidate = [0u8; 33];
    candidate[0] = 0x02;
    // About half of all x values are on the curve, so 2^16 failures in a row has
    // probability 2^-65536: the bound only guarantees termination.
    for counter in 0u32..=u16::MAX as u32 {
        let mut engine = sha256::Hash::engine();
        engine.input(msg_hash.as_byte_array());
        engine.input(&counter.to_le_bytes());
        candidate[1..].copy_from_slice(sha256::Hash::from_engine(engine).as_byte_array());
        if let Ok(point) = PublicKey::from_slice(&candidate) {
            return Ok(point);
        }
    }
    Err(CreditError::Degenerate {
        what: "hash_to_curve found no point",
    })
}

/// `Y` of a proof secret: `hash_to_curve` over the secret string's UTF-8 bytes.
pub fn secret_to_curve(secret: &str) -> Result<PublicKey, CreditError> {
    hash_to_curve(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    //! NUT-00 vectors: /work/shared/testdata/cashu-nut-vectors.md, copied from
    //! github.com/cashubtc/nuts tests/00-tests.md at commit
    //! 3ddb1ae767b50859a0f346947479451027404dae. The vector messages are hex-decoded bytes.
    use super::*;

    fn h2c_hex(message_hex: &str) -> String {
        let message = hex::decode(message_hex).unwrap();
        hex::encode(hash_to_curve(&message).unwrap().serialize())
    }

    #[test]
    fn nut00_hash_to_curve_vectors() {
        assert_eq!(
            h2c_hex("0000000000000000000000000000000000000000000000000000000000000000"),
            "024cce997d3b518f739663b757deaec95bcd9473c30a14ac2fd04023a739d1a725"
        );
        assert_eq!(
            h2c_hex("0000000000000000000000000000000000000000000000000000000000000001"),
            "022e7158e11c9506f1aa4248bf531298daa7febd6194f003edcd9b93ade6253acf"
        );
        // Takes several counter iterations before a valid point.
        assert_eq!(
            h2c_hex("0000000000000000000000000000000000000000000000000000000000000002"),
            "026cdbe15362df59cd1dd3c9c11de8aedac2106eca69236ecd9fbe117af897be4f"
        );
    }

    #[test]
    fn secrets_hash_their_utf8_bytes_not_hex_decoded_bytes() {
        let secret = "0000000000000000000000000000000000000000000000000000000000000001";
        let as_text = secret_to_curve(secret).unwrap();
        assert_eq!(as_text, hash_to_curve(secret.as_bytes()).unwrap());
        assert_ne!(hex::encode(as_text.serialize()), h2c_hex(secret));
    }
}
