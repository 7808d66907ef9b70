//! Blind Diffie-Hellman key exchange (Cashu NUT-00): the wallet blinds `Y = hash_to_curve(x)`
//! as `B_ = Y + r*G`, the mint signs `C_ = k*B_`, the wallet unblinds `C = C_ - r*K`, and the
//! mint later checks `C == k*Y` without ever having seen `Y` or `C` before.

use bitcoin::secp256k1::{PublicKey, SecretKey};

use super::curve::{mul, sub, SECP};
use super::error::CreditError;
use super::hash_to_curve::hash_to_curve;

/// Wallet side: `B_ = hash_to_curve(message) + r*G`.
pub fn blind_message(message: &[u8], r: &SecretKey) -> Result<PublicKey, CreditError> {
    let y = hash_to_curve(message)?;
    let r_g = PublicKey::from_secret_key(&SECP, r);
    y.combine(&r_g)
        .map_err(|_| CreditError::Degenerate { what: "blinding" })
}

/// Mint side: `C_ = k*B_`.
pub fn sign_blinded(k: &SecretKey, blinded: &PublicKey) -> Result<PublicKey, CreditError> {
    mul(blinded, k)
}

/// Wallet side: `C = C_ - r*K`, where `K = k*G` is the mint's public key for the amount.
pub fn unblind(
    blind_sig: &PublicKey,
    r: &SecretKey,
    mint_key: &PublicKey,
) -> Result<PublicKey, CreditError> {
    sub(blind_sig, &mul(mint_key, r)?)
}

/// Mint side: does `C == k*Y`?
pub fn verify_with_y(k: &SecretKey, y: &PublicKey, c: &PublicKey) -> bool {
    matches!(mul(y, k), Ok(expected) if expected == *c)
}

/// Mint side: does `C == k*hash_to_curve(message)`?
pub fn verify(k: &SecretKey, message: &[u8], c: &PublicKey) -> bool {
    matches!(hash_to_curve(message), Ok(y) if verify_with_y(k, &y, c))
}

#[cfg(test)]
mod tests {
    //! NUT-00 vectors: /work/shared/testdata/cashu-nut-vectors.md, copied from
    //! github.com/cashubtc/nuts tests/00-tests.md at commit
    //! 3ddb1ae767b50859a0f346947479451027404dae. `x` is hashed as hex-decoded bytes there.
    use super::*;
    use crate::credit::curve::{parse_point, parse_secret_key};

    fn blinded_hex(x_hex: &str, r_hex: &str) -> String {
        let r = parse_secret_key("r", r_hex).unwrap();
        let b_ = blind_message(&hex::decode(x_hex).unwrap(), &r).unwrap();
        hex::encode(b_.serialize())
    }

    #[test]
    fn nut00_blinded_message_vectors() {
        assert_eq!(
            blinded_hex(
                "d341ee4871f1f889041e63cf0d3823c713eea6aff01e80f1719f08f9e5be98f6",
                "99fce58439fc37412ab3468b73db0569322588f62fb3a49182d67e23d877824a"
            ),
            "033b1a9737a40cc3fd9b6af4b723632b76a67a36782596304612a6c2bfb5197e6d"
        );
        assert_eq!(
            blinded_hex(
                "f1aaf16c2239746f369572c0784d9dd3d032d952c2d992175873fb58fae31a60",
                "f78476ea7cc9ade20f9e05e58a804cf19533f03ea805ece5fee88c8e2874ba50"
            ),
            "029bdf2d716ee366eddf599ba252786c1033f47e230248a4612a5670ab931f1763"
        );
    }

    #[test]
    fn nut00_blinded_signature_vectors() {
        let b_ = parse_point(
            "B_",
            "02a9acc1e48c25eeeb9289b5031cc57da9fe72f3fe2861d264bdc074209b107ba2",
        )
        .unwrap();
        for (k_hex, c_hex) in [
            (
                "0000000000000000000000000000000000000000000000000000000000000001",
                "02a9acc1e48c25eeeb9289b5031cc57da9fe72f3fe2861d264bdc074209b107ba2",
            ),
            (
                "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
                "0398bc70ce8184d27ba89834d19f5199c84443c31131e48d3c1214db24247d005d",
            ),
        ] {
            let k = parse_secret_key("k", k_hex).unwrap();
            assert_eq!(
                hex::encode(sign_blinded(&k, &b_).unwrap().serialize()),
                c_hex
            );
        }
    }
}
