//! NUT-20: a mint quote locked to a public key is minted only with a BIP340 Schnorr
//! signature, by that key's owner, of `SHA256(quote_id || B_0 || ... || B_(n-1))` (the
//! quote id and each output's `B_` hex as UTF-8, in request order). NUT-30 on-chain quotes
//! always carry such a key, so nobody who merely learns a quote id can mint its payment.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::secp256k1::{schnorr, Message, XOnlyPublicKey};

use super::curve::{parse_point, SECP};
use super::error::CreditError;
use super::nut_types::BlindedMessage;

/// The digest a wallet signs to mint `outputs` from quote `quote_id`.
pub fn mint_message_digest(quote_id: &str, outputs: &[BlindedMessage]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(quote_id.as_bytes());
    for o in outputs {
        engine.input(o.b_.as_bytes());
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// Checks the wallet's signature `signature_hex` (64 bytes, hex) over the mint request
/// against the quote's `pubkey_hex` (a compressed point, as the quote was given it).
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
    let message = Message::from_digest(mint_message_digest(quote_id, outputs));
    // BIP340 keys are x-only: the parity of the compressed key plays no part.
    let (xonly, _): (XOnlyPublicKey, _) = pubkey.x_only_public_key();
    SECP.verify_schnorr(&signature, &message, &xonly)
        .map_err(|_| CreditError::MintSignatureInvalid)
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

    #[test]
    fn only_the_quote_keys_signature_over_these_outputs_verifies() {
        let secret = SecretKey::from_slice(&[5u8; 32]).expect("key");
        let keypair = Keypair::from_secret_key(&SECP, &secret);
        let pubkey_hex = keypair.public_key().to_string();
        let outputs = [out("02aa"), out("03bb")];
        let digest = mint_message_digest("q1", &outputs);
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
}
