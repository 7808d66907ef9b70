//! A coinopd that dies while an `agent` guest boots: the restarted coinopd re-adopts the
//! running VMM and makes sure the guest gets its personalisation line
//! (images/rootfs/PERSONALISE.md), so the paid lease runs with its own data instead of a
//! guest that waits for a line for ever. Real parts: a real `coinopd` process aborted at
//! an injected fault (`COINOPD_FAULT`), or held at one (`COINOPD_FAULT_DELAY`) and
//! SIGKILLed there, restarted on the same state directory; the real coinop-vmm and the
//! test guest's `mode=personalise` on /dev/kvm (it writes 124, reads one line from the
//! personalisation port, prints it as `personalised: LINE` and writes 123).
//!
//! - died after the guest asked and before the line was sent: the restarted coinopd sends
//!   it (the lease's own host name, network and tenant key, fresh entropy and clock);
//! - died after the line was sent: the guest keeps that line, it gets no second one;
//! - the line reached the VMM but not yet the guest (its vCPUs held by a pause): the
//!   restarted coinopd learns from the VMM's `status` that it holds a line (its CRC-32)
//!   and sends none (the VMM would refuse a second), and the guest reads the first line
//!   once it runs;
//! - the guest never reports `guest_ready` after the restart (its vCPUs held for good): at
//!   the boot timeout its lease stops `boot_failed`, not billed, its VMM stopped, rather
//!   than a guest without its lease's data handed out as running.
//!
//! Each time the create's retry (same payment, same recovery key) gets the running lease
//! back, not a refund, and the books balance. With a NIC (root: coinopd in a network
//! namespace of the test's, `--guest-network always`), the line sent after the restart
//! carries the lease's own address, gateway and MAC, from its network record, and the lease
//! names the SSH host key of the line its guest holds (also when its record named another).
//!
//! VMMs that belong to no lease are ended instead: a warm restore, or a golden snapshot
//! build's VMM, that a dead coinopd left is ended at the next start, and a coinopd that
//! stops mid-build ends its build's VMM.

mod common;

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use coinop_cli::client::Reply;
use coinop_proto::LeaseState;
use coinopd::fault::{point, DELAY_ENV, ENV};
use coinopd::ledger::{LeaseRow, Ledger};
use coinopd::vmm_process::VmmProcess;
use common::leases::{credit_payment, CreatedLease};
use common::personalisation_line::{field, names_the_lines_host_key, personalised, the_one_line};
use common::{kvm_or_skip, plain_text, vmm_and_guest, wait_for, Daemon, StateDir};
use serde_json::{json, Value};
use vmm_protocol::Request;

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnly0123456789abcdefgh tenant@test";

fn row(dir: &Path, id: &str) -> LeaseRow {
    let l = Ledger::open(&dir.join("ledger.db")).expect("open ledger");
    l.get(id).expect("read lease").expect("lease row")
}

fn books_balance(dir: &Path, id: &str) {
    let l = Ledger::open(&dir.join("ledger.db")).expect("open ledger");
    let b = l.books(id).expect("books");
    assert!(b.balanced(), "books of {id} do not balance: {b:?}");
}

/// The `--image` of an agent image on the test guest; with a golden snapshot when
/// `snapshot` (else every lease boots cold).
fn agent_image(snapshot: bool) -> String {
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    let snapshot = if snapshot { ",snapshot" } else { "" };
    format!(
        "tga={}{snapshot},agent,cmdline=mode=personalise",
        guest.display()
    )
}

/// Whether image `tga` has a complete golden snapshot in place (not a build's staging
/// directory, `.build-KEY`, which holds a `state` before it is complete).
fn has_snapshot(state: &Path) -> bool {
    std::fs::read_dir(state.join("snapshots").join("tga"))
        .map(|entries| {
            entries.flatten().any(|e| {
                let p = e.path();
                !e.file_name().to_string_lossy().starts_with('.')
                    && p.join("state").is_file()
                    && p.join("memory").is_file()
            })
        })
        .unwrap_or(false)
}

/// The command line of process `pid`.
fn argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A lease that died with its create: its id, its VMM (running), the create's body (for
/// the retry) and where its guest's console and control socket are.
struct Orphan {
    id: String,
    vmm: VmmProcess,
    body: Value,
    console: PathBuf,
    control: PathBuf,
}

/// Starts coinopd with the fault `at` and creates an agent lease into the crash.
async fn create_into_crash_at(dir: &Path, at: &str) -> Orphan {
    let d = Daemon::spawn(dir, &["--image", &agent_image(false)], &[(ENV, at)]).await;
    create_into_crash(d, dir).await
}

/// The body of an agent lease's create, paid by `d`'s credit, with the tenant's key and a
/// recovery key (for the retry).
async fn agent_create_body(d: &Daemon) -> Value {
    let proofs = d.mint_credit(20).await;
    let mut recovery_key = [0u8; 32];
    OsRng.fill_bytes(&mut recovery_key);
    json!({"vcpus": 1, "mem_mib": 64, "image": "tga", "ssh_key": SSH_KEY,
           "recovery_key": hex::encode(recovery_key),
           "payment": credit_payment(&proofs)})
}

/// Creates an agent lease on `d`, whose fault aborts it, and checks what it left.
async fn create_into_crash(d: Daemon, dir: &Path) -> Orphan {
    let body = agent_create_body(&d).await;
    d.create_into_crash(&body).await;
    orphan_left(dir, body).await
}

