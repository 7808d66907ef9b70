//! Three coinopd hosts configured with the SAME xpub, sharing one PostgreSQL (`--store`):
//! quotes made at once on all three never share an address, one on-chain payment buys one
//! lease across the fleet, a quote made on host 1 is paid and used on host 2 (with the
//! tx+proof and by quote id alone), expired indexes are reused fleet-wide, and quotes are
//! refused (503) while the store is down. Against a real throwaway PostgreSQL cluster
//! (payment_postgres::test_cluster), the embedded regtest chain of the payment crate's
//! fixtures, and bcoin (a real Bitcoin node) for the payment found by quote id.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::bcoin::{bcoin_dir, wait_for_quote, wait_for_tip, Bcoin};
use common::leases::testguest_body;
use common::{Daemon, StateDir};
use payment_postgres::test_cluster::TestCluster;
use serde_json::{json, Value};

/// This binary's jail uid ranges, one per host, clear of other test binaries (tests/fleet.rs
/// uses 4,300,000 and up).
const UID_BASE: u32 = 4_400_000;
const UIDS_PER_HOST: u32 = 16;

/// The one operator key of the fleet: a regtest tpub from a fixed seed (its private half
/// exists only here).
fn fleet_tpub() -> String {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master = bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[16u8; 32])
        .expect("a 32-byte seed");
    bitcoin::bip32::Xpub::from_priv(&secp, &master).to_string()
}

fn cluster(test: &str) -> Option<TestCluster> {
    let pg = TestCluster::start(test).expect("starting the test PostgreSQL")?;
    pg.create_database("fleet").expect("createdb fleet");
    Some(pg)
}

/// Host `n` of the fleet on `dir`, with the fleet's xpub and mint seed and `extra` flags.
async fn host(pg: &TestCluster, dir: &StateDir, n: u32, extra: &[&str]) -> Daemon {
    host_env(pg, dir, n, extra, &[]).await
}

/// [`host`] with `env` (e.g. a fault to inject).
async fn host_env(
    pg: &TestCluster,
    dir: &StateDir,
    n: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let conninfo = pg.conninfo("fleet");
    let host_id = format!("host-{n}");
    let base = (UID_BASE + n * UIDS_PER_HOST).to_string();
    let count = UIDS_PER_HOST.to_string();
    let xpub = fleet_tpub();
    // Every host of a fleet signs with the same mint keys: from one seed (the file sits
    // beside the host's state, as an operator's would).
    let seed = common::mint_seed_file(dir.path(), 0x5e, 0o600)
        .display()
        .to_string();
    let mut args = vec![
        "--mint-seed-file",
        &seed,
        "--store",
        &conninfo,
        "--host-id",
        &host_id,
        "--xpub",
        &xpub,
        "--jail-uid-base",
        &base,
        "--jail-uid-count",
        &count,
        "--jail-pool",
        "0",
        "--guest-network",
        "never",
    ];
    args.extend_from_slice(extra);
    let d = Daemon::spawn(dir.path(), &args, env).await;
    d.wait_store_ready().await;
    d
}

async fn three_hosts(pg: &TestCluster, dirs: &[StateDir; 3], extra: &[&str]) -> [Daemon; 3] {
    [
        host(pg, &dirs[0], 1, extra).await,
        host(pg, &dirs[1], 2, extra).await,
        host(pg, &dirs[2], 3, extra).await,
    ]
}

/// Pays `quote` with a transaction mined (with the confirmations the hosts need) on the
/// hosts' common regtest tip, and gives every host the headers: the chain is the same
/// everywhere, as it is for hosts following the same Bitcoin network. Returns the on-chain
/// payment with its tx and proof.
async fn pay_on_every_host(hosts: &[&Daemon], quote: &Value) -> Value {
    let (tx_hex, proof_hex) = common::pay_address_on(
        hosts,
        quote["address"].as_str().expect("address"),
        quote["amount_sat"].as_u64().expect("amount_sat"),
    )
    .await;
    json!({"onchain": {
        "quote_id": quote["quote_id"],
        "tx_hex": tx_hex,
        "proof_hex": proof_hex,
    }})
}

