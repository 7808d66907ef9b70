//! Header sync over the Bitcoin P2P protocol against bcoin, a real node nobody here wrote
//! (regtest, loopback): coinopd catches up with a 2,100-block chain, follows new blocks,
//! reconnects after bcoin restarts, and bans a peer that sends an invalid header while it
//! keeps syncing from the honest one.

mod common;

use std::time::{Duration, Instant};

use bitcoin::block::{Header, Version};
use bitcoin::consensus::encode;
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::{NetworkMessage, RawNetworkMessage};
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::{address::Address, Magic, ServiceFlags};
use bitcoin::{CompactTarget, Target, TxMerkleNode};
use common::bcoin::{bcoin_dir, quote_view, wait_for_quote, wait_for_tip, Bcoin};
use common::{Daemon, StateDir};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn host(d: &Daemon) -> Value {
    let r = d.call("GET", "/v1/host", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn wait_for_sync(d: &Daemon, what: &str, f: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let h = host(d).await;
        if f(&h["chain"]["sync"]) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "sync never showed {what}: {}",
            h["chain"]["sync"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinopd_syncs_from_bcoin_follows_new_blocks_and_survives_its_restart() {
    let Some(bcoin) = bcoin_dir() else { return };
    let dir = StateDir::new();
    let chain_dir = dir.path().join("bcoin-chain");
    std::fs::create_dir_all(&chain_dir).unwrap();
    let mut node = Bcoin::start(&bcoin, Some(&chain_dir));
    let mined = node.generate(2100).await;
    assert_eq!(mined.len(), 2100);
    let best = node.best_hash().await;
    assert_eq!(&best, mined.last().unwrap());

    let state = dir.path().join("coinopd");
    std::fs::create_dir_all(&state).unwrap();
    let d = Daemon::start(
        &state,
        &["--network", "regtest", "--bitcoin-peer", &node.p2p_addr()],
    )
    .await;
    // The API answers while the sync runs; the tip ends up at bcoin's best block.
    wait_for_tip(&d, &best, Duration::from_secs(120)).await;
    let h = host(&d).await;
    assert_eq!(h["chain"]["height"], 2100);
    wait_for_sync(&d, "synced with one peer", |s| {
        s["state"] == "synced" && s["peers_connected"] == 1
    })
    .await;
    let h = host(&d).await;
    assert_eq!(h["chain"]["sync"]["headers_from_peers"], 2100);
    assert!(h["chain"]["sync"]["last_header_at"].as_u64().is_some());
    let metrics = d.call("GET", "/metrics", None, None).await.text();
    assert!(
        metrics.contains("coinop_chain_tip_height 2100"),
        "{metrics}"
    );
    assert!(
        metrics.contains("coinop_chain_sync_state{state=\"synced\"} 1"),
        "{metrics}"
    );
    // bcoin's own view of a header coinopd now holds, byte for byte the same block.
    let mid = node.rpc("getblockhash", serde_json::json!([1500])).await;
    let hdr = node
        .rpc("getblockheader", serde_json::json!([mid, true]))
        .await;
    assert_eq!(hdr["height"], 1500);

    // A new block is announced and followed.
    let next = node.generate(1).await;
    wait_for_tip(&d, &next[0], Duration::from_secs(30)).await;

    // bcoin goes away: coinopd notices, keeps serving, and reconnects when it is back.
    node.stop();
    wait_for_sync(&d, "no peers", |s| {
        s["state"] == "no_peers" && s["peers_connected"] == 0
    })
    .await;
    node.restart();
    let after = node.generate(3).await;
    wait_for_tip(&d, &after[2], Duration::from_secs(90)).await;
    assert_eq!(host(&d).await["chain"]["height"], 2104);
    d.shutdown().await;
}

/// A header on `prev` whose hash does NOT meet its own (regtest) target.
fn header_with_bad_pow(prev: &Header) -> Header {
    let bits = prev.bits;
    let mut h = Header {
        version: Version::from_consensus(0x2000_0000),
        prev_blockhash: prev.block_hash(),
        merkle_root: TxMerkleNode::from_byte_array([7; 32]),
        time: prev.time + 600,
        bits,
        nonce: 0,
    };
    while Target::from_compact(CompactTarget::from_consensus(bits.to_consensus()))
        .is_met_by(h.block_hash())
    {
        h.nonce += 1;
    }
    h
}

async fn send(stream: &mut tokio::net::TcpStream, msg: NetworkMessage) {
    let bytes = encode::serialize(&RawNetworkMessage::new(Magic::REGTEST, msg));
    stream.write_all(&bytes).await.expect("write to coinopd");
}

async fn recv(stream: &mut tokio::net::TcpStream) -> Option<NetworkMessage> {
    let mut head = [0u8; 24];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize;
    let mut buf = head.to_vec();
    buf.resize(24 + len, 0);
    stream.read_exact(&mut buf[24..]).await.ok()?;
    let raw: RawNetworkMessage = encode::deserialize(&buf).expect("coinopd sends valid messages");
    Some(raw.into_payload())
}

/// A peer written for this test with the `bitcoin` crate's messages: it completes the
/// handshake, and answers the first `getheaders` with a header that fails proof of work.
/// Returns how many connections it saw over `watch` and whether coinopd closed the first.
async fn hostile_peer(listener: tokio::net::TcpListener, watch: Duration) -> (u32, bool) {
    let (mut s, _) = listener.accept().await.expect("coinopd connects");
    let talk = async {
        while let Some(msg) = recv(&mut s).await {
            match msg {
                NetworkMessage::Version(_) => {
                    let addr = s.peer_addr().unwrap();
                    let mut v = VersionMessage::new(
                        ServiceFlags::NETWORK | ServiceFlags::WITNESS,
                        0,
                        Address::new(&addr, ServiceFlags::NONE),
                        Address::new(&s.local_addr().unwrap(), ServiceFlags::NONE),
                        1,
                        "/hostile:0.1/".into(),
                        5,
                    );
                    v.version = 70016;
                    send(&mut s, NetworkMessage::Version(v)).await;
                    send(&mut s, NetworkMessage::Verack).await;
                }
                NetworkMessage::GetHeaders(_) => {
                    let genesis =
                        bitcoin::constants::genesis_block(bitcoin::Network::Regtest).header;
                    let bad = header_with_bad_pow(&genesis);
                    send(&mut s, NetworkMessage::Headers(vec![bad])).await;
                }
                _ => {}
            }
        }
    };
    // The loop ends when coinopd closes the connection.
    let closed = tokio::time::timeout(Duration::from_secs(30), talk)
        .await
        .is_ok();
    let mut connections = 1;
    let deadline = tokio::time::Instant::now() + watch;
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, listener.accept()).await {
        connections += 1;
    }
    (connections, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_a_header_with_bad_pow_is_banned_while_bcoin_keeps_the_chain_going() {
    let Some(bcoin) = bcoin_dir() else { return };
    let dir = StateDir::new();
    let node = Bcoin::start(&bcoin, None);
    let mined = node.generate(20).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hostile_addr = listener.local_addr().unwrap().to_string();
    // Back-off starts at 0.5 s: an unbanned peer would be called again well within 5 s.
    let hostile = tokio::spawn(hostile_peer(listener, Duration::from_secs(5)));
    let d = Daemon::start(
        dir.path(),
        &[
            "--network",
            "regtest",
            "--bitcoin-peer",
            &hostile_addr,
            "--bitcoin-peer",
            &node.p2p_addr(),
        ],
    )
    .await;
    wait_for_tip(&d, mined.last().unwrap(), Duration::from_secs(60)).await;
    let (connections, closed) = hostile.await.unwrap();
    assert!(
        closed,
        "coinopd kept talking to a peer that sent bad proof of work"
    );
    assert_eq!(connections, 1, "a banned peer was connected to again");
    let h = host(&d).await;
    let sync = &h["chain"]["sync"];
    assert_eq!(sync["peers_banned"], 1, "{sync}");
    assert_eq!(sync["peers_connected"], 1, "{sync}");
    assert_eq!(h["chain"]["height"], 20);
    let metrics = d.call("GET", "/metrics", None, None).await.text();
    assert!(
        metrics.contains("coinop_chain_sync_peers_banned 1"),
        "{metrics}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_mainnet_host_starts_at_the_shipped_checkpoint() {
    use bitcoin::bip32::{Xpriv, Xpub};
    let dir = StateDir::new();
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let xpriv = Xpriv::new_master(bitcoin::Network::Bitcoin, &[7u8; 32]).unwrap();
    let xpub = Xpub::from_priv(&secp, &xpriv).to_string();
    let d = Daemon::start(dir.path(), &["--network", "bitcoin", "--xpub", &xpub]).await;
    let h = host(&d).await;
    assert_eq!(h["network"], "mainnet");
    assert_eq!(h["chain"]["height"], 840_000);
    assert_eq!(
        h["chain"]["hash"],
        "0000000000000000000320283a032748cef8227873ff4872689bf23f1cda83a5"
    );
    assert_eq!(h["chain"]["sync"]["state"], "off");
    d.shutdown().await;
    // The chain file keeps that start across a restart.
    let d = Daemon::start(dir.path(), &["--network", "bitcoin", "--xpub", &xpub]).await;
    assert_eq!(host(&d).await["chain"]["height"], 840_000);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_testnet3_and_signet_hosts_start_at_their_hash_only_checkpoints() {
    use bitcoin::bip32::{Xpriv, Xpub};
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let xpriv = Xpriv::new_master(bitcoin::Network::Testnet, &[7u8; 32]).unwrap();
    let xpub = Xpub::from_priv(&secp, &xpriv).to_string();
    for (net, height, hash) in [
        (
            "testnet3",
            2_500_000,
            "0000000000000093bcb68c03a9a168ae252572d348a2eaeba2cdf9231d73206f",
        ),
        (
            "signet",
            160_000,
            "0000003ca3c99aff040f2563c2ad8f8ec88bd0fd6b8f0895cfaf1ef90353a62c",
        ),
    ] {
        let dir = StateDir::new();
        let args = ["--network", net, "--xpub", &xpub];
        let d = Daemon::start(dir.path(), &args).await;
        let h = host(&d).await;
        assert_eq!(h["chain"]["height"], height, "{net}");
        assert_eq!(h["chain"]["hash"], hash, "{net}");
        d.shutdown().await;
        // Until a peer (or, on signet, the operator) sends the checkpoint's header nothing
        // is stored, and a restart asks for it again from the same place.
        let d = Daemon::start(dir.path(), &args).await;
        assert_eq!(host(&d).await["chain"]["height"], height, "{net}");
        d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcoins_wallet_pays_a_quote_the_host_sees_it_and_its_txoutproof_mints_at_mint_min_conf() {
    let Some(bcoin) = bcoin_dir() else { return };
    let dir = StateDir::new();
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let d = Daemon::start(
        dir.path(),
        &[
            "--network",
            "regtest",
            "--bitcoin-peer",
            &node.p2p_addr(),
            "--mint-min-conf",
            "2",
        ],
    )
    .await;
    wait_for_tip(&d, &node.best_hash().await, Duration::from_secs(60)).await;

    // A lease quote, paid by bcoin's wallet: unpaid, then seen once mined.
    let q = d.quote(1, 64, 3600).await;
    let qid = q["quote_id"].as_str().unwrap().to_string();
    assert_eq!(quote_view(&d, &qid).await["status"], "unpaid");
    let by_id = serde_json::json!({"onchain": {"quote_id": qid}});
    let r = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(common::leases::testguest_body("mode=echo", by_id.clone())),
        )
        .await;
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "payment_not_seen");

    let amount = q["amount_sat"].as_u64().unwrap();
    let (txid, _) = node
        .wallet_pays(q["address"].as_str().unwrap(), amount)
        .await;
    let mined = node
        .rpc("generatetoaddress", serde_json::json!([1, funds]))
        .await;
    let block = mined[0].as_str().unwrap().to_string();
    let announced = Instant::now();
    loop {
        let v = quote_view(&d, &qid).await;
        if v["status"] == "seen" {
            assert_eq!(v["confirmations"], 1, "{v}");
            break;
        }
        assert!(
            announced.elapsed() < Duration::from_secs(60),
            "the payment {txid} in {block} was never seen: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "block announced -> quote seen (fundable by quote id): {} ms",
        announced.elapsed().as_millis()
    );

    if common::kvm_or_skip() {
        let lease = d
            .create_lease(common::leases::testguest_body("mode=echo", by_id.clone()))
            .await;
        assert_eq!(quote_view(&d, &qid).await["status"], "paid");
        // The same payment cannot pay twice.
        let r = d
            .call(
                "POST",
                "/v1/leases",
                None,
                Some(common::leases::testguest_body("mode=echo", by_id)),
            )
            .await;
        assert_eq!(r.status, 409, "{}", r.text());
        // A refund is credit: not before the payment is --mint-min-conf (2) deep.
        let wallet = common::Wallet::new(&d).await;
        let blanks = wallet.outputs(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]);
        let outputs: Vec<_> = blanks.iter().map(|b| &b.msg).collect();
        let r = d
            .call(
                "POST",
                &format!("/v1/leases/{}/stop", lease.id),
                Some(&lease.token),
                Some(serde_json::json!({"outputs": outputs})),
            )
            .await;
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "state_conflict");
        d.stop_lease(&lease.id, &lease.token).await;

        // The tenant CLI pays by quote id too: `coinop lease create --quote-id Q`.
        let q2 = d.quote(1, 64, 3600).await;
        let q2id = q2["quote_id"].as_str().unwrap().to_string();
        node.wallet_pays(
            q2["address"].as_str().unwrap(),
            q2["amount_sat"].as_u64().unwrap(),
        )
        .await;
        let mined = node
            .rpc("generatetoaddress", serde_json::json!([1, funds]))
            .await;
        wait_for_tip(&d, mined[0].as_str().unwrap(), Duration::from_secs(60)).await;
        let key_dir = dir.path().join("cli-home");
        std::fs::create_dir_all(&key_dir).unwrap();
        let args = [
            &["--json"][..],
            &common::cli_process::lease_create_args(&["--quote-id", &q2id]),
        ]
        .concat();
        // HOME: where the CLI keeps the create's recovery key.
        let out =
            common::cli_process::coinop_async(&d.socket, &args, &[("HOME", key_dir.as_path())])
                .await;
        assert!(
            out.status.success(),
            "coinop lease create --quote-id: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let created: Value = serde_json::from_slice(&out.stdout).expect("--json reply");
        d.stop_lease(
            created["lease_id"].as_str().unwrap(),
            created["token"].as_str().unwrap(),
        )
        .await;
        assert_eq!(quote_view(&d, &q2id).await["status"], "paid");
    }

    // A mint quote paid by bcoin's wallet in a block with another payment, proved by
    // bcoin's own gettxoutproof covering both transactions.
    let r = d
        .call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(serde_json::json!({"amount": 1000, "unit": "sat"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mq = r.json();
    let mqid = mq["quote"].as_str().unwrap().to_string();
    let (mint_txid, mint_raw) = node
        .wallet_pays(mq["request"].as_str().unwrap(), 1000)
        .await;
    let other = d.quote(1, 64, 3600).await;
    let (other_txid, _) = node
        .wallet_pays(
            other["address"].as_str().unwrap(),
            other["amount_sat"].as_u64().unwrap(),
        )
        .await;
    let mined = node
        .rpc("generatetoaddress", serde_json::json!([1, funds]))
        .await;
    let block = mined[0].as_str().unwrap().to_string();
    wait_for_tip(&d, &block, Duration::from_secs(60)).await;
    let proof = node
        .rpc(
            "gettxoutproof",
            serde_json::json!([[other_txid, mint_txid], block]),
        )
        .await;
    let wallet = common::Wallet::new(&d).await;
    let blanks = wallet.outputs(&payment::credit::amount::split(1000));
    let outputs: Vec<_> = blanks.iter().map(|b| &b.msg).collect();
    let body = serde_json::json!({
        "payment": {"quote_id": mqid, "tx_hex": mint_raw, "proof_hex": proof},
        "outputs": outputs,
    });
    // One confirmation is enough for a lease, not for minting (--mint-min-conf 2).
    let r = d
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    // A Cashu route answers NUT-00's 400 with code 20001 (the quote is not paid yet).
    assert_eq!(
        (r.status, &r.json()["code"]),
        (400, &serde_json::json!(20001)),
        "{}",
        r.text()
    );
    assert!(
        r.json()["detail"]
            .as_str()
            .expect("detail")
            .contains("1 confirmations, 2 required"),
        "{}",
        r.text()
    );
    let deeper = node
        .rpc("generatetoaddress", serde_json::json!([1, funds]))
        .await;
    wait_for_tip(&d, deeper[0].as_str().unwrap(), Duration::from_secs(60)).await;
    let r = d.call("POST", "/v1/mint/onchain", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sigs: Vec<payment::credit::nut_types::BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).unwrap();
    let proofs = wallet.unblind(&blanks, &sigs);
    assert_eq!(proofs.iter().map(|p| p.amount).sum::<u64>(), 1000);
    // The mint never takes a payment by quote id alone (credit is bearer money).
    let r = d
        .call(
            "POST",
            "/v1/mint/onchain",
            None,
            Some(serde_json::json!({"payment": {"quote_id": mqid}, "outputs": []})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    d.shutdown().await;
}

async fn lease_state(d: &Daemon, id: &str, token: &str) -> Value {
    let r = d
        .call("GET", &format!("/v1/leases/{id}"), Some(token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn wait_for_lease(d: &Daemon, id: &str, token: &str, state: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = lease_state(d, id, token).await;
        if v["state"] == state {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lease never became {state}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes bcoin drop `block` from its best chain and mine a longer branch without it (bcoin's
/// invalidateblock does not put the block's transactions back into its mempool).
async fn reorg_away(node: &Bcoin, d: &Daemon, block: &str, funds: &str) {
    node.rpc("invalidateblock", serde_json::json!([block]))
        .await;
    let branch = node
        .rpc("generatetoaddress", serde_json::json!([2, funds]))
        .await;
    wait_for_tip(d, branch[1].as_str().unwrap(), Duration::from_secs(60)).await;
}

/// A lease paid on chain whose paying block was then reorged away: frozen.
struct Frozen {
    _dir: StateDir,
    node: Bcoin,
    d: Daemon,
    lease: common::leases::CreatedLease,
    /// The paying transaction, to confirm again.
    raw: String,
    /// Where mined coins go.
    funds: String,
    /// The block the payment was first confirmed in, reorged away.
    paying: String,
    /// The state directory (its ledger).
    state: std::path::PathBuf,
}

/// A running lease of the test guest paid on chain (`--settle-conf 6`, `--reorg-window-s`
/// `window_s`), then frozen by a reorg of its paying block; `None` when bcoin or KVM is
/// missing (skipped).
async fn frozen_lease(window_s: &str) -> Option<Frozen> {
    let bcoin = bcoin_dir()?;
    if !common::kvm_or_skip() {
        return None;
    }
    let dir = StateDir::new();
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let d = Daemon::start(
        dir.path(),
        &[
            "--network",
            "regtest",
            "--bitcoin-peer",
            &node.p2p_addr(),
            "--settle-conf",
            "6",
            "--reorg-window-s",
            window_s,
        ],
    )
    .await;
    wait_for_tip(&d, &node.best_hash().await, Duration::from_secs(60)).await;
    let q = d.quote(1, 64, 3600).await;
    let qid = q["quote_id"].as_str().unwrap().to_string();
    let (_, raw) = node
        .wallet_pays(
            q["address"].as_str().unwrap(),
            q["amount_sat"].as_u64().unwrap(),
        )
        .await;
    let paying = node
        .rpc("generatetoaddress", serde_json::json!([1, funds]))
        .await[0]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_tip(&d, &paying, Duration::from_secs(60)).await;
    wait_for_quote(&d, &qid, "seen").await;
    let lease = d
        .create_lease(common::leases::testguest_body(
            "mode=echo",
            serde_json::json!({"onchain": {"quote_id": qid}}),
        ))
        .await;
    wait_for_lease(&d, &lease.id, &lease.token, "running").await;
    reorg_away(&node, &d, &paying, &funds).await;
    wait_for_lease(&d, &lease.id, &lease.token, "paused_reorg").await;
    let state = dir.path().to_path_buf();
    Some(Frozen {
        _dir: dir,
        node,
        d,
        lease,
        raw,
        funds,
        paying,
        state,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorged_payment_freezes_its_lease_which_thaws_when_it_confirms_again_or_stops() {
    let Some(Frozen {
        _dir,
        node,
        d,
        lease,
        raw,
        funds,
        ..
    }) = frozen_lease("3").await
    else {
        return;
    };
    // Frozen, its balance untouched.
    let frozen = lease_state(&d, &lease.id, &lease.token).await;
    let balance = frozen["balance_msat"].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = lease_state(&d, &lease.id, &lease.token).await;
    assert_eq!(still["state"], "paused_reorg");
    assert_eq!(
        still["balance_msat"], balance,
        "a frozen lease is not metered"
    );

    // The same transaction confirms again in another block: the lease runs again.
    node.rpc("sendrawtransaction", serde_json::json!([raw]))
        .await;
    let again = node
        .rpc("generatetoaddress", serde_json::json!([1, funds]))
        .await[0]
        .as_str()
        .unwrap()
        .to_string();
    wait_for_tip(&d, &again, Duration::from_secs(60)).await;
    wait_for_lease(&d, &lease.id, &lease.token, "running").await;

    // Reorged away again, and not back within the 3 s window: stopped, never refunded.
    reorg_away(&node, &d, &again, &funds).await;
    wait_for_lease(&d, &lease.id, &lease.token, "paused_reorg").await;
    let stopped = wait_for_lease(&d, &lease.id, &lease.token, "stopped").await;
    assert_eq!(stopped["stop_reason"], "payment_reorged", "{stopped}");
    let wallet = common::Wallet::new(&d).await;
    let blanks = wallet.outputs(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]);
    let outputs: Vec<_> = blanks.iter().map(|b| &b.msg).collect();
    let r = d
        .call(
            "POST",
            &format!("/v1/leases/{}/stop", lease.id),
            Some(&lease.token),
            Some(serde_json::json!({"outputs": outputs})),
        )
        .await;
    assert_eq!(
        r.status,
        409,
        "a payment_reorged lease refunds nothing: {}",
        r.text()
    );
    d.shutdown().await;
}

/// A frozen lease whose payment confirms again, settle-deep at once, while its VMM does not
/// answer (stopped): the thaw is put off, and the payment is not settled without it, so
/// once the VMM answers again the lease is thawed and runs. Before, the payment settled in
/// the same pass as the put-off thaw, no later check looked at it again, and the lease
/// stayed frozen (its room held, unbilled) for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thaw_put_off_by_a_silent_vmm_happens_once_it_answers() {
    let Some(f) = frozen_lease("600").await else {
        return;
    };
    let ledger = coinopd::ledger::Ledger::open(&f.state.join("ledger.db")).expect("ledger");
    let vmm = ledger
        .get(&f.lease.id)
        .expect("read")
        .and_then(|l| l.vmm())
        .expect("the lease's VMM");
    let pid = nix::unistd::Pid::from_raw(vmm.pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop this test's VMM");
    // Confirmed again, and 6 deep at once.
    f.node
        .rpc("sendrawtransaction", serde_json::json!([f.raw]))
        .await;
    let blocks = f
        .node
        .rpc("generatetoaddress", serde_json::json!([6, f.funds]))
        .await;
    wait_for_tip(&f.d, blocks[5].as_str().unwrap(), Duration::from_secs(60)).await;
    // Until coinopd has seen the transaction in its new block (the payment moved there, or
    // settled), then a few ticks' thaws put off.
    let start = Instant::now();
    while ledger.unsettled_blocks_of(&f.lease.id).expect("read") == [f.paying.clone()] {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the payment never seen again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = lease_state(&f.d, &f.lease.id, &f.lease.token).await;
    assert_eq!(v["state"], "paused_reorg", "not thawed unread: {v}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)
        .expect("continue this test's VMM");
    wait_for_lease(&f.d, &f.lease.id, &f.lease.token, "running").await;
    f.d.stop_lease(&f.lease.id, &f.lease.token).await;
    f.d.shutdown().await;
}