/// What a coinopd that died in a create left: a `booting` lease whose VMM runs and whose
/// guest asked for its line.
async fn orphan_left(dir: &Path, body: Value) -> Orphan {
    let ledger = Ledger::open(&dir.join("ledger.db")).expect("open ledger");
    let rows = ledger.list().expect("list leases");
    let mut booting = rows.iter().filter(|r| r.state == LeaseState::Booting);
    let (Some(booting), None) = (booting.next(), booting.next()) else {
        panic!("one lease booting: {rows:?}");
    };
    let id = booting.id.clone();
    let vmm = booting.vmm().expect("the VMM recorded at its spawn");
    assert!(vmm.is_running(), "the guest outlives coinopd");
    // The VMM copies the event to its log just after it handed it to coinopd, which may
    // have died of it in between.
    let log = dir.join("run").join(format!("{id}.vmm.log"));
    wait_for(
        async || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains(r#""event":"awaiting_personalisation""#))
        },
        "the guest's ask for its line in its VMM's log",
    )
    .await;
    Orphan {
        id,
        vmm,
        body,
        console: PathBuf::from(&booting.console_path),
        control: PathBuf::from(&booting.control_path),
    }
}

/// The retry of the create after the restart: the same lease back (200, `recovered`),
/// running, not a failed boot or a refund; returns its new token.
fn recovered(r: &Reply, id: &str) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["lease_id"], id, "{v}");
    assert_eq!(v["recovered"], true, "{v}");
    assert!(v["refund"].is_null(), "no refund: {v}");
    // The retry waits for the adopted boot to finish.
    assert_eq!(v["state"], "running", "{v}");
    v["token"].as_str().expect("token").to_string()
}

/// Waits for the lease to run (through the API, with `token`) and returns the one line
/// its guest got, checked against the lease: its host name, the tenant's key, the
/// protocol's entropy and a clock near the host's.
async fn runs_with_one_line(d: &Daemon, dir: &Path, id: &str, token: &str) -> String {
    runs_with_one_line_figures(d, dir, id, token, true).await
}

/// As [`runs_with_one_line`]; `figures_known`: whether the lease's boot figures can name
/// its guest_ready (not when its VMM was restored ahead of the lease and nothing recorded
/// its spawn: a warm restore's).
async fn runs_with_one_line_figures(
    d: &Daemon,
    dir: &Path,
    id: &str,
    token: &str,
    figures_known: bool,
) -> String {
    let path = format!("/v1/leases/{id}");
    wait_for(
        async || d.call("GET", &path, Some(token), None).await.json()["state"] == "running",
        "the adopted lease running",
    )
    .await;
    let adopted = row(dir, id);
    assert_eq!(adopted.state, LeaseState::Running, "{adopted:?}");
    assert_eq!(adopted.refunded_msat, None, "{adopted:?}");
    if figures_known {
        let figures: coinop_proto::BootFigures =
            serde_json::from_str(adopted.boot_json.as_deref().expect("boot figures"))
                .expect("boot figures JSON");
        assert!(
            figures.guest_ready_us.is_some(),
            "the guest reported guest_ready (it does only after its line): {figures:?}"
        );
    }
    let console = d
        .call("GET", &format!("{path}/console"), Some(token), None)
        .await;
    assert_eq!(console.status, 200, "{}", console.text());
    let text = console.text();
    let line = the_one_line(&text, id);
    let key = base64::engine::general_purpose::STANDARD
        .decode(field(&line, "ssh_key").expect("the tenant's key"))
        .expect("standard base64");
    let mut want = SSH_KEY.split(' ');
    let want = format!(
        "{} {}",
        want.next().expect("type"),
        want.next().expect("blob")
    );
    assert_eq!(String::from_utf8_lossy(&key), want, "{line}");
    line
}

