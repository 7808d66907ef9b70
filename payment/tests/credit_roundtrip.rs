//! Property-style tests over many random secrets and blinding factors: the BDHKE round trip
//! verifies, any tampered value fails, and swaps conserve amounts.

mod credit_wallet;

use bitcoin::secp256k1::rand::{thread_rng, Rng};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use credit_wallet::*;
use payment::credit::bdhke::{blind_message, sign_blinded, unblind, verify};
use payment::credit::curve::{parse_point, parse_scalar, parse_secret_key, SECP};
use payment::credit::dleq::{self, Dleq};
use payment::credit::nut_types::{CheckStateRequest, ProofState, SwapRequest};
use payment::credit::CreditError;

const ROUNDS: usize = 200;

#[test]
fn unblind_of_sign_of_blind_verifies_and_tampering_fails() {
    let mut rng = thread_rng();
    for _ in 0..ROUNDS {
        let k = SecretKey::new(&mut rng);
        let big_k = PublicKey::from_secret_key(&SECP, &k);
        let r = SecretKey::new(&mut rng);
        let secret = random_secret();

        let b_ = blind_message(secret.as_bytes(), &r).unwrap();
        let c_ = sign_blinded(&k, &b_).unwrap();
        let c = unblind(&c_, &r, &big_k).unwrap();
        assert!(verify(&k, secret.as_bytes(), &c));

        // Tampered signature, secret, or key: each must fail.
        assert!(!verify(&k, secret.as_bytes(), &tweak_point(&c)));
        let mut other_secret = secret.clone().into_bytes();
        let i = rng.gen_range(0..other_secret.len());
        other_secret[i] ^= 1;
        assert!(!verify(&k, &other_secret, &c));
        assert!(!verify(&SecretKey::new(&mut rng), secret.as_bytes(), &c));
        // Unblinding with the wrong factor gives a signature that does not verify.
        let wrong = unblind(&c_, &SecretKey::new(&mut rng), &big_k).unwrap();
        assert!(!verify(&k, secret.as_bytes(), &wrong));

        // DLEQ, both as Alice (B_, C_) and as Carol (secret, C, r).
        let proof = dleq::prove(&k, &b_, &c_).unwrap();
        assert!(dleq::verify(&proof, &big_k, &b_, &c_));
        assert!(dleq::verify_with_blinding(
            &proof,
            &big_k,
            secret.as_bytes(),
            &c,
            &r
        ));
        assert!(!dleq::verify(&proof, &big_k, &b_, &tweak_point(&c_)));
        assert!(!dleq::verify(&proof, &tweak_point(&big_k), &b_, &c_));
        assert!(!dleq::verify(&proof, &big_k, &tweak_point(&b_), &c_));
        let bumped_s = Dleq {
            e: proof.e,
            s: proof.s.add_tweak(&bitcoin::secp256k1::Scalar::ONE).unwrap(),
        };
        assert!(!dleq::verify(&bumped_s, &big_k, &b_, &c_));
        assert!(!dleq::verify_with_blinding(
            &proof,
            &big_k,
            secret.as_bytes(),
            &tweak_point(&c),
            &r
        ));
    }
}

#[test]
fn minted_proofs_redeem_once_for_their_value() {
    let t = test_mint();
    for _ in 0..20 {
        let total: u64 = thread_rng().gen_range(1..=1_000_000);
        let proofs = mint_proofs(&t.mint, &random_split(total));
        // Carol can check every proof offline with the DLEQ and r the wallet kept.
        for p in &proofs {
            let d = p.dleq.as_ref().unwrap();
            let proof = Dleq {
                e: parse_scalar("e", &d.e).unwrap(),
                s: parse_secret_key("s", &d.s).unwrap(),
            };
            let big_a = t.mint.public_key(&p.id, p.amount).unwrap();
            let c = parse_point("C", &p.c).unwrap();
            let r = parse_secret_key("r", &d.r).unwrap();
            assert!(dleq::verify_with_blinding(
                &proof,
                &big_a,
                p.secret.as_bytes(),
                &c,
                &r
            ));
        }
        assert_eq!(t.mint.redeem(&proofs, "test lease").unwrap(), total * 1000);
        assert!(matches!(
            t.mint.redeem(&proofs, "again"),
            Err(CreditError::AlreadySpent { .. })
        ));
    }
}

#[test]
fn swap_conserves_amounts_and_spends_inputs() {
    let t = test_mint();
    let id = t.mint.active_keyset_id();
    for _ in 0..30 {
        let total: u64 = thread_rng().gen_range(1..=100_000);
        let inputs = mint_proofs(&t.mint, &random_split(total));
        let new_amounts = random_split(total);
        let pending = outputs(&id, &new_amounts);
        let response = t
            .mint
            .swap(&SwapRequest {
                inputs: inputs.clone(),
                outputs: messages(&pending),
            })
            .unwrap();
        let sig_amounts: Vec<u64> = response.signatures.iter().map(|s| s.amount).collect();
        assert_eq!(sig_amounts, new_amounts);
        assert_eq!(sig_amounts.iter().sum::<u64>(), total);

        let ys: Vec<String> = inputs
            .iter()
            .map(|p| {
                hex::encode(
                    payment::credit::hash_to_curve::secret_to_curve(&p.secret)
                        .unwrap()
                        .serialize(),
                )
            })
            .collect();
        let states = t.mint.check_state(&CheckStateRequest { ys }).unwrap();
        assert!(states.states.iter().all(|s| s.state == ProofState::Spent));

        let new_proofs = unblind_all(&t.mint, &pending, &response.signatures);
        assert_eq!(t.mint.redeem(&new_proofs, "lease").unwrap(), total * 1000);
    }
}

#[test]
fn change_signs_the_refund_in_powers_of_two() {
    let t = test_mint();
    let id = t.mint.active_keyset_id();
    for refund_msat in [0u64, 999, 1000, 1_234_567, 987_654_321] {
        let needed = payment::credit::Mint::change_outputs_needed(refund_msat);
        // Blank outputs: the wallet's amounts are ignored and set by the mint.
        let pending = outputs(&id, &vec![1; needed + 2]);
        let sigs = t.mint.change(refund_msat, &messages(&pending)).unwrap();
        assert_eq!(sigs.len(), needed);
        assert_eq!(
            sigs.iter().map(|s| s.amount).sum::<u64>(),
            refund_msat / 1000
        );
        if !sigs.is_empty() {
            let proofs = unblind_all(&t.mint, &pending, &sigs);
            assert_eq!(
                t.mint.redeem(&proofs, "x").unwrap(),
                refund_msat / 1000 * 1000
            );
        }
    }
}
