//! Recovering a lease whose create reply was lost, with a real `coinopd` process killed
//! between the ledger commit and the reply (`COINOPD_FAULT`), real guests on /dev/kvm, and
//! the real socket: a retry with the same payment and its recovery key gets the same lease
//! and a working token (the previous token stops working); nobody without the key can get
//! it (the same 409 as any reuse of a spent payment); concurrent retries give one lease and
//! one valid token; the books balance throughout.

mod common;

use coinop_proto::{LeaseState, StopReason};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use coinop_cli::client::Reply;
use coinopd::fault::{point, ENV};
use coinopd::ledger::Ledger;
use common::cli_process::{coinop, coinop_with_stdout, lease_create_args};
use common::leases::CreatedLease;
use common::{kvm_or_skip, wait_for, Daemon};
use serde_json::{json, Value};

fn ledger(dir: &Path) -> Ledger {
    Ledger::open(&dir.join("ledger.db")).expect("open ledger")
}

fn books_balance(dir: &Path, id: &str) -> coinopd::ledger::Books {
    let b = ledger(dir).books(id).expect("books");
    assert!(b.balanced(), "books of {id} do not balance: {b:?}");
    b
}

/// Kills every guest the ledger knows a pid of when the test ends, also when it fails:
/// guests outlive coinopd by design, so nothing else would.
struct Guests(PathBuf);

