//! The conformance suite of [`SpentKeyStore`] (feature `conformance`), written once and run
//! against every implementation: the SQLite sets by this crate's tests
//! (`tests/spent_key_store.rs`), the PostgreSQL set by `payment-postgres`'s against a real
//! throwaway cluster. It lives in the library, behind a feature, because a test file of one
//! crate cannot be used by another's tests.
//!
//! Each check panics (it is a test) with what the store did wrong. The checks use disjoint
//! keys, so [`run_all`] runs them one after another on one empty store. Every store must
//! be empty of the keys [`key`] makes with numbers 1..=999 (the suite's range).

use std::sync::Arc;

use tokio::sync::Barrier;

use super::key_store::{SpentKeyStore, SpentKeyStoreError};
use super::{KeyKind, SpendKey, SpendState};

/// How many tasks race for one key in [`concurrent_claims_have_one_winner`].
pub const RACERS: u32 = 16;

/// The suite's key number `n` as a credit Y: 33 bytes, distinct per `n`.
pub fn key(n: u32) -> SpendKey {
    let mut bytes = vec![0x02u8; 33];
    bytes[1..5].copy_from_slice(&n.to_be_bytes());
    SpendKey {
        kind: KeyKind::CreditY,
        bytes,
    }
}

/// Panics unless `result` is the refusal of a claim because `taken` is `state`.
fn assert_taken(result: Result<(), SpentKeyStoreError>, taken: &SpendKey, state: SpendState) {
    match result {
        Err(SpentKeyStoreError::AlreadyClaimed {
            kind,
            key_hex,
            state: found,
        }) => {
            assert_eq!(kind, taken.kind, "the refusal names the taken key's kind");
            assert_eq!(
                key_hex,
                hex::encode(&taken.bytes),
                "the refusal names the taken key"
            );
            assert_eq!(found, state, "the refusal names the taken key's state");
        }
        other => panic!("expected AlreadyClaimed({state:?}) for the taken key, got {other:?}"),
    }
}

/// Panics unless `result` is the refusal of a settle because `key` is not pending.
fn assert_not_pending(result: Result<(), SpentKeyStoreError>, key: &SpendKey) {
    match result {
        Err(SpentKeyStoreError::NotPending { kind, key_hex }) => {
            assert_eq!(kind, key.kind);
            assert_eq!(key_hex, hex::encode(&key.bytes));
        }
        other => panic!("expected NotPending for the key, got {other:?}"),
    }
}

/// One key taken refuses a claim of three, which then claims nothing; the two free keys
/// can still be claimed together.
pub async fn claims_are_all_or_none<S: SpentKeyStore>(store: &S) {
    let (a, b, c) = (key(1), key(2), key(3));
    store
        .claim(std::slice::from_ref(&b), SpendState::Spent, "op-first")
        .await
        .expect("claiming a free key");
    assert_taken(
        store
            .claim(
                &[a.clone(), b.clone(), c.clone()],
                SpendState::Spent,
                "op-second",
            )
            .await,
        &b,
        SpendState::Spent,
    );
    assert_eq!(
        store
            .states(&[a.clone(), b.clone(), c.clone()])
            .await
            .expect("states"),
        vec![None, Some(SpendState::Spent), None],
        "a refused claim left the free keys unclaimed"
    );
    store
        .claim(&[a.clone(), c.clone()], SpendState::Spent, "op-third")
        .await
        .expect("claiming the keys the refused claim left free");
    assert_eq!(
        store.states(&[a, c]).await.expect("states"),
        vec![Some(SpendState::Spent), Some(SpendState::Spent)]
    );
}

