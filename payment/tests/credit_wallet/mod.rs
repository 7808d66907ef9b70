//! The wallet side of Cashu, just enough to drive the mint in tests: make blinded outputs,
//! unblind signatures into proofs (checking their DLEQ), and set up a mint over a fresh
//! SQLite spent set in a temporary state dir.
#![allow(dead_code)]

use std::sync::Arc;

use bitcoin::secp256k1::rand::{thread_rng, Rng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::curve::{parse_point, parse_scalar, parse_secret_key};
use payment::credit::dleq::{verify, Dleq};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, Proof, ProofDleq};
use payment::credit::{Mint, MintLimits};
use payment::spent_set::{SpentSet, SqliteSpentSet};
use tempfile::TempDir;

pub struct TestMint {
    pub mint: Mint,
    pub spent: Arc<SqliteSpentSet>,
    pub dir: TempDir,
}

pub fn test_mint() -> TestMint {
    test_mint_with(MintLimits::default())
}

pub fn test_mint_with(limits: MintLimits) -> TestMint {
    let dir = tempfile::tempdir().unwrap();
    let spent = Arc::new(SqliteSpentSet::open(&dir.path().join("spent.sqlite")).unwrap());
    let mint = Mint::open(dir.path(), spent.clone() as Arc<dyn SpentSet>, limits).unwrap();
    TestMint { mint, spent, dir }
}

/// What the wallet keeps for an output until the signature comes back.
pub struct Pending {
    pub secret: String,
    pub r: SecretKey,
    pub message: BlindedMessage,
}

pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn output(keyset_id: &str, amount: u64) -> Pending {
    output_with_secret(keyset_id, amount, random_secret())
}

/// An output for `secret` as given: how a wallet makes a note locked by a NUT-10 secret.
pub fn output_with_secret(keyset_id: &str, amount: u64, secret: String) -> Pending {
    let r = SecretKey::new(&mut thread_rng());
    let b_ = blind_message(secret.as_bytes(), &r).unwrap();
    Pending {
        message: BlindedMessage {
            amount,
            id: keyset_id.to_string(),
            b_: hex::encode(b_.serialize()),
        },
        secret,
        r,
    }
}

pub fn outputs(keyset_id: &str, amounts: &[u64]) -> Vec<Pending> {
    amounts.iter().map(|a| output(keyset_id, *a)).collect()
}

pub fn messages(pending: &[Pending]) -> Vec<BlindedMessage> {
    pending.iter().map(|p| p.message.clone()).collect()
}

/// Unblinds signatures into proofs, checking each DLEQ against the mint's published key
/// the way a wallet must (NUT-12).
pub fn unblind_all(mint: &Mint, pending: &[Pending], sigs: &[BlindSignature]) -> Vec<Proof> {
    assert!(sigs.len() <= pending.len());
    pending
        .iter()
        .zip(sigs)
        .map(|(p, sig)| {
            let big_a = mint.public_key(&sig.id, sig.amount).unwrap();
            let c_ = parse_point("C_", &sig.c_).unwrap();
            let b_ = parse_point("B_", &p.message.b_).unwrap();
            let dleq = sig.dleq.as_ref().expect("every signature carries a DLEQ");
            let dleq_parsed = Dleq {
                e: parse_scalar("e", &dleq.e).unwrap(),
                s: parse_secret_key("s", &dleq.s).unwrap(),
            };
            assert!(verify(&dleq_parsed, &big_a, &b_, &c_), "DLEQ must verify");
            let c = unblind(&c_, &p.r, &big_a).unwrap();
            Proof {
                amount: sig.amount,
                id: sig.id.clone(),
                secret: p.secret.clone(),
                c: hex::encode(c.serialize()),
                witness: None,
                dleq: Some(ProofDleq {
                    e: dleq.e.clone(),
                    s: dleq.s.clone(),
                    r: hex::encode(p.r.secret_bytes()),
                }),
            }
        })
        .collect()
}

/// Mints proofs of the given amounts against a (pretend-verified) payment of their sum.
pub fn mint_proofs(mint: &Mint, amounts: &[u64]) -> Vec<Proof> {
    let pending = outputs(&mint.active_keyset_id(), amounts);
    let total = amounts.iter().sum();
    let sigs = mint.mint(total, &messages(&pending)).unwrap();
    unblind_all(mint, &pending, &sigs)
}

/// A random split of `total` into power-of-two amounts.
pub fn random_split(total: u64) -> Vec<u64> {
    let mut rng = thread_rng();
    let mut left = total;
    let mut parts = Vec::new();
    while left > 0 {
        let max_order = 63 - left.leading_zeros();
        let part = 1u64 << rng.gen_range(0..=max_order);
        parts.push(part);
        left -= part;
    }
    parts
}

/// A point that is not the given one: `p + G`.
pub fn tweak_point(p: &PublicKey) -> PublicKey {
    let one = SecretKey::from_slice(&[[0u8; 31].as_slice(), &[1u8]].concat()).unwrap();
    p.combine(&PublicKey::from_secret_key(
        &payment::credit::curve::SECP,
        &one,
    ))
    .unwrap()
}
