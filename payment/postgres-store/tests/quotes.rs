//! The fleet quote book against a real PostgreSQL (a throwaway cluster per test): several
//! "hosts" (stores with their own host ids and pools) sharing one xpub never hand one
//! index to two live quotes, reuse expired unpaid indexes and count open quotes fleet-wide.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::Hash;
use payment::onchain::{AddressDeriver, AddressKind, ChainNetwork, QuoteError};
use payment_postgres::test_cluster::TestCluster;
use payment_postgres::{
    FleetIndexPolicy, PgQuoteBook, PgQuoteError, PgStore, PgStoreOptions, QuotePurpose, SeenPayment,
};

/// A test network xpub from a fixed seed (the private half exists only in this test).
fn tpub() -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[9u8; 32])
        .expect("32-byte seed");
    bitcoin::bip32::Xpub::from_priv(&secp, &master).to_string()
}

fn cluster(test: &str) -> Option<TestCluster> {
    let cluster = TestCluster::start(test).expect("starting the test PostgreSQL")?;
    cluster.create_database("coinop").expect("createdb coinop");
    Some(cluster)
}

async fn book(pg: &TestCluster, host: &str, policy: FleetIndexPolicy) -> PgQuoteBook {
    let mut o = PgStoreOptions::new(pg.conninfo("coinop"), host);
    o.pool_size = 8;
    o.connect_timeout = Duration::from_secs(1);
    o.statement_timeout = Duration::from_secs(5);
    o.operation_timeout = Duration::from_secs(10);
    let store = PgStore::connect(&o).await.expect("connecting");
    let deriver = AddressDeriver::new(&tpub(), AddressKind::P2wpkh, ChainNetwork::Regtest)
        .expect("a regtest tpub");
    PgQuoteBook::new(store, deriver, policy)
}

const OPEN: FleetIndexPolicy = FleetIndexPolicy {
    reuse_after_us: 3_600_000_000,
    max_open: 10_000,
};

/// Three hosts issue 50 quotes each, all at once: 150 distinct indexes and addresses,
/// 0..150 with none skipped, each readable from every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_issued_at_once_on_three_hosts_never_share_an_address() {
    let Some(pg) = cluster("quotes_issued_at_once_on_three_hosts_never_share_an_address") else {
        return;
    };
    let books = [
        Arc::new(book(&pg, "h1", OPEN).await),
        Arc::new(book(&pg, "h2", OPEN).await),
        Arc::new(book(&pg, "h3", OPEN).await),
    ];
    let mut tasks = Vec::new();
    for b in &books {
        for _ in 0..50 {
            let b = Arc::clone(b);
            tasks.push(tokio::spawn(async move {
                b.create_at_tip(10_000_000, 1_000, 60_000_000, 5, QuotePurpose::Lease, 0)
                    .await
            }));
        }
    }
    let mut quotes = Vec::new();
    for t in tasks {
        quotes.push(t.await.expect("task").expect("quote"));
    }
    let indexes: HashSet<u32> = quotes.iter().map(|q| q.derivation_index).collect();
    let addresses: HashSet<&str> = quotes.iter().map(|q| q.address.as_str()).collect();
    assert_eq!(indexes.len(), 150);
    assert_eq!(addresses.len(), 150);
    assert_eq!(indexes, (0..150).collect::<HashSet<u32>>());
    assert_eq!(books[0].next_index().await.unwrap(), 150);
    assert_eq!(books[2].open_unpaid().await.unwrap(), 150);
    // A quote made on host 1 is the same quote on host 3.
    let q = &quotes[0];
    let got = books[2].get(&q.quote_id).await.unwrap().expect("found");
    assert_eq!(&got.quote, q);
    assert_eq!(
        (got.purpose, got.paid, got.host_id.as_str()),
        (QuotePurpose::Lease, false, "h1")
    );
    assert!(books[1].get("nope").await.unwrap().is_none());
}

