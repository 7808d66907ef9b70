//! coinopd's payment policy against bcoin, a real node nobody here wrote (regtest, loopback):
//! bcoin, not coinop's code, makes every transaction and block, and coinopd only sees them
//! over P2P (`--bitcoin-peer`).
//!
//! - a block reward paid straight to a quote's address is refused (`coinbase_immature`,
//!   by quote id and as tx + bcoin's `gettxoutproof`) until it has 100 confirmations;
//! - with `--quote-dust-floor true` a quote below the dust limit asks for the limit, and
//!   bcoin's wallet paying exactly that makes the lease fundable (it refuses to make the
//!   un-rounded output at all);
//! - a quote that expired before bcoin's wallet paid it still funds a lease at the quote's
//!   price, flagged `late`;
//! - a second payment to the quote that funded a lease tops that lease up by quote id, but
//!   only once it is `--min-conf` deep: before, the top-up says to wait (402), not that the
//!   quote is used up (409).

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::bcoin::{bcoin_dir, quote_view, wait_for_quote, wait_for_tip, Bcoin};
use common::leases::testguest_body;
use common::{kvm_or_skip, Daemon, StateDir};
use serde_json::{json, Value};

const SYNC: Duration = Duration::from_secs(60);

/// coinopd on regtest, following `node` over P2P, caught up with its tip.
async fn daemon_following(dir: &std::path::Path, node: &Bcoin, extra: &[&str]) -> Daemon {
    let peer = node.p2p_addr();
    let args = [
        &["--network", "regtest", "--bitcoin-peer", &peer][..],
        extra,
    ]
    .concat();
    let d = Daemon::start(dir, &args).await;
    wait_for_tip(&d, &node.best_hash().await, SYNC).await;
    d
}

/// POST /v1/leases paying with `payment`; the raw status and reply.
async fn try_create(d: &Daemon, payment: Value) -> (u16, Value) {
    let r = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(testguest_body("mode=echo", payment)),
        )
        .await;
    (r.status, r.json())
}

/// Asserts a create was refused as a coinbase with `have` confirmations.
fn assert_coinbase_immature((status, reply): (u16, Value), have: u32) {
    assert_eq!(status, 402, "{reply}");
    assert_eq!(reply["error"]["code"], "coinbase_immature", "{reply}");
    let message = reply["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("{have} confirmations")),
        "{have} confirmations: {reply}"
    );
}

