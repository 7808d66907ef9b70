//! Every reply is recoverable: a real `coinopd` is killed (`COINOPD_FAULT`) right after a
//! stop's refund, a top-up, an on-chain mint or a swap committed and before it replied, or
//! the client hangs up right after sending; after a restart on the same state directory the
//! same request again gets the same answer (the same blind signatures, which unblind to the
//! same notes), nothing is paid out or credited twice (the signatures' amounts add up to
//! what was paid, the books balance), and any other reuse still gets the 409 it always got.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use coinop_cli::client::Reply;
use coinopd::fault::{point, ENV};
use coinopd::ledger::{Books, Ledger};
use common::leases::{credit_payment, testguest_body, CreatedLease};
use common::{kvm_or_skip, wait_for, Blank, Daemon, Wallet};
use payment::credit::nut_types::{BlindSignature, Proof};
use serde_json::{json, Value};

fn ledger(dir: &Path) -> Ledger {
    Ledger::open(&dir.join("ledger.db")).expect("open ledger")
}

fn balanced_books(dir: &Path, id: &str) -> Books {
    let b = ledger(dir).books(id).expect("books");
    assert!(b.balanced(), "books of {id} do not balance: {b:?}");
    b
}

fn messages(blanks: &[Blank]) -> Vec<&payment::credit::nut_types::BlindedMessage> {
    blanks.iter().map(|b| &b.msg).collect()
}

fn signatures(r: &Reply) -> Vec<BlindSignature> {
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_value(r.json()["signatures"].clone()).expect("signatures")
}

fn sum(sigs: &[BlindSignature]) -> u64 {
    sigs.iter().map(|s| s.amount).sum()
}

fn conflict(r: &Reply, code: &str) {
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
}

/// A Cashu route's refusal: NUT-00's 400 with `{"detail", "code"}`.
fn cashu_refusal(r: &Reply, code: u64) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], code, "{}", r.text());
    assert!(r.json()["detail"].is_string(), "{}", r.text());
}

/// Sends `body` to a daemon whose injected fault aborts it after the commit; asserts that no
/// answer came and that it died of SIGABRT.
async fn call_into_crash(d: Daemon, path: &str, token: Option<&str>, body: &Value) {
    let r = d
        .client
        .call(
            "POST",
            path,
            token,
            Some(serde_json::to_vec(body).expect("a Value serializes")),
        )
        .await;
    assert!(r.is_err(), "coinopd answered despite the fault: {r:?}");
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
}

/// Writes a whole request to the daemon's socket and closes the connection at once, without
/// reading any answer: a client that gives up right after sending.
async fn send_and_hang_up(socket: &Path, path: &str, token: Option<&str>, body: &Value) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_vec(body).expect("json");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("send head");
    s.write_all(&body).await.expect("send body");
    drop(s);
}

/// Swaps `proofs` for fresh notes of the same amounts: 200 proves they are good notes.
async fn swap_away(d: &Daemon, proofs: &[Proof]) -> Reply {
    let wallet = Wallet::new(d).await;
    let fresh = wallet.outputs(&proofs.iter().map(|p| p.amount).collect::<Vec<_>>());
    d.call(
        "POST",
        "/v1/swap",
        None,
        Some(json!({"inputs": proofs, "outputs": messages(&fresh)})),
    )
    .await
}

