//! The Cashu routes over coinopd's socket: NUT-00 error bodies, signatures recorded with
//! the on-chain mint that paid for them (NUT-09 restore gives them back), and outputs
//! signed once refused to another payment (11003) without consuming that payment.

mod common;

use common::Daemon;
use payment::credit::nut_types::{BlindSignature, BlindedMessage};
use serde_json::{json, Value};

fn cashu_refusal(r: &coinop_cli::client::Reply, code: u64) -> Value {
    assert_eq!(r.status, 400, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], code, "{}", r.text());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(body.get("error").is_none(), "not coinop's shape: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_signatures_are_restored_and_never_signed_for_another_payment() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let (body, wallet, blanks) = d.mint_request(11).await;
    let r = d
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sigs: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("signatures");

    // NUT-09: the minted outputs (asked with amount 0, as a seed wallet does), mixed with
    // outputs never signed, get exactly their signatures back.
    let never = wallet.outputs(&[1]);
    let mut asked: Vec<BlindedMessage> = vec![never[0].msg.clone()];
    asked.extend(blanks.iter().map(|b| BlindedMessage {
        amount: 0,
        ..b.msg.clone()
    }));
    let restored = d
        .call("POST", "/v1/restore", None, Some(json!({"outputs": asked})))
        .await;
    assert_eq!(restored.status, 200, "{}", restored.text());
    let v = restored.json();
    let restored_sigs: Vec<BlindSignature> =
        serde_json::from_value(v["signatures"].clone()).expect("signatures");
    assert_eq!(
        restored_sigs, sigs,
        "the signatures handed out, DLEQ included"
    );
    let outputs: Vec<BlindedMessage> =
        serde_json::from_value(v["outputs"].clone()).expect("outputs");
    assert_eq!(
        outputs,
        blanks.iter().map(|b| b.msg.clone()).collect::<Vec<_>>(),
        "each with its amount and keyset"
    );

    // Another payment onto outputs signed before: 11003, and the payment is not spent.
    let (other, wallet2, blanks2) = d.mint_request(11).await;
    let mut reused = other.clone();
    reused["outputs"] = body["outputs"].clone();
    cashu_refusal(
        &d.call("POST", "/v1/mint/onchain", None, Some(reused)).await,
        11003,
    );
    let r = d.call("POST", "/v1/mint/onchain", None, Some(other)).await;
    assert_eq!(
        r.status,
        200,
        "the refused request spent nothing: {}",
        r.text()
    );
    let sigs2: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("signatures");
    assert_eq!(wallet2.unblind(&blanks2, &sigs2).len(), blanks2.len());

    // A swap onto outputs signed before: 11003 too; its inputs stay unspent.
    let notes = wallet2.unblind(&blanks2, &sigs2);
    let swap = json!({"inputs": notes, "outputs": body["outputs"]});
    cashu_refusal(&d.call("POST", "/v1/swap", None, Some(swap)).await, 11003);
    let fresh = wallet.outputs(&payment::credit::amount::split(11));
    let fresh_msgs: Vec<&BlindedMessage> = fresh.iter().map(|b| &b.msg).collect();
    let swap = json!({"inputs": notes, "outputs": fresh_msgs});
    let r = d.call("POST", "/v1/swap", None, Some(swap)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.shutdown().await;
}

/// The key a NUT-30 quote is locked to in these tests.
fn quote_key() -> bitcoin::secp256k1::Keypair {
    use bitcoin::secp256k1::{Keypair, Secp256k1, SecretKey};
    let key = SecretKey::from_slice(&[7; 32]).expect("a valid secret key");
    Keypair::from_secret_key(&Secp256k1::new(), &key)
}

/// A NUT-30 quote locked to [`quote_key`], and a regtest payment of `sat` to its address
/// (tx and proof, hex), not yet shown to the daemon.
async fn key_locked_quote(d: &Daemon, sat: u64) -> (String, String, String) {
    let pubkey = quote_key().public_key().to_string();
    let r = d
        .call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"unit": "sat", "pubkey": pubkey})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let quote = r.json()["quote"].as_str().expect("quote").to_string();
    let address = r.json()["request"].as_str().expect("address").to_string();
    let (tx_hex, proof_hex) = common::pay_address(d, &address, sat).await;
    (quote, tx_hex, proof_hex)
}