/// Stops the lease and waits until its guest is gone (nothing left running after the test).
async fn stop_and_wait(d: &Daemon, id: &str, token: &str) {
    d.stop_lease(id, token).await;
    common::wait_for(
        async || {
            let v = d
                .call("GET", &format!("/v1/leases/{id}"), Some(token), None)
                .await
                .json();
            v["state"] == "stopped"
        },
        "the stopped lease's guest to exit",
    )
    .await;
}

/// 3 × 50 quotes asked at once, 50 of each host: 150 distinct addresses (the same xpub on
/// every host), and each quote is readable from every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_made_at_once_on_three_hosts_with_one_xpub_have_distinct_addresses() {
    let Some(pg) =
        cluster("quotes_made_at_once_on_three_hosts_with_one_xpub_have_distinct_addresses")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let hosts = three_hosts(&pg, &dirs, &[]).await;
    // 50 requests in flight on each host at once, each on its own connection.
    let mut tasks = Vec::new();
    for h in &hosts {
        for _ in 0..50 {
            let client = coinop_cli::client::Client::new(&h.socket);
            tasks.push(tokio::spawn(async move {
                let body = br#"{"vcpus": 1, "mem_mib": 64, "seconds": 60}"#.to_vec();
                client
                    .call("POST", "/v1/quotes", None, Some(body))
                    .await
                    .expect("daemon answers")
            }));
        }
    }
    let mut replies = Vec::new();
    for t in tasks {
        let r = t.await.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text());
        replies.push(r.json());
    }
    let (a, rest) = replies.split_at(50);
    let (b, c) = rest.split_at(50);
    let all: Vec<&Value> = a.iter().chain(b).chain(c).collect();
    let addresses: HashSet<&str> = all
        .iter()
        .map(|q| q["address"].as_str().expect("address"))
        .collect();
    assert_eq!(all.len(), 150);
    assert_eq!(addresses.len(), 150, "an address was handed out twice");
    // Host 3 shows host 1's quote as host 1 issued it.
    let first = &a[0];
    let id = first["quote_id"].as_str().expect("quote_id");
    let seen = hosts[2]
        .call("GET", &format!("/v1/quotes/{id}"), None, None)
        .await;
    assert_eq!(seen.status, 200, "{}", seen.text());
    assert_eq!(seen.json()["address"], first["address"]);
    assert_eq!(seen.json()["status"], "unpaid");
}

/// One payment (tx + proof) for a quote of host 1, sent to the three hosts at once:
/// exactly one lease, the other two refused (409); the winner may be any host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_onchain_payment_sent_to_three_hosts_at_once_buys_one_lease() {
    let Some(pg) = cluster("one_onchain_payment_sent_to_three_hosts_at_once_buys_one_lease") else {
        return;
    };
    if !common::kvm_or_skip() {
        return;
    }
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let hosts = three_hosts(&pg, &dirs, &[]).await;
    let refs: Vec<&Daemon> = hosts.iter().collect();
    let quote = hosts[0].quote(1, 64, 120).await;
    let pay = pay_on_every_host(&refs, &quote).await;
    let body = testguest_body("mode=echo", pay);
    let (a, b, c) = tokio::join!(
        hosts[0].call("POST", "/v1/leases", None, Some(body.clone())),
        hosts[1].call("POST", "/v1/leases", None, Some(body.clone())),
        hosts[2].call("POST", "/v1/leases", None, Some(body.clone())),
    );
    let mut created = Vec::new();
    for (i, r) in [a, b, c].into_iter().enumerate() {
        match r.status {
            201 => created.push((i, r.json())),
            409 => assert!(r.text().contains("already"), "{}", r.text()),
            other => panic!("host {} answered {other}: {}", i + 1, r.text()),
        }
    }
    assert_eq!(created.len(), 1, "exactly one lease: {created:?}");
    let (i, lease) = &created[0];
    eprintln!("the lease went to host {}", i + 1);
    let mut token = lease["token"].as_str().expect("token").to_string();
    // Sent again to each host afterwards: refused everywhere (the winner answers with the
    // lease it made for this very request, or refuses another).
    for (j, h) in hosts.iter().enumerate() {
        let r = h.call("POST", "/v1/leases", None, Some(body.clone())).await;
        if j == *i && r.status == 201 {
            assert_eq!(
                r.json()["lease_id"],
                lease["lease_id"],
                "the same lease, not another"
            );
            token = r.json()["token"].as_str().expect("token").to_string();
        } else {
            assert_eq!(r.status, 409, "host {}: {}", j + 1, r.text());
        }
    }
    stop_and_wait(
        &hosts[*i],
        lease["lease_id"].as_str().expect("lease_id"),
        &token,
    )
    .await;
}