/// How many outpoints the ledger's spent set holds as claimed by a mint against `quote`.
fn mint_claims(dir: &Path, quote: &str) -> i64 {
    let db = rusqlite::Connection::open(dir.join("ledger.db")).expect("ledger db");
    db.query_row(
        "SELECT count(*) FROM spent_keys WHERE note = ?1 AND receipt IS NOT NULL",
        [format!("mint quote {quote}")],
        |r| r.get(0),
    )
    .expect("count claims")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_whose_reply_was_lost_is_answered_again_with_the_same_signatures() {
    let dir = common::StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::MINT_COMMITTED)]).await;
    let (body, wallet, blanks) = d.mint_request(21).await;
    call_into_crash(d, "/v1/mint/onchain", None, &body).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let first = d
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    let sigs = signatures(&first);
    assert_eq!(sum(&sigs), 21, "exactly what was paid");
    let again = d
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    assert_eq!(again.body, first.body, "the same answer, byte for byte");
    // The same payment onto other outputs would be new money: refused as ever.
    let mut other = body.clone();
    other["outputs"] = json!(messages(
        &wallet.outputs(&payment::credit::amount::split(21))
    ));
    // NUT-04 20002: this payment's quote has been issued.
    cashu_refusal(
        &d.call("POST", "/v1/mint/onchain", None, Some(other)).await,
        20002,
    );
    // The notes are good, and there is one set of them: spent once, they are spent.
    let notes = wallet.unblind(&blanks, &sigs);
    assert_eq!(swap_away(&d, &notes).await.status, 200);
    cashu_refusal(&swap_away(&d, &notes).await, 11001);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_whose_reply_was_lost_is_answered_again_with_the_same_signatures() {
    let dir = common::StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::SWAP_COMMITTED)]).await;
    let proofs = d.mint_credit(12).await;
    let wallet = Wallet::new(&d).await;
    let blanks = wallet.outputs(&[4, 4, 4]);
    let body = json!({"inputs": proofs, "outputs": messages(&blanks)});
    call_into_crash(d, "/v1/swap", None, &body).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let first = d.call("POST", "/v1/swap", None, Some(body.clone())).await;
    let sigs = signatures(&first);
    assert_eq!(sum(&sigs), 12, "exactly what went in");
    let again = d.call("POST", "/v1/swap", None, Some(body.clone())).await;
    assert_eq!(again.body, first.body, "the same answer, byte for byte");
    let other = json!({"inputs": proofs, "outputs": messages(&wallet.outputs(&[4, 8]))});
    cashu_refusal(&d.call("POST", "/v1/swap", None, Some(other)).await, 11001);
    let notes = wallet.unblind(&blanks, &sigs);
    assert_eq!(swap_away(&d, &notes).await.status, 200);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_refund_reply_was_lost_is_answered_again_with_the_same_signatures() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::STOP_COMMITTED)]).await;
    let proofs = d.mint_credit(7).await;
    let CreatedLease { id, token, .. } = d
        .create_lease(testguest_body("mode=echo", credit_payment(&proofs)))
        .await;
    let wallet = Wallet::new(&d).await;
    let blanks = wallet.outputs(&[1; 8]);
    let body = json!({"outputs": messages(&blanks)});
    let stop = format!("/v1/leases/{id}/stop");
    call_into_crash(d, &stop, Some(&token), &body).await;
    let refunded = ledger(dir.path()).get(&id).expect("get").expect("row");
    let refund_msat = refunded
        .refunded_msat
        .expect("the refund committed before the crash");

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let first = d
        .call("POST", &stop, Some(&token), Some(body.clone()))
        .await;
    let sigs = signatures(&first);
    let v = first.json();
    assert_eq!(v["state"], "stopped", "{v}");
    assert_eq!(v["refund_msat"], refund_msat, "{v}");
    assert_eq!(sum(&sigs) * 1000, refund_msat, "the refund, once: {v}");
    let again = d
        .call("POST", &stop, Some(&token), Some(body.clone()))
        .await;
    assert_eq!(again.body, first.body, "the same answer, byte for byte");
    // Other outputs, or none: the balance was handed back already.
    let other = json!({"outputs": messages(&wallet.outputs(&[1; 8]))});
    conflict(
        &d.call("POST", &stop, Some(&token), Some(other)).await,
        "already_refunded",
    );
    conflict(
        &d.call("POST", &stop, Some(&token), None).await,
        "already_refunded",
    );
    let b = balanced_books(dir.path(), &id);
    assert_eq!((b.paid_msat, b.refunded_msat), (7000, refund_msat), "{b:?}");
    let notes = wallet.unblind(&blanks, &sigs);
    assert_eq!(swap_away(&d, &notes).await.status, 200);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_up_whose_reply_was_lost_is_answered_again_and_credited_once() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let args = ["--grace-s", "120"];
    let d = Daemon::spawn(dir.path(), &args, &[(ENV, point::TOPUP_COMMITTED)]).await;
    // 3 sat: a few seconds of a spinning vCPU, then paused for lack of funds.
    let proofs = d.mint_credit(3).await;
    let CreatedLease { id, token, .. } = d
        .create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await;
    // Minted before the pause: the lease's grace is only as long as it ran.
    let more = d.mint_credit(5).await;
    let lease = format!("/v1/leases/{id}");
    wait_for(
        async || {
            d.call("GET", &lease, Some(&token), None).await.json()["state"] == "paused_unfunded"
        },
        "pause at zero",
    )
    .await;
    let body = json!({"payment": credit_payment(&more)});
    let topup = format!("/v1/leases/{id}/topup");
    call_into_crash(d, &topup, Some(&token), &body).await;
    assert_eq!(balanced_books(dir.path(), &id).paid_msat, 8000, "committed");

    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    let first = d
        .call("POST", &topup, Some(&token), Some(body.clone()))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let v = first.json();
    assert_eq!(
        (v["lease_id"].as_str(), v["resumed"].as_bool()),
        (Some(id.as_str()), Some(true)),
        "{v}"
    );
    assert_eq!(v["state"], "running", "{v}");
    let again = d
        .call("POST", &topup, Some(&token), Some(body.clone()))
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["resumed"], true);
    // Credited once, and the guest runs as the ledger says.
    let b = balanced_books(dir.path(), &id);
    assert_eq!(b.paid_msat, 8000, "{b:?}");
    let control = ledger(dir.path())
        .get(&id)
        .expect("get")
        .expect("row")
        .control_path;
    let status = vmm_protocol::client::status(Path::new(&control))
        .await
        .expect("guest status");
    assert_eq!(status.state, vmm_protocol::VmState::Running);
    // The same payment anywhere else is spent, as ever.
    conflict(
        &d.call(
            "POST",
            "/v1/leases",
            None,
            Some(testguest_body("mode=echo", credit_payment(&more))),
        )
        .await,
        "already_spent",
    );
    d.stop_lease(&id, &token).await;
    balanced_books(dir.path(), &id);
    d.shutdown().await;
}

