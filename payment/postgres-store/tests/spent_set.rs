//! The PostgreSQL spent set against a real PostgreSQL: a throwaway cluster per test
//! (payment_postgres::test_cluster), never a mock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use payment::spent_set::{KeyKind, SpendKey, SpendState};
use payment_postgres::test_cluster::TestCluster;
use payment_postgres::{HeldKey, PgSpentSet, PgStore, PgStoreError, PgStoreOptions};

fn key(kind: KeyKind, n: u32) -> SpendKey {
    let mut bytes = vec![0u8; if kind == KeyKind::Outpoint { 36 } else { 33 }];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    SpendKey { kind, bytes }
}

/// A cluster with database `coinop`, or `None` (SKIPPED printed) without PostgreSQL.
fn cluster(test: &str) -> Option<TestCluster> {
    let cluster = TestCluster::start(test).expect("starting the test PostgreSQL")?;
    cluster.create_database("coinop").expect("createdb coinop");
    Some(cluster)
}

fn options(cluster: &TestCluster, host: &str) -> PgStoreOptions {
    let mut o = PgStoreOptions::new(cluster.conninfo("coinop"), host);
    o.pool_size = 8;
    o.connect_timeout = Duration::from_secs(1);
    o.statement_timeout = Duration::from_secs(2);
    o.pool_wait_timeout = Duration::from_secs(2);
    o.operation_timeout = Duration::from_secs(3);
    o
}

