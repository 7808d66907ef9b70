//! Crash safety with a real `coinopd` process: it is killed (an injected abort at a named
//! point, or `kill -9`) during a create and during metering ticks, then restarted on the same
//! state directory. Money is never lost (every lease's books balance and its balance is
//! still there), a claimed payment stays claimed (409 on reuse), running guests are
//! re-adopted, and metering resumes without a gap in the billed usage.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use coinopd::fault::{point, ENV};
use coinopd::ledger::{LeaseRow, Ledger};
use common::leases::{credit_payment, testguest_body, CreatedLease};
use common::{kvm_or_skip, wait_for, Daemon};
use serde_json::Value;

fn ledger_row(dir: &Path, id: &str) -> LeaseRow {
    let l = Ledger::open(&dir.join("ledger.db")).expect("open ledger");
    l.get(id).expect("read lease").expect("lease row")
}

fn books_balance(dir: &Path, id: &str) -> coinopd::ledger::Books {
    let l = Ledger::open(&dir.join("ledger.db")).expect("open ledger");
    let b = l.books(id).expect("books");
    assert!(b.balanced(), "books of {id} do not balance: {b:?}");
    b
}

/// The operator's view of every lease (the tests run as root).
async fn all_leases(d: &Daemon) -> Vec<Value> {
    let r = d.call("GET", "/v1/leases", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["leases"].as_array().expect("leases").clone()
}

fn create_body(proofs: &Value, cmdline: &str) -> Value {
    testguest_body(cmdline, credit_payment(proofs))
}

async fn stop_guest_by_control(row: &LeaseRow) {
    let _ = vmm_protocol::client::set_state(
        &PathBuf::from(&row.control_path),
        vmm_protocol::Request::Stop,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_create_commit_keeps_the_balance_and_the_payment_spent() {
    let dir = common::StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::CREATE_COMMITTED)]).await;
    let proofs = serde_json::to_value(d.mint_credit(5).await).expect("proofs");
    let body = create_body(&proofs, "mode=echo");
    d.create_into_crash(&body).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let leases = all_leases(&d).await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    let l = &leases[0];
    // The guest was never spawned: the lease is stopped, its whole balance kept for refund.
    assert_eq!(l["state"], "stopped", "{l}");
    assert_eq!(l["stop_reason"], "boot_failed", "{l}");
    assert_eq!(l["balance_msat"], 5000, "{l}");
    let id = l["lease_id"].as_str().expect("id");
    let b = books_balance(dir.path(), id);
    assert_eq!((b.paid_msat, b.balance_msat), (5000, 5000));

    let again = d.call("POST", "/v1/leases", None, Some(body)).await;
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["error"]["code"], "already_spent");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_guest_ready_readopts_the_guest() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::CREATE_GUEST_READY)]).await;
    let proofs = serde_json::to_value(d.mint_credit(20).await).expect("proofs");
    let body = create_body(&proofs, "mode=echo");
    d.create_into_crash(&body).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let leases = all_leases(&d).await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    let id = leases[0]["lease_id"].as_str().expect("id").to_string();
    // The guest outlived coinopd and was re-adopted: running, and metered from here on.
    assert_eq!(leases[0]["state"], "running", "{}", leases[0]);
    wait_for(
        async || {
            all_leases(&d).await[0]["used"]["mem_mib_us"]
                .as_u64()
                .is_some_and(|u| u > 0)
        },
        "metering of the re-adopted guest",
    )
    .await;
    let b = books_balance(dir.path(), &id);
    assert_eq!(b.paid_msat, 20_000);
    assert!(b.debited_msat > 0, "{b:?}");

    let again = d.call("POST", "/v1/leases", None, Some(body)).await;
    assert_eq!(again.status, 409, "{}", again.text());
    stop_guest_by_control(&ledger_row(dir.path(), &id)).await;
    d.shutdown().await;
}

/// Every µs of the guest's uptime and vCPU time up to the last committed reading is billed:
/// metering is cumulative, so a crash between ticks loses nothing that the next reading
/// does not recover.
fn assert_no_gap(row: &LeaseRow) {
    assert_eq!(
        row.used_mem_mib_us,
        row.mem_mib * row.last_uptime_us,
        "memory time billed = MiB × the guest's whole uptime: {row:?}"
    );
    assert_eq!(
        row.used_vcpu_us, row.last_vcpu_total_us,
        "vCPU time billed = the guest's whole vCPU time: {row:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_during_ticks_lose_no_money_and_at_most_one_tick() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    // The 8th tick that reads the guest aborts between the reading and the debit.
    let fault = format!("{}:8", point::TICK_READ);
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, fault.as_str())]).await;
    let proofs = serde_json::to_value(d.mint_credit(30).await).expect("proofs");
    let CreatedLease { id, token, .. } = d
        .create_lease(create_body(&proofs, "mode=spin:600000"))
        .await;
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");

    let before = ledger_row(dir.path(), &id);
    assert_eq!(before.state, coinop_proto::LeaseState::Running);
    assert!(
        before.last_uptime_us > 0,
        "ticks committed before the crash"
    );
    assert_no_gap(&before);
    books_balance(dir.path(), &id);
    // The guest kept running while coinopd was dead.
    let path = PathBuf::from(&before.control_path);
    let during = vmm_protocol::client::usage(&path)
        .await
        .expect("guest alive");
    assert!(during.uptime_us > before.last_uptime_us);

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let lease_path = format!("/v1/leases/{id}");
    wait_for(
        async || ledger_row(dir.path(), &id).last_uptime_us > during.uptime_us,
        "a tick after the restart",
    )
    .await;
    let after = ledger_row(dir.path(), &id);
    assert_eq!(after.state, coinop_proto::LeaseState::Running, "re-adopted");
    assert_no_gap(&after);
    assert!(after.debited_msat > before.debited_msat);
    books_balance(dir.path(), &id);

    // A plain kill -9 at an arbitrary moment of the tick loop, then a restart.
    tokio::time::sleep(std::time::Duration::from_millis(230)).await;
    d.kill9();
    let killed = ledger_row(dir.path(), &id);
    assert_no_gap(&killed);
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let live = vmm_protocol::client::usage(&path)
        .await
        .expect("guest alive");
    wait_for(
        async || ledger_row(dir.path(), &id).last_uptime_us > live.uptime_us,
        "a tick after the second restart",
    )
    .await;
    let row = ledger_row(dir.path(), &id);
    assert_no_gap(&row);
    books_balance(dir.path(), &id);
    // The tenant's token still works, and the payment is still spent.
    let shown = d.call("GET", &lease_path, Some(&token), None).await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    let again = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(create_body(&proofs, "mode=echo")),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.text());
    d.stop_lease(&id, &token).await;
    books_balance(dir.path(), &id);
    d.shutdown().await;
}
