//! Every kind of bad request gets its own typed error (with the Cashu code where the NUT
//! error table has one), and leaves the spent set exactly as it was.

mod credit_wallet;

use credit_wallet::*;
use payment::credit::hash_to_curve::secret_to_curve;
use payment::credit::nut_types::{
    BlindedMessage, CheckStateRequest, Proof, ProofState, SwapRequest,
};
use payment::credit::{credit_key, CreditError, MintLimits};
use payment::spent_set::{SpendState, SpentSet};

fn ys(proofs: &[Proof]) -> Vec<String> {
    proofs
        .iter()
        .map(|p| hex::encode(secret_to_curve(&p.secret).unwrap().serialize()))
        .collect()
}

fn states(t: &TestMint, proofs: &[Proof]) -> Vec<ProofState> {
    t.mint
        .check_state(&CheckStateRequest { ys: ys(proofs) })
        .unwrap()
        .states
        .into_iter()
        .map(|s| s.state)
        .collect()
}

/// Nothing was applied: every proof is still unspent and still redeemable.
fn assert_untouched(t: &TestMint, proofs: &[Proof]) {
    assert!(states(t, proofs).iter().all(|s| *s == ProofState::Unspent));
}

fn swap(t: &TestMint, inputs: &[Proof], outputs: &[BlindedMessage]) -> Result<(), CreditError> {
    t.mint
        .swap(&SwapRequest {
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
        })
        .map(|_| ())
}

/// A fresh mint with 3 proofs (1+2+4 sat) and matching outputs for a 7-sat swap.
fn setup() -> (TestMint, Vec<Proof>, Vec<BlindedMessage>) {
    let t = test_mint_with(MintLimits {
        max_inputs: 8,
        max_outputs: 8,
        ..MintLimits::default()
    });
    let proofs = mint_proofs(&t.mint, &[1, 2, 4]);
    let outs = messages(&outputs(&t.mint.active_keyset_id(), &[4, 2, 1]));
    (t, proofs, outs)
}

fn expect(
    result: Result<(), CreditError>,
    code: Option<u32>,
    check: impl Fn(&CreditError) -> bool,
) {
    let err = result.expect_err("request must be rejected");
    assert!(check(&err), "unexpected error {err:?}");
    assert_eq!(err.cashu_code(), code, "{err}");
    assert!(
        !matches!(err, CreditError::Store { .. } | CreditError::SpentSet(_)),
        "bad input is the caller's fault, never a storage failure: {err}"
    );
}

#[test]
fn unknown_keyset_in_inputs_or_outputs() {
    let (t, mut proofs, mut outs) = setup();
    let good = proofs.clone();
    proofs[1].id = "00ffffffffffffff".into();
    expect(
        swap(&t, &proofs, &outs),
        Some(12001),
        |e| matches!(e, CreditError::UnknownKeyset { id } if id == "00ffffffffffffff"),
    );
    outs[2].id = "00eeeeeeeeeeeeee".into();
    expect(swap(&t, &good, &outs), Some(12001), |e| {
        matches!(e, CreditError::UnknownKeyset { .. })
    });
    expect(t.mint.redeem(&proofs, "x").map(|_| ()), Some(12001), |e| {
        matches!(e, CreditError::UnknownKeyset { .. })
    });
    assert_untouched(&t, &good);
    assert_eq!(t.mint.redeem(&good, "still good").unwrap(), 7000);
}