/// Long enough for a request the daemon kept working on after its client left to finish.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// A client that hangs up right after sending either had its request dropped before
/// anything was committed (hyper abandons a request whose connection reads EOF mid-message)
/// or carried out whole; never half (money taken, nothing handed out; a lease refunded
/// with its guest still running). Either way, the same request again gets the full answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_after_sending_loses_nothing() {
    let dir = common::StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let (body, wallet, blanks) = d.mint_request(13).await;
    let quote = body["payment"]["quote_id"]
        .as_str()
        .expect("quote_id")
        .to_string();
    send_and_hang_up(&d.socket, "/v1/mint/onchain", None, &body).await;
    tokio::time::sleep(SETTLE).await;
    let abandoned = mint_claims(dir.path(), &quote);
    assert!(abandoned <= 1, "{abandoned} claims");
    let r = d
        .call("POST", "/v1/mint/onchain", None, Some(body.clone()))
        .await;
    let sigs = signatures(&r);
    assert_eq!(
        sum(&sigs),
        13,
        "what was paid, whether the first try committed or not"
    );
    assert_eq!(mint_claims(dir.path(), &quote), 1);
    assert_eq!(
        swap_away(&d, &wallet.unblind(&blanks, &sigs)).await.status,
        200
    );

    if !kvm_or_skip() {
        d.shutdown().await;
        return;
    }
    let proofs = d.mint_credit(6).await;
    let CreatedLease { id, token, .. } = d
        .create_lease(testguest_body("mode=echo", credit_payment(&proofs)))
        .await;
    let blanks = wallet.outputs(&[1; 8]);
    let body = json!({"outputs": messages(&blanks)});
    let stop = format!("/v1/leases/{id}/stop");
    send_and_hang_up(&d.socket, &stop, Some(&token), &body).await;
    tokio::time::sleep(SETTLE).await;
    let row = ledger(dir.path()).get(&id).expect("get").expect("row");
    if row.refunded_msat.is_some() {
        // Carried out: then wholly, the guest stopped too.
        wait_for(
            async || common::guest_reaper::running_vmms(dir.path()).is_empty(),
            "the guest of the abandoned stop to end",
        )
        .await;
    } else {
        assert_eq!(row.state, coinop_proto::LeaseState::Running, "{row:?}");
    }
    let r = d.call("POST", &stop, Some(&token), Some(body)).await;
    let sigs = signatures(&r);
    let b = balanced_books(dir.path(), &id);
    assert_eq!(sum(&sigs) * 1000, b.refunded_msat, "{b:?}");
    assert_eq!(
        swap_away(&d, &wallet.unblind(&blanks, &sigs)).await.status,
        200
    );
    wait_for(
        async || common::guest_reaper::running_vmms(dir.path()).is_empty(),
        "the stopped guest to end",
    )
    .await;
    d.shutdown().await;
}
