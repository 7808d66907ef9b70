//! The ledger is the intent and the VMM follows it, also across a crash of coinopd: a real
//! `coinopd` process is killed (an injected abort at a named point, or `kill -9`) between a
//! commit and the VMM command that should follow it, then restarted on the same state
//! directory, and the guest must end up as the ledger says. A stopped lease's VMM is gone
//! after the restart (a tenant's stop, a grace expiry); a top-up's lost `resume` is made up
//! for without billing the paused time; a VMM that does not answer at re-adoption (SIGSTOP)
//! is kept and later killed by its lease's stop, never forgotten while it runs; a VMM that
//! died unreaped (a zombie) counts as gone; a guest that triple-faults ends its lease with
//! `guest_crashed`, one that resets with `guest_exit`; a lease adopted while it booted gets
//! its boot figures from its VMM's log; a VMM whose control socket is removed from under it
//! is stopped `control_lost`.
//!
//! The tests signal only processes whose pid and start time they read from their own
//! daemon's ledger (`VmmProcess`, which checks both through a pidfd).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coinop_proto::{BootFigures, LeaseState, StopReason};
use coinopd::fault::{point, ENV};
use coinopd::ledger::{LeaseRow, Ledger};
use coinopd::vmm_process::{ProcStat, VmmProcess};
use common::guest_reaper::running_vmms;
use common::leases::{credit_payment, testguest_body, CreatedLease};
use common::{kvm_or_skip, wait_for, Daemon, StateDir};
use nix::sys::signal::Signal;
use serde_json::json;
use vmm_protocol::VmState;

fn row(dir: &Path, id: &str) -> LeaseRow {
    let l = Ledger::open(&dir.join("ledger.db")).expect("open ledger");
    l.get(id).expect("read lease").expect("lease row")
}

/// The lease's VMM as its ledger records it: pid and start time.
fn recorded_vmm(dir: &Path, id: &str) -> VmmProcess {
    let r = row(dir, id);
    let vmm = r.vmm().expect("a pid recorded at the spawn");
    assert!(vmm.start_ticks.is_some(), "a start time recorded: {r:?}");
    vmm
}

fn books_balance(dir: &Path, id: &str) {
    let l = Ledger::open(&dir.join("ledger.db")).expect("open ledger");
    let b = l.books(id).expect("books");
    assert!(b.balanced(), "books of {id} do not balance: {b:?}");
}