/// A quote made on host 1, paid, and used on host 2 with the tx and its proof: host 2 makes
/// the lease; the same payment is then refused on host 1 and host 3. A NUT-30 quote of
/// host 1 never pays a lease on host 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_from_host_1_is_paid_and_used_on_host_2_with_its_proof() {
    let Some(pg) = cluster("a_quote_from_host_1_is_paid_and_used_on_host_2_with_its_proof") else {
        return;
    };
    if !common::kvm_or_skip() {
        return;
    }
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let hosts = three_hosts(&pg, &dirs, &[]).await;
    let refs: Vec<&Daemon> = hosts.iter().collect();
    let quote = hosts[0].quote(1, 64, 120).await;
    let pay = pay_on_every_host(&refs, &quote).await;
    let body = testguest_body("mode=echo", pay);
    let lease = hosts[1].create_lease(body.clone()).await;
    for h in [&hosts[0], &hosts[2]] {
        let r = h.call("POST", "/v1/leases", None, Some(body.clone())).await;
        assert_eq!(r.status, 409, "{}", r.text());
    }
    stop_and_wait(&hosts[1], &lease.id, &lease.token).await;

    // A NUT-30 quote (locked to a key) made on host 1 and paid: host 2 knows it is one and
    // does not take its payment for a lease, although its own ledger has no such quote.
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let key = bitcoin::secp256k1::SecretKey::new(&mut bitcoin::secp256k1::rand::thread_rng());
    let r = hosts[0]
        .call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"unit": "sat", "pubkey": key.public_key(&secp).to_string()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let nut30 = r.json();
    let as_quote = json!({
        "quote_id": nut30["quote"],
        "address": nut30["request"],
        "amount_sat": 50_000,
    });
    let pay = pay_on_every_host(&refs, &as_quote).await;
    let r = hosts[1]
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(testguest_body("mode=echo", pay)),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("quote_key_locked"), "{}", r.text());
}