/// A second claim of a key is refused naming its current state, pending or spent, whatever
/// state the second claim asks for.
pub async fn a_second_claim_is_refused_with_the_state<S: SpentKeyStore>(store: &S) {
    let k = key(10);
    let ks = std::slice::from_ref(&k);
    store
        .claim(ks, SpendState::Pending, "op-holder")
        .await
        .expect("claiming a free key pending");
    assert_taken(
        store.claim(ks, SpendState::Spent, "op-other").await,
        &k,
        SpendState::Pending,
    );
    assert_taken(
        store.claim(ks, SpendState::Pending, "op-other").await,
        &k,
        SpendState::Pending,
    );
    store.commit_pending(ks).await.expect("committing");
    assert_taken(
        store.claim(ks, SpendState::Pending, "op-other").await,
        &k,
        SpendState::Spent,
    );
    assert_taken(
        store.claim_with_receipt(ks, "op-other", &[7; 32]).await,
        &k,
        SpendState::Spent,
    );
}

/// Pending → commit → spent, after which the key cannot be settled again.
pub async fn pending_commits_to_spent<S: SpentKeyStore>(store: &S) {
    let (a, b) = (key(20), key(21));
    let both = [a.clone(), b.clone()];
    store
        .claim(&both, SpendState::Pending, "op-pending")
        .await
        .expect("claiming pending");
    assert_eq!(
        store.states(&both).await.expect("states"),
        vec![Some(SpendState::Pending), Some(SpendState::Pending)]
    );
    store.commit_pending(&both).await.expect("committing");
    assert_eq!(
        store.states(&both).await.expect("states"),
        vec![Some(SpendState::Spent), Some(SpendState::Spent)]
    );
    assert_not_pending(store.commit_pending(&both).await, &a);
    assert_not_pending(store.release_pending(std::slice::from_ref(&b)).await, &b);
    assert_eq!(
        store.states(&both).await.expect("states"),
        vec![Some(SpendState::Spent), Some(SpendState::Spent)],
        "a refused release of a spent key leaves it spent"
    );
}

/// Pending → release → claimable again; settling a mix of pending and unclaimed keys
/// settles none of them.
pub async fn released_keys_are_claimable_again<S: SpentKeyStore>(store: &S) {
    let (a, unclaimed) = (key(30), key(31));
    let ks = std::slice::from_ref(&a);
    store
        .claim(ks, SpendState::Pending, "op-fails")
        .await
        .expect("claiming pending");
    assert_not_pending(
        store.release_pending(&[a.clone(), unclaimed.clone()]).await,
        &unclaimed,
    );
    assert_eq!(
        store.states(ks).await.expect("states"),
        vec![Some(SpendState::Pending)],
        "a refused settle of two keys leaves the pending one pending"
    );
    store.release_pending(ks).await.expect("releasing");
    assert_eq!(store.states(ks).await.expect("states"), vec![None]);
    assert_not_pending(store.release_pending(ks).await, &a);
    store
        .claim(ks, SpendState::Spent, "op-retried")
        .await
        .expect("a released key is claimable again");
    assert_eq!(
        store.states(ks).await.expect("states"),
        vec![Some(SpendState::Spent)]
    );
}

/// A receipt claim is recognised by its receipt only, for keys it spent only.
pub async fn receipts_recognise_their_claim<S: SpentKeyStore>(store: &S) {
    let (x, y, other, plain, pending) = (key(40), key(41), key(42), key(43), key(44));
    let (receipt, wrong) = ([0xa5; 32], [0x5a; 32]);
    store
        .claim_with_receipt(&[x.clone(), y.clone()], "op-swap", &receipt)
        .await
        .expect("claiming with a receipt");
    assert_eq!(
        store.states(&[x.clone(), y.clone()]).await.expect("states"),
        vec![Some(SpendState::Spent), Some(SpendState::Spent)],
        "a receipt claim spends its keys"
    );
    let spent_with = |keys: Vec<SpendKey>, r: [u8; 32]| async move {
        store.spent_with(&keys, &r).await.expect("spent_with")
    };
    assert!(spent_with(vec![x.clone(), y.clone()], receipt).await);
    assert!(spent_with(vec![y.clone()], receipt).await, "a subset");
    assert!(!spent_with(vec![x.clone(), y.clone()], wrong).await);
    assert!(
        !spent_with(vec![x.clone(), other.clone()], receipt).await,
        "an unclaimed key"
    );
    assert!(!spent_with(vec![], receipt).await, "no keys");
    store
        .claim(std::slice::from_ref(&plain), SpendState::Spent, "op-plain")
        .await
        .expect("claiming without a receipt");
    assert!(
        !spent_with(vec![plain], receipt).await,
        "spent without a receipt"
    );
    store
        .claim(
            std::slice::from_ref(&pending),
            SpendState::Pending,
            "op-pend",
        )
        .await
        .expect("claiming pending");
    assert!(!spent_with(vec![pending], receipt).await, "pending");
    assert_taken(
        store
            .claim_with_receipt(&[other, x.clone()], "op-again", &receipt)
            .await,
        &x,
        SpendState::Spent,
    );
}

