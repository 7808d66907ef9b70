//! Fleet NUT-30 quotes against a real PostgreSQL (a throwaway cluster per test): three
//! "hosts" (stores with their own ids and pools) credit a payment once and, racing, never
//! issue more than was paid nor the same mint twice.

use std::sync::Arc;
use std::time::Duration;

use payment::onchain::{AddressDeriver, AddressKind, ChainNetwork};
use payment::spent_set::{KeyKind, SignedOutput, SpendKey, SpendState};
use payment_postgres::test_cluster::TestCluster;
use payment_postgres::{
    FleetIndexPolicy, Nut30Issue, PgNut30Quotes, PgQuoteBook, PgSignedOutputs, PgStore,
    PgStoreError, PgStoreOptions, QuotePurpose,
};

fn tpub() -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[30u8; 32])
        .expect("32-byte seed");
    bitcoin::bip32::Xpub::from_priv(&secp, &master).to_string()
}

async fn store(pg: &TestCluster, host: &str) -> PgStore {
    let mut o = PgStoreOptions::new(pg.conninfo("coinop"), host);
    o.pool_size = 8;
    o.connect_timeout = Duration::from_secs(1);
    o.statement_timeout = Duration::from_secs(5);
    o.operation_timeout = Duration::from_secs(10);
    PgStore::connect(&o).await.expect("connecting")
}

fn outpoint(n: u8) -> SpendKey {
    SpendKey {
        kind: KeyKind::Outpoint,
        bytes: vec![n; 36],
    }
}

