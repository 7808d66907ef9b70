//! coinopd's payment policy, end to end on a real socket with real regtest blocks mined
//! in-process (the payment crate's fixtures):
//!
//! - a coinbase output is refused as payment until it is mature (100 confirmations);
//! - quotes are never below the dust limit of their output type (P2WPKH 294 sat, P2TR
//!   330 sat) where nodes refuse dust (the default on mainnet, testnet4 and signet;
//!   `--quote-dust-floor true` here), and `--address-type p2tr` quotes pay to a taproot
//!   address;
//! - a payment mined after its quote expired is credited at the quote's price and flagged
//!   `late` in the reply and on the ledger's payment row;
//! - a SLIP-132 `zpub` (mainnet) and `vpub` (regtest) are taken as the operator key and
//!   derive the addresses their published test vectors give;
//! - the per-network `min_conf` default shows on `GET /v1/host`.

mod common;

use std::str::FromStr;

use bitcoin::{Address, AddressType, Amount, Block, BlockHash};
use coinop_proto::requests::HeadersRequest;
use common::leases::testguest_body;
use common::{kvm_or_skip, Daemon};
use payment::onchain::regtest_fixtures::{
    coinbase_paying, header_bytes, mine_block, mine_block_with_coinbase, tx_hex, txout_proof_hex,
};
use serde_json::{json, Value};

/// BIP84's test vector: the account key of mnemonic "abandon × 11, about" at m/84'/0'/0',
/// as the zpub BIP84 lists (https://github.com/bitcoin/bips/blob/master/bip-0084.mediawiki#test-vectors;
/// also SLIP-0132's test vectors), and its first receive address m/84'/0'/0'/0/0.
const BIP84_ZPUB: &str = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs";
const BIP84_FIRST_ADDRESS: &str = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu";

/// Bitcoin Core's dust limit for an output paying `script` to a witness program, derived
/// from its `GetDustThreshold` at the default dust relay fee of 3 sat/vB: the output's size
/// (8 value + 1 length + script) plus the input that would spend it (32 + 4 outpoint,
/// 1 script length, 107 / 4 = 26 witness vbytes, 4 sequence: 67), times 3.
fn witness_dust_sat(script_len: usize) -> u64 {
    (8 + 1 + script_len as u64 + 67) * 3
}

async fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    let r = d.call("POST", path, None, Some(body)).await;
    (r.status, r.json())
}

/// The daemon's tip: hash, height and time.
async fn tip(d: &Daemon) -> (BlockHash, u32, u32) {
    let h = d.call("GET", "/v1/host", None, None).await.json();
    let hash = h["chain"]["hash"]
        .as_str()
        .expect("hash")
        .parse()
        .expect("block hash");
    let height = h["chain"]["height"].as_u64().expect("height") as u32;
    let time = h["chain"]["time"].as_u64().unwrap_or(0) as u32;
    (hash, height, time)
}

async fn push_headers(d: &Daemon, blocks: &[Block]) {
    let headers = blocks
        .iter()
        .map(|b| hex::encode(header_bytes(&b.header)))
        .collect();
    let body = serde_json::to_value(HeadersRequest { headers }).expect("json");
    let (status, reply) = post(d, "/v1/chain/headers", body).await;
    assert_eq!(status, 200, "{reply}");
}

/// `n` empty blocks on the daemon's tip, pushed to it.
async fn mine_empty(d: &Daemon, n: u32) {
    let (mut prev, height, time) = tip(d).await;
    let mut blocks = Vec::new();
    for i in 1..=n {
        let b = mine_block(prev, height + i, time + i, b"filler", vec![]);
        prev = b.block_hash();
        blocks.push(b);
    }
    push_headers(d, &blocks).await;
}

fn script_of(address: &str) -> bitcoin::ScriptBuf {
    Address::from_str(address)
        .expect("address parses")
        .assume_checked()
        .script_pubkey()
}