/// Waits up to `limit` for `vmm` to end.
async fn ends_within(vmm: &VmmProcess, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !vmm.is_running() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Stops an adopted lease's guest through its VMM's control socket (as the guest ending by
/// itself would): the lease becomes `stopped` and the VMM ends.
async fn stop_adopted_guest(dir: &Path, id: &str, adopted: &LeaseRow, vmm: &VmmProcess) {
    let stop = vmm_protocol::client::set_state(
        &PathBuf::from(&adopted.control_path),
        vmm_protocol::Request::Stop,
    )
    .await;
    assert!(stop.is_ok(), "{stop:?}");
    wait_for(
        async || row(dir, id).state == LeaseState::Stopped,
        "the adopted guest's end",
    )
    .await;
    assert!(ends_within(vmm, Duration::from_secs(10)).await);
}

async fn spinning_lease(d: &Daemon, sat: u64) -> CreatedLease {
    let proofs = d.mint_credit(sat).await;
    d.create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await
}

async fn vm_state(control: &str) -> Option<VmState> {
    vmm_protocol::client::status(&PathBuf::from(control))
        .await
        .ok()
        .map(|s| s.state)
}

/// Memory time (MiB·µs) the guest has lived that was not billed: MiB × uptime − billed.
fn unbilled_mem(r: &LeaseRow) -> u64 {
    (r.mem_mib * r.last_uptime_us).saturating_sub(r.used_mem_mib_us)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_stop_and_the_vmm_leaves_no_guest_after_the_restart() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::STOP_COMMITTED)]).await;
    let CreatedLease { id, token, .. } = spinning_lease(&d, 50).await;
    let vmm = recorded_vmm(dir.path(), &id);
    assert!(vmm.is_running());
    let r = d
        .client
        .call("POST", &format!("/v1/leases/{id}/stop"), Some(&token), None)
        .await;
    assert!(r.is_err(), "coinopd answered despite the fault: {r:?}");
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let stopped = row(dir.path(), &id);
    assert_eq!(stopped.state, LeaseState::Stopped);
    assert_eq!(stopped.stop_reason, Some(StopReason::Tenant));
    assert!(
        vmm.is_running(),
        "the window under test: the stop is committed, the VMM still runs"
    );

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    assert!(
        ends_within(&vmm, Duration::from_secs(30)).await,
        "the stopped lease's VMM still runs after the restart"
    );
    wait_for(
        async || row(dir.path(), &id).vmm_gone,
        "the VMM recorded gone",
    )
    .await;
    assert!(running_vmms(dir.path()).is_empty());
    assert_eq!(row(dir.path(), &id).stop_reason, Some(StopReason::Tenant));
    books_balance(dir.path(), &id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_grace_expiry_commit_leaves_no_guest_after_the_restart() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    // No grace: the tick after the one that pauses the exhausted lease stops it, and dies
    // right after committing that stop.
    let d = Daemon::spawn(
        dir.path(),
        &["--grace-s", "0"],
        &[(ENV, point::TICK_STOP_COMMITTED)],
    )
    .await;
    let CreatedLease { id, .. } = spinning_lease(&d, 2).await;
    let vmm = recorded_vmm(dir.path(), &id);
    wait_for(
        async || row(dir.path(), &id).state == LeaseState::Stopped,
        "the grace expiry's stop committed",
    )
    .await;
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert_eq!(
        row(dir.path(), &id).stop_reason,
        Some(StopReason::BalanceExhausted)
    );
    assert!(
        vmm.is_running(),
        "the window under test: the VMM still runs"
    );

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    assert!(
        ends_within(&vmm, Duration::from_secs(30)).await,
        "the expired lease's VMM still runs after the restart"
    );
    assert!(running_vmms(dir.path()).is_empty());
    books_balance(dir.path(), &id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_vmm_at_readoption_is_kept_metered_again_and_killed_by_its_stop() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let CreatedLease { id, token, .. } = spinning_lease(&d, 50).await;
    let vmm = recorded_vmm(dir.path(), &id);
    d.kill9();
    // Stopped after coinopd's death: the kernel continues the stopped members of a process
    // group that coinopd's exit orphans (SIGCONT), which would undo an earlier SIGSTOP.
    assert!(vmm.signal(Signal::SIGSTOP).expect("SIGSTOP"));
    wait_for(
        async || ProcStat::read(vmm.pid).is_some_and(|s| s.state == 'T'),
        "the VMM stopped",
    )
    .await;

    // The status probe at re-adoption times out: the VMM must not be taken for gone.
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let adopted = row(dir.path(), &id);
    assert!(vmm.is_running(), "the VMM was not killed");
    assert_eq!(
        adopted.state,
        LeaseState::Running,
        "a VMM that runs but does not answer keeps its lease: {adopted:?}"
    );
    assert!(!adopted.vmm_gone);
    let log = d.log();
    assert!(
        log.contains("does not answer its control socket; it is kept"),
        "{log}"
    );

    // Once it answers again it is metered again.
    assert!(vmm.signal(Signal::SIGCONT).expect("SIGCONT"));
    let before = row(dir.path(), &id).last_uptime_us;
    wait_for(
        async || row(dir.path(), &id).last_uptime_us > before,
        "a tick reading the resumed VMM",
    )
    .await;

    // A stop of a VMM that does not answer kills it.
    assert!(vmm.signal(Signal::SIGSTOP).expect("SIGSTOP"));
    d.stop_lease(&id, &token).await;
    assert!(
        ends_within(&vmm, Duration::from_secs(30)).await,
        "the stopped lease's unanswering VMM still runs"
    );
    assert!(running_vmms(dir.path()).is_empty());
    books_balance(dir.path(), &id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_topup_and_its_resume_is_made_up_without_billing_the_pause() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(
        dir.path(),
        &["--grace-s", "600"],
        &[(ENV, point::TOPUP_COMMITTED)],
    )
    .await;
    // 4 sat: ~3.5 s of a spinning vCPU, and as long a grace once it paused (a grace never
    // outlasts the run), so the top-up is minted before the pause and sent at once.
    let CreatedLease { id, token, .. } = spinning_lease(&d, 4).await;
    let more = d.mint_credit(20).await;
    wait_for(
        async || row(dir.path(), &id).state == LeaseState::PausedUnfunded,
        "the lease paused at zero",
    )
    .await;
    let r = d
        .client
        .call(
            "POST",
            &format!("/v1/leases/{id}/topup"),
            Some(&token),
            Some(serde_json::to_vec(&json!({"payment": credit_payment(&more)})).expect("json")),
        )
        .await;
    assert!(r.is_err(), "coinopd answered despite the fault: {r:?}");
    let status = d.wait_crash().await;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let crashed = row(dir.path(), &id);
    assert_eq!(crashed.state, LeaseState::Running, "the top-up committed");
    assert_eq!(
        vm_state(&crashed.control_path).await,
        Some(VmState::Paused),
        "the window under test: the VMM was never resumed"
    );
    // Paused while nobody meters it: this time must not be billed.
    let dead_for = Duration::from_secs(2);
    tokio::time::sleep(dead_for).await;

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    // 200 ms of vCPU time billed since the crash: the spinning guest really ran again (a
    // paused one gains none).
    wait_for(
        async || row(dir.path(), &id).used_vcpu_us > crashed.used_vcpu_us + 200_000,
        "the guest running (and metered) again",
    )
    .await;
    assert_eq!(
        vm_state(&crashed.control_path).await,
        Some(VmState::Running),
        "{}",
        d.log()
    );
    let now = row(dir.path(), &id);
    let not_billed = unbilled_mem(&now) - unbilled_mem(&crashed);
    assert!(
        not_billed >= now.mem_mib * dead_for.as_micros() as u64,
        "the paused {dead_for:?} were billed: {not_billed} MiB·µs left unbilled; {now:?}"
    );
    books_balance(dir.path(), &id);
    d.stop_lease(&id, &token).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_adopted_while_booting_keeps_its_vmm_pid() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::CREATE_GUEST_READY)]).await;
    let proofs = d.mint_credit(20).await;
    let body = testguest_body("mode=spin:600000", credit_payment(&proofs));
    d.create_into_crash(&body).await;
    let leases = common::guest_reaper::leases(dir.path());
    assert_eq!(leases.len(), 1);
    let id = leases[0].0.clone();
    let booting = row(dir.path(), &id);
    assert_eq!(booting.state, LeaseState::Booting);
    let vmm = recorded_vmm(dir.path(), &id);
    assert!(vmm.is_running());

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let adopted = row(dir.path(), &id);
    assert_eq!(adopted.state, LeaseState::Running, "{adopted:?}");
    assert_eq!(adopted.vmm(), Some(vmm), "the same VMM, pid and start time");
    stop_adopted_guest(dir.path(), &id, &adopted, &vmm).await;
    d.shutdown().await;
}

