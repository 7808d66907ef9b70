//! The fleet's keyset list and signed blinded messages against a real PostgreSQL: a
//! throwaway cluster per test (payment_postgres::test_cluster), never a mock.

use std::time::Duration;

use payment::credit::keyset::{Keyset, UNIT_SAT};
use payment::credit::keyset_store::KeysetState;
use payment::spent_set::SignedOutput;
use payment_postgres::test_cluster::TestCluster;
use payment_postgres::{
    check_seed, NewKeyset, OutputState, PgKeysets, PgSignedOutputs, PgStore, PgStoreError,
    PgStoreOptions, Settled,
};

/// A cluster with database `coinop`, or `None` (SKIPPED printed) without PostgreSQL.
fn cluster(test: &str) -> Option<TestCluster> {
    let cluster = TestCluster::start(test).expect("starting the test PostgreSQL")?;
    cluster.create_database("coinop").expect("createdb coinop");
    Some(cluster)
}

async fn store(cluster: &TestCluster, host: &str) -> PgStore {
    let mut o = PgStoreOptions::new(cluster.conninfo("coinop"), host);
    o.pool_size = 4;
    o.connect_timeout = Duration::from_secs(1);
    o.statement_timeout = Duration::from_secs(2);
    o.operation_timeout = Duration::from_secs(3);
    PgStore::connect(&o)
        .await
        .expect("connecting to the test PostgreSQL")
}

/// Keyset `index` of `seed` as a host would write it.
fn derived(seed: &[u8; 32], index: u32, state: KeysetState) -> NewKeyset {
    NewKeyset {
        id: Keyset::derive(seed, index)
            .expect("derive")
            .id()
            .to_string(),
        unit: UNIT_SAT.into(),
        derivation_index: index,
        state,
        input_fee_ppk: 100,
    }
}