/// Keys never claimed have no state; no keys, no states.
pub async fn unknown_keys_have_no_state<S: SpentKeyStore>(store: &S) {
    assert_eq!(
        store.states(&[key(50), key(51)]).await.expect("states"),
        vec![None, None]
    );
    assert_eq!(store.states(&[]).await.expect("states"), vec![]);
}

/// A key twice in one claim, or a claim or settle of nothing, is refused and claims
/// nothing.
pub async fn malformed_requests_are_refused<S: SpentKeyStore>(store: &S) {
    let (a, b) = (key(60), key(61));
    match store
        .claim(&[a.clone(), b.clone(), a.clone()], SpendState::Spent, "op")
        .await
    {
        Err(SpentKeyStoreError::DuplicateKey { kind, key_hex }) => {
            assert_eq!(kind, a.kind);
            assert_eq!(key_hex, hex::encode(&a.bytes));
        }
        other => panic!("expected DuplicateKey, got {other:?}"),
    }
    assert_eq!(
        store.states(&[a, b]).await.expect("states"),
        vec![None, None]
    );
    for result in [
        store.claim(&[], SpendState::Spent, "op").await,
        store.claim_with_receipt(&[], "op", &[1; 32]).await,
        store.commit_pending(&[]).await,
        store.release_pending(&[]).await,
    ] {
        assert!(
            matches!(result, Err(SpentKeyStoreError::NoKeys)),
            "expected NoKeys, got {result:?}"
        );
    }
}

/// [`RACERS`] tasks claim one shared key (each with a key of its own) at once: exactly one
/// wins, every other is refused naming the shared key as pending, and the losers' own keys
/// stay unclaimed.
pub async fn concurrent_claims_have_one_winner<S: SpentKeyStore + Clone + 'static>(store: &S) {
    let shared = key(100);
    let start = Arc::new(Barrier::new(RACERS as usize));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, shared, start) = (store.clone(), shared.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                let keys = [shared, key(101 + i)];
                start.wait().await;
                store
                    .claim(&keys, SpendState::Pending, &format!("op-racer-{i}"))
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, racer) in (0..RACERS).zip(racers) {
        match racer.await.expect("a racing task panicked") {
            Ok(()) => winners.push(i),
            refused => assert_taken(refused, &shared, SpendState::Pending),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
    let own: Vec<SpendKey> = (0..RACERS).map(|i| key(101 + i)).collect();
    let states = store.states(&own).await.expect("states");
    for (i, state) in (0..RACERS).zip(states) {
        let expected = (i == winners[0]).then_some(SpendState::Pending);
        assert_eq!(state, expected, "racer {i}'s own key");
    }
}

/// Every check above, one after another, on one store that holds none of the suite's keys.
pub async fn run_all<S: SpentKeyStore + Clone + 'static>(store: S) {
    claims_are_all_or_none(&store).await;
    a_second_claim_is_refused_with_the_state(&store).await;
    pending_commits_to_spent(&store).await;
    released_keys_are_claimable_again(&store).await;
    receipts_recognise_their_claim(&store).await;
    unknown_keys_have_no_state(&store).await;
    malformed_requests_are_refused(&store).await;
    concurrent_claims_have_one_winner(&store).await;
}