/// coinopd dies right after spawning the VMM (and recording it), before it handles the
/// guest's `guest_ready`: the restarted coinopd finds the boot's timing in the VMM's log and
/// the figures known at the spawn in the ledger, and the lease becomes `running` with the
/// boot figures a create would have replied, and is metered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_adopted_while_booting_gets_its_boot_figures_from_its_vmm() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::CREATE_VMM_RECORDED)]).await;
    let proofs = d.mint_credit(20).await;
    let body = testguest_body("mode=spin:600000", credit_payment(&proofs));
    d.create_into_crash(&body).await;
    let leases = common::guest_reaper::leases(dir.path());
    assert_eq!(leases.len(), 1);
    let id = leases[0].0.clone();
    let booting = row(dir.path(), &id);
    assert_eq!(booting.state, LeaseState::Booting);
    assert_eq!(booting.boot_json, None, "no figures before the restart");
    let vmm = recorded_vmm(dir.path(), &id);
    assert!(vmm.is_running());

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    wait_for(
        async || row(dir.path(), &id).state == LeaseState::Running,
        "the adopted lease running",
    )
    .await;
    let adopted = row(dir.path(), &id);
    assert_eq!(adopted.vmm(), Some(vmm), "the same VMM, pid and start time");
    let json = adopted.boot_json.clone().expect("boot figures recorded");
    let boot: BootFigures = serde_json::from_str(&json).expect("boot figures JSON");
    let vcpus = boot
        .vcpus_started_us
        .expect("vcpus_started_us from the VMM's log");
    let ready = boot
        .guest_ready_us
        .expect("guest_ready_us from the VMM's log");
    assert!(boot.payment_verified_us > 0, "{boot:?}");
    assert!(
        boot.ledger_committed_us >= boot.payment_verified_us,
        "{boot:?}"
    );
    assert!(boot.vmm_spawned_us > boot.ledger_committed_us, "{boot:?}");
    // The VMM's own figures count from the spawn's start (after the ledger commit);
    // vmm_spawned is when coinopd's spawn call returned, which on a loaded host can come
    // after the test guest's vCPUs started (seen: spawned 19.3 ms, vCPUs 15.2 ms).
    assert!(vcpus > boot.ledger_committed_us, "{boot:?}");
    assert!(ready > vcpus, "{boot:?}");
    assert!(
        ready < 60_000_000,
        "a boot within a minute of the request: {boot:?}"
    );
    // Metered from here: the ticks bill the adopted guest.
    wait_for(
        async || row(dir.path(), &id).debited_msat > 0,
        "the adopted lease metered",
    )
    .await;
    books_balance(dir.path(), &id);
    stop_adopted_guest(dir.path(), &id, &adopted, &vmm).await;
    d.shutdown().await;
}