#[test]
fn invalid_point_encodings() {
    let (t, proofs, outs) = setup();
    let not_on_curve = format!("02{}", "00".repeat(32));
    let uncompressed_prefix = format!("04{}", &proofs[0].c[2..]);
    for bad in [
        "",
        "zz",
        &proofs[0].c[..64],
        &not_on_curve,
        &uncompressed_prefix,
        "02XYZ",
    ] {
        let mut p = proofs.clone();
        p[0].c = bad.to_string();
        expect(swap(&t, &p, &outs), None, |e| {
            matches!(
                e,
                CreditError::InvalidPoint {
                    field: "inputs.C",
                    ..
                }
            )
        });
        let mut o = outs.clone();
        o[1].b_ = bad.to_string();
        expect(swap(&t, &proofs, &o), None, |e| {
            matches!(
                e,
                CreditError::InvalidPoint {
                    field: "outputs.B_",
                    ..
                }
            )
        });
        expect(
            t.mint
                .check_state(&CheckStateRequest {
                    ys: vec![bad.to_string()],
                })
                .map(|_| ()),
            None,
            |e| matches!(e, CreditError::InvalidPoint { field: "Ys", .. }),
        );
    }
    // A long garbage value is echoed back truncated, not whole.
    let mut p = proofs.clone();
    p[0].c = "a".repeat(100_000);
    let err = swap(&t, &p, &outs).unwrap_err();
    assert!(err.to_string().len() < 200);
    assert_untouched(&t, &proofs);
}

#[test]
fn amounts_not_power_of_two() {
    let (t, proofs, outs) = setup();
    for bad in [0u64, 3, 6, u64::MAX] {
        let mut p = proofs.clone();
        p[2].amount = bad;
        expect(
            swap(&t, &p, &outs),
            None,
            |e| matches!(e, CreditError::AmountNotPowerOfTwo { amount, .. } if *amount == bad),
        );
        let mut o = outs.clone();
        o[0].amount = bad;
        expect(
            swap(&t, &proofs, &o),
            None,
            |e| matches!(e, CreditError::AmountNotPowerOfTwo { amount, .. } if *amount == bad),
        );
    }
    assert_untouched(&t, &proofs);
}

#[test]
fn duplicate_inputs_and_outputs() {
    let (t, proofs, outs) = setup();
    let dup_in = vec![proofs[0].clone(), proofs[1].clone(), proofs[0].clone()];
    let outs_for_dup = messages(&outputs(&t.mint.active_keyset_id(), &[4]));
    expect(swap(&t, &dup_in, &outs_for_dup), Some(11007), |e| {
        matches!(
            e,
            CreditError::DuplicateInputs {
                first: 0,
                second: 2
            }
        )
    });
    expect(t.mint.redeem(&dup_in, "x").map(|_| ()), Some(11007), |e| {
        matches!(e, CreditError::DuplicateInputs { .. })
    });
    let mut dup_out = outs.clone();
    dup_out[2] = dup_out[1].clone();
    dup_out[2].amount = 1;
    expect(swap(&t, &proofs, &dup_out), Some(11008), |e| {
        matches!(
            e,
            CreditError::DuplicateOutputs {
                first: 1,
                second: 2
            }
        )
    });
    expect(t.mint.mint(7, &dup_out).map(|_| ()), Some(11008), |e| {
        matches!(e, CreditError::DuplicateOutputs { .. })
    });
    expect(
        t.mint.change(7000, &dup_out).map(|_| ()),
        Some(11008),
        |e| matches!(e, CreditError::DuplicateOutputs { .. }),
    );
    assert_untouched(&t, &proofs);
}

#[test]
fn unbalanced_swaps_and_mints() {
    let (t, proofs, outs) = setup();
    let id = t.mint.active_keyset_id();
    let more = messages(&outputs(&id, &[4, 2, 1, 1]));
    expect(swap(&t, &proofs, &more), Some(11005), |e| {
        matches!(
            e,
            CreditError::Unbalanced {
                inputs: 7,
                outputs: 8
            }
        )
    });
    let less = messages(&outputs(&id, &[4, 2]));
    expect(swap(&t, &proofs, &less), Some(11005), |e| {
        matches!(
            e,
            CreditError::Unbalanced {
                inputs: 7,
                outputs: 6
            }
        )
    });
    expect(t.mint.mint(8, &outs).map(|_| ()), Some(11005), |e| {
        matches!(
            e,
            CreditError::Unbalanced {
                inputs: 8,
                outputs: 7
            }
        )
    });
    expect(t.mint.mint(0, &outs).map(|_| ()), Some(11006), |e| {
        matches!(e, CreditError::AmountOutOfRange { amount: 0, .. })
    });
    let over = t.mint.limits().max_mint_sat + 1;
    expect(t.mint.mint(over, &outs).map(|_| ()), Some(11006), |e| {
        matches!(e, CreditError::AmountOutOfRange { .. })
    });
    expect(swap(&t, &proofs, &[]), None, |e| {
        matches!(e, CreditError::NoOutputs)
    });
    expect(swap(&t, &[], &outs), None, |e| {
        matches!(e, CreditError::NoInputs)
    });
    assert_untouched(&t, &proofs);
}