/// Quotes that expired unpaid give their indexes back to the whole fleet (lowest first),
/// and the open-quote bound counts every host's quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_quote_addresses_are_reused_across_the_fleet() {
    let Some(pg) = cluster("expired_quote_addresses_are_reused_across_the_fleet") else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let flags = [
        // Long enough that the first quotes are still open when the third is asked (on a
        // loaded machine), short enough to wait for.
        "--quote-ttl-s",
        "4",
        "--quote-reuse-after-s",
        "0",
        "--max-open-quotes",
        "2",
    ];
    let hosts = three_hosts(&pg, &dirs, &flags).await;
    let q1 = hosts[0].quote(1, 64, 60).await;
    let q2 = hosts[1].quote(1, 64, 60).await;
    assert_ne!(q1["address"], q2["address"]);
    // Two unpaid quotes hold an index in the fleet: host 3 may not open a third.
    let body = json!({"vcpus": 1, "mem_mib": 64, "seconds": 60});
    let r = hosts[2]
        .call("POST", "/v1/quotes", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("no_free_quote_address"), "{}", r.text());
    // Both expire (4 s): host 3 gets host 1's address back, then host 2's.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    let r1 = hosts[2].quote(1, 64, 60).await;
    let r2 = hosts[0].quote(1, 64, 60).await;
    let reused: HashSet<&Value> = [&r1["address"], &r2["address"]].into_iter().collect();
    let before: HashSet<&Value> = [&q1["address"], &q2["address"]].into_iter().collect();
    assert_eq!(reused, before, "the expired addresses, and no new one");
    let old = hosts[1]
        .call(
            "GET",
            &format!("/v1/quotes/{}", q1["quote_id"].as_str().expect("id")),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(old["status"], "expired", "{old}");
}

/// PostgreSQL stopped: quotes are refused with 503 `store_unavailable` (never made from a
/// host's own book); started again: quotes are made, without restarting coinopd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_wait_for_the_store_and_resume_by_themselves() {
    let Some(pg) = cluster("quotes_wait_for_the_store_and_resume_by_themselves") else {
        return;
    };
    let dir = StateDir::new();
    let h1 = host(&pg, &dir, 1, &[]).await;
    let before = h1.quote(1, 64, 60).await;
    pg.stop().expect("stopping PostgreSQL");
    let body = json!({"vcpus": 1, "mem_mib": 64, "seconds": 60});
    let r = h1
        .call("POST", "/v1/quotes", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("store_unavailable"), "{}", r.text());
    let id = before["quote_id"].as_str().expect("id");
    let r = h1
        .call("GET", &format!("/v1/quotes/{id}"), None, None)
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    pg.start_again().expect("starting PostgreSQL again");
    let after = h1.quote(1, 64, 60).await;
    assert_ne!(after["address"], before["address"]);
}

/// A quote made on host 1 is paid from bcoin's wallet; host 1 (following bcoin) sees the
/// payment in the block and records it in the store; host 2, which fetches no blocks (its
/// headers come from the operator), creates the lease by quote id alone. The payment is
/// then refused on host 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_paid_from_any_wallet_is_used_by_id_on_another_host() {
    let Some(pg) = cluster("a_quote_paid_from_any_wallet_is_used_by_id_on_another_host") else {
        return;
    };
    let Some(bcoin) = bcoin_dir() else { return };
    if !common::kvm_or_skip() {
        return;
    }
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let dirs = [StateDir::new(), StateDir::new()];
    let peer = node.p2p_addr();
    let h1 = host(
        &pg,
        &dirs[0],
        1,
        &["--network", "regtest", "--bitcoin-peer", &peer],
    )
    .await;
    let h2 = host(&pg, &dirs[1], 2, &["--network", "regtest"]).await;
    wait_for_tip(&h1, &node.best_hash().await, Duration::from_secs(60)).await;
    // An hour: well above the dust limit bcoin's wallet keeps to (regtest quotes have no floor).
    let q = h1.quote(1, 64, 3600).await;
    let qid = q["quote_id"].as_str().expect("quote_id").to_string();
    node.wallet_pays(
        q["address"].as_str().expect("address"),
        q["amount_sat"].as_u64().expect("amount"),
    )
    .await;
    let paying = node.rpc("generatetoaddress", json!([1, funds])).await[0]
        .as_str()
        .expect("hash")
        .to_string();
    wait_for_tip(&h1, &paying, Duration::from_secs(60)).await;
    wait_for_quote(&h1, &qid, "seen").await;
    // Host 2 gets the same headers from its operator, and no block.
    common::operator_posts_headers(&h2, &node.best_chain_headers().await).await;
    wait_for_tip(&h2, &paying, Duration::from_secs(10)).await;
    let v = common::bcoin::quote_view(&h2, &qid).await;
    assert_eq!(
        v["status"], "seen",
        "host 2 knows of host 1's sighting: {v}"
    );
    let by_id = json!({"onchain": {"quote_id": qid}});
    let lease = h2
        .create_lease(testguest_body("mode=echo", by_id.clone()))
        .await;
    let r = h1
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(testguest_body("mode=echo", by_id)),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    stop_and_wait(&h2, &lease.id, &lease.token).await;
}

