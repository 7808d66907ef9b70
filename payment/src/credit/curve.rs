//! The shared secp256k1 context and the hex encodings of points and scalars used on the
//! wire, parsed into typed values with errors that name the field.

use std::sync::LazyLock;

use bitcoin::secp256k1::{All, PublicKey, Scalar, Secp256k1, SecretKey};

use super::error::CreditError;

/// One context for the whole process: building one costs far more than any operation on it.
pub static SECP: LazyLock<Secp256k1<All>> = LazyLock::new(Secp256k1::new);

/// Longest hex string we echo back in an error, so bad input can't bloat responses.
const ECHO_LIMIT: usize = 80;

fn echo(value: &str) -> String {
    value.chars().take(ECHO_LIMIT).collect()
}

/// A compressed point as 66 hex characters (NUT-00 "hex encoded public key").
pub fn parse_point(field: &'static str, value: &str) -> Result<PublicKey, CreditError> {
    let invalid = || CreditError::InvalidPoint {
        field,
        value: echo(value),
    };
    if value.len() != 66 {
        return Err(invalid());
    }
    let mut bytes = [0u8; 33];
    hex::decode_to_slice(value, &mut bytes).map_err(|_| invalid())?;
    // NUT-01 keys and NUT-00 points are always compressed; reject the other encodings
    // so one point has exactly one spelling (and one spent-set key).
    if bytes[0] != 0x02 && bytes[0] != 0x03 {
        return Err(invalid());
    }
    PublicKey::from_slice(&bytes).map_err(|_| invalid())
}

fn parse_32(field: &'static str, value: &str) -> Result<[u8; 32], CreditError> {
    let mut bytes = [0u8; 32];
    if value.len() != 64 || hex::decode_to_slice(value, &mut bytes).is_err() {
        return Err(CreditError::InvalidScalar {
            field,
            value: echo(value),
        });
    }
    Ok(bytes)
}

/// A non-zero scalar below the curve order as 64 hex characters.
pub fn parse_secret_key(field: &'static str, value: &str) -> Result<SecretKey, CreditError> {
    let bytes = parse_32(field, value)?;
    SecretKey::from_slice(&bytes).map_err(|_| CreditError::InvalidScalar {
        field,
        value: echo(value),
    })
}

/// A scalar below the curve order (zero allowed) as 64 hex characters.
pub fn parse_scalar(field: &'static str, value: &str) -> Result<Scalar, CreditError> {
    let bytes = parse_32(field, value)?;
    Scalar::from_be_bytes(bytes).map_err(|_| CreditError::InvalidScalar {
        field,
        value: echo(value),
    })
}

/// `p * k`.
pub fn mul(p: &PublicKey, k: &SecretKey) -> Result<PublicKey, CreditError> {
    p.mul_tweak(&SECP, &Scalar::from(*k))
        .map_err(|_| CreditError::Degenerate {
            what: "point multiply",
        })
}

/// `p - q`.
pub fn sub(p: &PublicKey, q: &PublicKey) -> Result<PublicKey, CreditError> {
    p.combine(&q.negate(&SECP))
        .map_err(|_| CreditError::Degenerate {
            what: "point subtract",
        })
}

/// Lowercase hex of a compressed point.
pub fn point_hex(p: &PublicKey) -> String {
    hex::encode(p.serialize())
}