#[test]
fn already_spent_input_blocks_the_whole_request() {
    let (t, proofs, outs) = setup();
    t.mint.redeem(&proofs[1..2], "earlier lease").unwrap();
    expect(swap(&t, &proofs, &outs), Some(11001), |e| {
        matches!(e, CreditError::AlreadySpent { .. })
    });
    expect(t.mint.redeem(&proofs, "x").map(|_| ()), Some(11001), |e| {
        matches!(e, CreditError::AlreadySpent { .. })
    });
    assert_eq!(
        states(&t, &proofs),
        vec![ProofState::Unspent, ProofState::Spent, ProofState::Unspent]
    );
    // The outputs were not signed either: the same outputs still work for a balanced swap.
    let rest = vec![proofs[0].clone(), proofs[2].clone()];
    let outs5 = messages(&outputs(&t.mint.active_keyset_id(), &[4, 1]));
    assert_eq!(
        t.mint
            .swap(&SwapRequest {
                inputs: rest,
                outputs: outs5
            })
            .unwrap()
            .signatures
            .len(),
        2
    );
    let _ = outs;
}

#[test]
fn pending_input_is_refused_with_its_own_code() {
    let (t, proofs, outs) = setup();
    let y = secret_to_curve(&proofs[0].secret).unwrap();
    t.spent
        .claim(&[credit_key(&y)], SpendState::Pending, "in flight")
        .unwrap();
    expect(swap(&t, &proofs, &outs), Some(11002), |e| {
        matches!(e, CreditError::Pending { .. })
    });
    assert_eq!(
        states(&t, &proofs),
        vec![
            ProofState::Pending,
            ProofState::Unspent,
            ProofState::Unspent
        ]
    );
}

#[test]
fn forged_or_mislabelled_proofs_do_not_verify() {
    let (t, proofs, outs) = setup();
    // Signature of another proof.
    let mut p = proofs.clone();
    p[0].c = proofs[1].c.clone();
    expect(swap(&t, &p, &outs), Some(10001), |e| {
        matches!(e, CreditError::ProofInvalid { index: 0 })
    });
    // A 1-sat note relabelled as 4 sat (keeping totals equal by swapping labels).
    let mut p = proofs.clone();
    p[0].amount = 4;
    p[2].amount = 1;
    expect(swap(&t, &p, &outs), Some(10001), |e| {
        matches!(e, CreditError::ProofInvalid { .. })
    });
    // A made-up secret with a real signature.
    let mut p = proofs.clone();
    p[1].secret = random_secret();
    expect(t.mint.redeem(&p, "x").map(|_| ()), Some(10001), |e| {
        matches!(e, CreditError::ProofInvalid { index: 1 })
    });
    assert_untouched(&t, &proofs);
}