/// A mint quote for `sat`: its id, and the address and amount it asks for.
async fn mint_quote(d: &Daemon, sat: u64) -> (String, String, u64) {
    let (status, q) = post(
        d,
        "/v1/mint/quote/onchain",
        json!({"amount": sat, "unit": "sat"}),
    )
    .await;
    assert_eq!(status, 200, "{q}");
    let id = q["quote"].as_str().expect("quote").to_string();
    let quote = d
        .call("GET", &format!("/v1/quotes/{id}"), None, None)
        .await
        .json();
    let address = quote["address"].as_str().expect("address").to_string();
    (id, address, q["amount"].as_u64().expect("amount"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coinbase_pays_only_once_mature() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let (quote_id, address, amount_sat) = mint_quote(&d, 1_000).await;
    // A miner pays the quote straight from its block reward.
    let (prev, height, time) = tip(&d).await;
    let cb = coinbase_paying(
        height + 1,
        b"miner",
        &[(script_of(&address), Amount::from_sat(amount_sat))],
    );
    assert!(cb.is_coinbase(), "one input spending the null outpoint");
    let block = mine_block_with_coinbase(prev, time + 1, cb.clone(), vec![]);
    push_headers(&d, std::slice::from_ref(&block)).await;
    let wallet = common::Wallet::new(&d).await;
    let blanks = wallet.outputs(&payment::credit::amount::split(amount_sat));
    let outputs: Vec<_> = blanks.iter().map(|b| &b.msg).collect();
    let body = json!({
        "payment": {"quote_id": quote_id, "tx_hex": tx_hex(&cb),
                    "proof_hex": txout_proof_hex(&block, &[cb.compute_txid()])},
        "outputs": outputs,
    });
    // One confirmation is all regtest's min_conf asks, but not enough for a coinbase.
    let (status, reply) = post(&d, "/v1/mint/onchain", body.clone()).await;
    // A Cashu route: NUT-00's 400, 20001 (the quote is not paid yet).
    assert_eq!((status, &reply["code"]), (400, &json!(20001)), "{reply}");
    assert!(
        reply["detail"]
            .as_str()
            .expect("detail")
            .contains("coinbase"),
        "{reply}"
    );
    // 99 confirmations: one short.
    mine_empty(&d, 98).await;
    let (status, reply) = post(&d, "/v1/mint/onchain", body.clone()).await;
    assert_eq!((status, &reply["code"]), (400, &json!(20001)), "{reply}");
    assert!(
        reply["detail"]
            .as_str()
            .expect("detail")
            .contains("99 confirmations"),
        "{reply}"
    );
    // The 100th: mature, and the credit is minted.
    mine_empty(&d, 1).await;
    let (status, reply) = post(&d, "/v1/mint/onchain", body).await;
    assert_eq!(status, 200, "{reply}");
    let sigs: Vec<payment::credit::nut_types::BlindSignature> =
        serde_json::from_value(reply["signatures"].clone()).expect("signatures");
    let minted: u64 = wallet
        .unblind(&blanks, &sigs)
        .iter()
        .map(|p| p.amount)
        .sum();
    assert_eq!(minted, amount_sat);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_are_never_below_the_dust_limit_of_their_address_type() {
    // P2WPKH's script is OP_0 PUSH20 (22 bytes), P2TR's OP_1 PUSH32 (34 bytes).
    let p2wpkh_dust = witness_dust_sat(22);
    let p2tr_dust = witness_dust_sat(34);
    assert_eq!((p2wpkh_dust, p2tr_dust), (294, 330));
    for (args, dust, kind) in [
        (
            &["--quote-dust-floor", "true"][..],
            p2wpkh_dust,
            AddressType::P2wpkh,
        ),
        (
            &["--quote-dust-floor", "true", "--address-type", "p2tr"][..],
            p2tr_dust,
            AddressType::P2tr,
        ),
    ] {
        let dir = common::StateDir::new();
        let d = Daemon::start(dir.path(), args).await;
        // At the default prices (1000 msat per vCPU-s, 2000 per GiB-s), 1 vCPU and 64 MiB
        // cost 1125 msat a second: 1 s is 2 sat, 60 s is 68 sat.
        for (seconds, price_sat) in [(1u64, 2u64), (60, 68)] {
            let q = d.quote(1, 64, seconds).await;
            assert_eq!(q["amount_sat"], dust, "{price_sat} sat raised: {q}");
            assert_eq!(q["amount_msat"], dust * 1000, "{q}");
            let address = Address::from_str(q["address"].as_str().expect("address"))
                .expect("parses")
                .require_network(bitcoin::Network::Regtest)
                .expect("a regtest address");
            assert_eq!(address.address_type(), Some(kind), "{address}");
            assert!(q["bip21"]
                .as_str()
                .expect("bip21")
                .starts_with(&format!("bitcoin:{address}")));
        }
        // Above the limit the price stands: 600 s is 675 sat.
        assert_eq!(d.quote(1, 64, 600).await["amount_sat"], 675);
        // A mint quote too.
        let (_, _, amount) = mint_quote(&d, 2).await;
        assert_eq!(amount, dust);
        d.shutdown().await;
    }
    // Regtest's nodes relay dust (Bitcoin Core requires standard transactions only on
    // mainnet, testnet4 and signet), so there the floor is off unless asked for.
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    assert_eq!(d.quote(1, 64, 1).await["amount_sat"], 2);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taproot_quote_is_paid_to_its_taproot_address() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--address-type", "p2tr"]).await;
    let (body, wallet, blanks) = d.mint_request(500).await;
    let quote_id = body["payment"]["quote_id"].as_str().expect("quote_id");
    let q = d
        .call("GET", &format!("/v1/quotes/{quote_id}"), None, None)
        .await
        .json();
    assert!(
        q["address"]
            .as_str()
            .expect("address")
            .starts_with("bcrt1p"),
        "{q}"
    );
    let (status, reply) = post(&d, "/v1/mint/onchain", body).await;
    assert_eq!(status, 200, "{reply}");
    let sigs: Vec<payment::credit::nut_types::BlindSignature> =
        serde_json::from_value(reply["signatures"].clone()).expect("signatures");
    let minted: u64 = wallet
        .unblind(&blanks, &sigs)
        .iter()
        .map(|p| p.amount)
        .sum();
    assert_eq!(minted, 500);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_payment_is_credited_at_the_quotes_price_and_flagged() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--quote-ttl-s", "1"]).await;
    // In time: no flag.
    let on_time = d.onchain_payment(600).await;
    let lease = d.create_lease(testguest_body("mode=echo", on_time)).await;
    assert!(lease.reply.get("late").is_none(), "{}", lease.reply);
    // Mined after the quote's expiry (its block's time is now, the quote expired 1 s after
    // it was made).
    let q = d.quote(1, 64, 600).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let pay = coinop_cli::regtest_pay::pay_quote(&d.client, q["quote_id"].as_str().expect("id"))
        .await
        .expect("regtest payment");
    let late = d.create_lease(testguest_body("mode=echo", pay)).await;
    assert_eq!(late.reply["late"], true, "{}", late.reply);
    assert_eq!(
        late.reply["balance_msat"], q["amount_msat"],
        "credited at the quote's price"
    );
    // A late top-up says so too.
    let q = d.quote(1, 64, 600).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let pay = coinop_cli::regtest_pay::pay_quote(&d.client, q["quote_id"].as_str().expect("id"))
        .await
        .expect("regtest payment");
    let r = d
        .call(
            "POST",
            &format!("/v1/leases/{}/topup", lease.id),
            Some(&lease.token),
            Some(json!({"payment": pay})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["late"], true, "{}", r.text());
    // The ledger's payment rows say which were late.
    let db = rusqlite::Connection::open(dir.path().join("ledger.db")).expect("ledger");
    let rows: Vec<(String, String, bool)> = db
        .prepare("SELECT lease_id, kind, late FROM payments ORDER BY id")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows,
        [
            (lease.id.clone(), "onchain".to_string(), false),
            (late.id.clone(), "onchain_late".to_string(), true),
            (lease.id.clone(), "onchain_late".to_string(), true),
        ]
    );
    for l in [&lease, &late] {
        d.stop_lease(&l.id, &l.token).await;
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zpub_on_mainnet_derives_bip84s_first_address_and_min_conf_is_two() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--network", "mainnet", "--xpub", BIP84_ZPUB]).await;
    let h = d.call("GET", "/v1/host", None, None).await.json();
    assert_eq!(
        (h["network"].as_str(), h["min_conf"].as_u64()),
        (Some("mainnet"), Some(2)),
        "{h}"
    );
    let q = d.quote(1, 64, 600).await;
    assert_eq!(q["address"], BIP84_FIRST_ADDRESS, "{q}");
    d.shutdown().await;
    // A zpub names P2WPKH: asking it for taproot is refused at start.
    let settings = <coinopd::config::Settings as clap::Parser>::parse_from([
        "coinopd",
        "--state-dir",
        dir.path().to_str().expect("utf-8"),
        "--network",
        "mainnet",
        "--xpub",
        BIP84_ZPUB,
        "--address-type",
        "p2tr",
        "--no-jail",
    ]);
    let err = coinopd::app::AppState::open(settings.resolve().expect("resolves"))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("p2wpkh"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vpub_on_regtest_derives_the_same_addresses_as_its_tpub() {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master =
        bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[5u8; 32]).expect("xpriv");
    let tpub = bitcoin::bip32::Xpub::from_priv(&secp, &master);
    // SLIP-132: a vpub is the tpub's 78 bytes with the version 0x045f1cf6.
    let mut data = tpub.encode();
    data[..4].copy_from_slice(&[0x04, 0x5f, 0x1c, 0xf6]);
    let vpub = bitcoin::base58::encode_check(&data);
    assert!(vpub.starts_with("vpub"), "{vpub}");
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--xpub", &vpub]).await;
    for index in 0..2u32 {
        let q = d.quote(1, 64, 600).await;
        // Independently: tpub/0/index as P2WPKH.
        let path = [
            bitcoin::bip32::ChildNumber::from_normal_idx(0).expect("0"),
            bitcoin::bip32::ChildNumber::from_normal_idx(index).expect("index"),
        ];
        let key = tpub.derive_pub(&secp, &path).expect("derive");
        let expected = Address::p2wpkh(
            &bitcoin::CompressedPublicKey(key.public_key),
            bitcoin::Network::Regtest,
        );
        assert_eq!(q["address"], expected.to_string(), "index {index}");
    }
    d.shutdown().await;
}

/// The same key as a vpub and as its tpub derives the same addresses: an operator who
/// restarts with the other spelling must not be handed index 0 again (an address a quote
/// of the first run holds, which its tenant may pay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_respelled_across_a_restart_never_hands_an_address_out_twice() {
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master =
        bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[6u8; 32]).expect("xpriv");
    let tpub = bitcoin::bip32::Xpub::from_priv(&secp, &master);
    let mut data = tpub.encode();
    data[..4].copy_from_slice(&[0x04, 0x5f, 0x1c, 0xf6]);
    let vpub = bitcoin::base58::encode_check(&data);
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--xpub", &vpub]).await;
    let first = d.quote(1, 64, 600).await;
    d.shutdown().await;
    let d = Daemon::start(dir.path(), &["--xpub", &tpub.to_string()]).await;
    let second = d.quote(1, 64, 600).await;
    assert_ne!(first["address"], second["address"], "{first} {second}");
    d.shutdown().await;
}