/// A NUT-30 quote is locked to its wallet's key: whoever learns its id cannot take its
/// payment as a lease (by id alone or with the tx and proof), and the refusal spends
/// nothing: the wallet's own flow still credits the payment afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_locked_quote_cannot_pay_a_lease() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let (quote, tx_hex, proof_hex) = key_locked_quote(&d, 700).await;
    let proved_payment =
        json!({"onchain": {"quote_id": quote, "tx_hex": tx_hex, "proof_hex": proof_hex}});
    let by_id = json!({"onchain": {"quote_id": quote}});
    for payment in [proved_payment, by_id] {
        let body = common::leases::testguest_body("mode=echo", payment);
        let r = d.call("POST", "/v1/leases", None, Some(body)).await;
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(
            r.json()["error"]["code"],
            "quote_key_locked",
            "{}",
            r.text()
        );
    }
    let proved = d
        .call(
            "POST",
            &format!("/v1/mint/quote/onchain/{quote}/payment"),
            None,
            Some(json!({"tx_hex": tx_hex, "proof_hex": proof_hex})),
        )
        .await;
    assert_eq!(
        proved.status,
        200,
        "the payment is still unspent: {}",
        proved.text()
    );
    assert_eq!(proved.json()["amount_paid"], 700, "{}", proved.text());
    d.shutdown().await;
}

/// A NUT-30 mint whose reply was lost, sent again as it was, gets the same signatures and
/// issues nothing more; other outputs overlapping the signed ones are still 11003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nut30_mint_sent_again_gets_the_same_signatures() {
    use bitcoin::secp256k1::{Message, Secp256k1};
    use payment::credit::mint_quote_signature::mint_message_digest;
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let (quote, tx_hex, proof_hex) = key_locked_quote(&d, 600).await;
    let path = format!("/v1/mint/quote/onchain/{quote}/payment");
    let r = d
        .call(
            "POST",
            &path,
            None,
            Some(json!({"tx_hex": tx_hex, "proof_hex": proof_hex})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let wallet = common::Wallet::new(&d).await;
    let signed_request = |outputs: Vec<BlindedMessage>| {
        let digest = mint_message_digest(&quote, &outputs).expect("hex outputs");
        let sig =
            Secp256k1::new().sign_schnorr_no_aux_rand(&Message::from_digest(digest), &quote_key());
        json!({"quote": quote, "outputs": outputs, "signature": hex::encode(sig.as_ref())})
    };
    let blanks = wallet.outputs(&[256, 32]);
    let request = signed_request(blanks.iter().map(|b| b.msg.clone()).collect());
    let first = d
        .call("POST", "/v1/mint/onchain", None, Some(request.clone()))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let again = d
        .call("POST", "/v1/mint/onchain", None, Some(request))
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["signatures"], first.json()["signatures"]);
    let state = d
        .call(
            "GET",
            &format!("/v1/mint/quote/onchain/{quote}"),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(state["amount_issued"], 288, "issued once: {state}");
    // One output signed before, one new: not a retry.
    let mut mixed: Vec<BlindedMessage> = vec![blanks[1].msg.clone()];
    mixed.extend(wallet.outputs(&[64]).into_iter().map(|b| b.msg));
    cashu_refusal(
        &d.call(
            "POST",
            "/v1/mint/onchain",
            None,
            Some(signed_request(mixed)),
        )
        .await,
        11003,
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cashu_routes_answer_nut00_bodies_and_coinops_routes_keep_theirs() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    cashu_refusal(
        &d.call("GET", "/v1/keys/00ffffffffffffff", None, None).await,
        12001,
    );
    // Not JSON: no NUT code names it, still NUT-00's shape.
    let r = d
        .client
        .call("POST", "/v1/swap", None, Some(b"{not json".to_vec()))
        .await
        .expect("answer");
    cashu_refusal(&r, 0);
    cashu_refusal(
        &d.call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"amount": 10, "unit": "usd"})),
        )
        .await,
        11013,
    );
    cashu_refusal(
        &d.call(
            "POST",
            "/v1/mint/quote/onchain",
            None,
            Some(json!({"amount": 0, "unit": "sat"})),
        )
        .await,
        11006,
    );
    // coinop's own routes: {"error": {code, message}} as before.
    let r = d
        .call("POST", "/v1/quotes", None, Some(json!({"vcpus": 0})))
        .await;
    assert!(r.status >= 400, "{}", r.text());
    assert!(r.json()["error"]["code"].is_string(), "{}", r.text());
    let keys = d.call("GET", "/v1/keys", None, None).await.json();
    assert_eq!(keys["keysets"][0]["active"], true);
    assert_eq!(keys["keysets"][0]["input_fee_ppk"], 0);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_paid_with_credit_is_credited_net_of_the_input_fee() {
    use common::leases::{credit_payment, testguest_body};
    if !common::kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    // 1000 ppk: one sat per note spent.
    let d = Daemon::start(dir.path(), &["--input-fee-ppk", "1000"]).await;
    let keysets = d.call("GET", "/v1/keysets", None, None).await.json();
    assert_eq!(keysets["keysets"][0]["input_fee_ppk"], 1000);
    // 7 sat as 4 + 2 + 1: three notes, 3 sat of fee, 4 sat of lease balance.
    let proofs = d.mint_credit(7).await;
    assert_eq!(proofs.len(), 3);
    let lease = d
        .create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await;
    assert_eq!(lease.reply["balance_msat"], 4000, "{}", lease.reply);
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}