fn derive_id(seed: [u8; 32]) -> impl FnMut(u32) -> Result<String, String> {
    move |i| {
        Keyset::derive(&seed, i)
            .map(|k| k.id().to_string())
            .map_err(|e| e.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_host_makes_the_keyset_list_and_rotations_are_shared() {
    let Some(pg) = cluster("the_first_host_makes_the_keyset_list_and_rotations_are_shared") else {
        return;
    };
    let seed = [3u8; 32];
    let h1 = PgKeysets::new(store(&pg, "h1").await);
    let h2 = PgKeysets::new(store(&pg, "h2").await);
    assert!(h1.load().await.unwrap().is_empty());

    let first = derived(&seed, 0, KeysetState::Active);
    let rows = h1
        .register_initial(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, first.id);
    assert_eq!(rows[0].state, KeysetState::Active);
    assert_eq!(rows[0].input_fee_ppk, 100);
    assert_eq!(rows[0].created_by, "h1");
    // A second host's own initial list is not written: it gets the fleet's.
    let other = derived(&[4u8; 32], 0, KeysetState::Active);
    let seen = h2
        .register_initial(std::slice::from_ref(&other))
        .await
        .unwrap();
    assert_eq!(seen, rows);
    check_seed(&seen, derive_id(seed)).expect("the fleet's seed matches");
    match check_seed(&seen, derive_id([4u8; 32])) {
        Err(PgStoreError::KeysetMismatch {
            derivation_index,
            fleet_id,
            derived_id,
        }) => {
            assert_eq!(derivation_index, 0);
            assert_eq!(fleet_id, first.id);
            assert_eq!(derived_id, other.id);
            let message = PgStoreError::KeysetMismatch {
                derivation_index,
                fleet_id: fleet_id.clone(),
                derived_id: derived_id.clone(),
            }
            .to_string();
            assert!(
                message.contains(&fleet_id) && message.contains(&derived_id),
                "{message}"
            );
        }
        other => panic!("expected a keyset mismatch, got {other:?}"),
    }

    // Host 1 rotates; host 2 sees the new active keyset and the old one inactive.
    let next = derived(&seed, 1, KeysetState::Active);
    h1.rotate(&first.id, &next).await.unwrap();
    let rows = h2.load().await.unwrap();
    let states: Vec<(u32, KeysetState)> =
        rows.iter().map(|r| (r.derivation_index, r.state)).collect();
    assert_eq!(
        states,
        [(0, KeysetState::Inactive), (1, KeysetState::Active)]
    );
    assert_eq!(rows[1].id, next.id);
    // Host 2 rotating from the keyset it last knew as active loses: host 1 rotated first.
    let racing = derived(&seed, 1, KeysetState::Active);
    match h2.rotate(&first.id, &racing).await {
        Err(PgStoreError::KeysetsChanged(m)) => assert!(m.contains(&first.id), "{m}"),
        other => panic!("expected KeysetsChanged, got {other:?}"),
    }
    // Rotating again from the current active keyset with a taken index also loses.
    match h2.rotate(&next.id, &next).await {
        Err(PgStoreError::KeysetsChanged(_)) => {}
        other => panic!("expected KeysetsChanged, got {other:?}"),
    }
    assert_eq!(
        h1.load().await.unwrap(),
        rows,
        "failed rotations changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_rotating_at_once_make_one_new_keyset() {
    let Some(pg) = cluster("two_hosts_rotating_at_once_make_one_new_keyset") else {
        return;
    };
    let seed = [5u8; 32];
    let h1 = PgKeysets::new(store(&pg, "h1").await);
    let h2 = PgKeysets::new(store(&pg, "h2").await);
    let first = derived(&seed, 0, KeysetState::Active);
    h1.register_initial(std::slice::from_ref(&first))
        .await
        .unwrap();
    let next = derived(&seed, 1, KeysetState::Active);
    let (a, b) = tokio::join!(h1.rotate(&first.id, &next), h2.rotate(&first.id, &next));
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} / {b:?}"
    );
    let rows = h1.load().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows.iter()
            .filter(|r| r.state == KeysetState::Active)
            .count(),
        1
    );
}

/// A host that rotated while it ran alone joins a fleet whose list lacks its later
/// keysets: they are added (never active, an index the fleet holds left as the fleet has
/// it), so its notes stay redeemable; an active keyset is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_hosts_own_keysets_are_added_to_the_fleets_list() {
    let Some(pg) = cluster("a_joining_hosts_own_keysets_are_added_to_the_fleets_list") else {
        return;
    };
    let seed = [5u8; 32];
    let h1 = PgKeysets::new(store(&pg, "h1").await);
    let h2 = PgKeysets::new(store(&pg, "h2").await);
    h1.register_initial(&[derived(&seed, 0, KeysetState::Active)])
        .await
        .unwrap();
    let rows = h2
        .add_missing(&[
            derived(&seed, 0, KeysetState::Retired),
            derived(&seed, 1, KeysetState::Inactive),
            derived(&seed, 2, KeysetState::Retired),
        ])
        .await
        .unwrap();
    let got: Vec<(u32, KeysetState, &str)> = rows
        .iter()
        .map(|r| (r.derivation_index, r.state, r.created_by.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (0, KeysetState::Active, "h1"),
            (1, KeysetState::Inactive, "h2"),
            (2, KeysetState::Retired, "h2"),
        ]
    );
    check_seed(&rows, derive_id(seed)).expect("one seed's keysets");
    assert!(matches!(
        h2.add_missing(&[derived(&seed, 3, KeysetState::Active)])
            .await,
        Err(PgStoreError::ActiveKeysetAdded)
    ));
    assert_eq!(
        h1.load().await.unwrap().len(),
        3,
        "nothing of a refused call"
    );
}