/// Mines `n` blocks to a throwaway address and waits for coinopd to follow.
async fn mine(node: &Bcoin, d: &Daemon, n: u32) {
    let hashes = node.generate(n).await;
    wait_for_tip(d, hashes.last().expect("n > 0"), SYNC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_reward_paid_to_a_quote_pays_only_after_100_confirmations() {
    let Some(bcoin) = bcoin_dir() else { return };
    let dir = StateDir::new();
    let node = Bcoin::start(&bcoin, None);
    node.generate(1).await;
    let d = daemon_following(dir.path(), &node, &[]).await;

    // bcoin mines one block rewarding the first quote's address, then one the second's.
    let by_id = d.quote(1, 64, 600).await;
    let by_proof = d.quote(1, 64, 600).await;
    let mut rewards = Vec::new();
    for q in [&by_id, &by_proof] {
        let address = common::bcoin::to_bcoin_address(q["address"].as_str().expect("address"));
        let hash = node.generate_to(1, &address).await.remove(0);
        let coinbase = node.block(&hash).await.txdata.remove(0);
        assert!(coinbase.is_coinbase());
        rewards.push((hash, coinbase));
    }
    wait_for_tip(&d, &rewards[1].0, SYNC).await;
    let id_pay = json!({"onchain": {"quote_id": by_id["quote_id"]}});
    let (hash, coinbase) = &rewards[1];
    let txid = coinbase.compute_txid().to_string();
    let proof = node.rpc("gettxoutproof", json!([[txid], hash])).await;
    let proof_pay = json!({"onchain": {
        "quote_id": by_proof["quote_id"],
        "tx_hex": bitcoin::consensus::encode::serialize_hex(coinbase),
        "proof_hex": proof,
    }});
    // Seen by the host, but regtest's min_conf (1) is not enough for a block reward.
    let v = wait_for_quote(&d, by_id["quote_id"].as_str().expect("id"), "seen").await;
    assert_eq!(
        (&v["status"], &v["confirmations"]),
        (&json!("seen"), &json!(2))
    );
    assert_coinbase_immature(try_create(&d, id_pay.clone()).await, 2);
    assert_coinbase_immature(try_create(&d, proof_pay.clone()).await, 1);

    // 97 more: the first reward has 99 confirmations, one short.
    mine(&node, &d, 97).await;
    assert_coinbase_immature(try_create(&d, id_pay.clone()).await, 99);
    assert_coinbase_immature(try_create(&d, proof_pay.clone()).await, 98);
    // The 100th for the first; the second still has 99.
    mine(&node, &d, 1).await;
    assert_coinbase_immature(try_create(&d, proof_pay.clone()).await, 99);
    if !kvm_or_skip() {
        return d.shutdown().await;
    }
    // What the reward paid to the quote's own address (the coinbase also commits to the
    // block's witnesses in a zero-value output).
    let reward_msat = |i: usize| {
        let q = [&by_id, &by_proof][i];
        let script = bitcoin::Address::from_str(q["address"].as_str().expect("address"))
            .expect("address parses")
            .assume_checked()
            .script_pubkey();
        let sat: u64 = rewards[i]
            .1
            .output
            .iter()
            .filter(|o| o.script_pubkey == script)
            .map(|o| o.value.to_sat())
            .sum();
        assert!(sat > 0, "the reward pays the quote");
        json!(sat * 1000)
    };
    let lease = d.create_lease(testguest_body("mode=echo", id_pay)).await;
    assert_eq!(
        lease.reply["balance_msat"],
        reward_msat(0),
        "{}",
        lease.reply
    );
    mine(&node, &d, 1).await;
    let second = d.create_lease(testguest_body("mode=echo", proof_pay)).await;
    assert_eq!(
        second.reply["balance_msat"],
        reward_msat(1),
        "{}",
        second.reply
    );
    for l in [&lease, &second] {
        d.stop_lease(&l.id, &l.token).await;
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_below_dust_asks_for_the_dust_limit_and_bcoins_payment_of_it_funds_a_lease() {
    let Some(bcoin) = bcoin_dir() else { return };
    let dir = StateDir::new();
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let d = daemon_following(dir.path(), &node, &["--quote-dust-floor", "true"]).await;
    // 1 vCPU and 64 MiB for 1 s cost 2 sat at the default prices: raised to P2WPKH's 294.
    let q = d.quote(1, 64, 1).await;
    assert_eq!(q["amount_sat"], 294, "{q}");
    let address = q["address"].as_str().expect("address");
    // bcoin's wallet will not make the un-rounded 2-sat output: it is dust to bcoin too.
    let refused = node.wallet_send(address, 2).await;
    assert!(
        refused["hash"].is_null(),
        "bcoin sent a 2-sat output: {refused}"
    );
    assert!(
        refused.to_string().to_lowercase().contains("dust"),
        "bcoin refused for another reason: {refused}"
    );
    // Exactly the quoted amount, mined by bcoin.
    node.wallet_pays(address, 294).await;
    let mined = node.generate_to(1, &funds).await;
    wait_for_tip(&d, &mined[0], SYNC).await;
    let qid = q["quote_id"].as_str().expect("id");
    let v = wait_for_quote(&d, qid, "seen").await;
    assert_eq!(
        (&v["status"], &v["confirmations"]),
        (&json!("seen"), &json!(1))
    );
    if !kvm_or_skip() {
        return d.shutdown().await;
    }
    let lease = d
        .create_lease(testguest_body(
            "mode=echo",
            json!({"onchain": {"quote_id": qid}}),
        ))
        .await;
    assert_eq!(lease.reply["balance_msat"], 294_000, "{}", lease.reply);
    assert!(lease.reply.get("late").is_none(), "{}", lease.reply);
    assert_eq!(quote_view(&d, qid).await["status"], "paid");
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_bcoin_pays_after_it_expired_funds_a_lease_at_its_price_flagged_late() {
    let Some(bcoin) = bcoin_dir() else { return };
    let dir = StateDir::new();
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let d = daemon_following(dir.path(), &node, &["--quote-ttl-s", "1"]).await;
    let q = d.quote(1, 64, 600).await;
    let qid = q["quote_id"].as_str().expect("id");
    // bcoin stamps a block with its clock, in whole seconds: 2.1 s after the quote was made,
    // that time is past the quote's expiry (1 s after it was made).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(quote_view(&d, qid).await["status"], "expired");
    node.wallet_pays(
        q["address"].as_str().expect("address"),
        q["amount_sat"].as_u64().expect("sat"),
    )
    .await;
    let mined = node.generate_to(1, &funds).await;
    wait_for_tip(&d, &mined[0], SYNC).await;
    let block = node.rpc("getblockheader", json!([mined[0], true])).await;
    let expires_at = q["expires_at"].as_i64().expect("expires_at");
    assert!(
        block["time"].as_i64().expect("time") > expires_at,
        "bcoin's block {block} is not after the quote's expiry {expires_at}"
    );
    wait_for_quote(&d, qid, "seen").await;
    if !kvm_or_skip() {
        return d.shutdown().await;
    }
    let lease = d
        .create_lease(testguest_body(
            "mode=echo",
            json!({"onchain": {"quote_id": qid}}),
        ))
        .await;
    assert_eq!(lease.reply["late"], true, "{}", lease.reply);
    assert_eq!(
        lease.reply["balance_msat"], q["amount_msat"],
        "credited at the quote's price: {}",
        lease.reply
    );
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_payment_to_a_leases_quote_waits_402_until_deep_then_tops_it_up() {
    let Some(bcoin) = bcoin_dir() else { return };
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let d = daemon_following(dir.path(), &node, &["--min-conf", "2"]).await;
    let q = d.quote(1, 64, 600).await;
    let qid = q["quote_id"].as_str().expect("id");
    let address = q["address"].as_str().expect("address");
    let sat = q["amount_sat"].as_u64().expect("sat");
    let payment = json!({"onchain": {"quote_id": qid}});
    // How many outputs paying the quote coinopd's payment watch has filed from blocks.
    let seen = || {
        rusqlite::Connection::open(dir.path().join("ledger.db"))
            .expect("ledger db")
            .query_row(
                "SELECT count(*) FROM watch_seen_outputs WHERE quote_id = ?1",
                [qid],
                |r| r.get::<_, i64>(0),
            )
            .expect("count seen outputs")
    };
    node.wallet_pays(address, sat).await;
    let mined = node.generate_to(2, &funds).await;
    wait_for_tip(&d, &mined[1], SYNC).await;
    common::wait_for(async || seen() == 1, "the payment to be seen").await;
    let lease = d
        .create_lease(testguest_body("mode=echo", payment.clone()))
        .await;
    assert_eq!(
        lease.reply["balance_msat"],
        json!(sat * 1000),
        "{}",
        lease.reply
    );

    let topup = format!("/v1/leases/{}/topup", lease.id);
    let body = json!({ "payment": payment });
    let paid = || paid_msat(dir.path(), &lease.id);
    // Nothing new paid to the quote: it is used up.
    let r = d
        .call("POST", &topup, Some(&lease.token), Some(body.clone()))
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "already_spent", "{}", r.text());

    // The tenant pays the quote again; one confirmation of the two asked for.
    node.wallet_pays(address, sat).await;
    let mined = node.generate_to(1, &funds).await;
    wait_for_tip(&d, &mined[0], SYNC).await;
    common::wait_for(async || seen() == 2, "the second payment to be seen").await;
    let r = d
        .call("POST", &topup, Some(&lease.token), Some(body.clone()))
        .await;
    assert_eq!(r.status, 402, "wait, not used up: {}", r.text());
    assert_eq!(r.json()["error"]["code"], "not_confirmed", "{}", r.text());
    assert_eq!(paid(), sat * 1000, "nothing credited yet");

    // The second confirmation: the top-up credits the second output, once.
    mine(&node, &d, 1).await;
    let r = d
        .call("POST", &topup, Some(&lease.token), Some(body.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(paid(), 2 * sat * 1000, "the second payment credited");
    let again = d.call("POST", &topup, Some(&lease.token), Some(body)).await;
    assert_eq!(
        again.status,
        200,
        "a retry is answered as the top-up: {}",
        again.text()
    );
    assert_eq!(paid(), 2 * sat * 1000, "and credits nothing twice");
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}

/// POSTs bcoin's whole best chain of headers to `d` as its operator would (a host without
/// `--bitcoin-peer` learns the chain no other way) and waits for `d` to follow.
async fn operator_adds_headers(node: &Bcoin, d: &Daemon) {
    common::operator_posts_headers(d, &node.best_chain_headers().await).await;
    wait_for_tip(d, &node.best_hash().await, SYNC).await;
}

/// What lease `id`'s books say was paid in, once they balance.
fn paid_msat(dir: &std::path::Path, id: &str) -> u64 {
    let b = coinopd::ledger::Ledger::open(&dir.join("ledger.db"))
        .expect("open ledger")
        .books(id)
        .expect("books");
    assert!(b.balanced(), "books of {id} do not balance: {b:?}");
    b.paid_msat
}

/// The lease's view, waited for until its state is `state`.
async fn lease_in(d: &Daemon, lease: &common::leases::CreatedLease, state: &str) -> Value {
    let path = format!("/v1/leases/{}", lease.id);
    let mut v = Value::Null;
    for _ in 0..600 {
        v = d.call("GET", &path, Some(&lease.token), None).await.json();
        if v["state"] == state {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("lease never {state}: {v}");
}

/// A host without `--bitcoin-peer` (headers from its operator, no blocks) whose lease's
/// payment a reorg took away freezes it; bcoin mines the same transaction again, and the
/// host cannot see that (it fetches no blocks), so the lease stays frozen until its tenant
/// sends the payment again as a top-up with its proof in the new block: the lease thaws,
/// and nothing is credited. Before, such a top-up was refused (a frozen balance takes no
/// payment) and the lease was stopped `payment_reorged` at the end of the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peerless_hosts_lease_frozen_by_a_reorg_thaws_on_its_tenants_new_proof() {
    let Some(bcoin) = bcoin_dir() else { return };
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let d = Daemon::start(
        dir.path(),
        &[
            "--network",
            "regtest",
            "--settle-conf",
            "6",
            "--reorg-window-s",
            "600",
        ],
    )
    .await;
    operator_adds_headers(&node, &d).await;
    let q = d.quote(1, 64, 3600).await;
    let qid = q["quote_id"].as_str().expect("id");
    let (txid, raw) = node
        .wallet_pays(
            q["address"].as_str().expect("address"),
            q["amount_sat"].as_u64().expect("sat"),
        )
        .await;
    let paying = node.generate_to(1, &funds).await.remove(0);
    operator_adds_headers(&node, &d).await;
    let proof_in = |block: String| {
        let node = &node;
        let txid = txid.clone();
        async move { node.rpc("gettxoutproof", json!([[txid], block])).await }
    };
    let payment = |proof: Value| json!({"onchain": {"quote_id": qid, "tx_hex": raw.clone(), "proof_hex": proof}});
    let first = payment(proof_in(paying.clone()).await);
    let lease = d
        .create_lease(testguest_body("mode=echo", first.clone()))
        .await;
    lease_in(&d, &lease, "running").await;
    let paid = || paid_msat(dir.path(), &lease.id);
    let paid_before = paid();

    // bcoin drops the paying block for a longer branch without it.
    node.rpc("invalidateblock", json!([paying])).await;
    node.generate_to(2, &funds).await;
    operator_adds_headers(&node, &d).await;
    lease_in(&d, &lease, "paused_reorg").await;
    let topup = format!("/v1/leases/{}/topup", lease.id);
    let r = d
        .call(
            "POST",
            &topup,
            Some(&lease.token),
            Some(json!({"payment": first})),
        )
        .await;
    assert_eq!(
        r.status,
        402,
        "the old block is off the best chain: {}",
        r.text()
    );
    assert_eq!(r.json()["error"]["code"], "not_confirmed", "{}", r.text());

    // The same transaction, mined again; the host has the header, not the block.
    node.rpc("sendrawtransaction", json!([raw])).await;
    let again = node.generate_to(1, &funds).await.remove(0);
    operator_adds_headers(&node, &d).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = lease_in(&d, &lease, "paused_reorg").await;
    assert_eq!(
        v["state"], "paused_reorg",
        "the host cannot see it alone: {v}"
    );

    let proven = payment(proof_in(again).await);
    let r = d
        .call(
            "POST",
            &topup,
            Some(&lease.token),
            Some(json!({"payment": proven.clone()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    lease_in(&d, &lease, "running").await;
    assert_eq!(paid(), paid_before, "nothing credited for the proof");
    // Sent again once thawed, it is what it always was: a payment the lease holds.
    let r = d
        .call(
            "POST",
            &topup,
            Some(&lease.token),
            Some(json!({"payment": proven})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "already_spent", "{}", r.text());
    assert_eq!(paid(), paid_before);
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}
