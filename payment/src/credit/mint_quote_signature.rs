//! NUT-20: a mint quote locked to a public key is minted only with a BIP340 Schnorr
//! signature, by that key's owner, over the quote id and the request's outputs in request
//! order. NUT-30 on-chain quotes always carry such a key, so nobody who merely learns a
//! quote id can mint its payment.
//!
//! Two messages are in use. The current one (what cashu-ts and nutshell ≥ 0.20.2 sign) is
//! the SHA-256 of raw bytes: the ASCII tag `Cashu_MintQuoteSig_v1` (no length), then
//! `len32(quote) || quote`, then for each output `len32(amount) || amount || len32(B_) ||
//! B_`, where `len32` is a 4-byte big-endian length, `amount` the minimal big-endian bytes
//! of the amount (none for 0) and `B_` the point's raw bytes. The legacy one (older
//! wallets) is `SHA256(quote_id || B_0 || ... || B_(n-1))` over the UTF-8 quote id and
//! each `B_`'s hex. Both are accepted, the current first and the legacy as fallback, so
//! that wallets of either generation can mint. No byte string is both messages (the
//! legacy one is text and this mint's quote ids never start with the tag's length-prefixed
//! form), so a signature made for one proves nothing under the other.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::{schnorr, Message, XOnlyPublicKey};

use super::curve::{parse_point, SECP};
use super::error::CreditError;
use super::nut_types::BlindedMessage;

/// The domain-separation tag opening the current NUT-20 message.
const MINT_QUOTE_SIG_TAG: &[u8] = b"Cashu_MintQuoteSig_v1";

/// Feeds `bytes` to `engine` preceded by their length as 4 big-endian bytes.
fn input_len32(engine: &mut sha256::HashEngine, bytes: &[u8]) -> Option<()> {
    // A field longer than u32::MAX bytes has no len32 spelling; no wallet could have
    // signed it, so it verifies under no key.
    let len = u32::try_from(bytes.len()).ok()?;
    engine.input(&len.to_be_bytes());
    engine.input(bytes);
    Some(())
}

/// The digest a current wallet signs to mint `outputs` from quote `quote_id` (see the
/// module doc), or `None` when some output's `B_` is not hex and so has no raw bytes to
/// sign.
pub fn mint_message_digest(quote_id: &str, outputs: &[BlindedMessage]) -> Option<[u8; 32]> {
    let mut engine = sha256::Hash::engine();
    engine.input(MINT_QUOTE_SIG_TAG);
    input_len32(&mut engine, quote_id.as_bytes())?;
    for o in outputs {
        let amount = o.amount.to_be_bytes();
        // Minimal big-endian: without leading zero bytes, so 0 is the empty string.
        let first = amount.iter().position(|&b| b != 0).unwrap_or(amount.len());
        input_len32(&mut engine, &amount[first..])?;
        let b_ = hex::decode(&o.b_).ok()?;
        input_len32(&mut engine, &b_)?;
    }
    Some(sha256::Hash::from_engine(engine).to_byte_array())
}