/// A host that ran alone joins the fleet: the fleet's addresses start above those its own
/// book handed out, and its quotes from before stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_joining_the_fleet_keeps_its_own_addresses_out_of_the_fleets() {
    let Some(pg) = cluster("a_host_joining_the_fleet_keeps_its_own_addresses_out_of_the_fleets")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let xpub = fleet_tpub();
    let alone = Daemon::spawn(dirs[0].path(), &["--xpub", &xpub, "--jail-pool", "0"], &[]).await;
    let before: Vec<Value> = [alone.quote(1, 64, 60).await, alone.quote(1, 64, 60).await].into();
    alone.shutdown().await;
    // A new host and host 1 (with its own book) share the store: from host 1's first fleet
    // quote on, every fleet quote of either host is above host 1's old indexes.
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    let mut fleet_addresses = HashSet::new();
    for h in [&h1, &h2, &h1] {
        let q = h.quote(1, 64, 60).await;
        fleet_addresses.insert(q["address"].as_str().expect("address").to_string());
    }
    for q in &before {
        let address = q["address"].as_str().expect("address");
        assert!(
            !fleet_addresses.contains(address),
            "{address} was host 1's before it joined"
        );
        let id = q["quote_id"].as_str().expect("quote_id");
        let v = h1
            .call("GET", &format!("/v1/quotes/{id}"), None, None)
            .await;
        assert_eq!(v.status, 200, "{}", v.text());
        assert_eq!(v.json()["address"], q["address"]);
    }
    assert_eq!(fleet_addresses.len(), 3);
}

/// Host 2 killed between fencing the payment of host 1's quote and committing the lease:
/// until host 2 is back the payment is held (host 3 refuses it); once host 2 has settled
/// its fence at start-up, the same request makes the lease on host 3, and only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_using_another_hosts_quote_loses_and_doubles_nothing() {
    let Some(pg) = cluster("a_crash_while_using_another_hosts_quote_loses_and_doubles_nothing")
    else {
        return;
    };
    if !common::kvm_or_skip() {
        return;
    }
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let h1 = host(&pg, &dirs[0], 1, &[]).await;
    let h2 = host_env(&pg, &dirs[1], 2, &[], &[("COINOPD_FAULT", "fleet_fenced")]).await;
    let h3 = host(&pg, &dirs[2], 3, &[]).await;
    let quote = h1.quote(1, 64, 120).await;
    let pay = pay_on_every_host(&[&h1, &h2, &h3], &quote).await;
    let body = testguest_body("mode=echo", pay);
    h2.create_into_crash(&body).await;
    let r = h3
        .call("POST", "/v1/leases", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, 409, "host 2's fence holds: {}", r.text());
    let h2 = host(&pg, &dirs[1], 2, &[]).await;
    let leases = h2.call("GET", "/v1/leases", None, None).await.json();
    assert_eq!(
        leases["leases"].as_array().map_or(0, Vec::len),
        0,
        "no lease was committed on host 2: {leases}"
    );
    let lease = h3.create_lease(body.clone()).await;
    for h in [&h1, &h2] {
        let r = h.call("POST", "/v1/leases", None, Some(body.clone())).await;
        assert_eq!(r.status, 409, "{}", r.text());
    }
    stop_and_wait(&h3, &lease.id, &lease.token).await;
}