fn signed(n: u8) -> SignedOutput {
    SignedOutput {
        b_: vec![n; 33],
        keyset_id: "00aabbccddeeff00".into(),
        amount: 1 << (n % 8),
        c_: vec![n.wrapping_add(100); 33],
        dleq: (n % 2 == 0).then_some(([n; 32], [n.wrapping_add(1); 32])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blinded_message_is_signed_once_across_hosts_and_restored_when_delivered() {
    let Some(pg) =
        cluster("a_blinded_message_is_signed_once_across_hosts_and_restored_when_delivered")
    else {
        return;
    };
    let h1 = PgSignedOutputs::new(store(&pg, "h1").await);
    let h2 = PgSignedOutputs::new(store(&pg, "h2").await);
    let (a, b, c) = (signed(1), signed(2), signed(3));

    h1.reserve(&[a.clone(), b.clone()], "op-1").await.unwrap();
    // The same reservation again (a retry) is granted; on another host it is taken.
    h1.reserve(&[b.clone(), a.clone()], "op-1").await.unwrap();
    match h2.reserve(&[c.clone(), b.clone()], "op-1").await {
        Err(PgStoreError::OutputAlreadySigned { b_hex }) => {
            assert_eq!(b_hex, hex::encode(&b.b_))
        }
        other => panic!("expected OutputAlreadySigned, got {other:?}"),
    }
    // All or none: c was not reserved by the refused call.
    assert_eq!(
        h2.lookup(std::slice::from_ref(&c.b_)).await.unwrap(),
        [None]
    );
    // Another operation of the same host is refused too.
    assert!(matches!(
        h1.reserve(std::slice::from_ref(&a), "op-2").await,
        Err(PgStoreError::OutputAlreadySigned { .. })
    ));
    // One B_ twice in one request.
    assert!(matches!(
        h2.reserve(&[c.clone(), c.clone()], "op-3").await,
        Err(PgStoreError::OutputAlreadySigned { .. })
    ));

    // Pending: not restorable, not an answer to a retry.
    let asked = vec![a.b_.clone(), c.b_.clone(), b.b_.clone()];
    assert_eq!(h2.delivered(&asked).await.unwrap(), [None, None, None]);
    assert_eq!(
        h2.delivered_for_operation(&[a.b_.clone(), b.b_.clone()], "op-1")
            .await
            .unwrap(),
        None
    );
    // Only its own host settles it.
    assert_eq!(h2.settle("op-1", true).await.unwrap(), 0);
    assert_eq!(h1.settle("op-1", true).await.unwrap(), 2);
    assert_eq!(h1.settle("op-1", true).await.unwrap(), 0, "settled already");
    assert_eq!(
        h2.delivered(&asked).await.unwrap(),
        [Some(a.clone()), None, Some(b.clone())]
    );
    assert_eq!(
        h2.delivered_for_operation(&[b.b_.clone(), a.b_.clone()], "op-1")
            .await
            .unwrap(),
        Some(vec![b.clone(), a.clone()])
    );
    assert_eq!(
        h2.delivered_for_operation(std::slice::from_ref(&a.b_), "op-9")
            .await
            .unwrap(),
        None
    );
    let rows = h2.lookup(std::slice::from_ref(&a.b_)).await.unwrap();
    let row = rows[0].as_ref().expect("row");
    assert_eq!(
        (row.state, row.host_id.as_str()),
        (OutputState::Delivered, "h1")
    );

    // Released: the B_ may be signed again, by anyone.
    h2.reserve(std::slice::from_ref(&c), "op-4").await.unwrap();
    assert_eq!(h2.settle("op-4", false).await.unwrap(), 1);
    assert_eq!(
        h2.lookup(std::slice::from_ref(&c.b_)).await.unwrap(),
        [None]
    );
    h1.reserve(std::slice::from_ref(&c), "op-5").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_settles_each_pending_operation_by_the_local_ledger() {
    let Some(pg) = cluster("reconciliation_settles_each_pending_operation_by_the_local_ledger")
    else {
        return;
    };
    let h1 = PgSignedOutputs::new(store(&pg, "h1").await);
    let h2 = PgSignedOutputs::new(store(&pg, "h2").await);
    h1.reserve(&[signed(1), signed(2)], "kept").await.unwrap();
    h1.reserve(&[signed(3)], "lost").await.unwrap();
    h2.reserve(&[signed(4)], "other-host").await.unwrap();
    let pending = h1.pending_operations().await.unwrap();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(pending[0].operation_id, "kept");
    assert_eq!(pending[0].b_s.len(), 2);
    let (delivered, released) = h1.reconcile(|op| op.operation_id == "kept").await.unwrap();
    assert_eq!(
        (delivered, released),
        (vec!["kept".to_string()], vec!["lost".to_string()])
    );
    assert!(h1.pending_operations().await.unwrap().is_empty());
    assert_eq!(
        h1.delivered(&[signed(1).b_, signed(3).b_]).await.unwrap(),
        [Some(signed(1)), None]
    );
    // Host 2's reservation is its own business.
    assert_eq!(h2.pending_operations().await.unwrap().len(), 1);
}

/// A reservation is delivered only when the local record of each `B_` is the very
/// signature reserved: another signature of the same `B_` (one the host made before it
/// joined the fleet, at another amount) releases the whole reservation, and only this
/// host's pending rows of the operation are touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_is_delivered_only_as_the_signatures_it_holds() {
    let Some(pg) = cluster("a_reservation_is_delivered_only_as_the_signatures_it_holds") else {
        return;
    };
    let h1 = PgSignedOutputs::new(store(&pg, "h1").await);
    let h2 = PgSignedOutputs::new(store(&pg, "h2").await);
    let (a, b) = (signed(1), signed(2));
    // What the host signed for `a`'s `B_` on its own: another amount, another `C_`.
    let before_join = SignedOutput {
        amount: a.amount * 64,
        c_: vec![7; 33],
        dleq: None,
        ..a.clone()
    };

    h1.reserve(&[a.clone(), b.clone()], "swap").await.unwrap();
    assert_eq!(
        h2.settle_as_recorded("swap", &[a.clone(), b.clone()])
            .await
            .unwrap(),
        Settled::Delivered { rows: 0 },
        "another host's operation is none of its business"
    );
    assert_eq!(
        h1.settle_as_recorded("swap", &[before_join.clone(), b.clone()])
            .await
            .unwrap(),
        Settled::Released { rows: 2 }
    );
    assert_eq!(
        h1.lookup(&[a.b_.clone(), b.b_.clone()]).await.unwrap(),
        [None, None]
    );

    // A record missing for one of them releases all.
    h1.reserve(&[a.clone(), b.clone()], "swap-2").await.unwrap();
    assert_eq!(
        h1.settle_as_recorded("swap-2", std::slice::from_ref(&b))
            .await
            .unwrap(),
        Settled::Released { rows: 2 }
    );

    // The signatures themselves (the DLEQ aside: signing again may make another proof).
    h1.reserve(&[a.clone(), b.clone()], "swap-3").await.unwrap();
    let a_again = SignedOutput {
        dleq: None,
        ..a.clone()
    };
    assert_eq!(
        h1.settle_as_recorded("swap-3", &[b.clone(), a_again])
            .await
            .unwrap(),
        Settled::Delivered { rows: 2 }
    );
    assert_eq!(
        h2.delivered(&[a.b_.clone(), b.b_.clone()]).await.unwrap(),
        [Some(a.clone()), Some(b.clone())]
    );
    assert_eq!(
        h1.settle_as_recorded("swap-3", &[]).await.unwrap(),
        Settled::Delivered { rows: 0 },
        "settled already: delivered stays delivered"
    );
    assert_eq!(
        h2.delivered(std::slice::from_ref(&a.b_)).await.unwrap(),
        [Some(a)]
    );
}

/// The same operation reserving the same `B_`s again with other signatures (a fleet
/// refund signed again for a balance that moved, its first reservation left pending by a
/// settle that did not reach the store): the pending rows hold the new signatures, not the
/// stale ones, which a settle would otherwise deliver. A delivered signature is never
/// replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_made_again_with_other_signatures_holds_the_new_ones() {
    let Some(pg) = cluster("a_reservation_made_again_with_other_signatures_holds_the_new_ones")
    else {
        return;
    };
    let h1 = PgSignedOutputs::new(store(&pg, "h1").await);
    let (a, b) = (signed(1), signed(2));
    let resigned = |s: &SignedOutput| SignedOutput {
        amount: s.amount * 2,
        c_: vec![s.c_[0].wrapping_add(50); 33],
        ..s.clone()
    };
    let (a2, b2) = (resigned(&a), resigned(&b));

    h1.reserve(&[a.clone(), b.clone()], "refund").await.unwrap();
    h1.reserve(&[a2.clone(), b2.clone()], "refund")
        .await
        .unwrap();
    let rows = h1.lookup(&[a.b_.clone(), b.b_.clone()]).await.unwrap();
    let held: Vec<SignedOutput> = rows.into_iter().flatten().map(|r| r.signed).collect();
    assert_eq!(held, [a2.clone(), b2.clone()]);
    assert_eq!(
        h1.settle_as_recorded("refund", &[a2.clone(), b2.clone()])
            .await
            .unwrap(),
        Settled::Delivered { rows: 2 }
    );
    assert_eq!(
        h1.delivered(&[a.b_.clone(), b.b_.clone()]).await.unwrap(),
        [Some(a2.clone()), Some(b2.clone())]
    );

    // Delivered: the same signatures again are granted, others refused.
    h1.reserve(&[a2.clone(), b2.clone()], "refund")
        .await
        .unwrap();
    assert!(matches!(
        h1.reserve(&[a.clone(), b2.clone()], "refund").await,
        Err(PgStoreError::OutputAlreadySigned { .. })
    ));
    assert_eq!(
        h1.delivered(std::slice::from_ref(&a.b_)).await.unwrap(),
        [Some(a2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_store_is_unavailable_not_an_answer() {
    let Some(pg) = cluster("a_stopped_store_is_unavailable_not_an_answer") else {
        return;
    };
    let keysets = PgKeysets::new(store(&pg, "h1").await);
    let outputs = PgSignedOutputs::new(store(&pg, "h1").await);
    pg.stop().expect("stopping PostgreSQL");
    let e = keysets.load().await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    let e = outputs.reserve(&[signed(1)], "op").await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    let e = outputs.delivered(&[signed(1).b_]).await.unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    pg.start_again().expect("starting PostgreSQL again");
    outputs.reserve(&[signed(1)], "op").await.unwrap();
    assert!(keysets.load().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_made_before_joining_are_published_delivered_and_conflicts_reported() {
    let Some(pg) =
        cluster("signatures_made_before_joining_are_published_delivered_and_conflicts_reported")
    else {
        return;
    };
    let joiner = PgSignedOutputs::new(store(&pg, "joiner").await);
    let other = PgSignedOutputs::new(store(&pg, "other").await);
    // The fleet already delivered 2 (same signature as the joiner's) and 3 (another
    // amount), and another host has 4 pending.
    other.reserve(&[signed(2)], "fleet-op").await.unwrap();
    let mut three_elsewhere = signed(3);
    three_elsewhere.amount = 64;
    other
        .reserve(&[three_elsewhere.clone()], "fleet-op-3")
        .await
        .unwrap();
    other.settle("fleet-op", true).await.unwrap();
    other.settle("fleet-op-3", true).await.unwrap();
    other.reserve(&[signed(4)], "in-flight").await.unwrap();

    let ours = [signed(1), signed(2), signed(3), signed(4), signed(1)];
    let published = joiner
        .publish_delivered(&ours, "pre-fleet:joiner")
        .await
        .unwrap();
    assert_eq!(published.inserted, 1, "{published:?}");
    assert_eq!(published.same, 1, "{published:?}");
    assert_eq!(published.signed_twice.len(), 1, "{published:?}");
    let (mine, theirs) = &published.signed_twice[0];
    assert_eq!(mine, &signed(3));
    assert_eq!(theirs.signed, three_elsewhere);
    assert_eq!(theirs.host_id, "other");
    assert_eq!(published.taken_over.len(), 1, "{published:?}");
    assert_eq!(published.taken_over[0].operation_id, "in-flight");
    assert!(published.left.is_empty());

    // Every host now restores 1 and 4 as the joiner signed them; 3 stays the fleet's.
    let asked: Vec<Vec<u8>> = (1..=4).map(|n| signed(n).b_).collect();
    assert_eq!(
        other.delivered(&asked).await.unwrap(),
        [
            Some(signed(1)),
            Some(signed(2)),
            Some(three_elsewhere),
            Some(signed(4))
        ]
    );
    // The other host's request finds nothing of its own pending: its settle changes nothing
    // and its reservation again is refused (11003).
    assert_eq!(other.settle("in-flight", false).await.unwrap(), 0);
    assert!(matches!(
        other.reserve(&[signed(4)], "in-flight").await,
        Err(PgStoreError::OutputAlreadySigned { .. })
    ));
    assert!(matches!(
        other.reserve(&[signed(1)], "new-op").await,
        Err(PgStoreError::OutputAlreadySigned { .. })
    ));

    // Published again (a restart before the marks): nothing changes.
    let again = joiner
        .publish_delivered(&[signed(1), signed(4)], "pre-fleet:joiner")
        .await
        .unwrap();
    assert_eq!(
        (again.inserted, again.same, again.taken_over.len()),
        (0, 2, 0)
    );
    // A B_ the joiner itself holds pending is left for a later start.
    joiner.reserve(&[signed(5)], "mine").await.unwrap();
    let left = joiner
        .publish_delivered(&[signed(5)], "pre-fleet:joiner")
        .await
        .unwrap();
    assert_eq!(left.left, vec![signed(5).b_]);
    assert_eq!(
        joiner.lookup(&[signed(5).b_]).await.unwrap()[0]
            .as_ref()
            .map(|r| r.state),
        Some(OutputState::Pending)
    );
}