/// coinopd's VMMs outlive it and are then someone else's children: here this test
/// process's (a subreaper), which does not reap them, so a VMM that ends stays a zombie.
/// The zombie must count as gone: its lease stops instead of waiting for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readopted_vmm_that_ends_as_a_zombie_ends_its_lease() {
    if !kvm_or_skip() {
        return;
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let proofs = d.mint_credit(50).await;
    // Spins 8 s, then resets: the VMM ends by itself.
    let CreatedLease { id, .. } = d
        .create_lease(testguest_body("mode=spin:8000", credit_payment(&proofs)))
        .await;
    let vmm = recorded_vmm(dir.path(), &id);
    d.kill9();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    assert_eq!(
        row(dir.path(), &id).state,
        LeaseState::Running,
        "re-adopted"
    );
    wait_for(
        async || ProcStat::read(vmm.pid).is_some_and(|s| s.state == 'Z'),
        "the VMM ended, unreaped",
    )
    .await;
    wait_for(
        async || row(dir.path(), &id).state == LeaseState::Stopped,
        "the lease of the zombie VMM stopped",
    )
    .await;
    let ended = row(dir.path(), &id);
    assert_eq!(ended.stop_reason, Some(StopReason::GuestExit));
    assert!(ended.vmm_gone);
    // Reap it: this test's own orphan, found by the pid its ledger recorded.
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(vmm.pid), None);
    books_balance(dir.path(), &id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triple_fault_is_guest_crashed_and_a_reset_guest_exit() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    for (mode, reason) in [("fault", "guest_crashed"), ("halt", "guest_exit")] {
        let proofs = d.mint_credit(10).await;
        let r = d
            .call(
                "POST",
                "/v1/leases",
                None,
                Some(testguest_body(
                    &format!("mode={mode}"),
                    credit_payment(&proofs),
                )),
            )
            .await;
        // The guest reports ready before it faults or resets, so the create succeeds.
        assert_eq!(r.status, 201, "{mode}: {}", r.text());
        let id = r.json()["lease_id"].as_str().expect("id").to_string();
        let token = r.json()["token"].as_str().expect("token").to_string();
        let path = format!("/v1/leases/{id}");
        wait_for(
            async || d.call("GET", &path, Some(&token), None).await.json()["state"] == "stopped",
            "the guest's end",
        )
        .await;
        let v = d.call("GET", &path, Some(&token), None).await.json();
        assert_eq!(v["stop_reason"], reason, "{mode}: {v}");
        books_balance(dir.path(), &id);
    }
    d.shutdown().await;
}

