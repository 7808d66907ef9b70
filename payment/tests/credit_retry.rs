//! A swap whose reply was lost (the mint committed, the wallet never heard) is retried with
//! the same inputs and the same outputs: it gets the same signatures again, also after the
//! mint is reopened and also when identical requests race; nothing new is signed, and every
//! other reuse of the inputs is still refused as already spent.

mod credit_wallet;

use std::sync::{Arc, Barrier};

use credit_wallet::*;
use payment::credit::nut_types::{BlindSignature, Proof, SwapRequest, SwapResponse};
use payment::credit::{CreditError, Mint, MintLimits};
use payment::spent_set::{GroupCommitSpentSet, SpentSet, SqliteSpentSet};

fn swap(mint: &Mint, inputs: &[Proof], outs: &[Pending]) -> Result<SwapResponse, CreditError> {
    mint.swap(&SwapRequest {
        inputs: inputs.to_vec(),
        outputs: messages(outs),
    })
}

fn already_spent(r: Result<SwapResponse, CreditError>) {
    assert!(
        matches!(r, Err(CreditError::AlreadySpent { .. })),
        "expected already spent, got {r:?}"
    );
}

fn total(sigs: &[BlindSignature]) -> u64 {
    sigs.iter().map(|s| s.amount).sum()
}

#[test]
fn the_same_swap_again_gets_the_same_signatures_and_nothing_else_gets_any() {
    let t = test_mint();
    let id = t.mint.active_keyset_id();
    let inputs = mint_proofs(&t.mint, &[8, 4, 1]);
    let outs = outputs(&id, &[1, 2, 2, 8]);
    let first = swap(&t.mint, &inputs, &outs).expect("swap");
    let again = swap(&t.mint, &inputs, &outs).expect("the same swap, retried");
    assert_eq!(again.signatures, first.signatures, "byte for byte");
    // The inputs in another order are the same inputs.
    let reordered: Vec<Proof> = inputs.iter().rev().cloned().collect();
    let third = swap(&t.mint, &reordered, &outs).expect("reordered inputs");
    assert_eq!(third.signatures, first.signatures);

    // Other outputs for the same inputs, the outputs in another order, a part of the
    // inputs, or more than them: already spent, as before.
    already_spent(swap(&t.mint, &inputs, &outputs(&id, &[1, 2, 2, 8])));
    let swapped_order = [&outs[3], &outs[0], &outs[1], &outs[2]].map(|p| Pending {
        secret: p.secret.clone(),
        r: p.r,
        message: p.message.clone(),
    });
    already_spent(swap(&t.mint, &inputs, &swapped_order));
    already_spent(swap(&t.mint, &inputs[..1], &outputs(&id, &[8])));
    let fresh = mint_proofs(&t.mint, &[2]);
    let more: Vec<Proof> = inputs.iter().chain(&fresh).cloned().collect();
    already_spent(swap(&t.mint, &more, &outputs(&id, &[1, 2, 2, 8, 2])));
    // The fresh proof was not taken by that refused swap.
    assert_eq!(t.mint.redeem(&fresh, "lease").expect("fresh proof"), 2000);

    // Every answer is the same notes: worth 13 sat, once.
    let notes = unblind_all(&t.mint, &outs, &first.signatures);
    assert_eq!(total(&first.signatures), 13);
    assert_eq!(t.mint.redeem(&notes, "lease").expect("redeem"), 13_000);
    assert!(matches!(
        t.mint
            .redeem(&unblind_all(&t.mint, &outs, &again.signatures), "again"),
        Err(CreditError::AlreadySpent { .. })
    ));
}

#[test]
fn a_reopened_mint_answers_the_retry_the_same() {
    let t = test_mint();
    let id = t.mint.active_keyset_id();
    let inputs = mint_proofs(&t.mint, &[16]);
    let outs = outputs(&id, &[8, 8]);
    let first = swap(&t.mint, &inputs, &outs).expect("swap");
    // A restart: a new mint and spent set over the same files.
    let spent = Arc::new(SqliteSpentSet::open(&t.dir.path().join("spent.sqlite")).expect("open"));
    let reopened = Mint::open(
        t.dir.path(),
        spent as Arc<dyn SpentSet>,
        MintLimits::default(),
    )
    .expect("reopen mint");
    let again = swap(&reopened, &inputs, &outs).expect("retry after restart");
    assert_eq!(again.signatures, first.signatures);
    already_spent(swap(&reopened, &inputs, &outputs(&id, &[16])));
}

#[test]
fn identical_swaps_racing_all_get_the_one_answer() {
    // The daemon's spent set: group-committed, read through a second connection.
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
    let inputs = Arc::new(mint_proofs(&mint, &[32, 1]));
    let outs = Arc::new(outputs(&id, &[1, 32]));
    const RACERS: usize = 32;
    let start = Arc::new(Barrier::new(RACERS));
    let handles: Vec<_> = (0..RACERS)
        .map(|_| {
            let (mint, inputs, outs, start) =
                (mint.clone(), inputs.clone(), outs.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                swap(&mint, &inputs, &outs)
            })
        })
        .collect();
    let answers: Vec<Vec<BlindSignature>> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .expect("racer")
                .expect("every identical swap")
                .signatures
        })
        .collect();
    assert!(answers.iter().all(|a| *a == answers[0]), "one answer");
    assert_eq!(total(&answers[0]), 33);
    let notes = unblind_all(&mint, &outs, &answers[0]);
    assert_eq!(mint.redeem(&notes, "lease").expect("redeem"), 33_000);
}