impl Drop for Guests {
    fn drop(&mut self) {
        let Ok(l) = Ledger::open(&self.0.join("ledger.db")) else {
            return;
        };
        for row in l.list().unwrap_or_default() {
            if let Some(pid) = row.pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A real coinopd on a fresh state dir, started with `env` (e.g. an injected fault), whose
/// guests are killed when the test ends; `None` after the SKIPPED line where guests cannot
/// boot. Bind the parts in this order so they drop daemon first, state dir last.
async fn guarded_coinopd(env: &[(&str, &str)]) -> Option<(common::StateDir, Guests, Daemon)> {
    if !kvm_or_skip() {
        return None;
    }
    let dir = common::StateDir::new();
    let guests = Guests(dir.path().to_path_buf());
    let d = Daemon::spawn(dir.path(), &[], env).await;
    Some((dir, guests, d))
}

fn new_key() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn create_body(payment: &Value, cmdline: &str, key: Option<&str>) -> Value {
    let mut b = json!({"vcpus": 1, "mem_mib": 64, "image": "testguest", "cmdline": cmdline,
                       "payment": payment});
    if let Some(k) = key {
        b["recovery_key"] = json!(k);
    }
    b
}

fn credit(proofs: &[payment::credit::nut_types::Proof]) -> Value {
    json!({"credit": {"proofs": proofs}})
}

/// The only lease in the ledger (the one whose reply was lost).
fn only_lease(dir: &Path) -> String {
    let rows = ledger(dir).list().expect("list");
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0].id.clone()
}

async fn create(d: &Daemon, body: &Value) -> Reply {
    d.call("POST", "/v1/leases", None, Some(body.clone())).await
}

async fn show(d: &Daemon, id: &str, token: &str) -> Reply {
    d.call("GET", &format!("/v1/leases/{id}"), Some(token), None)
        .await
}

/// Asserts a 409 `already_spent` and returns its body, to compare answers.
fn already_spent(r: &Reply) -> Value {
    assert_eq!(r.status, 409, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "already_spent", "{v}");
    v
}

/// A successful recovery of lease `id`: returns (token, token_seq).
fn recovered(r: &Reply, id: &str) -> (String, u64) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["lease_id"], id, "{v}");
    assert_eq!(v["recovered"], true, "{v}");
    let token = v["token"].as_str().expect("token").to_string();
    assert_eq!(token.len(), 64, "{v}");
    (token, v["token_seq"].as_u64().expect("token_seq"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_create_lost_after_the_commit_is_recovered_booted_and_kept_from_others() {
    let Some((dir, _guests, d)) = guarded_coinopd(&[(ENV, point::CREATE_COMMITTED)]).await else {
        return;
    };
    let proofs = d.mint_credit(20).await;
    let payment = credit(&proofs);
    let key = new_key();
    let body = create_body(&payment, "mode=echo", Some(&key));
    d.create_into_crash(&body).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let id = only_lease(dir.path());
    // The restart found no guest: the lease waits, stopped, with its whole balance.
    let row = ledger(dir.path()).get(&id).expect("get").expect("row");
    assert_eq!(
        (row.state, row.stop_reason),
        (LeaseState::Stopped, Some(StopReason::BootFailed))
    );

    // Someone with the same proofs but not the key: the answer of any reuse, word for word.
    let no_key = already_spent(&create(&d, &create_body(&payment, "mode=echo", None)).await);
    let other_key = new_key();
    let wrong =
        already_spent(&create(&d, &create_body(&payment, "mode=echo", Some(&other_key))).await);
    assert_eq!(
        no_key, wrong,
        "a wrong key must not be told apart from none"
    );

    // Two retries at once: one lease, booted once, and only the last token issued works.
    let (a, b) = tokio::join!(create(&d, &body), create(&d, &body));
    let (ta, sa) = recovered(&a, &id);
    let (tb, sb) = recovered(&b, &id);
    assert_eq!(
        {
            let mut s = [sa, sb];
            s.sort_unstable();
            s
        },
        [2, 3],
        "the create issued 1, each retry one more"
    );
    let (last, stale) = if sa > sb { (&ta, &tb) } else { (&tb, &ta) };
    assert_eq!(show(&d, &id, stale).await.status, 401, "superseded token");
    let shown = show(&d, &id, last).await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    wait_for(
        async || show(&d, &id, last).await.json()["state"] == "running",
        "the recovered lease to boot",
    )
    .await;
    let rows = ledger(dir.path()).list().expect("list");
    assert_eq!(rows.len(), 1, "retries create no lease: {rows:?}");
    let console = d
        .call("GET", &format!("/v1/leases/{id}/console"), Some(last), None)
        .await;
    assert_eq!(console.status, 200);

    // One more retry: a new token, and the one before it stops working.
    let (t4, s4) = recovered(&create(&d, &body).await, &id);
    assert_eq!(s4, 4);
    assert_eq!(show(&d, &id, last).await.status, 401);
    let v = show(&d, &id, &t4).await;
    assert_eq!(v.status, 200, "{}", v.text());
    assert_eq!(
        v.json()["state"],
        "running",
        "already booted: not booted again"
    );

    // After the recovery the same proofs still pay for nothing else.
    already_spent(&create(&d, &create_body(&payment, "mode=echo", Some(&other_key))).await);
    already_spent(&create(&d, &create_body(&payment, "mode=echo", None)).await);
    let b = books_balance(dir.path(), &id);
    assert_eq!(b.paid_msat, 20_000, "{b:?}");

    d.stop_lease(&id, &t4).await;
    books_balance(dir.path(), &id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onchain_create_lost_after_the_boot_is_recovered_only_with_its_key() {
    let Some((dir, _guests, d)) = guarded_coinopd(&[(ENV, point::CREATE_GUEST_READY)]).await else {
        return;
    };
    let payment = d.onchain_payment(600).await;
    let key = new_key();
    let body = create_body(&payment, "mode=echo", Some(&key));
    d.create_into_crash(&body).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let id = only_lease(dir.path());
    let row = ledger(dir.path()).get(&id).expect("get").expect("row");
    assert_eq!(row.state, LeaseState::Running, "the guest was re-adopted");

    // The transaction and its proof are public: knowing them (even with the quote id) is
    // not owning the lease.
    let no_key = already_spent(&create(&d, &create_body(&payment, "mode=echo", None)).await);
    let wrong =
        already_spent(&create(&d, &create_body(&payment, "mode=echo", Some(&new_key()))).await);
    assert_eq!(no_key, wrong);
    // A malformed key is refused as malformed before anything else.
    let bad = create(&d, &create_body(&payment, "mode=echo", Some("abc"))).await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    let (token, seq) = recovered(&create(&d, &body).await, &id);
    assert_eq!(seq, 2);
    let v = show(&d, &id, &token).await;
    assert_eq!(v.status, 200, "{}", v.text());
    assert_eq!(v.json()["state"], "running");
    // The lease kept its guest and its metering: no second boot, no second payment.
    let after = ledger(dir.path()).get(&id).expect("get").expect("row");
    assert_eq!(after.pid, row.pid, "same guest");
    wait_for(
        async || books_balance(dir.path(), &id).debited_msat > 0,
        "metering of the recovered lease",
    )
    .await;
    let b = books_balance(dir.path(), &id);
    assert_eq!(
        b.paid_msat,
        row.balance_msat + row.debited_msat,
        "paid once: {b:?}"
    );

    d.stop_lease(&id, &token).await;
    books_balance(dir.path(), &id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_delivered_create_rotate_the_token_and_reuse_stays_refused() {
    let Some((dir, _guests, d)) = guarded_coinopd(&[]).await else {
        return;
    };
    let proofs = d.mint_credit(15).await;
    let payment = credit(&proofs);
    let key = new_key();
    let body = create_body(&payment, "mode=echo", Some(&key));
    let CreatedLease {
        id,
        token: t1,
        reply: v,
    } = d.create_lease(body.clone()).await;
    assert_eq!(v["token_seq"], 1);
    assert_eq!(show(&d, &id, &t1).await.status, 200);

    // A retry, a stranger and another retry, all at once.
    let stranger_body = create_body(&payment, "mode=echo", Some(&new_key()));
    let (a, stranger, b) = tokio::join!(
        create(&d, &body),
        create(&d, &stranger_body),
        create(&d, &body)
    );
    already_spent(&stranger);
    let (ta, sa) = recovered(&a, &id);
    let (tb, sb) = recovered(&b, &id);
    let valid: Vec<&str> = [(&t1, 1), (&ta, sa), (&tb, sb)]
        .iter()
        .filter(|(_, s)| *s == sa.max(sb))
        .map(|(t, _)| t.as_str())
        .collect();
    for (t, s) in [(&t1, 1), (&ta, sa), (&tb, sb)] {
        let want = if valid.contains(&t.as_str()) {
            200
        } else {
            401
        };
        assert_eq!(show(&d, &id, t).await.status, want, "token_seq {s}");
    }
    assert_eq!(ledger(dir.path()).list().expect("list").len(), 1);
    books_balance(dir.path(), &id);
    // The operator sees the recoveries (the tests run as root, the operator).
    let m = d.call("GET", "/metrics", None, None).await.text();
    let line = m
        .lines()
        .find(|l| l.contains(r#"result="recovered""#) && l.contains(r#"kind="credit""#))
        .unwrap_or_else(|| panic!("no recovered payments in {m}"));
    assert!(line.ends_with(" 2"), "{line}");
    d.stop_lease(&id, valid[0]).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinop_lease_create_run_again_after_a_lost_reply_gets_the_lease() {
    let Some((dir, _guests, d)) = guarded_coinopd(&[(ENV, point::CREATE_COMMITTED)]).await else {
        return;
    };
    let proofs = d.mint_credit(12).await;
    let proofs_file = dir.path().join("proofs.json");
    std::fs::write(&proofs_file, serde_json::to_vec(&proofs).expect("json")).expect("write");
    let key_file = dir.path().join("create.key");
    let socket = d.socket.clone();
    let args = [
        &["--json"][..],
        &lease_create_args(&[
            "--cmdline",
            "mode=echo",
            "--credit",
            proofs_file.to_str().expect("utf-8 path"),
            "--recovery-key-file",
            key_file.to_str().expect("utf-8 path"),
            "--retries",
            "0",
        ]),
    ]
    .concat();
    let lost = tokio::task::block_in_place(|| coinop(&socket, &args));
    let err = String::from_utf8_lossy(&lost.stderr);
    assert_eq!(lost.status.code(), Some(3), "{err}");
    assert!(
        err.contains("run the same command again") && err.contains("create.key"),
        "{err}"
    );
    let key = std::fs::read_to_string(&key_file).expect("the key was kept");
    assert_eq!(key.trim().len(), 64);
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let id = only_lease(dir.path());
    let again = tokio::task::block_in_place(|| coinop(&d.socket, &args));
    assert_eq!(
        again.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let v: Value = serde_json::from_slice(&again.stdout).expect("the daemon's JSON");
    assert_eq!(v["lease_id"], id.as_str(), "{v}");
    assert_eq!(v["recovered"], true, "{v}");
    let token = v["token"].as_str().expect("token");
    assert_eq!(show(&d, &id, token).await.status, 200);
    assert!(
        !key_file.exists(),
        "the key is dropped once the lease is shown"
    );
    // Without the key (gone now), the same command is an ordinary reuse: 409.
    let third = tokio::task::block_in_place(|| coinop(&d.socket, &args));
    assert_eq!(third.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&third.stderr).contains("already_spent"));
    books_balance(dir.path(), &id);
    wait_for(
        async || show(&d, &id, token).await.json()["state"] == "running",
        "the recovered lease to boot",
    )
    .await;
    d.stop_lease(&id, token).await;
    d.shutdown().await;
}

/// `coinop lease create` whose answer cannot be written (stdout is /dev/full, as a full disk
/// or a closed pipe) made the lease all the same: the token is only in that answer, so the
/// recovery key must stay. The run exits 4 saying so, the key file is kept, and the same
/// command with a working stdout gets the lease back (`recovered`), then drops the key. In
/// both output modes: `--json` and the human text write to stdout differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_cannot_be_written_keeps_its_key_and_the_rerun_gets_the_lease() {
    let Some((dir, _guests, d)) = guarded_coinopd(&[]).await else {
        return;
    };
    let mut seen = Vec::new();
    for json_mode in [true, false] {
        let proofs = d.mint_credit(12).await;
        let proofs_file = dir.path().join(format!("proofs-{json_mode}.json"));
        std::fs::write(&proofs_file, serde_json::to_vec(&proofs).expect("json")).expect("write");
        let key_file = dir.path().join(format!("create-{json_mode}.key"));
        let create = lease_create_args(&[
            "--cmdline",
            "mode=echo",
            "--credit",
            proofs_file.to_str().expect("utf-8 path"),
            "--recovery-key-file",
            key_file.to_str().expect("utf-8 path"),
        ]);
        let args = if json_mode {
            [&["--json"][..], &create].concat()
        } else {
            create
        };
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let lost = tokio::task::block_in_place(|| coinop_with_stdout(&d.socket, &args, full));
        let err = String::from_utf8_lossy(&lost.stderr);
        assert_eq!(lost.status.code(), Some(4), "json {json_mode}: {err}");
        assert!(
            err.contains("run the same command again")
                && err.contains(key_file.to_str().expect("utf-8")),
            "{err}"
        );
        assert!(key_file.exists(), "json {json_mode}: the key was kept");
        let rows = ledger(dir.path()).list().expect("list");
        let id = rows
            .iter()
            .map(|r| r.id.clone())
            .find(|id| !seen.contains(id))
            .expect("the create made its lease");
        assert_eq!(rows.len(), seen.len() + 1, "{rows:?}");
        seen.push(id.clone());

        let again = tokio::task::block_in_place(|| coinop(&d.socket, &args));
        let out = String::from_utf8_lossy(&again.stdout).into_owned();
        assert_eq!(
            again.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
        let token = if json_mode {
            let v: Value = serde_json::from_str(&out).expect("the daemon's JSON");
            assert_eq!(v["lease_id"], id.as_str(), "{v}");
            assert_eq!(v["recovered"], true, "{v}");
            v["token"].as_str().expect("token").to_string()
        } else {
            assert!(out.contains(&id) && out.contains("recovered"), "{out}");
            out.lines()
                .find_map(|l| l.strip_prefix("token"))
                .and_then(|rest| rest.split_whitespace().next())
                .expect("a token line")
                .to_string()
        };
        assert_eq!(show(&d, &id, &token).await.status, 200, "the token works");
        assert!(!key_file.exists(), "dropped once the lease was shown");
        assert_eq!(ledger(dir.path()).list().expect("list").len(), seen.len());
        books_balance(dir.path(), &id);
        d.stop_lease(&id, &token).await;
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_boot_failure_refund_is_signed_again_for_the_same_outputs_only() {
    let dir = common::StateDir::new();
    let _guests = Guests(dir.path().to_path_buf());
    // An image whose kernel is not one fails every boot (the VMM refuses it at load), on
    // any host and under any load; a short boot timeout did not when the VMM won the race.
    let not_a_kernel = dir.path().join("not-a-kernel");
    std::fs::write(&not_a_kernel, b"not an ELF or bzImage").expect("write");
    let image = format!("broken={}", not_a_kernel.display());
    let d = Daemon::spawn(
        dir.path(),
        &["--image", &image],
        &[(ENV, point::CREATE_REFUNDED)],
    )
    .await;
    let proofs = d.mint_credit(8).await;
    let wallet = common::Wallet::new(&d).await;
    let blanks = wallet.outputs(&[1, 1, 1, 1]);
    let outputs: Vec<_> = blanks.iter().map(|b| &b.msg).collect();
    let key = new_key();
    let mut body = create_body(&credit(&proofs), "mode=echo", Some(&key));
    body["outputs"] = json!(outputs);
    body["image"] = json!("broken");
    d.create_into_crash(&body).await;

    let d = Daemon::spawn(dir.path(), &["--image", &image], &[]).await;
    let id = only_lease(dir.path());
    let row = ledger(dir.path()).get(&id).expect("get").expect("row");
    assert_eq!(
        row.refunded_msat,
        Some(8000),
        "the refund committed: {row:?}"
    );

    let r = create(&d, &body).await;
    let (token, _) = recovered(&r, &id);
    let v = r.json();
    assert_eq!(v["state"], "stopped", "{v}");
    assert_eq!(
        v["stop_reason"], "boot_failed",
        "refunded: not booted again: {v}"
    );
    assert_eq!(v["refund"]["refund_msat"], 8000, "{v}");
    let sigs: Vec<payment::credit::nut_types::BlindSignature> =
        serde_json::from_value(v["refund"]["signatures"].clone()).expect("signatures");
    let change = wallet.unblind(&blanks, &sigs);
    assert_eq!(change.iter().map(|p| p.amount).sum::<u64>(), 8);
    // The change is real: the mint takes it in a swap.
    let fresh = wallet.outputs(&[8]);
    let swap =
        json!({"inputs": change, "outputs": fresh.iter().map(|b| &b.msg).collect::<Vec<_>>()});
    let swapped = d.call("POST", "/v1/swap", None, Some(swap.clone())).await;
    assert_eq!(swapped.status, 200, "{}", swapped.text());

    // Signing the same outputs again gives the same notes, already spent: no new money.
    let again = create(&d, &body).await;
    recovered(&again, &id);
    assert_eq!(
        again.json()["refund"]["signatures"],
        v["refund"]["signatures"]
    );
    // Swapping them again with other outputs is refused (the same swap again would only
    // get its own signatures back).
    let mut double = swap.clone();
    double["outputs"] = json!(wallet
        .outputs(&[8])
        .iter()
        .map(|b| b.msg.clone())
        .collect::<Vec<_>>());
    let double = d.call("POST", "/v1/swap", None, Some(double)).await;
    assert_eq!(
        (double.status, &double.json()["code"]),
        (400, &json!(11001)),
        "NUT-00: already spent: {}",
        double.text()
    );
    let same = d.call("POST", "/v1/swap", None, Some(swap)).await;
    assert_eq!(same.body, swapped.body, "{}", same.text());
    // Other outputs get no signatures, only the lease.
    let mut other = body.clone();
    other["outputs"] = json!(wallet
        .outputs(&[1, 1, 1, 1])
        .iter()
        .map(|b| b.msg.clone())
        .collect::<Vec<_>>());
    let r = create(&d, &other).await;
    recovered(&r, &id);
    assert!(r.json()["refund"].is_null(), "{}", r.text());
    let v = show(&d, &id, &token).await;
    assert_eq!(v.status, 401, "superseded by the later retries");
    let b = books_balance(dir.path(), &id);
    assert_eq!((b.paid_msat, b.refunded_msat), (8000, 8000));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_still_answers_the_retry_that_owns_the_lease_filling_it() {
    let Some((dir, _guests, d)) = guarded_coinopd(&[]).await else {
        return;
    };
    let payment = credit(&d.mint_credit(60).await);
    let key = new_key();
    // All of the host's memory (2048 MiB in the test config): nothing else fits.
    let mut body = create_body(&payment, "mode=echo", Some(&key));
    body["mem_mib"] = json!(2048);
    let id = d.create_lease(body.clone()).await.id;

    let (token, seq) = recovered(&create(&d, &body).await, &id);
    assert_eq!(seq, 2);
    assert_eq!(show(&d, &id, &token).await.status, 200);
    // Anyone else with this payment meets its 409, full host or not, exactly as without
    // recovery (the payment is checked, and found spent, before room is looked for) ...
    let mut stranger = body.clone();
    stranger["recovery_key"] = json!(new_key());
    let r = create(&d, &stranger).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "already_spent");
    // ... and a new payment meets the full host.
    let fresh = create_body(&credit(&d.mint_credit(60).await), "mode=echo", None);
    let r = create(&d, &fresh).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "host_full");
    books_balance(dir.path(), &id);
    d.stop_lease(&id, &token).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_never_booted_waits_for_room_and_boots_on_a_later_retry() {
    let Some((dir, _guests, d)) = guarded_coinopd(&[(ENV, point::CREATE_COMMITTED)]).await else {
        return;
    };
    let payment = credit(&d.mint_credit(40).await);
    let other = credit(&d.mint_credit(60).await);
    let key = new_key();
    let mut body = create_body(&payment, "mode=echo", Some(&key));
    body["mem_mib"] = json!(1024);
    d.create_into_crash(&body).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let id = only_lease(dir.path());
    // Someone else takes the whole host meanwhile.
    let mut big = create_body(&other, "mode=echo", None);
    big["mem_mib"] = json!(2048);
    let CreatedLease {
        id: big_id,
        token: big_token,
        ..
    } = d.create_lease(big).await;

    let full = create(&d, &body).await;
    assert_eq!(full.status, 503, "{}", full.text());
    let v = full.json();
    assert_eq!(v["error"]["code"], "host_full", "{v}");
    assert_eq!(v["lease_id"], id.as_str(), "{v}");
    let waiting = v["token"].as_str().expect("token").to_string();
    let shown = show(&d, &id, &waiting).await;
    assert_eq!(shown.status, 200, "the token works: {}", shown.text());
    assert_eq!(shown.json()["state"], "stopped");

    d.stop_lease(&big_id, &big_token).await;
    let (token, seq) = recovered(&create(&d, &body).await, &id);
    assert_eq!(seq, 3);
    assert_eq!(show(&d, &id, &waiting).await.status, 401);
    assert_eq!(show(&d, &id, &token).await.json()["state"], "running");
    books_balance(dir.path(), &id);
    books_balance(dir.path(), &big_id);
    d.stop_lease(&id, &token).await;
    d.shutdown().await;
}

/// How many outputs paying quote `quote` the daemon's payment watch has seen in blocks.
fn outputs_seen(dir: &Path, quote: &str) -> i64 {
    let db = rusqlite::Connection::open(dir.join("ledger.db")).expect("ledger db");
    db.query_row(
        "SELECT count(*) FROM watch_seen_outputs WHERE quote_id = ?1",
        [quote],
        |r| r.get(0),
    )
    .expect("count seen outputs")
}

/// A payment named by quote id alone counts the quote's outputs deep enough when it is
/// checked. A tenant who paid the quote twice has its create count the first output; the
/// reply is lost; by the retry the second output is deep too, so the retry brings more
/// keys than committed. It is still the same request (same quote, same recovery key): it
/// gets its lease back. The second output is not stranded: a top-up of the lease by the
/// same quote id credits it, once; nobody else can spend either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_by_quote_id_is_recovered_after_another_payment_to_the_quote_got_deep() {
    use common::bcoin::{bcoin_dir, wait_for_quote, wait_for_tip, Bcoin};
    use std::time::Duration;
    let Some(bcoin) = bcoin_dir() else { return };
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let _guests = Guests(dir.path().to_path_buf());
    let node = Bcoin::start_with_wallet(&bcoin);
    let funds = node.fund_wallet().await;
    let peer = node.p2p_addr();
    let args = ["--network", "regtest", "--bitcoin-peer", peer.as_str()];
    let d = Daemon::spawn(dir.path(), &args, &[(ENV, point::CREATE_COMMITTED)]).await;
    wait_for_tip(&d, &node.best_hash().await, Duration::from_secs(60)).await;

    let q = d.quote(1, 64, 3600).await;
    let qid = q["quote_id"].as_str().expect("quote_id").to_string();
    let address = q["address"].as_str().expect("address").to_string();
    let sat = q["amount_sat"].as_u64().expect("amount_sat");
    node.wallet_pays(&address, sat).await;
    node.generate_to(1, &funds).await;
    wait_for_quote(&d, &qid, "seen").await;
    // The tenant pays the quote a second time: not mined yet when the create counts.
    node.wallet_pays(&address, sat).await;
    let payment = json!({"onchain": {"quote_id": qid}});
    let key = new_key();
    let body = create_body(&payment, "mode=echo", Some(&key));
    d.create_into_crash(&body).await;
    let id = only_lease(dir.path());
    assert_eq!(books_balance(dir.path(), &id).paid_msat, sat * 1000);

    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    let mined = node.generate_to(1, &funds).await;
    wait_for_tip(&d, &mined[0], Duration::from_secs(60)).await;
    wait_for(
        async || outputs_seen(dir.path(), &qid) == 2,
        "the second payment to the quote to be seen",
    )
    .await;

    // Knowing the quote id is not owning the lease.
    already_spent(&create(&d, &create_body(&payment, "mode=echo", Some(&new_key()))).await);
    already_spent(&create(&d, &create_body(&payment, "mode=echo", None)).await);
    let (token, seq) = recovered(&create(&d, &body).await, &id);
    assert_eq!(seq, 2);
    assert_eq!(
        ledger(dir.path()).list().expect("list").len(),
        1,
        "no new lease"
    );
    assert_eq!(books_balance(dir.path(), &id).paid_msat, sat * 1000);
    wait_for(
        async || show(&d, &id, &token).await.json()["state"] == "running",
        "the recovered lease to boot",
    )
    .await;

    // The second output goes to the lease the quote paid for, once.
    let topup = format!("/v1/leases/{id}/topup");
    let tb = json!({ "payment": payment });
    let r = d.call("POST", &topup, Some(&token), Some(tb.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(books_balance(dir.path(), &id).paid_msat, 2 * sat * 1000);
    let again = d.call("POST", &topup, Some(&token), Some(tb)).await;
    assert_eq!(again.status, 200, "a retry is answered: {}", again.text());
    assert_eq!(books_balance(dir.path(), &id).paid_msat, 2 * sat * 1000);
    // And the create retried once more still gets the same lease.
    let (token, seq) = recovered(&create(&d, &body).await, &id);
    assert_eq!(seq, 3);

    d.stop_lease(&id, &token).await;
    books_balance(dir.path(), &id);
    d.shutdown().await;
}