/// A spinning lease on a fresh coinopd whose VMM `misbehave` turns bad (it returns what it
/// did, for the checks after): the lease stops `control_lost` no sooner than `kept_for`
/// after, its VMM is killed and its balance kept. Returns the state dir (for file checks)
/// and what `misbehave` returned.
async fn stopped_control_lost<T>(
    extra: &[&str],
    kept_for: Duration,
    misbehave: impl FnOnce(&Path, &CreatedLease, &VmmProcess) -> T,
) -> Option<(StateDir, T)> {
    if !kvm_or_skip() {
        return None;
    }
    let dir = StateDir::new();
    let d = Daemon::start(dir.path(), extra).await;
    let lease = spinning_lease(&d, 50).await;
    let created = Instant::now();
    let vmm = recorded_vmm(dir.path(), &lease.id);
    let did = misbehave(dir.path(), &lease, &vmm);
    let since = Instant::now();
    let path = format!("/v1/leases/{}", lease.id);
    wait_for(
        async || d.call("GET", &path, Some(&lease.token), None).await.json()["state"] == "stopped",
        "the lease's stop",
    )
    .await;
    assert!(
        since.elapsed() >= kept_for,
        "kept {kept_for:?} (an honest VMM could still be slow): stopped after {:?}",
        since.elapsed()
    );
    let lived = created.elapsed();
    let v = d.call("GET", &path, Some(&lease.token), None).await.json();
    assert_eq!(v["stop_reason"], "control_lost", "{v}");
    assert!(v["balance_msat"].as_u64().unwrap_or(0) > 0, "{v}");
    // The time it ran unread is billed too, as coinopd's clock saw it (less the floors'
    // slack and a tick): not only what was read before it misbehaved.
    let billed_s = memory_billed_s(&v);
    assert!(
        billed_s >= lived.as_secs_f64() - 3.0,
        "memory time billed for {billed_s:.1} s of the {lived:?} it lived: {v}"
    );
    assert!(
        ends_within(&vmm, Duration::from_secs(10)).await,
        "the VMM was killed"
    );
    books_balance(dir.path(), &lease.id);
    d.shutdown().await;
    Some((dir, did))
}

/// The seconds of its whole memory a lease view's memory time stands for.
fn memory_billed_s(v: &serde_json::Value) -> f64 {
    let mem_mib = v["mem_mib"].as_u64().expect("mem_mib");
    v["used"]["mem_mib_us"].as_u64().expect("used") as f64 / mem_mib as f64 / 1e6
}

/// A VMM whose control socket is removed from under it runs on with nothing listening
/// there, and nothing makes the socket again: it can never be metered or paused again.
/// It is kept a few seconds (a VMM on its way out removes its socket before it ends),
/// then its lease stops `control_lost`, the VMM is killed and the balance is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_whose_control_socket_is_gone_is_stopped_control_lost() {
    stopped_control_lost(&[], Duration::from_secs(5), |dir, lease, _| {
        let control = row(dir, &lease.id).control_path;
        std::fs::remove_file(&control).expect("remove this test's lease's control socket");
    })
    .await;
}

/// A VMM that stops answering its usage reads (here: stopped by SIGSTOP; a VMM that a
/// hostile guest took over could accept and never reply) runs on unbilled. It is kept
/// while that could be a loaded host (20 s), then its lease stops `control_lost`, the VMM
/// is killed and the balance is kept. Before, it was read again every tick, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_stops_answering_is_stopped_control_lost() {
    stopped_control_lost(&[], Duration::from_secs(20), |_, _, vmm| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vmm.pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .expect("stop this test's lease's VMM");
    })
    .await;
}

/// A VMM gone silent whose tenant stops the lease before the `control_lost` stop (20 s):
/// the stretch its VMM was silent is billed before the balance is handed back, as the
/// `control_lost` stop bills it. Before, stopping at 19 s left it free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_stopped_while_its_vmm_is_silent_is_billed_that_stretch() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let lease = spinning_lease(&d, 50).await;
    let created = Instant::now();
    let vmm = recorded_vmm(dir.path(), &lease.id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm.pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("stop this test's lease's VMM");
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Stops refused after the billing (one output, too few for the change) leave
    // the lease running: billing it again bills only what came since, not the stretch.
    let stop = format!("/v1/leases/{}/stop", lease.id);
    let too_few = serde_json::json!({"outputs": [{"amount": 1, "id": "00ffffffffffffff",
        "B_": "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"}]});
    for _ in 0..2 {
        let r = d
            .call("POST", &stop, Some(&lease.token), Some(too_few.clone()))
            .await;
        assert!((400..500).contains(&r.status), "refused: {}", r.text());
    }
    d.stop_lease(&lease.id, &lease.token).await;
    let lived = created.elapsed();
    let path = format!("/v1/leases/{}", lease.id);
    let v = d.call("GET", &path, Some(&lease.token), None).await.json();
    assert_eq!(v["stop_reason"], "tenant", "{v}");
    let billed_s = memory_billed_s(&v);
    assert!(
        billed_s >= lived.as_secs_f64() - 3.0 && billed_s <= lived.as_secs_f64() + 1.0,
        "memory time billed for {billed_s:.1} s of the {lived:?} it lived: {v}"
    );
    assert!(
        ends_within(&vmm, Duration::from_secs(10)).await,
        "the VMM was killed"
    );
    books_balance(dir.path(), &lease.id);
    d.shutdown().await;
}