/// The digest an older wallet signs to mint `outputs` from quote `quote_id`: the legacy
/// message of the module doc.
pub fn legacy_mint_message_digest(quote_id: &str, outputs: &[BlindedMessage]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(quote_id.as_bytes());
    for o in outputs {
        engine.input(o.b_.as_bytes());
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// Checks the wallet's signature `signature_hex` (64 bytes, hex) over the mint request
/// against the quote's `pubkey_hex` (a compressed point, as the quote was given it),
/// accepting either message of the module doc.
pub fn verify_mint_signature(
    quote_id: &str,
    outputs: &[BlindedMessage],
    pubkey_hex: &str,
    signature_hex: &str,
) -> Result<(), CreditError> {
    let pubkey = parse_point("pubkey", pubkey_hex)?;
    let signature = hex::decode(signature_hex)
        .ok()
        .and_then(|b| schnorr::Signature::from_slice(&b).ok())
        .ok_or(CreditError::MintSignatureInvalid)?;
    // BIP340 keys are x-only: the parity of the compressed key plays no part.
    let (xonly, _): (XOnlyPublicKey, _) = pubkey.x_only_public_key();
    let verifies = |digest: [u8; 32]| {
        SECP.verify_schnorr(&signature, &Message::from_digest(digest), &xonly)
            .is_ok()
    };
    let current = mint_message_digest(quote_id, outputs).is_some_and(verifies);
    if current || verifies(legacy_mint_message_digest(quote_id, outputs)) {
        Ok(())
    } else {
        Err(CreditError::MintSignatureInvalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Keypair, SecretKey};

    fn out(b: &str) -> BlindedMessage {
        BlindedMessage {
            amount: 1,
            id: "00aa".into(),
            b_: b.into(),
        }
    }

    /// The signed mint request of the NUT-20 test vectors (cashubtc/nuts tests/20-test.md):
    /// quote key `0x01`, two outputs, signature over the current message.
    const VECTOR_QUOTE: &str = "0192d3c0-7e8a-7c3d-8e9f-1a2b3c4d5e6f";
    const VECTOR_PUBKEY: &str =
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    const VECTOR_SIGNATURE: &str = "4881093a332ff7c79f3e598ce5b249d64978b47165a0b19c18adf0ced0246228e61e702f0abaf1bf27b92be4336bdbabacfbe4c914076386b3c66fdcd0b3480e";
    const VECTOR_DIGEST: &str = "c164fd384879f74ab6ea2e7cf13d90ed42e6df9d5de607eeb5c9cc7d36fb1c21";

    fn vector_outputs() -> [BlindedMessage; 2] {
        let out = |b: &str| BlindedMessage {
            amount: 1,
            id: "009a1f293253e41e".into(),
            b_: b.into(),
        };
        [
            out("036d6caac248af96f6afa7f904f550253a0f3ef3f5aa2fe6838a95b216691468e2"),
            out("021f8a566c205633d029094747d2e18f44e05993dda7a5f88f496078205f656e59"),
        ]
    }

    #[test]
    fn the_spec_vectors_signature_verifies() {
        let outputs = vector_outputs();
        assert_eq!(
            mint_message_digest(VECTOR_QUOTE, &outputs).map(hex::encode),
            Some(VECTOR_DIGEST.to_string())
        );
        verify_mint_signature(VECTOR_QUOTE, &outputs, VECTOR_PUBKEY, VECTOR_SIGNATURE)
            .expect("the spec's signature");
        // Another amount is another message, though the B_s are the same.
        let mut changed = vector_outputs();
        changed[1].amount = 2;
        assert!(matches!(
            verify_mint_signature(VECTOR_QUOTE, &changed, VECTOR_PUBKEY, VECTOR_SIGNATURE),
            Err(CreditError::MintSignatureInvalid)
        ));
    }

    #[test]
    fn amounts_are_signed_as_minimal_big_endian_bytes() {
        // Built by hand from the layout of the module doc: 0 is the empty string, 256 is
        // 0x0100, and each field carries its 4-byte big-endian length.
        let b = "02".repeat(33);
        let outputs = [0u64, 256].map(|amount| BlindedMessage {
            amount,
            id: "00aa".into(),
            b_: b.clone(),
        });
        let mut message = b"Cashu_MintQuoteSig_v1".to_vec();
        message.extend([0, 0, 0, 2]);
        message.extend(b"q7");
        message.extend([0, 0, 0, 0]);
        message.extend([0, 0, 0, 33]);
        message.extend([2u8; 33]);
        message.extend([0, 0, 0, 2, 1, 0]);
        message.extend([0, 0, 0, 33]);
        message.extend([2u8; 33]);
        assert_eq!(
            mint_message_digest("q7", &outputs),
            Some(sha256::Hash::hash(&message).to_byte_array())
        );
        let mut odd = outputs[0].clone();
        odd.b_ = "zz".into();
        assert_eq!(mint_message_digest("q7", &[odd]), None);
    }

    /// Checks `verify_mint_signature` against signatures made with `digest_of`.
    fn only_the_quote_keys_signature_verifies(digest_of: fn(&str, &[BlindedMessage]) -> [u8; 32]) {
        let secret = SecretKey::from_slice(&[5u8; 32]).expect("key");
        let keypair = Keypair::from_secret_key(&SECP, &secret);
        let pubkey_hex = keypair.public_key().to_string();
        let outputs = [out("02aa"), out("03bb")];
        let digest = digest_of("q1", &outputs);
        let sig = SECP.sign_schnorr_no_aux_rand(&Message::from_digest(digest), &keypair);
        let sig_hex = hex::encode(sig.as_ref());
        verify_mint_signature("q1", &outputs, &pubkey_hex, &sig_hex).expect("valid");
        for (quote, outs) in [
            ("q2", &outputs[..]),
            ("q1", &outputs[..1]),
            ("q1", &[out("03bb"), out("02aa")][..]),
        ] {
            assert!(matches!(
                verify_mint_signature(quote, outs, &pubkey_hex, &sig_hex),
                Err(CreditError::MintSignatureInvalid)
            ));
        }
        let other = Keypair::from_secret_key(&SECP, &SecretKey::from_slice(&[6u8; 32]).unwrap());
        assert!(
            verify_mint_signature("q1", &outputs, &other.public_key().to_string(), &sig_hex)
                .is_err()
        );
        assert!(verify_mint_signature("q1", &outputs, &pubkey_hex, "zz").is_err());
    }

    #[test]
    fn a_current_signature_by_the_quote_key_over_these_outputs_verifies() {
        only_the_quote_keys_signature_verifies(|quote, outputs| {
            mint_message_digest(quote, outputs).expect("hex outputs")
        });
    }

    #[test]
    fn a_legacy_signature_by_the_quote_key_over_these_outputs_verifies() {
        only_the_quote_keys_signature_verifies(legacy_mint_message_digest);
    }
}