/// Stops the lease through the API (its VMM ends) and checks its books.
async fn stop(d: Daemon, dir: &Path, id: &str, token: &str, vmm: &VmmProcess) {
    d.stop_lease(id, token).await;
    wait_for(async || !vmm.is_running(), "the VMM's end").await;
    // coinopd removed what the guest had (jail, cgroup) before it records the VMM gone.
    wait_for(async || row(dir, id).vmm_gone, "the VMM recorded gone").await;
    books_balance(dir, id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_awaiting_its_line_gets_it_from_the_restarted_coinopd() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    // coinopd holds the create where the guest asked for its line, and is killed there.
    let wait = format!("{}:8000", point::CREATE_AWAITING_PERSONALISATION);
    let d = Daemon::spawn(
        dir.path(),
        &["--image", &agent_image(false)],
        &[(DELAY_ENV, wait.as_str())],
    )
    .await;
    let body = agent_create_body(&d).await;
    let client = coinop_cli::client::Client::new(&d.socket);
    let sent = serde_json::to_vec(&body).expect("json");
    let create =
        tokio::spawn(async move { client.call("POST", "/v1/leases", None, Some(sent)).await });
    wait_for(
        async || d.log().contains("awaiting_personalisation"),
        "the guest's ask for its line",
    )
    .await;
    d.kill9();
    let lost = create.await.expect("the create's task");
    assert!(
        lost.is_err(),
        "coinopd answered before its SIGKILL: {lost:?}"
    );
    let o = orphan_left(dir.path(), body).await;
    let before = std::fs::read_to_string(&o.console).unwrap_or_default();
    assert!(
        personalised(&before).is_empty(),
        "no line before the restart:\n{before}"
    );

    let d = Daemon::spawn(dir.path(), &["--image", &agent_image(false)], &[]).await;
    let token = recovered(
        &d.call("POST", "/v1/leases", None, Some(o.body.clone()))
            .await,
        &o.id,
    );
    runs_with_one_line(&d, dir.path(), &o.id, &token).await;
    assert_eq!(row(dir.path(), &o.id).vmm(), Some(o.vmm), "the same VMM");
    let log = d.log();
    assert!(
        log.contains("personalisation sent to an adopted guest"),
        "{log}"
    );
    stop(d, dir.path(), &o.id, &token, &o.vmm).await;
}

/// A VMM's log is its own writing: an `exit` line in it (as a VMM a hostile guest took over
/// could write) while the process runs does not end the adopted boot. Before, the lease
/// was marked ended and its jail, cgroup and room released with the VMM left running,
/// untracked; now the boot fails at its timeout like any guest never ready, and its VMM is
/// stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_exit_in_the_vmm_log_does_not_end_an_adopted_boot() {
    adopted_agent_guest_never_ready_with(&["--boot-timeout-ms", "1500"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_sent_before_coinopd_died_is_the_guests_only_line() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let o = create_into_crash_at(dir.path(), point::CREATE_PERSONALISATION_SENT).await;

    let d = Daemon::spawn(dir.path(), &["--image", &agent_image(false)], &[]).await;
    let token = recovered(
        &d.call("POST", "/v1/leases", None, Some(o.body.clone()))
            .await,
        &o.id,
    );
    runs_with_one_line(&d, dir.path(), &o.id, &token).await;
    stop(d, dir.path(), &o.id, &token, &o.vmm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_the_vmm_holds_before_the_guest_reads_it_is_not_replaced() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let o = create_into_crash_at(dir.path(), point::CREATE_AWAITING_PERSONALISATION).await;
    // The dead coinopd's line reached the VMM, not yet the guest: its vCPUs are held so
    // that it cannot read the line before the restarted coinopd looks.
    let paused = vmm_protocol::client::set_state(&o.control, Request::Pause).await;
    assert!(paused.is_ok(), "{paused:?}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let first = format!(
        "coinop-personalise/1 entropy={} time={}.{:09} hostname={} ssh_key={}",
        "5a".repeat(32),
        now.as_secs(),
        now.subsec_nanos(),
        o.id,
        base64::engine::general_purpose::STANDARD
            .encode(SSH_KEY.rsplit_once(' ').expect("a key with a comment").0),
    );
    let sent = vmm_protocol::client::personalise(&o.control, &first).await;
    assert!(sent.is_ok(), "{sent:?}");

    let d = Daemon::spawn(dir.path(), &["--image", &agent_image(false)], &[]).await;
    wait_for(
        async || d.log().contains("already had its line"),
        "the restarted coinopd told by the VMM that it holds a line",
    )
    .await;
    assert_eq!(row(dir.path(), &o.id).state, LeaseState::Booting);
    let resumed = vmm_protocol::client::set_state(&o.control, Request::Resume).await;
    assert!(resumed.is_ok(), "{resumed:?}");
    let token = recovered(
        &d.call("POST", "/v1/leases", None, Some(o.body.clone()))
            .await,
        &o.id,
    );
    let line = runs_with_one_line(&d, dir.path(), &o.id, &token).await;
    assert_eq!(line, first, "the guest got the line the VMM took first");
    stop(d, dir.path(), &o.id, &token, &o.vmm).await;
}

/// The same for a lease restored from the image's golden snapshot (the lab's fast path):
/// the restored VMM asks again for a line after its vCPUs start, and the restarted coinopd
/// answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_guest_awaiting_its_line_gets_it_from_the_restarted_coinopd() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let image = agent_image(true);
    // The first lease (cold, its line sent) passes the fault point once; the second, the
    // restored one, dies there.
    let at = format!("{}:2", point::CREATE_AWAITING_PERSONALISATION);
    let d = Daemon::spawn(dir.path(), &["--image", &image], &[(ENV, at.as_str())]).await;
    let proofs = d.mint_credit(20).await;
    let cold = d
        .create_lease(json!({"vcpus": 1, "mem_mib": 64, "image": "tga",
                             "payment": credit_payment(&proofs)}))
        .await;
    assert_eq!(cold.reply["boot"]["start"], "cold", "{}", cold.reply);
    wait_for(async || has_snapshot(dir.path()), "the golden snapshot").await;
    let o = create_into_crash(d, dir.path()).await;
    let args = argv(o.vmm.pid);
    assert!(
        args.iter().any(|a| a == "--restore"),
        "{args:?}\n{}",
        std::fs::read_to_string(dir.path().join("coinopd.log")).unwrap_or_default()
    );

    let d = Daemon::spawn(dir.path(), &["--image", &image], &[]).await;
    let token = recovered(
        &d.call("POST", "/v1/leases", None, Some(o.body.clone()))
            .await,
        &o.id,
    );
    runs_with_one_line(&d, dir.path(), &o.id, &token).await;
    d.stop_lease(&cold.id, &cold.token).await;
    stop(d, dir.path(), &o.id, &token, &o.vmm).await;
}

/// A warm restore (restored ahead of any lease, waiting for its line) taken by a create
/// whose coinopd died just after the ledger committed the lease, before the hand-over sent
/// the line: the lease's row names no spawn (the VMM was restored before the lease
/// existed). The restarted coinopd sends that guest its line, as any adopted agent guest's,
/// and the create's retry gets it running with it. Before, the lease was marked running
/// at once, with a guest that never got its line (no tenant key, no address) and was
/// billed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_taken_by_a_create_that_died_gets_its_line_from_the_restarted_coinopd() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let image = agent_image(true);
    // Two leases pass the fault point (a cold one, whose build makes the snapshot, and a
    // restored one, after which a warm restore is made); the third, which takes the warm
    // restore, dies there.
    let at = format!("{}:3", point::CREATE_COMMITTED);
    let d = Daemon::spawn(dir.path(), &["--image", &image], &[(ENV, at.as_str())]).await;
    let mut leases = Vec::new();
    for _ in 0..2 {
        let proofs = d.mint_credit(20).await;
        leases.push(
            d.create_lease(json!({"vcpus": 1, "mem_mib": 64, "image": "tga",
                                  "payment": credit_payment(&proofs)}))
                .await,
        );
        wait_for(async || has_snapshot(dir.path()), "the golden snapshot").await;
    }
    let (warm_id, warm_pid) = common::warm_restore::wait_for_one(dir.path());
    let warm = VmmProcess::of(warm_pid).expect("the warm VMM runs");
    let body = agent_create_body(&d).await;
    d.create_into_crash(&body).await;
    assert!(warm.is_running(), "the warm VMM outlives coinopd");
    let taken = row(dir.path(), &warm_id);
    assert_eq!(taken.state, LeaseState::Booting, "{taken:?}");
    assert_eq!(
        taken.spawn_json, None,
        "nothing recorded its spawn: {taken:?}"
    );

    let d = Daemon::spawn(dir.path(), &["--image", &image], &[]).await;
    let token = recovered(
        &d.call("POST", "/v1/leases", None, Some(body)).await,
        &warm_id,
    );
    runs_with_one_line_figures(&d, dir.path(), &warm_id, &token, false).await;
    for lease in &leases {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    stop(d, dir.path(), &warm_id, &token, &warm).await;
}

/// A warm restore that fails its hand-over (paused here: its VMM takes the line, its guest
/// runs nothing) leaves its lease to boot on a VMM of its own under the same id; a coinopd
/// that dies once that VMM's spawn is recorded leaves the lease `booting` for the next one
/// to adopt. The lease was committed with the warm VMM's counters at the hand-over as its
/// metering baseline; kept through the adoption, the new VMM's counters sat below them and
/// its boot and first seconds went unbilled. Its metering starts from the new VMM's zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_adopted_after_its_warm_hand_over_failed_is_billed_from_its_own_vmm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let image = agent_image(true);
    // The point's passes: the cold lease's boot and the golden snapshot's build (either
    // order), the restored lease's boot, the warm restore's hand-over; the fifth is the
    // lease's own boot after that hand-over failed.
    let at = format!("{}:5", point::CREATE_VMM_RECORDED);
    let fast = ["--image", &image, "--personalise-timeout-ms", "1000"];
    let d = Daemon::spawn(dir.path(), &fast, &[(ENV, at.as_str())]).await;
    let mut leases = Vec::new();
    for _ in 0..2 {
        let proofs = d.mint_credit(20).await;
        leases.push(
            d.create_lease(json!({"vcpus": 1, "mem_mib": 64, "image": "tga",
                                  "payment": credit_payment(&proofs)}))
                .await,
        );
        wait_for(async || has_snapshot(dir.path()), "the golden snapshot").await;
    }
    let (warm_id, warm_pid) = common::warm_restore::wait_for_one(dir.path());
    // Its counters at the hand-over well above those of a VMM just started.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let warm_control = dir.path().join("run").join(format!("{warm_id}.sock"));
    let paused = vmm_protocol::client::set_state(&warm_control, Request::Pause).await;
    assert!(paused.is_ok(), "pausing the warm VMM: {paused:?}");
    let body = agent_create_body(&d).await;
    d.create_into_crash(&body).await;
    let left = row(dir.path(), &warm_id);
    assert_eq!(left.state, LeaseState::Booting, "{left:?}");
    let own = left
        .vmm()
        .expect("the lease's own VMM, recorded at its spawn");
    assert_ne!(own.pid, warm_pid, "the hand-over failed: {left:?}");
    assert_eq!(
        (left.last_vcpu_total_us, left.last_uptime_us),
        (0, 0),
        "metered from its own VMM's start, not the warm VMM's counters: {left:?}"
    );

    let d = Daemon::spawn(dir.path(), &["--image", &image], &[]).await;
    let token = recovered(
        &d.call("POST", "/v1/leases", None, Some(body)).await,
        &warm_id,
    );
    runs_with_one_line(&d, dir.path(), &warm_id, &token).await;
    // A few ticks (50 ms) billed; then the VMM's uptime, read after the lease's view, is at
    // most a tick and the reading's slack past what was billed (64 MiB all the while).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let path = format!("/v1/leases/{warm_id}");
    let view = d.call("GET", &path, Some(&token), None).await.json();
    let billed_us = view["used"]["mem_mib_us"]
        .as_u64()
        .expect("used.mem_mib_us")
        / 64;
    let control = PathBuf::from(&left.control_path);
    let uptime_us = match vmm_protocol::client::request(&control, &Request::Usage).await {
        Ok(vmm_protocol::Reply::Usage(u)) => u.uptime_us,
        other => panic!("the lease's VMM's usage: {other:?}"),
    };
    assert!(
        billed_us + 1_000_000 >= uptime_us,
        "{billed_us} µs of memory time billed of the VMM's {uptime_us} µs: {view}"
    );
    for lease in &leases {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    stop(d, dir.path(), &warm_id, &token, &own).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_agent_guest_never_ready_fails_its_boot_unbilled() {
    adopted_agent_guest_never_ready(&["--boot-timeout-ms", "1500"]).await;
}

/// The same under a long boot timeout: once the restarted coinopd has handed the guest its
/// line, the guest gets `--personalise-timeout-ms` (1 s) to be ready, as after a create's,
/// and the create's retry has its answer long before the 30 s boot timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_agent_guest_stuck_after_its_line_fails_at_the_personalisation_bound() {
    let took = adopted_agent_guest_never_ready(&[
        "--boot-timeout-ms",
        "30000",
        "--personalise-timeout-ms",
        "1000",
    ])
    .await;
    assert!(
        took < Some(std::time::Duration::from_secs(10)),
        "the retry took {took:?}"
    );
}

/// A guest whose coinopd died before its line, paused (it takes a line but runs nothing):
/// the restarted coinopd (with `extra`) fails its boot unbilled, and the create's retry
/// answers with the failed lease. Returns how long that retry took (`None`: skipped).
async fn adopted_agent_guest_never_ready(extra: &[&str]) -> Option<std::time::Duration> {
    adopted_agent_guest_never_ready_with(extra, false).await
}

/// [`adopted_agent_guest_never_ready`], with an `exit` line forged into the VMM's log
/// before the restart when `forged_exit`.
async fn adopted_agent_guest_never_ready_with(
    extra: &[&str],
    forged_exit: bool,
) -> Option<std::time::Duration> {
    if !kvm_or_skip() {
        return None;
    }
    let dir = StateDir::new();
    let o = create_into_crash_at(dir.path(), point::CREATE_AWAITING_PERSONALISATION).await;
    let paused = vmm_protocol::client::set_state(&o.control, Request::Pause).await;
    assert!(paused.is_ok(), "{paused:?}");
    if forged_exit {
        let log = dir.path().join("run").join(format!("{}.vmm.log", o.id));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("the VMM's log");
        writeln!(
            f,
            r#"{{"event":"exit","t_us":1,"code":0,"reason":"stopped"}}"#
        )
        .expect("forged");
    }

    let image = agent_image(false);
    let mut args = vec!["--image", image.as_str()];
    args.extend_from_slice(extra);
    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    let asked = std::time::Instant::now();
    let r = d
        .call("POST", "/v1/leases", None, Some(o.body.clone()))
        .await;
    let took = asked.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    // The retry waited for the adopted boot, which failed: the lease as it ended.
    assert_eq!(r.json()["state"], "stopped", "{}", r.text());
    assert_eq!(r.json()["stop_reason"], "boot_failed", "{}", r.text());
    let token = r.json()["token"].as_str().expect("token").to_string();
    let path = format!("/v1/leases/{}", o.id);
    wait_for(
        async || d.call("GET", &path, Some(&token), None).await.json()["state"] == "stopped",
        "the adopted boot failed at its timeout",
    )
    .await;
    let failed = row(dir.path(), &o.id);
    assert_eq!(
        failed.stop_reason,
        Some(coinop_proto::StopReason::BootFailed),
        "{failed:?}"
    );
    assert_eq!(failed.debited_msat, 0, "not billed: {failed:?}");
    assert_eq!(failed.balance_msat, 20_000, "the balance kept: {failed:?}");
    wait_for(async || !o.vmm.is_running(), "the VMM stopped").await;
    wait_for(
        async || row(dir.path(), &o.id).vmm_gone,
        "the VMM recorded gone",
    )
    .await;
    let log = d.log();
    assert!(log.contains("its boot failed"), "{log}");
    assert!(
        !log.contains("ended before it was ready"),
        "its VMM runs: {log}"
    );
    books_balance(dir.path(), &o.id);
    d.shutdown().await;
    Some(took)
}

/// A real coinopd process in a network namespace: a new one (`netns: None`), or the one
/// `netns` is a handle on (a restart into the namespace of the coinopd that died). Killed
/// on drop; its guests are the state directory's to kill.
struct NetnsCoinopd {
    child: std::process::Child,
    client: coinop_cli::client::Client,
    log: PathBuf,
}

impl Drop for NetnsCoinopd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NetnsCoinopd {
    fn spawn(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        netns: Option<&std::fs::File>,
    ) -> Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let socket = dir.join("coinop.sock");
        let _ = std::fs::remove_file(&socket);
        let log = dir.join("coinopd.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("daemon log");
        let args = common::daemon_args(dir, &socket, extra);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coinopd"));
        cmd.args(&args[1..])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(out);
        let netns = netns.map(AsRawFd::as_raw_fd);
        // SAFETY: unshare and setns are async-signal-safe and touch only the forked child;
        // `netns` is an fd the parent keeps open across the spawn.
        unsafe {
            cmd.pre_exec(move || {
                let done = match netns {
                    None => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET),
                    Some(fd) => nix::sched::setns(
                        std::os::fd::BorrowedFd::borrow_raw(fd),
                        nix::sched::CloneFlags::CLONE_NEWNET,
                    ),
                };
                done.map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("start coinopd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "coinopd did not bind: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        NetnsCoinopd {
            child,
            client: coinop_cli::client::Client::new(&socket),
            log,
        }
    }

    /// A handle on its network namespace (keeps it alive).
    fn netns(&self) -> std::fs::File {
        std::fs::File::open(format!("/proc/{}/ns/net", self.child.id())).expect("its netns")
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.client
            .call(
                method,
                path,
                token,
                body.map(|b| serde_json::to_vec(&b).expect("json")),
            )
            .await
            .expect("coinopd answers")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_with_a_nic_gets_its_own_network_in_the_line_after_the_restart() {
    netns_restart_at(point::CREATE_AWAITING_PERSONALISATION, None).await;
}

/// coinopd died after the line left; the lease's record names another host key than the
/// line's (as an older coinopd could leave it: it recorded a resent line's key only after
/// the send): the restarted coinopd asks the VMM which line it holds and names that line's
/// key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_lease_names_the_host_key_of_the_line_its_guest_holds() {
    netns_restart_at(
        point::CREATE_PERSONALISATION_SENT,
        Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINotTheGuestsKeyNotTheGuestsKeyNotTheGuestsK"),
    )
    .await;
}

/// An agent lease with a NIC whose coinopd (in a network namespace) aborts at fault point
/// `at`; with `stale_key`, its network record is made to name that host key before the
/// restart. The restarted coinopd runs the lease with one line carrying the lease's own
/// network, and the lease names the host key that line gave the guest.
async fn netns_restart_at(at: &str, stale_key: Option<&str>) {
    if !nix::unistd::geteuid().is_root() {
        common::skipped("guest networking needs root");
        return;
    }
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let image = agent_image(false);
    let extra = ["--guest-network", "always", "--image", image.as_str()];
    let fault = [(ENV, at)];
    let d = NetnsCoinopd::spawn(dir.path(), &extra, &fault, None);
    let netns = d.netns();
    let quote = d
        .call(
            "POST",
            "/v1/quotes",
            None,
            Some(json!({"vcpus": 1, "mem_mib": 64, "seconds": 600})),
        )
        .await;
    assert_eq!(quote.status, 200, "{}", quote.text());
    let payment = coinop_cli::regtest_pay::pay_quote(
        &d.client,
        quote.json()["quote_id"].as_str().expect("quote_id"),
    )
    .await
    .expect("regtest payment");
    let mut recovery_key = [0u8; 32];
    OsRng.fill_bytes(&mut recovery_key);
    let body = json!({"vcpus": 1, "mem_mib": 64, "image": "tga", "ssh_key": SSH_KEY,
                      "recovery_key": hex::encode(recovery_key), "payment": payment});
    let lost = d
        .client
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(serde_json::to_vec(&body).expect("json")),
        )
        .await;
    assert!(
        lost.is_err(),
        "coinopd answered despite the fault: {lost:?}"
    );
    let mut d = d;
    let status = d.child.wait().expect("wait for coinopd");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGABRT),
        "{status:?}\n{}",
        d.log()
    );
    drop(d);
    let ledger = Ledger::open(&dir.path().join("ledger.db")).expect("open ledger");
    let rows = ledger.list().expect("list leases");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let id = rows[0].id.clone();
    assert_eq!(rows[0].state, LeaseState::Booting, "{rows:?}");
    let vmm = rows[0].vmm().expect("the VMM recorded");
    assert!(vmm.is_running());
    if let Some(stale) = stale_key {
        let record = dir.path().join("run").join(format!("{id}.net.json"));
        let mut net: Value =
            serde_json::from_slice(&std::fs::read(&record).expect("the network record"))
                .expect("a JSON record");
        assert!(
            net["ssh"]["host_key"].is_string(),
            "recorded before the send: {net}"
        );
        net["ssh"]["host_key"] = json!(stale);
        std::fs::write(&record, serde_json::to_vec(&net).expect("json")).expect("rewrite");
    }

    let d = NetnsCoinopd::spawn(dir.path(), &extra, &[], Some(&netns));
    let r = d.call("POST", "/v1/leases", None, Some(body.clone())).await;
    let token = recovered(&r, &id);
    let path = format!("/v1/leases/{id}");
    wait_for(
        async || d.call("GET", &path, Some(&token), None).await.json()["state"] == "running",
        "the adopted lease running",
    )
    .await;
    let shown = d.call("GET", &path, Some(&token), None).await.json();
    let net = &shown["network"];
    let (ip, gw, mac) = (
        net["guest_ip"].as_str().expect("guest_ip"),
        net["host_ip"].as_str().expect("host_ip"),
        net["mac"].as_str().expect("mac"),
    );
    let console = d
        .call("GET", &format!("{path}/console"), Some(&token), None)
        .await;
    assert_eq!(console.status, 200, "{}", console.text());
    let text = console.text();
    let lines = personalised(&text);
    assert_eq!(lines.len(), 1, "one line:\n{text}");
    let line = &lines[0];
    for word in [
        format!("hostname={id}"),
        format!("ip={ip}/30"),
        format!("gw={gw}"),
        format!("mac={}", mac.to_ascii_lowercase()),
    ] {
        assert!(line.split(' ').any(|w| w == word), "{word} in {line}");
    }
    assert!(field(line, "ssh_key").is_some(), "{line}");
    let named = net["ssh"]["host_key"].as_str().expect("a host key named");
    assert!(
        names_the_lines_host_key(named, line),
        "the lease names {named}, the guest got {line}"
    );
    let stopped = d
        .call(
            "POST",
            &format!("{path}/stop"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    wait_for(async || !vmm.is_running(), "the VMM's end").await;
    wait_for(
        async || row(dir.path(), &id).vmm_gone,
        "the VMM recorded gone",
    )
    .await;
    books_balance(dir.path(), &id);
}

/// A warm restore (a VMM restored ahead of any lease, waiting for its line) that a killed
/// coinopd leaves is no lease's: the next coinopd ends it, and removes its marker and its
/// jail root, before it serves; the leases' guests run on, adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_left_by_a_killed_coinopd_is_ended_at_the_next_start() {
    warm_restore_left_by_a_killed_coinopd(&[]).await;
}

/// The same with no slot pool: the warm VMM's jail and cgroup were built for it alone, so
/// no pool marker names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpooled_warm_restore_left_by_a_killed_coinopd_leaves_no_jail() {
    warm_restore_left_by_a_killed_coinopd(&["--jail-pool", "0"]).await;
}

async fn warm_restore_left_by_a_killed_coinopd(extra: &[&str]) {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let image = agent_image(true);
    let mut args = vec!["--image", image.as_str()];
    args.extend_from_slice(extra);
    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    let mut leases = Vec::new();
    for _ in 0..2 {
        let proofs = d.mint_credit(20).await;
        let lease = d
            .create_lease(json!({"vcpus": 1, "mem_mib": 64, "image": "tga",
                                 "payment": credit_payment(&proofs)}))
            .await;
        wait_for(async || has_snapshot(dir.path()), "the golden snapshot").await;
        leases.push(lease);
    }
    assert_eq!(
        leases[1].reply["boot"]["start"], "restore",
        "{}",
        leases[1].reply
    );
    let (warm_id, warm_pid) = common::warm_restore::wait_for_one(dir.path());
    let warm = VmmProcess::of(warm_pid).expect("the warm VMM runs");
    d.kill9();
    assert!(warm.is_running(), "a VMM outlives its coinopd");

    let jailed = dir.path().join("jail").join(&warm_id).exists();
    assert_eq!(jailed, nix::unistd::geteuid().is_root(), "jails need root");

    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    // Ended before the socket was bound.
    assert!(!warm.is_running(), "the warm restore ended at the start");
    assert!(
        !dir.path().join("warm").join(&warm_id).exists(),
        "its marker removed"
    );
    assert!(
        !dir.path().join("jail").join(&warm_id).exists(),
        "its jail root removed"
    );
    let ledger = Ledger::open(&dir.path().join("ledger.db")).expect("open ledger");
    assert!(
        ledger.get(&warm_id).expect("read").is_none(),
        "never a lease: {warm_id}"
    );
    for lease in &leases {
        let path = format!("/v1/leases/{}", lease.id);
        let view = d.call("GET", &path, Some(&lease.token), None).await.json();
        assert_eq!(view["state"], "running", "adopted: {view}");
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// The jail roots of golden snapshot builds (`STATE/jail/golden-*`).
fn golden_jails(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("jail"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with("golden-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A golden snapshot build's VMM is no lease's, so nothing re-adopts it. A coinopd that
/// dies while one runs leaves it to nobody, and the next coinopd ends it before it serves.
/// The marker that named it and the build's staging directory go with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_golden_build_left_by_a_crashed_coinopd_is_ended_at_the_next_start() {
    golden_build_left_by_a_crashed_coinopd(true, false).await;
}

/// The same for a coinopd that died after the build's spawn but before its marker named
/// the VMM (the marker removed here to make that window): the VMM is found in the build's
/// cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_golden_build_no_marker_names_is_ended_at_the_next_start() {
    golden_build_left_by_a_crashed_coinopd(false, false).await;
}

/// The same for a coinopd run with `--no-jail`: no jail root names the build, its files in
/// the run directory do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unjailed_golden_build_no_marker_names_is_ended_at_the_next_start() {
    golden_build_left_by_a_crashed_coinopd(false, true).await;
}

/// `named`: whether the build's marker survives to the restart. `no_jail`: both coinopds
/// run with `--no-jail` (as every coinopd not run as root does).
async fn golden_build_left_by_a_crashed_coinopd(named: bool, no_jail: bool) {
    if !kvm_or_skip() {
        return;
    }
    let root = nix::unistd::geteuid().is_root();
    let dir = StateDir::new();
    let image = agent_image(true);
    let mut args = vec!["--image", image.as_str()];
    if no_jail && root {
        // Not root: common::daemon_args passes it already.
        args.push("--no-jail");
    }
    let d = Daemon::spawn(dir.path(), &args, &[(ENV, point::GOLDEN_VMM_RECORDED)]).await;
    // The image's first lease starts its snapshot's build. coinopd dies once the build's
    // VMM is named, whether or not the create has had its answer by then.
    let body = agent_create_body(&d).await;
    let _ = d
        .client
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(serde_json::to_vec(&body).expect("a Value serializes")),
        )
        .await;
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let marker = golden_build_marker(dir.path()).expect("the build's marker");
    let vmm = vmm_named_by(&marker);
    let staging = marker.with_extension("");
    assert!(staging.is_dir(), "{}", staging.display());
    assert!(vmm.is_running(), "the build's VMM outlives its coinopd");
    let jailed = root && !no_jail;
    assert_eq!(
        golden_jails(dir.path()).len(),
        usize::from(jailed),
        "its jail root"
    );
    if !named {
        if !root {
            // Without root there is no cgroup to find an unnamed build's VMM in.
            common::skipped("an unnamed golden build is found in its cgroup, which needs root");
            let _ = vmm.kill_and_wait();
            return;
        }
        std::fs::remove_file(&marker).expect("the marker removed");
    }

    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    // Ended before the socket was bound.
    assert!(
        !vmm.is_running(),
        "the golden build's VMM ended at the start"
    );
    assert!(!marker.exists(), "its marker removed");
    if named {
        assert!(!staging.exists(), "its staging directory removed");
    }
    assert!(golden_jails(dir.path()).is_empty(), "its jail root removed");
    let build_files: Vec<_> = std::fs::read_dir(dir.path().join("run"))
        .expect("the run directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("golden-"))
        .collect();
    assert!(
        build_files.is_empty(),
        "the build's files left: {build_files:?}"
    );
    d.shutdown().await;
}

/// A coinopd that stops while a golden snapshot build runs ends the build's VMM: the build
/// goes with coinopd, and its VMM must not outlive it unowned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coinopd_that_stops_mid_build_ends_the_golden_builds_vmm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let (d, lease, marker) = golden_build_held(&dir, 60_000).await;
    let vmm = vmm_named_by(&marker);
    assert!(vmm.is_running(), "the build's VMM runs");
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
    assert!(
        !vmm.is_running(),
        "the golden build's VMM ended with coinopd"
    );
    assert!(!marker.exists(), "its marker removed");
    assert!(
        golden_jails(dir.path()).is_empty(),
        "its jail root (and cgroup) removed"
    );
    assert!(!has_snapshot(dir.path()), "no snapshot was put in place");
}

/// A golden build whose VMM dies before the snapshot (killed here, as a host's OOM killer
/// would; in the nested lab, now and then, a guest that crashes on its own) is built again
/// by coinopd after a short wait: the image's next lease finds the snapshot, with no second
/// lease needed to start the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_golden_build_is_built_again_with_no_lease_asking() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    // Every build is held 2 s once its VMM is named: time to kill the first one's.
    let (d, lease, marker) = golden_build_held(&dir, 2_000).await;
    let first = vmm_named_by(&marker);
    assert!(first.kill_and_wait(), "the first build's VMM killed");
    wait_for(
        async || d.log().contains("golden snapshot not built"),
        "the first build's failure",
    )
    .await;
    let failed_at = std::time::Instant::now();
    assert!(
        !has_snapshot(dir.path()),
        "no snapshot from the killed build"
    );
    let log = plain_text(&d.log());
    assert!(
        log.contains("failed_in_a_row=1") && log.contains("next_build_in_s=5"),
        "{log}"
    );
    wait_for(
        async || has_snapshot(dir.path()),
        "the snapshot of the build coinopd started again",
    )
    .await;
    assert!(
        failed_at.elapsed() >= std::time::Duration::from_secs(4),
        "built again after {:?}, before its wait",
        failed_at.elapsed()
    );
    let log = d.log();
    assert!(log.contains("golden snapshot written"), "{log}");
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}

/// A coinopd in `dir` whose golden builds are each held `held_ms` once their VMM is named,
/// the lease of its agent image that started the first build, and that build's marker.
async fn golden_build_held(dir: &StateDir, held_ms: u64) -> (Daemon, CreatedLease, PathBuf) {
    let image = agent_image(true);
    let delay = format!("{}:{held_ms}", point::GOLDEN_VMM_RECORDED);
    let d = Daemon::spawn(
        dir.path(),
        &["--image", &image],
        &[(DELAY_ENV, delay.as_str())],
    )
    .await;
    let body = agent_create_body(&d).await;
    let lease = d.create_lease(body).await;
    wait_for(
        async || golden_build_marker(dir.path()).is_some(),
        "the golden build's marker",
    )
    .await;
    let marker = golden_build_marker(dir.path()).expect("waited for");
    (d, lease, marker)
}

/// The marker of image `tga`'s golden snapshot build (`.build-KEY.vmm`), if there is one.
fn golden_build_marker(state: &Path) -> Option<PathBuf> {
    std::fs::read_dir(state.join("snapshots").join("tga"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".vmm"))
}

/// The VMM a build's marker names.
fn vmm_named_by(marker: &Path) -> VmmProcess {
    std::fs::read_to_string(marker)
        .ok()
        .and_then(|text| VmmProcess::from_marker(&text))
        .expect("the marker names the build's VMM")
}
