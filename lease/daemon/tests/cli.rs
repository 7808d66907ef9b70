//! The `coinop` CLI against a real daemon socket: human output, `--json` exactly as the
//! daemon answered, payment flags, and the exit codes scripts rely on (0 ok, 1 daemon error,
//! 2 usage, 3 unreachable), each failure explained in one line.

mod common;

use std::process::Output;

use common::cli_process::{coinop, coinop_async, lease_create_args};
use common::{kvm_or_skip, Daemon};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure: the exit code and exactly one line on stderr that contains `needle`.
fn assert_fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("coinop: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

#[test]
fn usage_errors_and_an_unreachable_daemon_have_their_own_exit_codes() {
    let dir = common::StateDir::new();
    let missing = dir.path().join("nobody-listens.sock");
    assert_fails(&coinop(&missing, &["--bogus", "host"]), 2, "--bogus");
    assert_fails(
        &coinop(&missing, &["lease", "create", "--vcpus", "1"]),
        2,
        "--mem-mib",
    );
    // On-chain flags come as a set.
    assert_fails(
        &coinop(&missing, &lease_create_args(&["--tx", "00"])),
        2,
        "--proof",
    );
    // Two ways of paying at once.
    assert_fails(
        &coinop(
            &missing,
            &lease_create_args(&["--credit", "a.json", "--payment", "b.json"]),
        ),
        2,
        "cannot be used with",
    );
    assert_fails(
        &coinop(&missing, &lease_create_args(&["--credit", "/no/such"])),
        2,
        "/no/such",
    );
    // Resending without end would keep a lost create's script waiting for ever.
    assert_fails(
        &coinop(&missing, &lease_create_args(&["--retries", "1001"])),
        2,
        "--retries",
    );
    assert_fails(&coinop(&missing, &["host"]), 3, "cannot connect");
    let help = coinop(&missing, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let h = stdout(&help);
    assert!(
        h.contains("Exit codes") && h.contains("3  cannot reach"),
        "{h}"
    );
}

/// A socket that accepts and never answers (a stuck daemon) ends the run with exit 3 once
/// --timeout has passed, instead of hanging the script that called coinop.
#[test]
fn a_daemon_that_never_answers_is_given_up_after_the_timeout() {
    let dir = common::StateDir::new();
    let socket = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    // Holds every connection open without reading or writing; the thread ends with the
    // test process.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let started = std::time::Instant::now();
    let o = coinop(&socket, &["--timeout", "1", "host"]);
    assert_fails(&o, 3, "no answer from");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_the_daemons_answer_and_human_output_is_text() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let api = d.call("GET", "/v1/host", None, None).await;
    let json = coinop_async(&d.socket, &["--json", "host"], &[]).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let mut expected = api.body.to_vec();
    expected.push(b'\n');
    assert_eq!(
        json.stdout, expected,
        "--json prints the body byte for byte"
    );

    // A read whose answer cannot be written (stdout on a full disk) is exit 4, and says
    // that nothing changed: not a lease command's advice.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let lost = tokio::task::block_in_place(|| {
        common::cli_process::coinop_with_stdout(&d.socket, &["host"], full)
    });
    assert_eq!(lost.status.code(), Some(4), "{}", stderr(&lost));
    assert!(
        stderr(&lost).contains("nothing changed") && !stderr(&lost).contains("lease show"),
        "{}",
        stderr(&lost)
    );

    let human = coinop_async(&d.socket, &["host"], &[]).await;
    assert_eq!(human.status.code(), Some(0));
    let h = stdout(&human);
    assert!(
        h.contains("network    regtest") && h.contains("testguest"),
        "{h}"
    );
    assert!(
        serde_json::from_str::<serde_json::Value>(&h).is_err(),
        "{h}"
    );

    let unauth = coinop_async(&d.socket, &["lease", "show", "lnope", "--token", "00"], &[]).await;
    assert_fails(&unauth, 1, "HTTP 401 unauthorized");
    // An id that would name another route in the request's path is refused before it is
    // sent (before, `../../v1/host` was sent and answered by that route).
    for bad in ["../../v1/host", "l1?x=1", "l 1", ""] {
        let refused = coinop_async(&d.socket, &["lease", "show", bad, "--token", "00"], &[]).await;
        assert_fails(&refused, 2, "not a lease id");
    }

    // A header file that parses locally but that the daemon refuses (no such parent).
    let headers = dir.path().join("headers.txt");
    std::fs::write(&headers, format!("{}\n", "00".repeat(80))).expect("write");
    let refused = coinop_async(
        &d.socket,
        &["chain", "push-headers", headers.to_str().expect("utf-8")],
        &[],
    )
    .await;
    assert_fails(&refused, 1, "HTTP 4");
    std::fs::write(&headers, "not a header\n").expect("write");
    let bad = coinop_async(
        &d.socket,
        &["chain", "add-headers", headers.to_str().expect("utf-8")],
        &[],
    )
    .await;
    assert_fails(&bad, 2, "line 1");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_show_and_stop_with_credit_from_a_file() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let proofs = d.mint_credit(4).await;
    let file = dir.path().join("proofs.json");
    std::fs::write(&file, serde_json::to_vec(&proofs).expect("json")).expect("write");
    let credit = file.to_str().expect("utf-8");
    let echo = lease_create_args(&["--cmdline", "mode=echo", "--credit", credit]);
    let out = coinop_async(&d.socket, &[&["--json"][..], &echo].concat(), &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let id = v["lease_id"].as_str().expect("lease_id").to_string();
    let token = v["token"].as_str().expect("token").to_string();
    if kvm_or_skip() {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(v["balance_msat"], 4000);
    } else {
        // No KVM: the boot fails, the money stays on the lease; exit 1 with the code.
        assert_fails(&out, 1, "boot_failed");
    }
    let shown = coinop_async(&d.socket, &["lease", "show", &id, "--token", &token], &[]).await;
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert!(stdout(&shown).contains(&id), "{}", stdout(&shown));

    let stopped = coinop_async(&d.socket, &["lease", "stop", &id, "--token", &token], &[]).await;
    assert_eq!(stopped.status.code(), Some(0), "{}", stderr(&stopped));
    assert!(
        stdout(&stopped).contains("state      stopped"),
        "{}",
        stdout(&stopped)
    );

    // The same proofs again: the daemon's 409 becomes exit 1 naming the code.
    let again = coinop_async(&d.socket, &lease_create_args(&["--credit", credit]), &[]).await;
    assert_fails(&again, 1, "HTTP 409 already_spent");
    d.shutdown().await;
}

/// Runs coinop with a wallet file, off the async runtime (the daemon serves on it).
async fn coinop_wallet(
    socket: &std::path::Path,
    wallet: &std::path::Path,
    args: &[&str],
) -> Output {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    coinop_async(socket, &full, &[("COINOP_WALLET", wallet)]).await
}

fn json_of(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_mints_pays_for_a_lease_and_collects_its_change() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let (s, w) = (d.socket.clone(), dir.path().join("wallet.json"));
    let minted = json_of(&coinop_wallet(&s, &w, &["wallet", "mint", "--amount", "300"]).await);
    assert_eq!(minted["balance_sat"], 300);

    let pay = coinop_wallet(&s, &w, &["wallet", "pay", "--amount", "256"]).await;
    let payment = dir.path().join("pay.json");
    std::fs::write(&payment, json_of(&pay).to_string()).expect("write");
    let left = json_of(&coinop_wallet(&s, &w, &["wallet", "balance"]).await);
    assert_eq!(
        left["balance_sat"],
        300 - 256,
        "the paid notes left the wallet"
    );

    let p = payment.to_str().expect("utf-8");
    let create = [
        "lease",
        "create",
        "--vcpus",
        "1",
        "--mem-mib",
        "64",
        "--payment",
        p,
    ];
    let lease = json_of(&coinop_wallet(&s, &w, &create).await);
    assert_eq!(lease["balance_msat"], 256_000);
    let (id, token) = (
        lease["lease_id"].as_str().expect("id"),
        lease["token"].as_str().expect("token"),
    );

    let stop = ["lease", "stop", id, "--token", token, "--change"];
    let stopped = json_of(&coinop_wallet(&s, &w, &stop).await);
    assert_eq!(stopped["state"], "stopped");
    let refund_sat = stopped["refund_msat"].as_u64().expect("refund_msat") / 1000;
    assert!(
        refund_sat > 0 && refund_sat <= 256,
        "refund {refund_sat} sat"
    );
    let after = json_of(&coinop_wallet(&s, &w, &["wallet", "balance"]).await);
    assert_eq!(
        after["balance_sat"],
        300 - 256 + refund_sat,
        "change landed in the wallet"
    );

    // The change is real credit: it pays for the next lease.
    let all = after["balance_sat"].as_u64().expect("balance").to_string();
    let pay2 = coinop_wallet(&s, &w, &["wallet", "pay", "--amount", &all]).await;
    std::fs::write(&payment, json_of(&pay2).to_string()).expect("write");
    let lease2 = json_of(&coinop_wallet(&s, &w, &create).await);
    assert_eq!(lease2["balance_msat"], (300 - 256 + refund_sat) * 1000);
    let (id2, token2) = (
        lease2["lease_id"].as_str().expect("id"),
        lease2["token"].as_str().expect("token"),
    );
    json_of(&coinop_wallet(&s, &w, &["lease", "stop", id2, "--token", token2]).await);
    d.shutdown().await;
}

/// A lease paid from the wallet at `w` (100 sat minted, 64 paid), and a `lease stop
/// --change` whose reply is lost: coinopd is killed right after the refund committed, so
/// the wallet keeps the stop's blank outputs. Returns the lease's id and token and the
/// refund the ledger recorded (worth a note).
async fn a_lost_stop_with_change(
    dir: &std::path::Path,
    w: &std::path::Path,
) -> (String, String, u64) {
    use coinopd::fault::{point, ENV};
    let d = Daemon::spawn(dir, &[], &[(ENV, point::STOP_COMMITTED)]).await;
    let s = d.socket.clone();
    json_of(&coinop_wallet(&s, w, &["wallet", "mint", "--amount", "100"]).await);
    let pay = coinop_wallet(&s, w, &["wallet", "pay", "--amount", "64"]).await;
    let payment = dir.join("pay.json");
    std::fs::write(&payment, json_of(&pay).to_string()).expect("write");
    let p = payment.to_str().expect("utf-8");
    let create = [
        "lease",
        "create",
        "--vcpus",
        "1",
        "--mem-mib",
        "64",
        "--payment",
        p,
    ];
    let lease = json_of(&coinop_wallet(&s, w, &create).await);
    let (id, token) = (
        lease["lease_id"].as_str().expect("id").to_string(),
        lease["token"].as_str().expect("token").to_string(),
    );
    let stop = ["lease", "stop", &id, "--token", &token, "--change"];
    let lost = coinop_wallet(&s, w, &stop).await;
    assert_ne!(lost.status.code(), Some(0), "no answer came: {lost:?}");
    let status = d.wait_crash().await;
    assert!(!status.success(), "{status:?}");
    let refund_msat = coinopd::ledger::Ledger::open(&dir.join("ledger.db"))
        .expect("ledger")
        .get(&id)
        .expect("get")
        .expect("row")
        .refunded_msat
        .expect("the refund committed before the crash");
    assert!(refund_msat >= 1000, "a refund worth a note: {refund_msat}");
    (id, token, refund_msat)
}

/// `coinop lease stop --change` whose reply is lost (coinopd killed right after the stop's
/// refund committed) leaves its blank outputs in the wallet; the same command after the
/// restart sends those same outputs, gets the same refund as change, and keeps it exactly
/// once; a third run (fresh outputs) gets 409 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_change_whose_reply_was_lost_gets_its_change_on_the_rerun() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let w = dir.path().join("wallet.json");
    let (id, token, refund_msat) = a_lost_stop_with_change(dir.path(), &w).await;
    let stop = ["lease", "stop", &id, "--token", &token, "--change"];
    let balance = async |s: &std::path::Path| {
        json_of(&coinop_wallet(s, &w, &["wallet", "balance"]).await)["balance_sat"]
            .as_u64()
            .expect("balance_sat")
    };
    assert!(
        std::fs::read_to_string(&w)
            .expect("wallet")
            .contains(&format!("change-{id}")),
        "the outputs of the lost stop are kept in the wallet"
    );

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let s = d.socket.clone();
    assert_eq!(balance(&s).await, 100 - 64, "no change yet");
    let rerun = coinop_wallet(&s, &w, &stop).await;
    assert!(
        stderr(&rerun).contains("sent an earlier stop"),
        "{}",
        stderr(&rerun)
    );
    let stopped = json_of(&rerun);
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["refund_msat"], refund_msat);
    assert_eq!(
        balance(&s).await,
        100 - 64 + refund_msat / 1000,
        "the change landed in the wallet, once"
    );
    assert!(
        !std::fs::read_to_string(&w)
            .expect("wallet")
            .contains(&format!("change-{id}")),
        "the kept outputs are gone once their change is kept"
    );

    // Once more: fresh outputs, which the daemon refuses (the refund went out already).
    let third = coinop_wallet(&s, &w, &stop).await;
    assert_fails(&third, 1, "already_refunded");
    assert_eq!(balance(&s).await, 100 - 64 + refund_msat / 1000);
    d.shutdown().await;
}