/// A VMM that writes its console file beyond `--console-max-bytes` (the cap is the VMM's to
/// keep; here the test writes as a VMM a hostile guest took over would) is stopped
/// `control_lost` at the next tick, killed, and its file cut back to the bound: it cannot
/// fill the disk every lease's files share. Before, nothing looked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_writing_beyond_its_console_cap_is_stopped_and_cut_back() {
    let stopped = stopped_control_lost(
        &["--console-max-bytes", "4096"],
        Duration::ZERO,
        |dir, lease, vmm| {
            // A jailed VMM (tests run as root) is also held to its largest honest file as
            // it writes: here the 1 MiB of its log, larger than this console's bound.
            if nix::unistd::Uid::effective().is_root() {
                let limits = std::fs::read_to_string(format!("/proc/{}/limits", vmm.pid))
                    .expect("the VMM's limits");
                let line = limits.lines().find(|l| l.starts_with("Max file size"));
                assert_eq!(
                    line.map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>()),
                    Some(vec!["1048576", "1048576"]),
                    "{limits}"
                );
            }
            let console = row(dir, &lease.id).console_path;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&console)
                .expect("this test's lease's console");
            f.set_len(64 << 20).expect("64 MiB of console");
            console
        },
    )
    .await;
    if let Some((_dir, console)) = stopped {
        let bound = 4096 + (64 << 10);
        let left = std::fs::metadata(&console)
            .expect("the console is kept")
            .len();
        assert!(left <= bound, "cut back to {bound}: {left}");
    }
}

/// A VMM's files are held to the bounds it was started with: a coinopd restarted with a
/// lower `--console-max-bytes` re-adopts a VMM whose console is within its own, larger cap,
/// and keeps it running. Before, the new cap stopped the honest lease `control_lost` and
/// cut its console back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readopted_vmm_is_held_to_the_console_cap_it_was_started_with() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &["--console-max-bytes", "1048576"], &[]).await;
    let lease = spinning_lease(&d, 50).await;
    d.kill9();
    // What an honest VMM under its 1 MiB cap may have written: 512 KiB.
    let console = row(dir.path(), &lease.id).console_path;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&console)
        .expect("this test's lease's console")
        .set_len(512 << 10)
        .expect("512 KiB of console");
    let d = Daemon::spawn(dir.path(), &["--console-max-bytes", "4096"], &[]).await;
    let path = format!("/v1/leases/{}", lease.id);
    let ticked = row(dir.path(), &lease.id).last_uptime_us;
    wait_for(
        async || row(dir.path(), &lease.id).last_uptime_us > ticked,
        "a tick metering the re-adopted lease",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = d.call("GET", &path, Some(&lease.token), None).await.json();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(
        std::fs::metadata(&console).expect("console").len(),
        512 << 10,
        "not cut back"
    );
    d.stop_lease(&lease.id, &lease.token).await;
    d.shutdown().await;
}

