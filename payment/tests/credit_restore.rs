//! Every blind signature is remembered with the swap that paid for it: a blinded message is
//! signed at most once (another request for it fails with 11003 and spends nothing), NUT-09
//! restore hands the stored signatures out again (after a restart too), and the NUT-02
//! input fee is charged on swaps and lease payments.

mod credit_wallet;

use std::sync::{Arc, Barrier};

use credit_wallet::*;
use payment::credit::nut_types::{
    CheckStateRequest, ProofState, RestoreRequest, SwapRequest, SwapResponse,
};
use payment::credit::{hash_to_curve::secret_to_curve, CreditError, Mint, MintLimits};
use payment::spent_set::{GroupCommitSpentSet, SpentSet, SqliteSpentSet};

fn swap(
    mint: &Mint,
    inputs: &[payment::credit::nut_types::Proof],
    outs: &[Pending],
) -> Result<SwapResponse, CreditError> {
    mint.swap(&SwapRequest {
        inputs: inputs.to_vec(),
        outputs: messages(outs),
    })
}

fn states(mint: &Mint, proofs: &[payment::credit::nut_types::Proof]) -> Vec<ProofState> {
    let ys = proofs
        .iter()
        .map(|p| hex::encode(secret_to_curve(&p.secret).unwrap().serialize()))
        .collect();
    mint.check_state(&CheckStateRequest { ys })
        .unwrap()
        .states
        .into_iter()
        .map(|s| s.state)
        .collect()
}

fn restore(mint: &Mint, outs: &[Pending]) -> payment::credit::nut_types::RestoreResponse {
    mint.restore(&RestoreRequest {
        outputs: messages(outs),
    })
    .expect("restore")
}

#[test]
fn an_output_signed_once_is_refused_to_any_other_request_and_spends_nothing() {
    let t = test_mint();
    let id = t.mint.active_keyset_id();
    let first_in = mint_proofs(&t.mint, &[8, 4]);
    let outs = outputs(&id, &[4, 8]);
    let first = swap(&t.mint, &first_in, &outs).expect("swap");

    // Fresh inputs, one output signed before (what a restored NUT-13 wallet would send).
    let other_in = mint_proofs(&t.mint, &[4, 2]);
    let mut reused = outputs(&id, &[2]);
    reused.insert(0, clone_pending(&outs[0]));
    let err = swap(&t.mint, &other_in, &reused).unwrap_err();
    assert!(
        matches!(err, CreditError::OutputsAlreadySigned { .. }),
        "{err:?}"
    );
    assert_eq!(err.cashu_code(), Some(11003));
    assert_eq!(
        states(&t.mint, &other_in),
        [ProofState::Unspent, ProofState::Unspent],
        "a refused swap spends nothing"
    );
    // The fresh output of the refused swap was not recorded either: it can be used.
    let fine = swap(&t.mint, &other_in, &outputs(&id, &[4, 2])).expect("other outputs");
    assert_eq!(fine.signatures.len(), 2);

    // The very same first swap retried (its reply lost) is still answered.
    let again = swap(&t.mint, &first_in, &outs).expect("idempotent retry");
    assert_eq!(again.signatures, first.signatures);
}

#[test]
fn restore_returns_the_stored_signatures_of_signed_outputs_only_also_after_a_restart() {
    let t = test_mint();
    let id = t.mint.active_keyset_id();
    let inputs = mint_proofs(&t.mint, &[16, 2]);
    let outs = outputs(&id, &[2, 8, 8]);
    let signed = swap(&t.mint, &inputs, &outs).expect("swap");
    let never = outputs(&id, &[1, 4]);
    // Asked in another order, mixed with outputs never signed.
    let asked = [
        clone_pending(&never[0]),
        clone_pending(&outs[2]),
        clone_pending(&outs[0]),
        clone_pending(&never[1]),
        clone_pending(&outs[1]),
    ];
    let reopened = || {
        let spent = SqliteSpentSet::open(&t.dir.path().join("spent.sqlite")).expect("reopen");
        Mint::open(
            t.dir.path(),
            Arc::new(spent) as Arc<dyn SpentSet>,
            MintLimits::default(),
        )
        .expect("reopen mint")
    };
    for mint in [&t.mint, &reopened()] {
        let r = restore(mint, &asked);
        assert_eq!(r.outputs.len(), 3);
        assert_eq!(r.signatures.len(), 3);
        let expect = [2usize, 0, 1];
        for ((out, sig), &i) in r.outputs.iter().zip(&r.signatures).zip(&expect) {
            assert_eq!(out.b_, outs[i].message.b_);
            assert_eq!((out.amount, &out.id), (outs[i].message.amount, &id));
            assert_eq!(
                *sig, signed.signatures[i],
                "the signature handed out, DLEQ included"
            );
        }
        // The wallet recovers its notes from them (DLEQ checked by unblind_all).
        let recovered = unblind_all(
            mint,
            &[
                clone_pending(&outs[2]),
                clone_pending(&outs[0]),
                clone_pending(&outs[1]),
            ],
            &r.signatures,
        );
        assert_eq!(recovered.iter().map(|p| p.amount).sum::<u64>(), 18);
        assert_eq!(states(mint, &recovered), [ProofState::Unspent; 3]);
    }
    assert!(restore(&t.mint, &never).signatures.is_empty());
    let bad = t.mint.restore(&RestoreRequest {
        outputs: vec![payment::credit::nut_types::BlindedMessage {
            amount: 1,
            id: id.clone(),
            b_: "02zz".into(),
        }],
    });
    assert!(
        matches!(bad, Err(CreditError::InvalidPoint { .. })),
        "{bad:?}"
    );
}