/// A signature record for a made-up `B_` number `n` (the store checks sizes, not points).
fn output(n: u32, amount: u64) -> SignedOutput {
    let mut b_ = vec![2u8; 33];
    b_[1..5].copy_from_slice(&n.to_be_bytes());
    SignedOutput {
        b_,
        keyset_id: "00fleet".into(),
        amount,
        c_: vec![3; 33],
        dleq: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_is_credited_once_and_never_issues_more_than_was_paid() {
    let Some(pg) = TestCluster::start("nut30_credited_once").expect("test PostgreSQL") else {
        return;
    };
    pg.create_database("coinop").expect("createdb coinop");
    let stores = [
        store(&pg, "h1").await,
        store(&pg, "h2").await,
        store(&pg, "h3").await,
    ];
    let deriver = AddressDeriver::new(&tpub(), AddressKind::P2wpkh, ChainNetwork::Regtest)
        .expect("a regtest tpub");
    let policy = FleetIndexPolicy {
        reuse_after_us: 3_600_000_000,
        max_open: 100,
    };
    let book = PgQuoteBook::new(stores[0].clone(), deriver, policy);
    let q = book
        .create_at_tip(0, 1_000, 60_000_000, 5, QuotePurpose::Nut30, 0)
        .await
        .expect("quote");
    let quotes: Vec<Arc<PgNut30Quotes>> = stores
        .iter()
        .map(|s| Arc::new(PgNut30Quotes::new(s.clone())))
        .collect();
    quotes[0].open(&q.quote_id, "02aa").await.expect("open");
    let read = quotes[2]
        .get(&q.quote_id)
        .await
        .expect("get")
        .expect("quote");
    assert_eq!(
        (read.pubkey.as_str(), read.address.as_str()),
        ("02aa", q.address.as_str())
    );
    assert!(quotes[1].get("nope").await.expect("get").is_none());

    // One payment proved on three hosts at once: credited once.
    let keys = vec![outpoint(1), outpoint(2)];
    let mut tasks = Vec::new();
    for nq in &quotes {
        let (nq, keys, id) = (Arc::clone(nq), keys.clone(), q.quote_id.clone());
        tasks.push(tokio::spawn(async move {
            nq.credit_payment(&id, &keys, 100, &[7; 32], "nut30 test")
                .await
        }));
    }
    for t in tasks {
        let q = t.await.expect("task").expect("credit").expect("quote");
        assert_eq!(q.amount_paid_sat, 100);
    }
    // Its outpoints for another payment (another receipt): spent.
    assert!(matches!(
        quotes[1]
            .credit_payment(&q.quote_id, &keys[..1], 50, &[8; 32], "nut30 test")
            .await,
        Err(PgStoreError::AlreadyClaimed {
            state: SpendState::Spent,
            ..
        })
    ));
    assert!(quotes[1]
        .credit_payment("nope", &[outpoint(9)], 5, &[9; 32], "nut30 test")
        .await
        .expect("store")
        .is_none());

    // 30 mints of 10 sat at once, spread over the hosts: exactly 10 are issued.
    let mut tasks = Vec::new();
    for i in 0..30u32 {
        let (nq, id) = (Arc::clone(&quotes[i as usize % 3]), q.quote_id.clone());
        tasks.push(tokio::spawn(async move {
            nq.issue(
                &id,
                &format!("op{i}"),
                10,
                &[output(i, 8), output(1000 + i, 2)],
            )
            .await
        }));
    }
    let mut issued = 0;
    for t in tasks {
        match t.await.expect("task").expect("issue") {
            Nut30Issue::Issued => issued += 1,
            Nut30Issue::NotPaid { asked: 10, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(issued, 10);
    let read = quotes[0]
        .get(&q.quote_id)
        .await
        .expect("get")
        .expect("quote");
    assert_eq!((read.amount_paid_sat, read.amount_issued_sat), (100, 100));

    // The same mint sent to two hosts at once, once more paid: issued once, the other is
    // told it was; its signatures are delivered under its operation for both.
    quotes[2]
        .credit_payment(&q.quote_id, &[outpoint(3)], 40, &[10; 32], "nut30 test")
        .await
        .expect("credit");
    let same = [output(500, 32), output(501, 8)];
    let (a, b) = tokio::join!(
        quotes[0].issue(&q.quote_id, "same", 40, &same),
        quotes[1].issue(&q.quote_id, "same", 40, &same),
    );
    let mut outcomes = [a.expect("issue"), b.expect("issue")];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [Nut30Issue::Issued, Nut30Issue::Repeat]);
    let b_s: Vec<Vec<u8>> = same.iter().map(|o| o.b_.clone()).collect();
    let delivered = PgSignedOutputs::new(stores[2].clone())
        .delivered_for_operation(&b_s, "same")
        .await
        .expect("lookup")
        .expect("delivered");
    assert_eq!(delivered, same.to_vec());
    // Outputs signed before, for another mint: 11003, nothing issued.
    quotes[2]
        .credit_payment(&q.quote_id, &[outpoint(4)], 8, &[11; 32], "nut30 test")
        .await
        .expect("credit");
    assert!(matches!(
        quotes[2].issue(&q.quote_id, "other", 8, &same[1..]).await,
        Err(PgStoreError::OutputAlreadySigned { .. })
    ));
    let read = quotes[1]
        .get(&q.quote_id)
        .await
        .expect("get")
        .expect("quote");
    assert_eq!((read.amount_paid_sat, read.amount_issued_sat), (148, 140));
}

/// A quote id no book issues is no quote, answered without a round trip (a NUL would be
/// refused by the server as text); a value the server refuses anyway (a NUL in a pubkey)
/// is `InvalidInput`, the request's fault, not a database failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_quote_ids_are_unknown_unasked_and_refused_values_are_invalid_input() {
    let Some(pg) = TestCluster::start("nut30_impossible_ids").expect("test PostgreSQL") else {
        return;
    };
    pg.create_database("coinop").expect("createdb coinop");
    let store = store(&pg, "h1").await;
    let nut30 = PgNut30Quotes::new(store.clone());
    let before = store.metrics();
    for id in ["\0", "00ff\0", "00FF", "", &"0".repeat(65)] {
        assert!(nut30.get(id).await.expect("no error").is_none(), "{id:?}");
        assert_eq!(
            nut30
                .issue(id, "op", 1, &[output(1, 1)])
                .await
                .expect("no error"),
            Nut30Issue::UnknownQuote,
            "{id:?}"
        );
        let credited = nut30
            .credit_payment(id, &[outpoint(1)], 1, &[0; 32], "n")
            .await
            .expect("no error");
        assert!(credited.is_none(), "{id:?}");
    }
    assert_eq!(
        store.metrics(),
        before,
        "an impossible id reached the server"
    );

    match nut30.open("00112233445566778899aabbccddeeff", "02\0").await {
        Err(PgStoreError::InvalidInput(e)) => {
            assert_eq!(e.code().map(|c| &c.code()[..2]), Some("22"), "{e}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}
