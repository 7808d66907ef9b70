//! Discrete-log-equality proofs (Cashu NUT-12): the mint proves that the key `a` behind its
//! published `A = a*G` is the one that made `C_ = a*B_`, so a wallet can detect a mint that
//! tags users by signing with per-user keys.
//!
//! The nonce is derived deterministically (NUT-12: `HMAC-SHA256(a, "Cashu_DLEQ_R_v1" || A ||
//! B_ || C_ || ctr)`, points uncompressed, `ctr` one byte, rejection sampling), so no RNG
//! failure can ever reuse a nonce.

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use bitcoin::secp256k1::{PublicKey, Scalar, SecretKey};

use super::curve::{mul, sub, SECP};
use super::error::CreditError;
use super::hash_to_curve::hash_to_curve;

const NONCE_TAG: &[u8] = b"Cashu_DLEQ_R_v1";

/// A DLEQ proof `(e, s)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dleq {
    pub e: Scalar,
    pub s: SecretKey,
}

/// NUT-12 `hash_e`: SHA256 over the concatenated lowercase hex of each point's uncompressed
/// (65-byte) encoding.
pub fn hash_e(points: &[&PublicKey]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    for p in points {
        engine.input(hex::encode(p.serialize_uncompressed()).as_bytes());
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// The deterministic nonce `r` of NUT-12 for signing key `a` and the proof's points.
pub fn nonce(
    a: &SecretKey,
    big_a: &PublicKey,
    b_: &PublicKey,
    c_: &PublicKey,
) -> Result<SecretKey, CreditError> {
    for ctr in 0u8..=255 {
        let mut engine = hmac::HmacEngine::<sha256::Hash>::new(&a.secret_bytes());
        engine.input(NONCE_TAG);
        engine.input(&big_a.serialize_uncompressed());
        engine.input(&b_.serialize_uncompressed());
        engine.input(&c_.serialize_uncompressed());
        engine.input(&[ctr]);
        let r = hmac::Hmac::<sha256::Hash>::from_engine(engine).to_byte_array();
        if let Ok(r) = SecretKey::from_slice(&r) {
            return Ok(r);
        }
    }
    Err(CreditError::Degenerate {
        what: "DLEQ nonce derivation",
    })
}

/// Mint side: proves `log_G(A) == log_B_(C_)` where `A = a*G` and `C_ = a*B_`.
pub fn prove(a: &SecretKey, b_: &PublicKey, c_: &PublicKey) -> Result<Dleq, CreditError> {
    prove_with_public(a, &PublicKey::from_secret_key(&SECP, a), b_, c_)
}

/// [`prove`] with `A = a*G` supplied by the caller (the keyset has it already, which saves
/// a point multiplication per signature).
pub fn prove_with_public(
    a: &SecretKey,
    big_a: &PublicKey,
    b_: &PublicKey,
    c_: &PublicKey,
) -> Result<Dleq, CreditError> {
    let big_a = *big_a;
    let r = nonce(a, &big_a, b_, c_)?;
    let r1 = PublicKey::from_secret_key(&SECP, &r);
    let r2 = mul(b_, &r)?;
    let e_bytes = hash_e(&[&r1, &r2, &big_a, c_]);
    // A SHA256 output at or above n has probability ~2^-128; it is a hard error, not a retry.
    let e = Scalar::from_be_bytes(e_bytes).map_err(|_| CreditError::Degenerate {
        what: "DLEQ challenge",
    })?;
    let s = a
        .mul_tweak(&e)
        .and_then(|ea| ea.add_tweak(&Scalar::from(r)))
        .map_err(|_| CreditError::Degenerate {
            what: "DLEQ response",
        })?;
    Ok(Dleq { e, s })
}

/// Wallet side (Alice): checks `e == hash(s*G - e*A, s*B_ - e*C_, A, C_)`.
pub fn verify(dleq: &Dleq, big_a: &PublicKey, b_: &PublicKey, c_: &PublicKey) -> bool {
    verify_inner(dleq, big_a, b_, c_).unwrap_or(false)
}

fn verify_inner(
    dleq: &Dleq,
    big_a: &PublicKey,
    b_: &PublicKey,
    c_: &PublicKey,
) -> Result<bool, CreditError> {
    let e = SecretKey::from_slice(&dleq.e.to_be_bytes()).map_err(|_| CreditError::DleqInvalid)?;
    let r1 = sub(
        &PublicKey::from_secret_key(&SECP, &dleq.s),
        &mul(big_a, &e)?,
    )?;
    let r2 = sub(&mul(b_, &dleq.s)?, &mul(c_, &e)?)?;
    Ok(hash_e(&[&r1, &r2, big_a, c_]) == dleq.e.to_be_bytes())
}

/// Receiving wallet side (Carol): rebuilds `B_ = Y + r*G` and `C_ = C + r*A` from the proof's
/// secret, signature and blinding factor `r`, then checks the DLEQ as Alice would.
pub fn verify_with_blinding(
    dleq: &Dleq,
    big_a: &PublicKey,
    secret: &[u8],
    c: &PublicKey,
    r: &SecretKey,
) -> bool {
    let rebuilt = (|| -> Result<(PublicKey, PublicKey), CreditError> {
        let y = hash_to_curve(secret)?;
        let degenerate = |_| CreditError::Degenerate {
            what: "DLEQ rebuild",
        };
        let b_ = y
            .combine(&PublicKey::from_secret_key(&SECP, r))
            .map_err(degenerate)?;
        let c_ = c.combine(&mul(big_a, r)?).map_err(degenerate)?;
        Ok((b_, c_))
    })();
    matches!(rebuilt, Ok((b_, c_)) if verify(dleq, big_a, &b_, &c_))
}

#[cfg(test)]
mod tests {
    //! NUT-12 vectors: /work/shared/testdata/cashu-nut-vectors.md, copied from
    //! github.com/cashubtc/nuts tests/12-tests.md at commit
    //! 3ddb1ae767b50859a0f346947479451027404dae. Where that copy lost values (the `hash_e`
    //! result and the two JSON bodies), they come from the same file as stored at nuts
    //! commit 4ac47807a2b33d9467f5af7eb4c25fa5c779a3ea; those are verification-only vectors.
    use super::*;
    use crate::credit::curve::{parse_point, parse_scalar, parse_secret_key};

    fn pt(hex: &str) -> PublicKey {
        parse_point("vector", hex).unwrap()
    }

    fn dleq(e: &str, s: &str) -> Dleq {
        Dleq {
            e: parse_scalar("e", e).unwrap(),
            s: parse_secret_key("s", s).unwrap(),
        }
    }

    #[test]
    fn hash_e_vector() {
        let one = pt("020000000000000000000000000000000000000000000000000000000000000001");
        let c_ = pt("02a9acc1e48c25eeeb9289b5031cc57da9fe72f3fe2861d264bdc074209b107ba2");
        assert_eq!(
            hex::encode(hash_e(&[&one, &one, &one, &c_])),
            "a4dc034b74338c28c6bc3ea49731f2a24440fc7c4affc08b31a93fc9fbe6401e"
        );
    }

    #[test]
    fn deterministic_nonce_vector() {
        let a = parse_secret_key(
            "a",
            "0000000000000000000000000000000000000000000000000000000000000002",
        )
        .unwrap();
        let big_a = pt("02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5");
        let b_ = pt("02a9acc1e48c25eeeb9289b5031cc57da9fe72f3fe2861d264bdc074209b107ba2");
        let c_ = pt("0244eccfc7a348274458bb38044c7f3c389b3c2086c7ec18b5812d2877ab937787");
        assert_eq!(PublicKey::from_secret_key(&SECP, &a), big_a);
        let proof = prove(&a, &b_, &c_).unwrap();
        assert_eq!(
            hex::encode(proof.e.to_be_bytes()),
            "2a16ffee280aff3c429045607f9b8e0bf8b35910c44c1b20b9dfaf01b263d7b3"
        );
        assert_eq!(
            hex::encode(proof.s.secret_bytes()),
            "9df27731238334718d120d4f74611a7c668233f988e687ac3fb188f0a34a2dab"
        );
        assert!(verify(&proof, &big_a, &b_, &c_));
    }

    #[test]
    fn blind_signature_dleq_vector() {
        let big_a = pt("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798");
        let b_ = pt("02a9acc1e48c25eeeb9289b5031cc57da9fe72f3fe2861d264bdc074209b107ba2");
        let c_ = pt("02a9acc1e48c25eeeb9289b5031cc57da9fe72f3fe2861d264bdc074209b107ba2");
        let good = dleq(
            "9818e061ee51d5c8edc3342369a554998ff7b4381c8652d724cdf46429be73d9",
            "9818e061ee51d5c8edc3342369a554998ff7b4381c8652d724cdf46429be73da",
        );
        assert!(verify(&good, &big_a, &b_, &c_));
        let bad = dleq(
            "9818e061ee51d5c8edc3342369a554998ff7b4381c8652d724cdf46429be73d9",
            "9818e061ee51d5c8edc3342369a554998ff7b4381c8652d724cdf46429be73db",
        );
        assert!(!verify(&bad, &big_a, &b_, &c_));
    }

    #[test]
    fn proof_dleq_vector_with_blinding_factor() {
        let big_a = pt("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798");
        let secret = "daf4dd00a2b68a0858a80450f52c8a7d2ccf87d375e43e216e0c571f089f63e9";
        let c = pt("024369d2d22a80ecf78f3937da9d5f30c1b9f74f0c32684d583cca0fa6a61cdcfc");
        let proof = dleq(
            "b31e58ac6527f34975ffab13e70a48b6d2b0d35abc4b03f0151f09ee1a9763d4",
            "8fbae004c59e754d71df67e392b6ae4e29293113ddc2ec86592a0431d16306d8",
        );
        let r = parse_secret_key(
            "r",
            "a6d13fcd7a18442e6076f5e1e7c887ad5de40a019824bdfa9fe740d302e8d861",
        )
        .unwrap();
        assert!(verify_with_blinding(
            &proof,
            &big_a,
            secret.as_bytes(),
            &c,
            &r
        ));
        let other_r = parse_secret_key(
            "r",
            "a6d13fcd7a18442e6076f5e1e7c887ad5de40a019824bdfa9fe740d302e8d862",
        )
        .unwrap();
        assert!(!verify_with_blinding(
            &proof,
            &big_a,
            secret.as_bytes(),
            &c,
            &other_r
        ));
    }
}