/// A NUT-30 mint body for `quote`: `outputs` signed with `key` (NUT-20).
fn nut30_mint_body(
    quote: &str,
    outputs: Vec<payment::credit::nut_types::BlindedMessage>,
    key: &bitcoin::secp256k1::Keypair,
) -> Value {
    use bitcoin::secp256k1::{Message, Secp256k1};
    use payment::credit::mint_quote_signature::mint_message_digest;
    let digest = mint_message_digest(quote, &outputs).expect("hex outputs");
    let sig = Secp256k1::new().sign_schnorr_no_aux_rand(&Message::from_digest(digest), key);
    json!({"quote": quote, "outputs": outputs, "signature": hex::encode(sig.as_ref())})
}

fn nut30_state(r: &coinop_cli::client::Reply) -> (u64, u64) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    (
        v["amount_paid"].as_u64().expect("amount_paid"),
        v["amount_issued"].as_u64().expect("amount_issued"),
    )
}

/// A NUT-30 quote made on host 1 is answered by every host, paid on host 2 (the same proof
/// again on host 3 credits nothing more), and minted on host 3; the same mint sent to
/// hosts 2 and 3 at once is issued once (both answers are its signatures, or one is a
/// NUT-00 refusal), NUT-09 restore on host 1 finds the signatures, more than was paid is
/// refused on any host, and the notes swap on host 2. With PostgreSQL stopped every
/// NUT-30 route is 503 (the store unavailable); started again, they answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nut30_quote_made_on_host_1_is_paid_on_host_2_and_minted_on_host_3() {
    use payment::credit::nut_types::{BlindSignature, BlindedMessage};
    let Some(pg) = cluster("a_nut30_quote_made_on_host_1_is_paid_on_host_2_and_minted_on_host_3")
    else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new(), StateDir::new()];
    let hosts = three_hosts(&pg, &dirs, &[]).await;
    let refs: Vec<&Daemon> = hosts.iter().collect();
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let key = bitcoin::secp256k1::Keypair::new(&secp, &mut bitcoin::secp256k1::rand::thread_rng());

    let r = hosts[0]
        .call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"unit": "sat", "pubkey": key.public_key().to_string()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let made = r.json();
    let quote = made["quote"].as_str().expect("quote").to_string();
    let state_path = format!("/v1/mint/quote/onchain/{quote}");
    for h in &hosts {
        let r = h.call("GET", &state_path, None, None).await;
        assert_eq!(nut30_state(&r), (0, 0));
        assert_eq!(
            r.json()["request"],
            made["request"],
            "one quote, one address"
        );
        assert_eq!(r.json()["pubkey"], made["pubkey"]);
    }

    let as_quote = json!({"quote_id": quote, "address": made["request"], "amount_sat": 600});
    let pay = pay_on_every_host(&refs, &as_quote).await;
    let proof =
        json!({"tx_hex": pay["onchain"]["tx_hex"], "proof_hex": pay["onchain"]["proof_hex"]});
    let payment_path = format!("/v1/mint/quote/onchain/{quote}/payment");
    let r = hosts[1]
        .call("POST", &payment_path, None, Some(proof.clone()))
        .await;
    assert_eq!(nut30_state(&r), (600, 0));
    // The same proof on another host (a retry): credited once.
    let r = hosts[2]
        .call("POST", &payment_path, None, Some(proof.clone()))
        .await;
    assert_eq!(nut30_state(&r), (600, 0));
    assert_eq!(
        nut30_state(&hosts[0].call("GET", &state_path, None, None).await),
        (600, 0)
    );
    // The same mint sent to hosts 2 and 3 at once: issued once.
    let wallet = common::Wallet::new(&hosts[2]).await;
    let blanks = wallet.outputs(&[256, 32]);
    let msgs: Vec<BlindedMessage> = blanks.iter().map(|b| b.msg.clone()).collect();
    let body = nut30_mint_body(&quote, msgs.clone(), &key);
    let (a, b) = tokio::join!(
        hosts[1].call("POST", "/v1/mint/onchain", None, Some(body.clone())),
        hosts[2].call("POST", "/v1/mint/onchain", None, Some(body.clone())),
    );
    let mut answers: Vec<Vec<BlindSignature>> = Vec::new();
    for r in [&a, &b] {
        if r.status == 200 {
            answers.push(serde_json::from_value(r.json()["signatures"].clone()).expect("sigs"));
        } else {
            assert_eq!(r.status, 400, "a NUT-00 refusal: {}", r.text());
            assert!(r.json()["code"].as_u64().is_some(), "{}", r.text());
        }
    }
    assert!(
        !answers.is_empty(),
        "one of them minted: {} / {}",
        a.text(),
        b.text()
    );
    assert!(
        answers.iter().all(|s| *s == answers[0]),
        "the same signatures"
    );
    let signed = answers[0].clone();
    assert_eq!(
        nut30_state(&hosts[0].call("GET", &state_path, None, None).await),
        (600, 288),
        "issued once"
    );
    // Sent again to host 1 (a lost reply): the same signatures, nothing more issued.
    let r = hosts[0]
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let again: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("sigs");
    assert_eq!(again, signed);
    // NUT-09 restore on host 1 finds them.
    let r = hosts[0]
        .call("POST", "/v1/restore", None, Some(json!({"outputs": msgs})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let restored: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("sigs");
    assert_eq!(restored, signed);

    // More than is left (312), on host 1: refused, nothing issued.
    let too_much = wallet.outputs(&[256, 64]);
    let r = hosts[0]
        .call(
            "POST",
            "/v1/mint/onchain",
            None,
            Some(nut30_mint_body(
                &quote,
                too_much.iter().map(|b| b.msg.clone()).collect(),
                &key,
            )),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // The rest, on host 1: minted, and the quote is fully issued.
    let rest = wallet.outputs(&[256, 32, 16, 8]);
    let r = hosts[0]
        .call(
            "POST",
            "/v1/mint/onchain",
            None,
            Some(nut30_mint_body(
                &quote,
                rest.iter().map(|b| b.msg.clone()).collect(),
                &key,
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rest_signed: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("sigs");
    assert_eq!(
        nut30_state(&hosts[1].call("GET", &state_path, None, None).await),
        (600, 600)
    );
    // The notes are the fleet's: they swap on host 2.
    let mut notes = wallet.unblind(&blanks, &signed);
    notes.extend(wallet.unblind(&rest, &rest_signed));
    let fresh = wallet.outputs(&payment::credit::amount::split(600));
    let fresh_msgs: Vec<&BlindedMessage> = fresh.iter().map(|b| &b.msg).collect();
    let r = hosts[1]
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": notes, "outputs": fresh_msgs})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The store down: every NUT-30 route is 503, never answered from local state.
    pg.stop().expect("stopping PostgreSQL");
    let late = wallet.outputs(&[1]);
    let refused = [
        hosts[1].call("GET", &state_path, None, None).await,
        hosts[1]
            .call("POST", &payment_path, None, Some(proof.clone()))
            .await,
        hosts[2]
            .call(
                "POST",
                "/v1/mint/onchain",
                None,
                Some(nut30_mint_body(
                    &quote,
                    late.iter().map(|b| b.msg.clone()).collect(),
                    &key,
                )),
            )
            .await,
        hosts[0]
            .call(
                "POST",
                "/v1/mint/quote/onchain",
                None,
                Some(json!({"unit": "sat", "pubkey": key.public_key().to_string()})),
            )
            .await,
    ];
    for r in &refused {
        // NUT-00's body on the Cashu routes: the reason in `detail`.
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            r.text().contains("fleet store is unavailable"),
            "{}",
            r.text()
        );
    }
    pg.start_again().expect("starting PostgreSQL again");
    common::wait_for(
        async || hosts[1].call("GET", &state_path, None, None).await.status == 200,
        "the quote answered again",
    )
    .await;
    assert_eq!(
        nut30_state(&hosts[1].call("GET", &state_path, None, None).await),
        (600, 600)
    );
}

/// A quote id no book issues (a NUL, which PostgreSQL refuses in text, upper case, other
/// characters) gets on a fleet host exactly what a single host answers for it (a 4xx in
/// the route's error shape, 404 for an unknown quote), never a 500 with an error logged:
/// on the NUT-30 routes (path and body), the legacy mint and a lease's create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_quote_ids_get_a_single_hosts_answer_on_a_fleet_host() {
    let Some(pg) = cluster("impossible_quote_ids_get_a_single_hosts_answer_on_a_fleet_host") else {
        return;
    };
    let dirs = [StateDir::new(), StateDir::new()];
    let fleet = host(&pg, &dirs[0], 1, &[]).await;
    let xpub = fleet_tpub();
    let (base, count) = (
        (UID_BASE + 2 * UIDS_PER_HOST).to_string(),
        UIDS_PER_HOST.to_string(),
    );
    let single = Daemon::spawn(
        dirs[1].path(),
        &[
            "--xpub",
            &xpub,
            "--jail-uid-base",
            &base,
            "--jail-uid-count",
            &count,
            "--jail-pool",
            "0",
            "--guest-network",
            "never",
        ],
        &[],
    )
    .await;
    let payment = |id: &str| json!({"quote_id": id, "tx_hex": "00", "proof_hex": "00"});
    for (id, in_path) in [
        ("\u{0}", "%00"),
        ("00112233\u{0}", "00112233%00"),
        (
            "00112233445566778899AABBCCDDEEFF",
            "00112233445566778899AABBCCDDEEFF",
        ),
        ("no-such-quote", "no-such-quote"),
    ] {
        let requests: Vec<(&str, String, Option<Value>)> = vec![
            ("GET", format!("/v1/mint/quote/onchain/{in_path}"), None),
            (
                "POST",
                format!("/v1/mint/quote/onchain/{in_path}/payment"),
                Some(json!({"tx_hex": "00", "proof_hex": "00"})),
            ),
            (
                "POST",
                "/v1/mint/onchain".into(),
                Some(json!({"quote": id, "outputs": [], "signature": "00"})),
            ),
            (
                "POST",
                "/v1/mint/onchain".into(),
                Some(json!({"payment": payment(id), "outputs": []})),
            ),
            (
                "POST",
                "/v1/leases".into(),
                Some(testguest_body("", json!({"onchain": payment(id)}))),
            ),
        ];
        for (method, path, body) in requests {
            let on_fleet = fleet.call(method, &path, None, body.clone()).await;
            let alone = single.call(method, &path, None, body.clone()).await;
            let what = format!("{method} {path} {body:?}");
            assert!(
                (400..500).contains(&on_fleet.status),
                "{what}: {} {}",
                on_fleet.status,
                on_fleet.text()
            );
            assert_eq!(
                on_fleet.status,
                alone.status,
                "{what}: fleet {} / single host {}",
                on_fleet.text(),
                alone.text()
            );
            // The same error shape (NUT-00's `detail`/`code`, or coinop's `error`).
            let keys = |r: &coinop_cli::client::Reply| -> Vec<String> {
                let mut k: Vec<String> = r
                    .json()
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                k.sort();
                k
            };
            assert_eq!(keys(&on_fleet), keys(&alone), "{what}: {}", on_fleet.text());
            assert_eq!(on_fleet.json()["code"], alone.json()["code"], "{what}");
        }
    }
    let log = fleet.log();
    assert!(
        !log.contains("fleet store error") && !log.contains("fleet mint error"),
        "an impossible quote id reached the store: {log}"
    );
    fleet.shutdown().await;
    single.shutdown().await;
}