async fn set(cluster: &TestCluster, host: &str) -> PgSpentSet {
    PgSpentSet::new(
        PgStore::connect(&options(cluster, host))
            .await
            .expect("connecting to the test PostgreSQL"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_all_or_none_and_settle_like_the_sqlite_set() {
    let Some(pg) = cluster("claims_are_all_or_none_and_settle_like_the_sqlite_set") else {
        return;
    };
    let set = set(&pg, "h1").await;
    let (a, b, c) = (
        key(KeyKind::CreditY, 1),
        key(KeyKind::CreditY, 2),
        key(KeyKind::CreditY, 3),
    );
    set.claim(std::slice::from_ref(&b), SpendState::Spent, "first", "op-1")
        .await
        .unwrap();
    match set
        .claim(
            &[a.clone(), b.clone(), c.clone()],
            SpendState::Spent,
            "second",
            "op-2",
        )
        .await
    {
        Err(PgStoreError::AlreadyClaimed {
            kind,
            key_hex,
            state,
        }) => {
            assert_eq!(kind, KeyKind::CreditY);
            assert_eq!(key_hex, hex::encode(&b.bytes));
            assert_eq!(state, SpendState::Spent);
        }
        other => panic!("expected AlreadyClaimed, got {other:?}"),
    }
    assert_eq!(
        set.states(&[a.clone(), b.clone(), c.clone()])
            .await
            .unwrap(),
        vec![None, Some(SpendState::Spent), None],
        "the failed claim wrote nothing"
    );
    // One request naming a key twice is refused before it reaches the database.
    assert!(matches!(
        set.claim(&[a.clone(), a.clone()], SpendState::Spent, "dup", "op-3")
            .await,
        Err(PgStoreError::DuplicateKey { .. })
    ));
    assert!(matches!(
        set.claim(&[], SpendState::Spent, "none", "op-3").await,
        Err(PgStoreError::NoKeys)
    ));
    // Same bytes, other kind: another key.
    let mut as_outpoint = a.clone();
    as_outpoint.kind = KeyKind::Outpoint;
    set.claim(&[as_outpoint], SpendState::Spent, "kind", "op-4")
        .await
        .unwrap();

    // Pending, then spent; a pending key is taken meanwhile.
    set.claim(
        std::slice::from_ref(&a),
        SpendState::Pending,
        "swap",
        "op-5",
    )
    .await
    .unwrap();
    assert!(matches!(
        set.claim(std::slice::from_ref(&a), SpendState::Spent, "other", "op-6")
            .await,
        Err(PgStoreError::AlreadyClaimed {
            state: SpendState::Pending,
            ..
        })
    ));
    set.commit_pending(std::slice::from_ref(&a), "op-5")
        .await
        .unwrap();
    // Committed again (a settle repeated): fine. Released once spent: nothing to release.
    set.commit_pending(std::slice::from_ref(&a), "op-5")
        .await
        .unwrap();
    assert_eq!(
        set.release_pending(std::slice::from_ref(&a), "op-5")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        set.states(std::slice::from_ref(&a)).await.unwrap(),
        vec![Some(SpendState::Spent)]
    );

    // Release: what the operation holds pending, and nothing else; then the key is free.
    set.claim(
        std::slice::from_ref(&c),
        SpendState::Pending,
        "swap",
        "op-7",
    )
    .await
    .unwrap();
    let d = key(KeyKind::CreditY, 4);
    assert_eq!(
        set.release_pending(&[c.clone(), d.clone()], "op-6")
            .await
            .unwrap(),
        0,
        "another operation's claim"
    );
    assert_eq!(
        set.states(std::slice::from_ref(&c)).await.unwrap(),
        vec![Some(SpendState::Pending)]
    );
    assert_eq!(
        set.release_pending(&[c.clone(), d.clone()], "op-7")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        set.states(std::slice::from_ref(&c)).await.unwrap(),
        vec![None]
    );
    set.claim(&[c], SpendState::Spent, "again", "op-8")
        .await
        .unwrap();
    assert!(set.store().metrics().round_trips > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_recognise_the_request_that_spent_the_keys() {
    let Some(pg) = cluster("receipts_recognise_the_request_that_spent_the_keys") else {
        return;
    };
    let set = set(&pg, "h1").await;
    let (a, b, c) = (
        key(KeyKind::CreditY, 1),
        key(KeyKind::CreditY, 2),
        key(KeyKind::CreditY, 3),
    );
    let (r1, r2) = ([1u8; 32], [2u8; 32]);
    set.claim_with_receipt(&[a.clone(), b.clone()], "swap", "swap-1", &r1)
        .await
        .unwrap();
    assert!(set.spent_with(&[b.clone(), a.clone()], &r1).await.unwrap());
    assert!(!set.spent_with(&[a.clone(), b.clone()], &r2).await.unwrap());
    assert!(
        !set.spent_with(&[a.clone(), b.clone(), c.clone()], &r1)
            .await
            .unwrap(),
        "an unclaimed key"
    );
    assert!(!set.spent_with(&[], &r1).await.unwrap());
    // The retried request is refused as a claim (the caller answers it from the receipt).
    assert!(matches!(
        set.claim_with_receipt(&[a.clone(), b.clone()], "swap", "swap-1", &r1)
            .await,
        Err(PgStoreError::AlreadyClaimed { .. })
    ));
    // Another host sees the same receipt: the fleet shares it.
    let other = self::set(&pg, "h2").await;
    assert!(other.spent_with(&[a, b], &r1).await.unwrap());
    // A pending or receipt-less key names no request.
    set.claim(
        std::slice::from_ref(&c),
        SpendState::Pending,
        "lease",
        "lease-1",
    )
    .await
    .unwrap();
    assert!(!set
        .spent_with(std::slice::from_ref(&c), &[0u8; 32])
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_claim_is_idempotent_for_its_own_host_and_operation_only() {
    let Some(pg) = cluster("a_pending_claim_is_idempotent_for_its_own_host_and_operation_only")
    else {
        return;
    };
    let (h1, h2) = (set(&pg, "h1").await, set(&pg, "h2").await);
    let keys = [key(KeyKind::Outpoint, 1), key(KeyKind::CreditY, 1)];
    h1.claim(&keys, SpendState::Pending, "lease", "lease-a")
        .await
        .unwrap();
    // The same claim again (a retry after an unknown outcome): granted.
    h1.claim(&keys, SpendState::Pending, "lease", "lease-a")
        .await
        .unwrap();
    // Another operation of the same host, or the same operation id on another host: taken.
    for (set, op) in [(&h1, "lease-b"), (&h2, "lease-a")] {
        assert!(
            matches!(
                set.claim(&keys, SpendState::Pending, "lease", op).await,
                Err(PgStoreError::AlreadyClaimed {
                    state: SpendState::Pending,
                    ..
                })
            ),
            "{op}"
        );
    }
    // A superset is a different claim.
    let mut more = keys.to_vec();
    more.push(key(KeyKind::CreditY, 2));
    assert!(matches!(
        h1.claim(&more, SpendState::Pending, "lease", "lease-a")
            .await,
        Err(PgStoreError::AlreadyClaimed { .. })
    ));
    // Only the claiming host settles its claim: another host's commit of the same
    // operation id is told who holds the keys, its release does nothing.
    match h2.commit_pending(&keys, "lease-a").await {
        Err(PgStoreError::HeldElsewhere(held)) => {
            assert_eq!(held.len(), 2, "{held:?}");
            assert!(held
                .iter()
                .all(|h| h.host_id == "h1" && h.state == SpendState::Pending));
        }
        other => panic!("expected HeldElsewhere, got {other:?}"),
    }
    assert_eq!(h2.release_pending(&keys, "lease-a").await.unwrap(), 0);
    assert!(h1.held_for_operation(&keys, "lease-a").await.unwrap());
    assert!(!h1.held_for_operation(&keys, "lease-b").await.unwrap());
    assert!(!h2.held_for_operation(&keys, "lease-a").await.unwrap());
    assert!(!h1.held_for_operation(&more, "lease-a").await.unwrap());
    h1.commit_pending(&keys, "lease-a").await.unwrap();
    // Delivered, the operation still holds its keys: a repeat is recognised.
    assert!(h1.held_for_operation(&keys, "lease-a").await.unwrap());
    assert_eq!(
        h2.states(&keys).await.unwrap(),
        vec![Some(SpendState::Spent); 2]
    );
    // Once spent, the retry is no longer granted.
    assert!(matches!(
        h1.claim(&keys, SpendState::Pending, "lease", "lease-a")
            .await,
        Err(PgStoreError::AlreadyClaimed {
            state: SpendState::Spent,
            ..
        })
    ));
}

/// Keys a host spent before it joined the fleet, published: the ones the store did not
/// have are recorded `Spent` under the publication's operation, in one round trip however
/// many; the same publication again changes nothing; a key held by another operation (of
/// another host, or of this one, spent or pending) is reported and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_local_spends_records_the_missing_ones_once_and_overwrites_nothing() {
    let Some(pg) =
        cluster("publishing_local_spends_records_the_missing_ones_once_and_overwrites_nothing")
    else {
        return;
    };
    let (h1, h2) = (set(&pg, "h1").await, set(&pg, "h2").await);
    let (a, b, c, d, e) = (
        key(KeyKind::CreditY, 1),
        key(KeyKind::CreditY, 2),
        key(KeyKind::CreditY, 3),
        key(KeyKind::Outpoint, 4),
        key(KeyKind::CreditY, 5),
    );
    h2.claim(std::slice::from_ref(&b), SpendState::Spent, "swap", "op-b")
        .await
        .unwrap();
    h1.claim(
        std::slice::from_ref(&c),
        SpendState::Pending,
        "lease",
        "op-c",
    )
    .await
    .unwrap();
    h2.claim(
        std::slice::from_ref(&e),
        SpendState::Pending,
        "swap",
        "op-e",
    )
    .await
    .unwrap();
    let all = [a.clone(), b.clone(), c.clone(), d.clone(), e.clone()];
    let held = |key: &SpendKey, state, host: &str, op: &str| HeldKey {
        key: key.clone(),
        state,
        host_id: host.into(),
        operation_id: op.into(),
    };
    let elsewhere = vec![
        held(&b, SpendState::Spent, "h2", "op-b"),
        held(&c, SpendState::Pending, "h1", "op-c"),
    ];

    let before = h1.store().metrics().round_trips;
    let first = h1
        .publish_spent(&all, "spent before joining", "pre-fleet:h1")
        .await
        .unwrap();
    assert_eq!(first.inserted, 2, "{first:?}");
    assert_eq!(first.already, 0, "{first:?}");
    assert_eq!(first.held_elsewhere, elsewhere);
    // Another host's pending claim is taken over: left pending, a failed request of that
    // host would release a spent key.
    assert_eq!(
        first.taken_over,
        vec![held(&e, SpendState::Pending, "h2", "op-e")]
    );
    assert_eq!(
        h1.store().metrics().round_trips - before,
        3,
        "the insert, the read of who holds the rest, the take-over"
    );
    assert_eq!(
        h2.states(&all).await.unwrap(),
        vec![
            Some(SpendState::Spent),
            Some(SpendState::Spent),
            Some(SpendState::Pending),
            Some(SpendState::Spent),
            Some(SpendState::Spent),
        ]
    );
    // The published keys are this publication's, and spent for every host.
    assert!(h1
        .held_for_operation(&[a.clone(), d.clone()], "pre-fleet:h1")
        .await
        .unwrap());
    assert!(matches!(
        h2.claim(
            std::slice::from_ref(&a),
            SpendState::Pending,
            "swap",
            "op-x"
        )
        .await,
        Err(PgStoreError::AlreadyClaimed {
            state: SpendState::Spent,
            ..
        })
    ));
    // The others were left as they were: still their holders', this host's pending one
    // still pending.
    assert!(h2
        .held_for_operation(std::slice::from_ref(&b), "op-b")
        .await
        .unwrap());
    h1.commit_pending(std::slice::from_ref(&c), "op-c")
        .await
        .unwrap();
    // The taken-over key's host, its request failed, lets go: the key stays spent.
    assert_eq!(
        h2.release_pending(std::slice::from_ref(&e), "op-e")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        h2.states(std::slice::from_ref(&e)).await.unwrap(),
        vec![Some(SpendState::Spent)]
    );

    // Again: nothing new; what is this publication's is known as such.
    let again = h1
        .publish_spent(
            &[a.clone(), d.clone()],
            "spent before joining",
            "pre-fleet:h1",
        )
        .await
        .unwrap();
    assert_eq!((again.inserted, again.already), (0, 2), "{again:?}");
    assert!(again.held_elsewhere.is_empty(), "{again:?}");
    // Published again: the taken-over key counts as this publication's now.
    let third = h1
        .publish_spent(&all, "spent before joining", "pre-fleet:h1")
        .await
        .unwrap();
    assert_eq!((third.inserted, third.already), (0, 3), "{third:?}");
    assert!(third.taken_over.is_empty(), "{third:?}");
    assert_eq!(
        third.held_elsewhere,
        vec![
            held(&b, SpendState::Spent, "h2", "op-b"),
            held(&c, SpendState::Spent, "h1", "op-c"),
        ]
    );
    assert!(h1.held_for_operation(&[e], "pre-fleet:h1").await.unwrap());
    // Another host's publication of the same key: reported as the first host's.
    let other = h2
        .publish_spent(
            std::slice::from_ref(&a),
            "spent before joining",
            "pre-fleet:h2",
        )
        .await
        .unwrap();
    assert_eq!(other.inserted, 0);
    assert_eq!(
        other.held_elsewhere,
        vec![held(&a, SpendState::Spent, "h1", "pre-fleet:h1")]
    );

    // Many keys, all new: one round trip.
    let many: Vec<SpendKey> = (100..1100).map(|n| key(KeyKind::CreditY, n)).collect();
    let before = h1.store().metrics().round_trips;
    let done = h1
        .publish_spent(&many, "bulk", "pre-fleet:h1")
        .await
        .unwrap();
    assert_eq!(done.inserted, many.len());
    assert_eq!(h1.store().metrics().round_trips - before, 1);
    assert_eq!(
        h2.states(&many).await.unwrap(),
        vec![Some(SpendState::Spent); many.len()]
    );

    // As every request of the set: at least one key, none twice.
    assert!(matches!(
        h1.publish_spent(&[], "none", "pre-fleet:h1").await,
        Err(PgStoreError::NoKeys)
    ));
    assert!(matches!(
        h1.publish_spent(&[a.clone(), a], "dup", "pre-fleet:h1")
            .await,
        Err(PgStoreError::DuplicateKey { .. })
    ));
}

/// 3 hosts (separate pools) × 8 tasks claim the same keys at once, 200 rounds: exactly one
/// claim wins each round, whatever the key order in each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_claim_wins_across_three_hosts() {
    let Some(pg) = cluster("exactly_one_claim_wins_across_three_hosts") else {
        return;
    };
    let hosts = [
        set(&pg, "h1").await,
        set(&pg, "h2").await,
        set(&pg, "h3").await,
    ];
    const TASKS: usize = 8;
    const ROUNDS: u32 = 200;
    let mut winners_by_host = [0usize; 3];
    for round in 0..ROUNDS {
        let wins = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS * hosts.len()));
        let mut tasks = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            for t in 0..TASKS {
                let (host, wins, barrier) = (host.clone(), wins.clone(), barrier.clone());
                tasks.push(tokio::spawn(async move {
                    let mut keys =
                        vec![key(KeyKind::Outpoint, round), key(KeyKind::CreditY, round)];
                    if t % 2 == 1 {
                        keys.reverse();
                    }
                    let op = format!("lease-{h}-{t}");
                    barrier.wait().await;
                    match host.claim(&keys, SpendState::Pending, "race", &op).await {
                        Ok(()) => {
                            wins.fetch_add(1, Ordering::SeqCst);
                            host.commit_pending(&keys, &op)
                                .await
                                .expect("committing the win");
                            Some(h)
                        }
                        Err(PgStoreError::AlreadyClaimed { .. }) => None,
                        Err(other) => panic!("round {round}: unexpected {other:?}"),
                    }
                }));
            }
        }
        for task in tasks {
            if let Some(h) = task.await.expect("claim task") {
                winners_by_host[h] += 1;
            }
        }
        assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
    }
    assert_eq!(winners_by_host.iter().sum::<usize>(), ROUNDS as usize);
    let all: Vec<SpendKey> = (0..ROUNDS)
        .flat_map(|r| [key(KeyKind::Outpoint, r), key(KeyKind::CreditY, r)])
        .collect();
    assert!(hosts[0]
        .states(&all)
        .await
        .unwrap()
        .iter()
        .all(|s| *s == Some(SpendState::Spent)));
    let count = pg
        .psql("coinop", "SELECT count(*) FROM coinop_spent_keys")
        .unwrap();
    assert_eq!(count, (2 * ROUNDS).to_string());
    eprintln!("winners by host: {winners_by_host:?}");
}

/// A host that crashed between its PostgreSQL claim and its local commit settles its own
/// pending claims at start-up from its ledger, and leaves other hosts' alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_completes_committed_and_releases_lost_operations() {
    let Some(pg) = cluster("reconciliation_completes_committed_and_releases_lost_operations")
    else {
        return;
    };
    let committed = [key(KeyKind::Outpoint, 1), key(KeyKind::CreditY, 1)];
    let lost = [key(KeyKind::Outpoint, 2)];
    let spent = [key(KeyKind::CreditY, 3)];
    let other_host = [key(KeyKind::CreditY, 4)];
    {
        let h1 = set(&pg, "h1").await;
        h1.claim(&committed, SpendState::Pending, "lease", "lease-committed")
            .await
            .unwrap();
        h1.claim(&lost, SpendState::Pending, "lease", "lease-lost")
            .await
            .unwrap();
        h1.claim(&spent, SpendState::Spent, "lease", "lease-done")
            .await
            .unwrap();
        // The host dies here: the store object and its pool go away with nothing settled.
    }
    let h2 = set(&pg, "h2").await;
    h2.claim(&other_host, SpendState::Pending, "swap", "swap-1")
        .await
        .unwrap();
    // Meanwhile nobody else can spend the crashed host's keys.
    assert!(matches!(
        h2.claim(&lost, SpendState::Spent, "steal", "lease-x").await,
        Err(PgStoreError::AlreadyClaimed { .. })
    ));

    let h1 = set(&pg, "h1").await;
    let pending = h1.pending_operations().await.unwrap();
    let mut ids: Vec<&str> = pending.iter().map(|p| p.operation_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["lease-committed", "lease-lost"]);
    let found = pending
        .iter()
        .find(|p| p.operation_id == "lease-committed")
        .unwrap();
    let mut keys = found.keys.clone();
    keys.sort_by(|a, b| (a.kind as u8, &a.bytes).cmp(&(b.kind as u8, &b.bytes)));
    assert_eq!(keys, committed.to_vec());

    // A ledger that cannot be read says nothing: every claim stays pending, neither spent
    // nor free, for a later pass.
    let done = h1.reconcile(|_| None).await.unwrap();
    let mut undecided = done.undecided.clone();
    undecided.sort();
    assert_eq!(undecided, ["lease-committed", "lease-lost"]);
    assert!(
        done.committed.is_empty() && done.released.is_empty(),
        "{done:?}"
    );
    assert_eq!(
        h1.states(&committed).await.unwrap(),
        vec![Some(SpendState::Pending); 2]
    );
    assert_eq!(
        h1.states(&lost).await.unwrap(),
        vec![Some(SpendState::Pending)]
    );

    // The local ledger has the lease "lease-committed" only.
    let done = h1
        .reconcile(|op| Some(op.operation_id == "lease-committed"))
        .await
        .unwrap();
    assert_eq!(done.committed, ["lease-committed"]);
    assert_eq!(done.released, ["lease-lost"]);
    assert_eq!(
        h1.states(&committed).await.unwrap(),
        vec![Some(SpendState::Spent); 2]
    );
    assert_eq!(h1.states(&lost).await.unwrap(), vec![None]);
    assert_eq!(
        h1.states(&other_host).await.unwrap(),
        vec![Some(SpendState::Pending)],
        "another host's pending claim is its own to settle"
    );
    // The released payment is spendable again, on any host.
    h2.claim(&lost, SpendState::Spent, "retry", "lease-y")
        .await
        .unwrap();
    // Nothing left to reconcile.
    assert_eq!(
        h1.reconcile(|_| Some(true)).await.unwrap(),
        payment_postgres::Reconciled::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let Some(pg) = cluster("migrations_apply_once_and_a_newer_schema_is_refused") else {
        return;
    };
    // Three hosts starting at once on an empty database: one applies, all succeed.
    let starts = (0..3).map(|i| {
        let o = options(&pg, &format!("h{i}"));
        tokio::spawn(async move { PgStore::connect(&o).await })
    });
    for s in starts {
        s.await.unwrap().expect("concurrent start");
    }
    let supported = payment_postgres::migrations::supported_version();
    assert_eq!(
        pg.psql(
            "coinop",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM coinop_schema_migrations"
        )
        .unwrap(),
        payment_postgres::migrations::MIGRATIONS
            .iter()
            .map(|m| m.version.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    // A later coinop migrated the database further: this one must not touch it.
    pg.psql(
        "coinop",
        "INSERT INTO coinop_schema_migrations (version, name) VALUES (999, 'from the future')",
    )
    .unwrap();
    match PgStore::connect(&options(&pg, "h1")).await {
        Err(PgStoreError::SchemaTooNew {
            found,
            supported: s,
        }) => {
            assert_eq!((found, s), (999, supported));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// The server goes away mid-run: calls fail with `Unavailable` within the timeouts, never
/// with an answer about the keys; it comes back: the same store object works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_closed_and_recovers_by_itself() {
    let Some(pg) = cluster("an_unreachable_store_fails_closed_and_recovers_by_itself") else {
        return;
    };
    // Made while the server is down: no network until the first call.
    pg.stop().unwrap();
    let store = PgStore::new(&options(&pg, "h1")).expect("a store needs no server to be made");
    assert!(
        store.description().starts_with("postgres host=/"),
        "{}",
        store.description()
    );
    assert!(matches!(
        store.migrate().await,
        Err(PgStoreError::Unavailable(_))
    ));
    pg.start_again().unwrap();
    store
        .migrate()
        .await
        .expect("the schema check once the server is up");
    let set = PgSpentSet::new(store);
    let before = key(KeyKind::Outpoint, 1);
    let during = key(KeyKind::Outpoint, 2);
    set.claim(
        std::slice::from_ref(&before),
        SpendState::Spent,
        "lease",
        "lease-1",
    )
    .await
    .unwrap();

    pg.stop().unwrap();
    for attempt in 0..3 {
        let started = Instant::now();
        let claim = set
            .claim(
                std::slice::from_ref(&during),
                SpendState::Spent,
                "lease",
                "lease-2",
            )
            .await;
        assert!(
            matches!(claim, Err(PgStoreError::Unavailable(_))),
            "attempt {attempt}: {claim:?}"
        );
        // Bounded by the 3 s operation timeout (1 s to connect), with slack for a loaded host.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let states = set.states(std::slice::from_ref(&before)).await;
        assert!(
            matches!(states, Err(PgStoreError::Unavailable(_))),
            "{states:?}"
        );
    }
    let m = set.store().metrics();
    assert!(m.unavailable >= 6 && m.errors >= m.unavailable, "{m:?}");

    pg.start_again().unwrap();
    // The same store object: the pool drops its dead connections and makes new ones.
    set.claim(
        std::slice::from_ref(&during),
        SpendState::Spent,
        "lease",
        "lease-2",
    )
    .await
    .expect("a claim after the store came back");
    assert_eq!(
        set.states(&[before.clone(), during]).await.unwrap(),
        vec![Some(SpendState::Spent); 2],
        "the claim from before the outage survived it"
    );
    assert!(matches!(
        set.claim(&[before], SpendState::Spent, "again", "lease-3")
            .await,
        Err(PgStoreError::AlreadyClaimed { .. })
    ));
}

/// A release retried after its reply was lost, once the keys are fenced again by another
/// operation of the same host (the tenant's retry): it leaves that claim alone, else the
/// other operation's commit finds nothing pending and the key, spent on the host, is free
/// in the store for every other host. A commit whose claim is gone records the keys spent
/// anyway, unless someone else holds them: then it says who.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_release_leaves_another_operations_claim_alone() {
    let Some(pg) = cluster("a_late_release_leaves_another_operations_claim_alone") else {
        return;
    };
    let (h1, h2) = (set(&pg, "h1").await, set(&pg, "h2").await);
    let k = [key(KeyKind::CreditY, 1)];
    h1.claim(&k, SpendState::Pending, "swap", "X")
        .await
        .unwrap();
    assert_eq!(h1.release_pending(&k, "X").await.unwrap(), 1);
    h1.claim(&k, SpendState::Pending, "swap", "Y")
        .await
        .unwrap();
    // X's release again (its first reply was lost).
    assert_eq!(h1.release_pending(&k, "X").await.unwrap(), 0);
    assert!(h1.held_for_operation(&k, "Y").await.unwrap());
    assert!(matches!(
        h2.claim(&k, SpendState::Pending, "swap", "Z").await,
        Err(PgStoreError::AlreadyClaimed { .. })
    ));
    // X's commit (had the ledger spent the key) is not Y's either: reported, Y's intact.
    match h1.commit_pending(&k, "X").await {
        Err(PgStoreError::HeldElsewhere(held)) => assert_eq!(
            held,
            [HeldKey {
                key: k[0].clone(),
                state: SpendState::Pending,
                host_id: "h1".into(),
                operation_id: "Y".into(),
            }]
        ),
        other => panic!("expected HeldElsewhere, got {other:?}"),
    }
    h1.commit_pending(&k, "Y").await.unwrap();
    assert_eq!(h2.states(&k).await.unwrap(), [Some(SpendState::Spent)]);
    assert!(h1.held_for_operation(&k, "Y").await.unwrap());

    // A commit whose pending claim is gone (released by a settle whose reply was lost,
    // the key spent on the host since): the store records the key spent for it.
    let gone = [key(KeyKind::Outpoint, 2), key(KeyKind::CreditY, 2)];
    h1.claim(&gone, SpendState::Pending, "lease", "W")
        .await
        .unwrap();
    assert_eq!(h1.release_pending(&gone, "W").await.unwrap(), 2);
    h1.commit_pending(&gone, "W").await.unwrap();
    assert_eq!(
        h2.states(&gone).await.unwrap(),
        [Some(SpendState::Spent), Some(SpendState::Spent)]
    );
    assert!(h1.held_for_operation(&gone, "W").await.unwrap());
}

/// A database a coinop of schema version 4 made (its pending claims settled by host only)
/// gains the settle by operation at the next start, with its rows as they were; the
/// migration may run over a function it made before (a repeated upgrade) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_4_database_is_upgraded_to_settles_by_operation() {
    let Some(pg) = cluster("a_version_4_database_is_upgraded_to_settles_by_operation") else {
        return;
    };
    let h1 = set(&pg, "h1").await;
    let k = [key(KeyKind::CreditY, 1)];
    h1.claim(&k, SpendState::Pending, "swap", "Y")
        .await
        .unwrap();
    // As a version 4 database: no record of migration 5.
    pg.psql(
        "coinop",
        "DELETE FROM coinop_schema_migrations WHERE version >= 5",
    )
    .unwrap();
    assert_eq!(h1.store().migrate().await.unwrap(), [5, 6]);
    assert_eq!(h1.release_pending(&k, "X").await.unwrap(), 0);
    h1.commit_pending(&k, "Y").await.unwrap();
    assert!(h1.held_for_operation(&k, "Y").await.unwrap());
}

/// Two stores with one host id: the first takes the id's lock, the second is refused
/// (`HostIdHeld`) and, having asked, does nothing under the id (every call `Unavailable`),
/// so its reconciliation cannot release the first's fences. The first's lock session
/// killed on the server and the lock taken by the second meanwhile: the first does
/// nothing more (each call would take the lock again first, and cannot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_id_is_held_by_one_store_at_a_time() {
    let Some(pg) = cluster("one_host_id_is_held_by_one_store_at_a_time") else {
        return;
    };
    let (first, second) = (set(&pg, "twin").await, set(&pg, "twin").await);
    let other = set(&pg, "another").await;
    let k = key(KeyKind::CreditY, 1);
    first
        .store()
        .hold_host_lock()
        .await
        .expect("the first takes the id");
    first
        .store()
        .hold_host_lock()
        .await
        .expect("held already: confirmed");
    other
        .store()
        .hold_host_lock()
        .await
        .expect("another id is another lock");
    match second.store().hold_host_lock().await {
        Err(PgStoreError::HostIdHeld { host_id }) => assert_eq!(host_id, "twin"),
        other => panic!("expected HostIdHeld, got {other:?}"),
    }
    let refused = second.pending_operations().await;
    assert!(
        matches!(refused, Err(PgStoreError::Unavailable(_))),
        "{refused:?}"
    );
    first
        .claim(std::slice::from_ref(&k), SpendState::Pending, "n", "op")
        .await
        .expect("the holder works");

    // The holder's lock session ends (killed on the server).
    let killed = pg
        .psql(
            "coinop",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND objid::bigint = (hashtextextended('coinopd host id twin', 0) & 4294967295)",
        )
        .expect("psql");
    assert_eq!(killed, "1");
    let start = Instant::now();
    while first.store().holds_host_lock() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the loss went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client learns of the kill from the backend's FATAL message, which the backend
    // sends before it has exited and let its advisory locks go: the server's own word
    // says when the lock is free.
    let start = Instant::now();
    while pg
        .psql(
            "coinop",
            "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND objid::bigint = (hashtextextended('coinopd host id twin', 0) & 4294967295)",
        )
        .expect("psql")
        != "0"
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the killed session's lock never went"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Free now: the second takes it before the first's next call, which would take it
    // again first; so that call is refused, as is everything the first does from now on.
    second.store().hold_host_lock().await.expect("free now");
    let refused = first.states(std::slice::from_ref(&k)).await;
    assert!(
        matches!(&refused, Err(PgStoreError::Unavailable(m)) if m.contains("another coinopd holds host id")),
        "{refused:?}"
    );
    assert!(matches!(
        first.store().hold_host_lock().await,
        Err(PgStoreError::HostIdHeld { .. })
    ));
    assert_eq!(
        second
            .states(std::slice::from_ref(&k))
            .await
            .expect("works"),
        vec![Some(SpendState::Pending)]
    );
    other.store().hold_host_lock().await.expect("untouched");
}
