//! Receipts: what a claim of spent-set keys was spent on, as a digest kept with the claim,
//! so that the very same request retried after a lost reply can be answered again.
//!
//! Blind signing is deterministic (`C_ = k·B_`): signing the same blinded outputs again
//! gives the same signatures, which unblind to the same notes, spendable once. So a mint
//! or swap whose reply was lost (a crash, a dropped connection after the commit) can hand
//! its signatures out again to a retry that brings the same inputs and the same outputs,
//! and no new money comes of it. Anything else that reuses the inputs (other outputs, part
//! of the inputs, more than them) has another receipt and meets "already spent" as before.

use bitcoin::hashes::{sha256, Hash, HashEngine};

use super::nut_types::BlindedMessage;
use crate::spent_set::{KeyKind, SpendKey};

/// The operation of a NUT-03 swap, in its receipt.
pub const SWAP: &str = "swap";
/// The operation of minting against an on-chain payment, in its receipt.
pub const MINT_ONCHAIN: &str = "mint onchain";

/// A digest of the set of spent-set keys a payment claims, independent of their order in
/// the request: two payments have the same digest only if they spend the same outpoints or
/// credit secrets.
pub fn keys_digest(keys: &[SpendKey]) -> [u8; 32] {
    let mut sorted: Vec<(u8, &[u8])> = keys
        .iter()
        .map(|k| {
            let tag = match k.kind {
                KeyKind::Outpoint => 1u8,
                KeyKind::CreditY => 2u8,
            };
            (tag, k.bytes.as_slice())
        })
        .collect();
    sorted.sort_unstable();
    let mut engine = sha256::Hash::engine();
    for (tag, bytes) in sorted {
        engine.input(&[tag]);
        // Keys are 33 or 36 bytes; the length keeps the encoding unambiguous anyway.
        engine.input(&(bytes.len() as u32).to_le_bytes());
        engine.input(bytes);
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// A digest of blank outputs, in order (keyset id and `B_`; the amount is left out because
/// change sets it itself, and for a mint or swap the keyset id and `B_` fix what is signed
/// once the amounts balanced).
pub fn outputs_digest(outputs: &[BlindedMessage]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    for o in outputs {
        for part in [o.id.as_bytes(), o.b_.as_bytes()] {
            engine.input(&(part.len() as u32).to_le_bytes());
            engine.input(part);
        }
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// The receipt of `operation` (e.g. `"swap"`) spending `keys` into `outputs`: the same
/// only for the same operation, the same set of keys and the same outputs in the same order
/// with the same amounts.
pub fn receipt(operation: &str, keys: &[SpendKey], outputs: &[BlindedMessage]) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(b"coinop receipt v1");
    engine.input(&(operation.len() as u32).to_le_bytes());
    engine.input(operation.as_bytes());
    engine.input(&keys_digest(keys));
    engine.input(&outputs_digest(outputs));
    for o in outputs {
        engine.input(&o.amount.to_le_bytes());
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SpendKey {
        SpendKey {
            kind: KeyKind::CreditY,
            bytes: vec![n; 33],
        }
    }

    fn out(amount: u64, b: &str) -> BlindedMessage {
        BlindedMessage {
            amount,
            id: "00aa".into(),
            b_: b.into(),
        }
    }

    #[test]
    fn a_receipt_names_one_operation_one_key_set_and_one_list_of_outputs() {
        let keys = [key(1), key(2)];
        let outs = [out(1, "02aa"), out(2, "02bb")];
        let r = receipt("swap", &keys, &outs);
        assert_eq!(r, receipt("swap", &[key(2), key(1)], &outs), "key order");
        assert_ne!(r, receipt("mint", &keys, &outs));
        assert_ne!(r, receipt("swap", &keys[..1], &outs));
        assert_ne!(r, receipt("swap", &keys, &[out(1, "02bb"), out(2, "02aa")]));
        assert_ne!(r, receipt("swap", &keys, &[out(2, "02aa"), out(1, "02bb")]));
        assert_ne!(r, receipt("swap", &keys, &outs[..1]));
    }
}