/// An index that expired unpaid on host 1 is taken over by host 2 (lowest first), a paid
/// one never; the open-quote bound counts every host's quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_indexes_are_reused_and_open_quotes_are_bounded_fleet_wide() {
    let Some(pg) = cluster("expired_indexes_are_reused_and_open_quotes_are_bounded_fleet_wide")
    else {
        return;
    };
    let policy = FleetIndexPolicy {
        reuse_after_us: 10,
        max_open: 3,
    };
    let h1 = book(&pg, "h1", policy).await;
    let h2 = book(&pg, "h2", policy).await;
    let a = h1
        .create_at_tip(1_000_000, 100, 50, 7, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    let b = h2
        .create_at_tip(1_000_000, 100, 50, 7, QuotePurpose::Nut30, 0)
        .await
        .unwrap();
    let c = h1
        .create_at_tip(1_000_000, 100, 50, 7, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    assert_eq!(
        [a.derivation_index, b.derivation_index, c.derivation_index],
        [0, 1, 2]
    );
    // Three open across the fleet: host 2 is refused too; the first frees at 100+50+10.
    match h2
        .create_at_tip(1_000_000, 120, 50, 7, QuotePurpose::Lease, 0)
        .await
    {
        Err(PgQuoteError::Quote(QuoteError::NoFreeIndex {
            open: 3,
            retry_after_s: 1,
        })) => {}
        other => panic!("{other:?}"),
    }
    // Host 2 learns of a payment to a; host 1's expired b... c are reused, lowest first.
    h2.mark_paid(&a.quote_id).await.unwrap();
    h2.mark_paid(&a.quote_id).await.unwrap();
    let r = h2
        .create_at_tip(1_000_000, 160, 50, 9, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    assert_eq!((r.derivation_index, r.paid_above_height), (1, Some(9)));
    assert_eq!(r.address, b.address);
    let old = h1.get(&b.quote_id).await.unwrap().unwrap();
    assert_eq!(old.quote.retired_at_height, Some(9));
    assert_eq!(old.purpose, QuotePurpose::Nut30);
    let r2 = h1
        .create_at_tip(1_000_000, 160, 50, 9, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    assert_eq!(r2.derivation_index, 2);
    // Nothing reusable: one new index, then the cap again.
    let n = h2
        .create_at_tip(1_000_000, 160, 50, 9, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    assert_eq!(n.derivation_index, 3);
    assert!(h1
        .create_at_tip(1_000_000, 160, 50, 9, QuotePurpose::Lease, 0)
        .await
        .is_err());
    assert_eq!(h1.open_unpaid().await.unwrap(), 3);
    // Retired quotes are not watched; the live ones are.
    let watched = h1.watched_scripts(0).await.unwrap();
    assert!(!watched.values().any(|id| *id == b.quote_id));
    assert_eq!(watched.get(&r.script_pubkey), Some(&r.quote_id));
    // Derived − paid never exceeds the cap under load from two hosts.
    for t in 0..60u64 {
        let now = 160 + t * 7;
        let h = if t % 2 == 0 { &h1 } else { &h2 };
        let _ = h
            .create_at_tip(1_000, now, 50, 10 + t as u32, QuotePurpose::Lease, 0)
            .await;
        assert!(h1.next_index().await.unwrap() - 1 <= policy.max_open);
    }
}

/// Indexes a host used in its own book before joining are skipped; outputs one host saw
/// are read by another, once each however often they are recorded, and mark the quote paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_hosts_indexes_are_skipped_and_seen_payments_are_shared() {
    let Some(pg) = cluster("a_joining_hosts_indexes_are_skipped_and_seen_payments_are_shared")
    else {
        return;
    };
    let h1 = book(&pg, "h1", OPEN).await;
    let h2 = book(&pg, "h2", OPEN).await;
    let q = h1
        .create_at_tip(5_000_000, 0, 60_000_000, 1, QuotePurpose::Lease, 40)
        .await
        .unwrap();
    assert_eq!(q.derivation_index, 40);
    let q2 = h2
        .create_at_tip(5_000_000, 0, 60_000_000, 1, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    assert_eq!(q2.derivation_index, 41);
    let seen = SeenPayment {
        quote_id: q.quote_id.clone(),
        outpoint: bitcoin::OutPoint {
            txid: bitcoin::Txid::from_byte_array([3u8; 32]),
            vout: 1,
        },
        amount_sat: 5_000,
        block_hash: bitcoin::BlockHash::from_byte_array([4u8; 32]),
        height: 12,
        block_time: 1_700_000_000,
        coinbase: false,
    };
    assert!(h2.seen_for(&q.quote_id).await.unwrap().is_empty());
    h1.record_seen(std::slice::from_ref(&seen)).await.unwrap();
    h1.record_seen(std::slice::from_ref(&seen)).await.unwrap();
    assert_eq!(h2.seen_for(&q.quote_id).await.unwrap(), vec![seen]);
    assert!(h2.get(&q.quote_id).await.unwrap().unwrap().paid);
    assert_eq!(h2.open_unpaid().await.unwrap(), 1);
}

/// The tpub's key spelled as a SLIP-132 vpub: the same addresses.
fn vpub() -> String {
    let mut data = bitcoin::base58::decode_check(&tpub()).expect("base58");
    data[..4].copy_from_slice(&[0x04, 0x5f, 0x1c, 0xf6]);
    bitcoin::base58::encode_check(&data)
}

async fn book_of(pg: &TestCluster, host: &str, xpub: &str) -> PgQuoteBook {
    let mut o = PgStoreOptions::new(pg.conninfo("coinop"), host);
    o.connect_timeout = Duration::from_secs(1);
    let store = PgStore::connect(&o).await.expect("connecting");
    let deriver = AddressDeriver::new(xpub, AddressKind::P2wpkh, ChainNetwork::Regtest)
        .expect("a regtest key");
    PgQuoteBook::new(store, deriver, OPEN)
}

/// Hosts configured with the same key spelled differently (vpub, tpub) derive the same
/// addresses: they share one counter, and rows a store kept under the typed string (before
/// key ids) are carried over to it, never lower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_key_draws_from_one_fleet_counter() {
    let Some(pg) = cluster("every_spelling_of_a_key_draws_from_one_fleet_counter") else {
        return;
    };
    let issue = async |b: &PgQuoteBook| {
        b.create_at_tip(5_000_000, 0, 60_000_000, 1, QuotePurpose::Lease, 0)
            .await
            .unwrap()
    };
    let a = issue(&book_of(&pg, "h1", &tpub()).await).await;
    let b = issue(&book_of(&pg, "h2", &vpub()).await).await;
    assert_eq!((a.derivation_index, b.derivation_index), (0, 1));
    assert_ne!(a.address, b.address);

    // As a store from before key ids kept them: under the string each host typed.
    let (client, conn) = tokio_postgres::connect(&pg.conninfo("coinop"), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DELETE FROM coinop_quote_derivation;
             INSERT INTO coinop_quote_derivation VALUES ('{t}', 2), ('{v}', 1);
             UPDATE coinop_quotes SET xpub = '{t}';",
            t = tpub(),
            v = vpub()
        ))
        .await
        .expect("old layout");
    let h3 = book_of(&pg, "h3", &vpub()).await;
    assert_eq!(h3.next_index().await.unwrap(), 2);
    let c = issue(&h3).await;
    assert_eq!(c.derivation_index, 2);
    let d = issue(&book_of(&pg, "h4", &tpub()).await).await;
    assert_eq!(d.derivation_index, 3);
    assert_eq!(
        h3.open_unpaid().await.unwrap(),
        4,
        "the old quotes moved too"
    );
    // A host of an older coinopd still running keys its counter by the xpub as typed: it
    // would start that counter again low and hand out indexes live quotes hold. The store
    // refuses it (schema 6), so its quote fails instead of sharing an address.
    let old = client
        .query(
            "SELECT o_index FROM coinop_quote_index($1, 0, 0, 100, 1, false)",
            &[&tpub()],
        )
        .await
        .expect_err("an xpub as typed is refused");
    assert!(
        old.to_string().contains("older than the store's schema")
            || old
                .as_db_error()
                .is_some_and(|e| e.message().contains("older than the store's schema")),
        "{old:?}"
    );
    assert_eq!(h3.next_index().await.unwrap(), 4, "nothing was handed out");
}

/// PostgreSQL down: issuing fails as an outage (never as a refusal), and works again once
/// it is back, with the same books.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_an_outage_and_passes() {
    let Some(pg) = cluster("an_outage_is_an_outage_and_passes") else {
        return;
    };
    let h1 = book(&pg, "h1", OPEN).await;
    h1.create_at_tip(1, 0, 60_000_000, 1, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    pg.stop().expect("stopping PostgreSQL");
    let e = h1
        .create_at_tip(1, 0, 60_000_000, 1, QuotePurpose::Lease, 0)
        .await
        .expect_err("no database");
    assert!(e.is_unavailable(), "{e:?}");
    pg.start_again().expect("starting PostgreSQL again");
    let q = h1
        .create_at_tip(1, 0, 60_000_000, 1, QuotePurpose::Lease, 0)
        .await
        .unwrap();
    assert_eq!(q.derivation_index, 1);
}