#[test]
fn secrets_with_spending_conditions_or_bad_length_are_rejected() {
    let (t, proofs, outs) = setup();
    let cases = [
        (
            r#"["P2PK",{"nonce":"00","data":"02aa"}]"#.to_string(),
            10001,
        ),
        (String::new(), 10001),
        ("x".repeat(10_000), 10001),
    ];
    for (secret, code) in cases {
        let mut p = proofs.clone();
        p[0].secret = secret;
        expect(swap(&t, &p, &outs), Some(code), |e| {
            matches!(e, CreditError::SecretRejected { index: 0, .. })
        });
    }
    assert_untouched(&t, &proofs);
    // Notes properly signed for NUT-10 secrets that JSON whitespace precedes: every wallet
    // parses them as locked, so a mint taking them for plain secrets would let whoever
    // holds one spend it without the lock's signature.
    let id = t.mint.active_keyset_id();
    let p2pk = r#"["P2PK",{"nonce":"00","data":"02aa","tags":[]}]"#;
    let htlc = r#"[ "HTLC" , {"nonce":"01","data":"00"} ]"#;
    let locked: Vec<String> = vec![
        format!(" {p2pk}"),
        format!("\n{p2pk}"),
        format!("\t\r\n {htlc}"),
        // Refused without a full parse: a lenient parser (Python's) reads NaN.
        r#"["P2PK",{"nonce":"00","data":NaN}]"#.to_string(),
    ];
    for secret in locked {
        let pending = vec![output_with_secret(&id, 1, secret.clone())];
        let sigs = t
            .mint
            .mint(1, &messages(&pending))
            .expect("outputs are blind");
        let proofs = unblind_all(&t.mint, &pending, &sigs);
        let outs = messages(&outputs(&id, &[1]));
        expect(swap(&t, &proofs, &outs), Some(10001), |e| {
            matches!(e, CreditError::SecretRejected { index: 0, .. })
        });
        assert_untouched(&t, &proofs);
    }
}

#[test]
fn request_size_caps() {
    let (t, _, _) = setup();
    let id = t.mint.active_keyset_id();
    let many = mint_proofs(&t.mint, &[1; 8]);
    let mut nine = many.clone();
    nine.push(mint_proofs(&t.mint, &[1])[0].clone());
    let outs9 = messages(&outputs(&id, &[1; 9]));
    let outs8 = messages(&outputs(&id, &[1; 8]));
    expect(swap(&t, &nine, &outs8), Some(11014), |e| {
        matches!(e, CreditError::TooManyInputs { count: 9, max: 8 })
    });
    expect(swap(&t, &many, &outs9), Some(11015), |e| {
        matches!(e, CreditError::TooManyOutputs { count: 9, max: 8 })
    });
    expect(t.mint.mint(9, &outs9).map(|_| ()), Some(11015), |e| {
        matches!(e, CreditError::TooManyOutputs { .. })
    });
    expect(
        t.mint
            .check_state(&CheckStateRequest { ys: ys(&nine) })
            .map(|_| ()),
        Some(11014),
        |e| matches!(e, CreditError::TooManyInputs { .. }),
    );
    assert_untouched(&t, &nine[..8]);
    assert_untouched(&t, &nine[8..]);
    // At the cap it works.
    assert_eq!(
        t.mint
            .swap(&SwapRequest {
                inputs: many,
                outputs: outs8
            })
            .unwrap()
            .signatures
            .len(),
        8
    );
}

#[test]
fn change_needs_enough_blank_outputs() {
    let (t, _, _) = setup();
    let id = t.mint.active_keyset_id();
    // 7 sat = 1 + 2 + 4: three outputs needed.
    let two = messages(&outputs(&id, &[1, 1]));
    expect(t.mint.change(7_500, &two).map(|_| ()), None, |e| {
        matches!(
            e,
            CreditError::TooFewChangeOutputs {
                change_sat: 7,
                needed: 3,
                given: 2
            }
        )
    });
}

#[test]
fn huge_keyset_id_is_not_echoed_whole() {
    let (t, mut proofs, outs) = setup();
    proofs[0].id = "0".repeat(1_000_000);
    let err = swap(&t, &proofs, &outs).unwrap_err();
    assert!(matches!(err, CreditError::UnknownKeyset { .. }));
    assert!(err.to_string().len() < 200);
}
