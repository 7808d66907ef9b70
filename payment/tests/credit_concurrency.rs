//! Many threads spending the same proof at once: exactly one wins, through the standalone
//! redeem, through swap, and through the daemon's validate-then-claim-in-its-transaction
//! path.

mod credit_wallet;

use std::sync::{Arc, Barrier};
use std::thread;

use credit_wallet::*;
use payment::credit::nut_types::SwapRequest;
use payment::credit::CreditError;
use payment::spent_set::{open_durable, SpendState, SqliteSpentSet};
use rusqlite::TransactionBehavior;

fn race<F>(threads: usize, attempt: F) -> Vec<Result<(), CreditError>>
where
    F: Fn() -> Result<(), CreditError> + Send + Sync + 'static,
{
    let attempt = Arc::new(attempt);
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let attempt = attempt.clone();
            let start = start.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    attempt()
                })
                .expect("spawn racer thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("racer panicked"))
        .collect()
}

fn assert_one_winner(results: &[Result<(), CreditError>]) {
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one spend succeeds");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                r,
                CreditError::AlreadySpent { .. } | CreditError::Pending { .. }
            ),
            "losers see already spent / pending, got {r:?}"
        );
    }
}

#[test]
fn thousand_threads_redeem_one_proof_exactly_one_succeeds() {
    let t = Arc::new(test_mint());
    let proof = mint_proofs(&t.mint, &[64]);
    let racer = t.clone();
    let results = race(1000, move || racer.mint.redeem(&proof, "lease").map(|_| ()));
    assert_one_winner(&results);
}

#[test]
fn concurrent_swaps_of_the_same_inputs_sign_once() {
    let t = Arc::new(test_mint());
    let inputs = mint_proofs(&t.mint, &[8, 8]);
    let id = t.mint.active_keyset_id();
    let racer = t.clone();
    let results = race(64, move || {
        let outs = messages(&outputs(&id, &[16]));
        racer
            .mint
            .swap(&SwapRequest {
                inputs: inputs.clone(),
                outputs: outs,
            })
            .map(|_| ())
    });
    assert_one_winner(&results);
}

#[test]
fn daemon_path_validates_then_claims_inside_its_own_transaction() {
    let t = Arc::new(test_mint());
    let proofs = mint_proofs(&t.mint, &[1, 32]);
    let ledger = t.dir.path().join("ledger.sqlite");
    {
        let conn = open_durable(&ledger).unwrap();
        SqliteSpentSet::create_schema(&conn).unwrap();
    }
    let racer = t.clone();
    let path = ledger.clone();
    let results = race(200, move || {
        let validated = racer.mint.validate_inputs(&proofs)?;
        assert_eq!(validated.amount_msat()?, 33_000);
        let mut conn = open_durable(&path).map_err(|e| CreditError::SpentSet(e.to_string()))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| CreditError::SpentSet(e.to_string()))?;
        SqliteSpentSet::claim_in(&tx, &validated.keys, SpendState::Spent, "lease 1")?;
        tx.commit()
            .map_err(|e| CreditError::SpentSet(e.to_string()))
    });
    assert_one_winner(&results);
}