/// A re-adopted guest that crashes is `guest_crashed` like a fresh one, both when it
/// crashes while no coinopd runs (found ended at re-adoption) and when it crashes after the
/// restart (found ended by a tick): its VMM is then nobody's child that coinopd can wait
/// for, and the reason comes from the `exit` event the VMM left in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readopted_guest_that_crashes_is_guest_crashed() {
    if !kvm_or_skip() {
        return;
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let proofs = d.mint_credit(100).await;
    let after = d
        .create_lease(testguest_body("mode=crash:15000", credit_payment(&proofs)))
        .await;
    let proofs = d.mint_credit(100).await;
    let during = d
        .create_lease(testguest_body("mode=crash:500", credit_payment(&proofs)))
        .await;
    let (vmm_after, vmm_during) = (
        recorded_vmm(dir.path(), &after.id),
        recorded_vmm(dir.path(), &during.id),
    );
    d.kill9();
    wait_for(
        async || !vmm_during.is_running(),
        "the first guest crashed while no coinopd ran",
    )
    .await;
    assert!(vmm_after.is_running(), "the second guest still spins");

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let ended = row(dir.path(), &during.id);
    assert_eq!(
        ended.state,
        LeaseState::Stopped,
        "found ended at re-adoption"
    );
    assert_eq!(
        ended.stop_reason,
        Some(StopReason::GuestCrashed),
        "{ended:?}"
    );
    assert_eq!(
        row(dir.path(), &after.id).state,
        LeaseState::Running,
        "re-adopted"
    );
    wait_for(
        async || row(dir.path(), &after.id).state == LeaseState::Stopped,
        "the re-adopted guest's crash",
    )
    .await;
    let ended = row(dir.path(), &after.id);
    assert_eq!(
        ended.stop_reason,
        Some(StopReason::GuestCrashed),
        "{ended:?}"
    );
    let v = d
        .call(
            "GET",
            &format!("/v1/leases/{}", after.id),
            Some(&after.token),
            None,
        )
        .await
        .json();
    assert_eq!(v["stop_reason"], "guest_crashed", "{v}");
    // Reap them: this test's own orphans, found by the pids its ledger recorded.
    for vmm in [vmm_after, vmm_during] {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(vmm.pid), None);
    }
    books_balance(dir.path(), &after.id);
    books_balance(dir.path(), &during.id);
    d.shutdown().await;
}

/// One VMM that does not answer its control socket (SIGSTOPped by this test, found by the
/// pid and start time its own daemon recorded) does not hold up the metering of the other
/// leases: a tick waits for it only until its read deadline, not the control client's 2 s
/// timeout, and the stopped one is simply read again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswering_vmm_does_not_delay_the_other_leases_metering() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    // The tests' 50 ms tick: a tick that waited 2 s for the stopped VMM would be 40 ticks late.
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let mut leases = Vec::new();
    for _ in 0..2 {
        let proofs = d.mint_credit(100).await;
        leases.push(
            d.create_lease(testguest_body("mode=idle", credit_payment(&proofs)))
                .await,
        );
    }
    let (stuck, other) = (&leases[0], &leases[1]);
    let vmm = recorded_vmm(dir.path(), &stuck.id);
    assert!(vmm.signal(Signal::SIGSTOP).expect("SIGSTOP"));
    wait_for(
        async || ProcStat::read(vmm.pid).is_some_and(|s| s.state == 'T'),
        "the VMM stopped",
    )
    .await;

    // A reading the VMM sent just before it stopped may still be on its way to the ledger:
    // once a tick has found the VMM not answering, the ticks before it (one at a time)
    // have committed theirs.
    // (The other VMM answers: the warning is the stopped one's.)
    wait_for(
        async || {
            d.log()
                .contains("no usage reading within the tick's deadline")
        },
        "a tick that found the stopped VMM not answering",
    )
    .await;
    // Readings of the other lease over 4 s: one per tick, i.e. one per read deadline at
    // worst (250 ms), where waiting out the stopped VMM would give one per 2 s.
    let stuck_before = row(dir.path(), &stuck.id).last_uptime_us;
    let mut readings = std::collections::HashSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        readings.insert(row(dir.path(), &other.id).last_uptime_us);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        readings.len() >= 6,
        "the other lease was read {} times in 4 s",
        readings.len()
    );
    assert_eq!(
        row(dir.path(), &stuck.id).last_uptime_us,
        stuck_before,
        "the stopped VMM is not billed"
    );
    let log = d.log();
    assert!(
        log.contains("no usage reading within the tick's deadline"),
        "{log}"
    );

    // Once it answers again it is metered again.
    assert!(vmm.signal(Signal::SIGCONT).expect("SIGCONT"));
    wait_for(
        async || row(dir.path(), &stuck.id).last_uptime_us > stuck_before,
        "a tick reading the continued VMM",
    )
    .await;
    for l in &leases {
        d.stop_lease(&l.id, &l.token).await;
        books_balance(dir.path(), &l.id);
    }
    d.shutdown().await;
}