/// As above, with a keyset rotation before the rerun: the kept outputs name the keyset
/// active when they were made, so the change is signed on a keyset `/v1/keys` no longer
/// lists. The rerun unblinds it with that keyset's own keys (`/v1/keys/{id}`) and keeps it.
/// (coinopd answers the replay with the same signatures: the outputs were signed before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_signed_on_a_keyset_rotated_out_since_is_kept() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let w = dir.path().join("wallet.json");
    let (id, token, refund_msat) = a_lost_stop_with_change(dir.path(), &w).await;
    let stop = ["lease", "stop", &id, "--token", &token, "--change"];

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let s = d.socket.clone();
    let r = d.call("POST", "/v1/keysets/rotate", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rerun = coinop_wallet(&s, &w, &stop).await;
    assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
    let stopped = json_of(&rerun);
    let sigs = stopped["signatures"].as_array().expect("signatures");
    let active = d.call("GET", "/v1/keys", None, None).await.json();
    assert!(
        sigs.iter()
            .all(|sig| active["keysets"][0]["id"] != sig["id"]),
        "the change is signed on the rotated-out keyset: {stopped} {active}"
    );
    let balance = json_of(&coinop_wallet(&s, &w, &["wallet", "balance"]).await);
    assert_eq!(
        balance["balance_sat"],
        100 - 64 + refund_msat / 1000,
        "the change landed in the wallet"
    );
    d.shutdown().await;
}