#[test]
fn swaps_racing_for_one_output_with_different_inputs_sign_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spent = Arc::new(GroupCommitSpentSet::open(&dir.path().join("ledger.db")).expect("open"));
    let mint = Arc::new(
        Mint::open(
            dir.path(),
            spent as Arc<dyn SpentSet>,
            MintLimits::default(),
        )
        .expect("mint"),
    );
    let id = mint.active_keyset_id();
    let shared = Arc::new(output(&id, 4));
    const RACERS: usize = 16;
    let inputs: Vec<_> = (0..RACERS).map(|_| mint_proofs(&mint, &[4])).collect();
    let start = Arc::new(Barrier::new(RACERS));
    let handles: Vec<_> = inputs
        .clone()
        .into_iter()
        .map(|inputs| {
            let (mint, shared, start) = (mint.clone(), shared.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                swap(&mint, &inputs, &[clone_pending(&shared)])
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("racer"))
        .collect();
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.cashu_code(), Some(11003), "{e:?}");
        }
    }
    let spent_inputs = inputs
        .iter()
        .filter(|i| states(&mint, i) == [ProofState::Spent])
        .count();
    assert_eq!(spent_inputs, 1, "only the winner's input is spent");
}

#[test]
fn the_input_fee_is_charged_on_swaps_and_lease_payments() {
    let t = test_mint();
    let dir = t.dir.path().to_path_buf();
    // 400 ppk per input: 3 inputs cost ceil(1.2) = 2 sat, 1 input ceil(0.4) = 1 sat.
    let spent = SqliteSpentSet::open(&dir.join("spent.sqlite")).expect("open");
    let mint = Mint::open(
        &dir,
        Arc::new(spent) as Arc<dyn SpentSet>,
        MintLimits::default(),
    )
    .expect("mint")
    .with_input_fee_ppk(400);
    let id = mint.active_keyset_id();
    assert!(mint
        .keysets()
        .keysets
        .iter()
        .all(|k| k.input_fee_ppk == 400));
    assert_eq!(mint.keys().keysets[0].input_fee_ppk, 400);

    let inputs = mint_proofs(&mint, &[8, 4, 1]);
    let full = swap(&mint, &inputs, &outputs(&id, &[8, 4, 1])).unwrap_err();
    assert!(
        matches!(
            full,
            CreditError::UnbalancedWithFee {
                inputs: 13,
                fee: 2,
                outputs: 13
            }
        ),
        "{full:?}"
    );
    assert_eq!(full.cashu_code(), Some(11005));
    assert!(
        swap(&mint, &inputs, &outputs(&id, &[8, 4])).is_err(),
        "fee is 2, not 1"
    );
    let paid = swap(&mint, &inputs, &outputs(&id, &[8, 2, 1])).expect("13 - 2 = 11");
    assert_eq!(paid.signatures.iter().map(|s| s.amount).sum::<u64>(), 11);

    // A lease paid with credit gets the inputs' value less the fee.
    let notes = mint_proofs(&mint, &[16, 16]);
    let v = mint.validate_inputs(&notes).expect("valid");
    assert_eq!((v.amount_sat, v.fee_sat), (32, 1));
    assert_eq!(v.amount_msat().unwrap(), 31_000);
    assert_eq!(mint.redeem(&notes, "lease").unwrap(), 31_000);
    // Notes worth less than their fee pay nothing and are refused.
    let dust = mint_proofs(&mint, &[1]);
    let tiny = Mint::open(
        &dir,
        Arc::new(SqliteSpentSet::open(&dir.join("spent.sqlite")).unwrap()) as Arc<dyn SpentSet>,
        MintLimits::default(),
    )
    .unwrap()
    .with_input_fee_ppk(2000);
    assert!(tiny.redeem(&dust, "lease").is_err());
    assert_eq!(states(&tiny, &dust), [ProofState::Unspent]);
}

fn clone_pending(p: &Pending) -> Pending {
    Pending {
        secret: p.secret.clone(),
        r: p.r,
        message: p.message.clone(),
    }
}
