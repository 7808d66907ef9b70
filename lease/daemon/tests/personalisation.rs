//! Personalisation of `agent` images against a real coinopd process, the real coinop-vmm
//! and the test guest's `mode=personalise` on /dev/kvm (it writes 124, reads one line from
//! the personalisation port, prints it as `personalised: LINE` and writes 123): a lease
//! booted cold and leases restored from the image's golden snapshot each get a line of
//! their own (host name = lease id, fresh entropy, the host's clock, the tenant's key), the
//! golden snapshot is taken while the guest waits for its line (so a restored guest prints
//! its own line, not the build's: the build sends none), and nothing of a lease is on the
//! guest's kernel command line.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::leases::{credit_payment, CreatedLease};
use common::personalisation_line::{field, the_one_line};
use common::{kvm_or_skip, vmm_and_guest, wait_for, Daemon};
use serde_json::json;

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTestOnly0123456789abcdefgh tenant@test";

/// The snapshot directories of image `tga` (complete ones).
fn snapshots(state: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state.join("snapshots").join("tga")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("state").is_file())
        .collect()
}

async fn create(d: &Daemon, ssh_key: Option<&str>) -> CreatedLease {
    let proofs = d.mint_credit(20).await;
    let mut body = json!({"vcpus": 1, "mem_mib": 64, "image": "tga",
                          "payment": credit_payment(&proofs)});
    if let Some(key) = ssh_key {
        body["ssh_key"] = json!(key);
    }
    d.create_lease(body).await
}

/// The one line `lease`'s guest got (guest_ready follows it, so it is on the console by
/// the time the create answered), checked against the protocol and the lease.
async fn line_of(d: &Daemon, lease: &CreatedLease) -> String {
    let text = d.console(lease).await;
    let line = the_one_line(&text, &lease.id);
    assert!(
        !text.contains("com2 had data before 124"),
        "the line waits for the 124:\n{text}"
    );
    line
}

/// A daemon on `state` offering the test guest's `mode=personalise` as `tga`, an agent
/// image with golden snapshots, with `extra` arguments.
async fn agent_daemon(state: &Path, extra: &[&str]) -> Daemon {
    agent_daemon_env(state, extra, &[]).await
}

/// [`agent_daemon`] with `env` in coinopd's environment.
async fn agent_daemon_env(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    agent_daemon_mode(state, "personalise", extra, env).await
}

/// [`agent_daemon_env`] with the test guest's `mode` (one of its personalise modes).
async fn agent_daemon_mode(
    state: &Path,
    mode: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    let image = format!("tga={},snapshot,agent,cmdline=mode={mode}", guest.display());
    let mut args = vec!["--image", image.as_str()];
    args.extend_from_slice(extra);
    Daemon::spawn(state, &args, env).await
}

fn start_of(lease: &CreatedLease) -> &str {
    lease.reply["boot"]["start"].as_str().unwrap_or("(none)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_and_restored_leases_each_get_their_own_line() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    // Every restore on the request path here (warm restores: the test after this one).
    let d = agent_daemon(state, &["--warm-restores", "0"]).await;

    let cold = create(&d, Some(SSH_KEY)).await;
    assert_eq!(start_of(&cold), "cold", "{}", cold.reply);
    let cold_line = line_of(&d, &cold).await;
    let key = field(&cold_line, "ssh_key").expect("the tenant's key");
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("standard base64");
    let mut want = SSH_KEY.split(' ');
    let want = format!(
        "{} {}",
        want.next().expect("type"),
        want.next().expect("blob")
    );
    assert_eq!(
        String::from_utf8_lossy(&key),
        want,
        "the key without its comment"
    );

    // The build waits for the 124, not for guest_ready (which the guest reaches only with
    // a line, and the build sends none): a snapshot appears.
    wait_for(
        async || !snapshots(state).is_empty(),
        "the golden snapshot at the 124 point",
    )
    .await;

    let a = create(&d, None).await;
    let b = create(&d, Some(SSH_KEY)).await;
    let mut lines = vec![cold_line];
    for lease in [&a, &b] {
        assert_eq!(start_of(lease), "restore", "{}", lease.reply);
        let text = &d.console(lease).await;
        // Restored while waiting: the boot banner and the 'before 124' report belong to
        // the build, before the snapshot; this guest only reads its line.
        assert!(!text.contains("com2 empty before 124"), "{text}");
        // Restored for its create: its line comes at once, no time to spare, no ring.
        assert!(text.contains("personalise: not rung"), "{text}");
        lines.push(line_of(&d, lease).await);
    }
    assert_eq!(field(&lines[1], "ssh_key"), None, "{}", lines[1]);
    assert!(field(&lines[2], "ssh_key").is_some(), "{}", lines[2]);
    // Every guest's entropy is its own.
    let entropies: Vec<&str> = lines.iter().filter_map(|l| field(l, "entropy")).collect();
    for (i, e) in entropies.iter().enumerate() {
        assert!(!entropies[i + 1..].contains(e), "{lines:?}");
    }
    assert_ne!(lines[1], lines[2]);

    // None of it on a kernel command line: the cold VMM got the image's own, with the
    // agent's words, through an fd (not its arguments); the restored ones none at all.
    let argv = |lease: &CreatedLease| {
        let pid = common::lease_pid::lease_pid(state, &lease.id);
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let cold_argv = argv(&cold);
    assert!(
        cold_argv.iter().any(|a| a == "--cmdline-fd")
            && !cold_argv.iter().any(|a| a.contains("mode=personalise")),
        "{cold_argv:?}"
    );
    // (It did get it: its guest read a line above, which only mode=personalise does.)
    for lease in [&a, &b] {
        let args = argv(lease);
        assert!(args.iter().any(|a| a == "--restore"), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("AAAAC3Nza")), "{args:?}");
    }
    for lease in [&cold, &a, &b] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// What [`restore_and_keep_one_warm`] leaves: two leases and the warm restore.
struct Kept {
    cold: CreatedLease,
    restored: CreatedLease,
    warm_id: String,
    warm_pid: i32,
}

/// A cold lease (whose boot builds the golden snapshot), a lease restored on the request
/// path once the snapshot is there, and the warm restore coinopd keeps after it.
async fn restore_and_keep_one_warm(d: &Daemon, state: &Path) -> Kept {
    let cold = create(d, None).await;
    assert_eq!(start_of(&cold), "cold", "{}", cold.reply);
    wait_for(async || !snapshots(state).is_empty(), "the golden snapshot").await;
    let restored = create(d, None).await;
    assert_eq!(start_of(&restored), "restore", "{}", restored.reply);
    let (warm_id, warm_pid) = common::warm_restore::wait_for_one(state);
    Kept {
        cold,
        restored,
        warm_id,
        warm_pid,
    }
}

/// After a lease restored on the request path, coinopd keeps one of its shape restored
/// ahead (`--warm-restores`, default 1): the next create takes that VMM, which gets a line
/// of its own (its lease's host name, the tenant's key, fresh entropy) and pays nothing of
/// the time it waited before the create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_gets_its_own_line_and_is_billed_from_its_create() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon(state, &[]).await;
    let Kept {
        cold,
        restored,
        warm_id,
        warm_pid,
    } = restore_and_keep_one_warm(&d, state).await;
    let restored_line = line_of(&d, &restored).await;

    // The warm VMM waits: with metering from its spawn, this alone would cost the tenant
    // 2 s of 64 MiB.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = std::time::Instant::now();
    let warm = create(&d, Some(SSH_KEY)).await;
    assert_eq!(start_of(&warm), "warm", "{}", warm.reply);
    assert_eq!(warm.id, warm_id, "{}", warm.reply);
    assert_eq!(warm.reply["boot"]["vmm_spawned_us"], 0, "{}", warm.reply);
    assert!(
        warm.reply["boot"]["vcpus_started_us"].is_null(),
        "{}",
        warm.reply
    );
    assert_eq!(common::lease_pid::lease_pid(state, &warm.id), warm_pid);
    let text = d.console(&warm).await;
    // Restored and waiting before its lease existed: this guest only read its line.
    assert!(!text.contains("com2 empty before 124"), "{text}");
    // And coinopd rang it while it waited (its time to spare: the agent's warm-up).
    assert!(text.contains("personalise: rung before the line"), "{text}");
    let warm_line = line_of(&d, &warm).await;
    assert!(field(&warm_line, "ssh_key").is_some(), "{warm_line}");
    assert_ne!(
        field(&warm_line, "entropy"),
        field(&restored_line, "entropy")
    );
    assert!(
        common::warm_restore::waiting(state)
            .iter()
            .all(|(id, _)| *id != warm_id),
        "the lease owns the VMM: no warm marker of it left"
    );

    // Ticks every 50 ms: a few of them billed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let path = format!("/v1/leases/{}", warm.id);
    let view = d.call("GET", &path, Some(&warm.token), None).await.json();
    let waited_us = asked.elapsed().as_micros() as u64;
    let mem_mib_us = view["used"]["mem_mib_us"]
        .as_u64()
        .expect("used.mem_mib_us");
    assert!(
        mem_mib_us > 0 && mem_mib_us <= 64 * waited_us,
        "memory time billed since the create only: {mem_mib_us} MiB·µs in {waited_us} µs: {view}"
    );
    for lease in [&cold, &restored, &warm] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// A warm restore holds the room of its shape: a create of another shape that finds the
/// host full only because of it gets that room, the warm VMM given up first (its process
/// ended, its marker gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_gives_its_room_to_a_create_of_another_shape() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    // 64 MiB leases: the cold one, the restored one and the warm one hold 192 of 256 MiB.
    let d = agent_daemon(state, &["--capacity-mib", "256"]).await;
    let Kept {
        cold,
        restored,
        warm_id,
        warm_pid,
    } = restore_and_keep_one_warm(&d, state).await;
    let warm = coinopd::vmm_process::VmmProcess::of(warm_pid).expect("the warm VMM runs");

    // 128 MiB: 64 are free without the warm VMM's room.
    let proofs = d.mint_credit(40).await;
    let big = d
        .create_lease(json!({"vcpus": 1, "mem_mib": 128, "image": "tga",
                             "payment": credit_payment(&proofs)}))
        .await;
    assert_eq!(start_of(&big), "cold", "{}", big.reply);
    assert!(!warm.is_running(), "the warm VMM ended before the create");
    assert!(
        !state.join("warm").join(&warm_id).exists(),
        "its marker removed"
    );
    for lease in [&cold, &restored, &big] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// A create of the whole two-vCPU host's size, freshly paid: what a full host must fit in
/// by giving up warm restores or builds, or refuse.
async fn create_two_vcpus(d: &Daemon) -> coinop_cli::client::Reply {
    let proofs = d.mint_credit(40).await;
    d.call(
        "POST",
        "/v1/leases",
        None,
        Some(json!({"vcpus": 2, "mem_mib": 64, "image": "tga",
                    "payment": credit_payment(&proofs)})),
    )
    .await
}

/// `GET /v1/host`'s free vCPUs.
async fn vcpus_free(d: &Daemon) -> u64 {
    let host = d.call("GET", "/v1/host", None, None).await.json();
    host["capacity"]["vcpus_free"]
        .as_u64()
        .unwrap_or_else(|| panic!("capacity.vcpus_free: {host}"))
}

/// A warm restore holds its room from the start of its build, before it is ready for a
/// create to take (held here, restored and named in its marker, by `warm_built` for 5 s):
/// a create that finds the host full only because of that build gets the room, the build
/// given up (its VMM ended, its marker gone), not a 503. And the room is counted exactly:
/// once that lease stops, all of it is free but what warm restores hold again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_being_built_gives_its_room_to_a_create() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let delay = [("COINOPD_FAULT_DELAY", "warm_built:5000")];
    let d = agent_daemon_env(state, &["--capacity-vcpus", "2"], &delay).await;
    let cold = create(&d, None).await;
    assert_eq!(start_of(&cold), "cold", "{}", cold.reply);
    wait_for(async || !snapshots(state).is_empty(), "the golden snapshot").await;
    d.stop_lease(&cold.id, &cold.token).await;
    // Its restore makes the filler build one of its shape: 1 vCPU each, the host full.
    let restored = create(&d, None).await;
    assert_eq!(start_of(&restored), "restore", "{}", restored.reply);
    let (warm_id, warm_pid) = common::warm_restore::wait_for_one(state);
    let warm = coinopd::vmm_process::VmmProcess::of(warm_pid).expect("the warm VMM runs");
    d.stop_lease(&restored.id, &restored.token).await;
    assert_eq!(vcpus_free(&d).await, 1, "the build holds the other vCPU");

    let r = create_two_vcpus(&d).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let big = r.json();
    assert!(!warm.is_running(), "the warm VMM ended before the create");
    assert!(
        !state.join("warm").join(&warm_id).exists(),
        "its marker removed"
    );
    assert_eq!(vcpus_free(&d).await, 0, "{big}");
    let (id, token) = (
        big["lease_id"].as_str().expect("lease_id"),
        big["token"].as_str().expect("token"),
    );
    d.stop_lease(id, token).await;
    // Free: both vCPUs but one for each warm restore that holds room again (a marker from
    // before its reservation to after its release: looked at until the two agree).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let warm = std::fs::read_dir(state.join("warm"))
            .map(|e| e.count() as u64)
            .unwrap_or(0);
        let free = vcpus_free(&d).await;
        if free + warm == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{free} vCPUs free with {warm} warm restores of 1:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.shutdown().await;
}

/// A create that would not fit even in the warm restores' room leaves them alone: given
/// up, each would cost a restore to build again, for a create refused all the same (a
/// payment that is never claimed could be sent again and again for that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_too_big_for_the_warm_restores_room_leaves_them_alone() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon_env(state, &["--capacity-vcpus", "3"], &[]).await;
    let Kept {
        cold,
        restored,
        warm_pid,
        ..
    } = restore_and_keep_one_warm(&d, state).await;
    let warm = coinopd::vmm_process::VmmProcess::of(warm_pid).expect("the warm VMM runs");
    assert_eq!(vcpus_free(&d).await, 0, "two leases and the warm restore");

    let r = create_two_vcpus(&d).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(warm.is_running(), "the warm VMM was not given up for it");
    for lease in [&cold, &restored] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// Polls `done` every 50 ms for up to 10 s (a watch that looks every second has had
/// several looks by then); panics with `what` and coinopd's log if it never holds.
async fn within_seconds(d: &Daemon, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A warm restore whose VMM dies while it waits (`kill -9` of that VMM, this test's
/// coinopd's own) is given up and replaced within seconds, with no create: before, it
/// counted as ready, holding its room, until a create of its shape came to take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_warm_restore_is_replaced_without_a_create() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon(state, &[]).await;
    let Kept {
        cold,
        restored,
        warm_id,
        warm_pid,
    } = restore_and_keep_one_warm(&d, state).await;
    let warm = coinopd::vmm_process::VmmProcess::of(warm_pid).expect("the warm VMM runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(warm_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the warm VMM (named in this test's marker)");
    within_seconds(
        &d,
        "another warm restore in place of the dead one",
        async || {
            let waiting = common::warm_restore::waiting(state);
            !waiting.iter().any(|(id, _)| *id == warm_id) && waiting.len() == 1
        },
    )
    .await;
    assert!(!warm.is_running());
    for lease in [&cold, &restored] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// A warm restore whose guest turned the doorbell on and then leaves the ring it got at
/// its restore unheeded (`mode=personalise-doorbell-deaf`: to the host, a guest whose
/// listener hangs, as restored guests of the nested lab did now and then) is given up by
/// the watch once it has waited `--personalise-timeout-ms` (1.5 s here), with no create:
/// before, it waited to be taken, and the create that took it waited that bound for its
/// guest before booting its lease on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_whose_guest_leaves_its_ring_unheeded_is_given_up_without_a_create() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon_mode(
        state,
        "personalise-doorbell-deaf",
        &["--personalise-timeout-ms", "1500"],
        &[],
    )
    .await;
    // Cold and on the request path, this guest takes its line as any other: it is never
    // rung there.
    let Kept {
        cold,
        restored,
        warm_id,
        warm_pid,
    } = restore_and_keep_one_warm(&d, state).await;
    let warm = coinopd::vmm_process::VmmProcess::of(warm_pid).expect("the warm VMM runs");
    let control = state.join("run").join(format!("{warm_id}.sock"));
    let status = vmm_protocol::client::status(&control).await;
    assert!(
        status.as_ref().is_ok_and(|s| s.ring_unheeded_us.is_some()),
        "rung, not heeded: {status:?}"
    );
    let since = std::time::Instant::now();
    within_seconds(&d, "the deaf warm restore given up", async || {
        !common::warm_restore::waiting(state)
            .iter()
            .any(|(id, _)| *id == warm_id)
            && !warm.is_running()
    })
    .await;
    assert!(
        since.elapsed() >= Duration::from_millis(500),
        "not before its ring waited the bound: {:?}",
        since.elapsed()
    );
    let log = common::plain_text(&d.log());
    assert!(
        log.lines()
            .any(|l| l.contains(&warm_id) && l.contains("has not heeded its ring")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(&warm_id)
            && l.contains("giving up a warm restore")
            && l.contains("left its ring unheeded")),
        "{log}"
    );
    for lease in [&cold, &restored] {
        assert!(
            d.console(lease).await.contains("personalise: not rung"),
            "{}",
            lease.id
        );
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// A warm doorbell guest that heeds its ring (`mode=personalise-doorbell`, as the rootfs
/// agent) is kept past `--personalise-timeout-ms` and taken by the next create, which gets
/// its own line through the doorbell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_whose_guest_heeds_its_ring_is_kept_and_taken() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon_mode(
        state,
        "personalise-doorbell",
        &["--personalise-timeout-ms", "1000"],
        &[],
    )
    .await;
    let Kept {
        cold,
        restored,
        warm_id,
        warm_pid,
    } = restore_and_keep_one_warm(&d, state).await;
    let control = state.join("run").join(format!("{warm_id}.sock"));
    within_seconds(&d, "the warm guest heeds its ring", async || {
        vmm_protocol::client::status(&control)
            .await
            .is_ok_and(|s| s.ring_unheeded_us.is_none())
    })
    .await;
    // Past the bound and a few looks of the watch.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        common::warm_restore::waiting(state),
        vec![(warm_id.clone(), warm_pid)],
        "{}",
        d.log()
    );
    let lease = create(&d, Some(SSH_KEY)).await;
    assert_eq!(lease.id, warm_id, "{}", lease.reply);
    let line = line_of(&d, &lease).await;
    assert!(field(&line, "ssh_key").is_some(), "{line}");
    assert!(
        d.console(&lease)
            .await
            .contains("personalise: rung before the line, heeded"),
        "{}",
        d.console(&lease).await
    );
    for lease in [&cold, &restored, &lease] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    d.shutdown().await;
}

/// A new kernel (here the image's file touched: a golden snapshot's key is made of its
/// files' identities) makes every warm restore of the old snapshot useless: none is taken
/// again, and they are given up within seconds, their room freed, with no create. The
/// pool is refilled once a snapshot of the new key exists, made by the next create's cold
/// boot, also with no create by restore after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_of_a_replaced_kernel_is_given_up_without_a_create() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let files = tempfile::tempdir().expect("a directory for the image's kernel");
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    let kernel = files.path().join("kernel");
    std::fs::copy(&guest, &kernel).expect("copy the test guest");
    let image = format!(
        "tga={},snapshot,agent,cmdline=mode=personalise",
        kernel.display()
    );
    let d = Daemon::spawn(state, &["--image", &image], &[]).await;
    let Kept {
        cold,
        restored,
        warm_id,
        warm_pid,
    } = restore_and_keep_one_warm(&d, state).await;
    let warm = coinopd::vmm_process::VmmProcess::of(warm_pid).expect("the warm VMM runs");
    for lease in [&cold, &restored] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    let total = d.call("GET", "/v1/host", None, None).await.json()["capacity"]["vcpus_total"]
        .as_u64()
        .expect("capacity.vcpus_total");
    assert_eq!(
        vcpus_free(&d).await,
        total - 1,
        "the warm restore holds one"
    );

    let old_snapshots = snapshots(state);
    let replaced = std::time::SystemTime::now() + Duration::from_secs(1);
    std::fs::File::options()
        .write(true)
        .open(&kernel)
        .and_then(|f| f.set_modified(replaced))
        .expect("touch the kernel");
    within_seconds(&d, "the stale warm restore given up", async || {
        !warm.is_running() && !state.join("warm").join(&warm_id).exists()
    })
    .await;
    assert_eq!(vcpus_free(&d).await, total, "its room is free");

    // No snapshot of the new key: the next lease boots cold and builds one, and the pool
    // is refilled from it.
    let fresh = create(&d, None).await;
    assert_eq!(start_of(&fresh), "cold", "{}", fresh.reply);
    within_seconds(&d, "the new key's snapshot", async || {
        let now = snapshots(state);
        !now.is_empty() && now != old_snapshots
    })
    .await;
    within_seconds(&d, "a warm restore of the new snapshot", async || {
        common::warm_restore::waiting(state).len() == 1
    })
    .await;
    d.stop_lease(&fresh.id, &fresh.token).await;
    d.shutdown().await;
}

/// The files `id` has in the run directory (`ID.console`, `ID.vmm.log`, `ID.sock`).
fn run_files(state: &Path, id: &str) -> Vec<PathBuf> {
    let prefix = format!("{id}.");
    std::fs::read_dir(state.join("run"))
        .expect("run directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// A warm restore no lease took is no lease's, so nothing that cleans up after leases
/// removes its console and VMM log: they go with its VMM, both when it is given up for a
/// create of another shape and when coinopd stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_given_up_leaves_no_files_in_the_run_directory() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    // As in the test above: the 128 MiB create needs the warm VMM's room.
    let d = agent_daemon(state, &["--capacity-mib", "256"]).await;
    let Kept {
        cold,
        restored,
        warm_id,
        ..
    } = restore_and_keep_one_warm(&d, state).await;
    assert!(
        state
            .join("run")
            .join(format!("{warm_id}.console"))
            .is_file(),
        "a warm VMM has its console: {:?}",
        run_files(state, &warm_id)
    );

    // Evicted.
    let proofs = d.mint_credit(40).await;
    let big = d
        .create_lease(json!({"vcpus": 1, "mem_mib": 128, "image": "tga",
                             "payment": credit_payment(&proofs)}))
        .await;
    assert_eq!(start_of(&big), "cold", "{}", big.reply);
    assert!(!state.join("warm").join(&warm_id).exists(), "evicted");
    assert_eq!(run_files(state, &warm_id), Vec::<PathBuf>::new(), "evicted");
    for lease in [&cold, &restored, &big] {
        d.stop_lease(&lease.id, &lease.token).await;
    }

    // Another restore of the 64 MiB shape keeps another one warm, until coinopd stops.
    let again = create(&d, None).await;
    assert_eq!(start_of(&again), "restore", "{}", again.reply);
    d.stop_lease(&again.id, &again.token).await;
    let (warm_id, _) = common::warm_restore::wait_for_one(state);
    assert!(!run_files(state, &warm_id).is_empty());
    let status = d.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "coinopd exits cleanly: {status:?}");
    assert_eq!(
        run_files(state, &warm_id),
        Vec::<PathBuf>::new(),
        "at the stop"
    );
}

/// What a warm restore discarded by an earlier coinopd left in the run directory (before
/// its files went with it, or with its marker lost) goes at the next start; a lease's
/// files stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_no_lease_in_the_run_directory_go_at_start() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon(state, &["--warm-restores", "0"]).await;
    let lease = create(&d, None).await;
    d.stop_lease(&lease.id, &lease.token).await;
    let status = d.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "coinopd exits cleanly: {status:?}");
    let kept = run_files(state, &lease.id);
    assert!(!kept.is_empty(), "the lease has its files");
    let orphan = "l00112233445566aa";
    for suffix in ["console", "vmm.log", "sock"] {
        std::fs::write(state.join("run").join(format!("{orphan}.{suffix}")), b"x")
            .expect("plant a left-over file");
    }

    let d = agent_daemon(state, &["--warm-restores", "0"]).await;
    assert_eq!(run_files(state, orphan), Vec::<PathBuf>::new());
    let mut after = run_files(state, &lease.id);
    after.sort();
    let mut kept = kept;
    kept.sort();
    assert_eq!(after, kept, "the lease's files stay");
    d.shutdown().await;
}

/// A create that finds `kept`'s warm restore unusable (its caller made it so) must boot
/// its lease on its own under the warm VMM's id, and only once that VMM is gone with its
/// confinement: ended after the new boot registered its own, that end would remove the new
/// VMM's control socket (with its tap, jail and cgroup), and the lease would run on
/// unmetered, beyond any stop's reach. Checked `settle` after the create, past the moment
/// such an end would have come; then every lease is stopped. Returns how long the create
/// took.
async fn create_past_an_unusable_warm_restore(
    d: &Daemon,
    state: &Path,
    kept: Kept,
    settle: Duration,
) -> Duration {
    let warm = coinopd::vmm_process::VmmProcess::of(kept.warm_pid).expect("the warm VMM runs");
    let asked = std::time::Instant::now();
    let lease = create(d, Some(SSH_KEY)).await;
    let took = asked.elapsed();
    assert_eq!(lease.id, kept.warm_id, "{}", lease.reply);
    assert_eq!(start_of(&lease), "restore", "{}", lease.reply);
    assert!(
        !warm.is_running(),
        "the warm VMM ended before the create replied"
    );
    assert_ne!(
        common::lease_pid::lease_pid(state, &lease.id),
        kept.warm_pid
    );
    let line = line_of(d, &lease).await;
    assert!(field(&line, "ssh_key").is_some(), "{line}");

    tokio::time::sleep(settle).await;
    let control = state.join("run").join(format!("{}.sock", lease.id));
    assert!(control.exists(), "the lease's control socket is there");
    let path = format!("/v1/leases/{}", lease.id);
    let view = async || d.call("GET", &path, Some(&lease.token), None).await.json();
    let before = view().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = view().await;
    assert_eq!(after["state"], "running", "{after}");
    assert!(
        after["used"]["mem_mib_us"].as_u64() > before["used"]["mem_mib_us"].as_u64(),
        "the lease is metered: {before} then {after}\n{}",
        std::fs::read_to_string(state.join("coinopd.log")).unwrap_or_default()
    );
    for lease in [&kept.cold, &kept.restored, &lease] {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    took
}

/// A create that takes a warm restore whose VMM does not answer (stopped with SIGSTOP
/// here, so it still runs) boots its lease on its own. The warm VMM's end is made late
/// (`warm_discard`, 1.5 s) so that an end left to the background would come after the new
/// boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_that_does_not_answer_is_ended_before_its_lease_boots_on_its_own() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let delay = [("COINOPD_FAULT_DELAY", "warm_discard:1500")];
    let d = agent_daemon_env(state, &[], &delay).await;
    let kept = restore_and_keep_one_warm(&d, state).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kept.warm_pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("SIGSTOP the warm VMM (this test's coinopd's child)");
    create_past_an_unusable_warm_restore(&d, state, kept, Duration::from_millis(2500)).await;
    d.shutdown().await;
}

/// A warm restore whose guest never becomes ready after its line (its VMM paused here: it
/// answers and takes the line, but its guest runs nothing) fails its hand-over at the boot
/// timeout, and the lease boots on its own. A reaper left to end the warm VMM in the
/// background would also report that end as the lease's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_hand_over_that_times_out_is_ended_before_its_lease_boots_on_its_own() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon(state, &["--boot-timeout-ms", "3000"]).await;
    let kept = restore_and_keep_one_warm(&d, state).await;
    let warm_control = state.join("run").join(format!("{}.sock", kept.warm_id));
    let paused = vmm_protocol::client::set_state(&warm_control, vmm_protocol::Request::Pause).await;
    assert!(paused.is_ok(), "pausing the warm VMM: {paused:?}");
    create_past_an_unusable_warm_restore(&d, state, kept, Duration::from_millis(1500)).await;
    d.shutdown().await;
}

/// The same stuck hand-over under a long boot timeout: the warm guest only has to apply its
/// line, so coinopd gives up on it at `--personalise-timeout-ms` (1 s here) and the tenant
/// does not wait out the 30 s boot timeout before its lease boots on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_warm_hand_over_is_given_up_at_the_personalisation_bound() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let d = agent_daemon(
        state,
        &[
            "--boot-timeout-ms",
            "30000",
            "--personalise-timeout-ms",
            "1000",
        ],
    )
    .await;
    let kept = restore_and_keep_one_warm(&d, state).await;
    let warm_control = state.join("run").join(format!("{}.sock", kept.warm_id));
    let paused = vmm_protocol::client::set_state(&warm_control, vmm_protocol::Request::Pause).await;
    assert!(paused.is_ok(), "pausing the warm VMM: {paused:?}");
    let took =
        create_past_an_unusable_warm_restore(&d, state, kept, Duration::from_millis(500)).await;
    // 1 s of bound, then a restore of the test guest (milliseconds here): far from 30 s.
    assert!(took < Duration::from_secs(10), "the create took {took:?}");
    let log = d.log();
    assert!(
        log.contains("of its personalisation"),
        "the hand-over failed at the bound:\n{log}"
    );
    d.shutdown().await;
}

/// An agent that takes its line and then hangs (the test guest's `personalise-stuck`) gets
/// `--personalise-timeout-ms`, not the boot timeout, at each start: a cold boot fails at the
/// bound (the payment kept for the tenant), and a restore past it falls back to a cold boot
/// (the snapshot discarded at the third such failure in a row, kept before) with its VMM
/// ended first. Both are gone by the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_stuck_after_its_line_fails_at_the_personalisation_bound() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    let image = format!(
        "tga={},snapshot,agent,cmdline=mode=personalise-stuck",
        guest.display()
    );
    let d = Daemon::spawn(
        state,
        &[
            "--image",
            &image,
            "--warm-restores",
            "0",
            "--boot-timeout-ms",
            "30000",
            "--personalise-timeout-ms",
            "1000",
        ],
        &[],
    )
    .await;
    let try_create = async || {
        let proofs = d.mint_credit(20).await;
        let asked = std::time::Instant::now();
        let r = d
            .call(
                "POST",
                "/v1/leases",
                None,
                Some(json!({"vcpus": 1, "mem_mib": 64, "image": "tga",
                            "payment": credit_payment(&proofs)})),
            )
            .await;
        let took = asked.elapsed();
        assert_eq!(r.status, 503, "{}", r.text());
        let body = r.json();
        assert_eq!(body["error"]["code"], "boot_failed", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not ready within 1000 ms of its personalisation"),
            "{body}"
        );
        assert!(
            body["refund"]["refund_msat"].as_u64() > Some(0),
            "the payment is kept for the tenant: {body}"
        );
        (body, took)
    };

    // Cold (the snapshot's build starts beside it): one bound.
    let (cold, took) = try_create().await;
    assert_eq!(cold["boot"]["start"], "cold", "{cold}");
    assert!(took < Duration::from_secs(10), "the create took {took:?}");
    // The build waits for the 124 only, which this guest reaches.
    wait_for(
        async || {
            !snapshots(state).is_empty() && common::guest_reaper::running_vmms(state).is_empty()
        },
        "the golden snapshot, its build done",
    )
    .await;

    // Restored, stuck, ended; then cold, stuck: two bounds. A timeout may be the host's
    // moment, so the snapshot stays until the third such failure in a row.
    let golden = snapshots(state);
    for strike in 1..=3 {
        let (restored, took) = try_create().await;
        assert_eq!(restored["boot"]["start"], "cold", "{restored}");
        assert!(took < Duration::from_secs(15), "the create took {took:?}");
        assert!(
            common::guest_reaper::running_vmms(state).is_empty(),
            "both failed VMMs are gone by the reply"
        );
        let log = d.log();
        let kept = log
            .matches("restore failed; the snapshot is kept and the lease boots cold")
            .count();
        if strike < 3 {
            assert_eq!(
                kept, strike,
                "restore {strike} fell back, keeping it:\n{log}"
            );
            assert_eq!(snapshots(state), golden, "kept after {strike} failure(s)");
        } else {
            assert!(
                log.contains("restore failed; the snapshot is discarded and the lease boots cold"),
                "the third fell back and discarded it:\n{log}"
            );
            assert!(snapshots(state).is_empty(), "the snapshot is discarded");
        }
    }
    d.shutdown().await;
}

/// coinopd stopping while a warm restore is being built (its VMM restored and named in its
/// marker, not yet in the pool: held there by `warm_built`) waits for that build and ends
/// its VMM before exiting: no guest outlives coinopd unbilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restore_being_built_at_shutdown_does_not_outlive_coinopd() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let delay = [("COINOPD_FAULT_DELAY", "warm_built:4000")];
    let d = agent_daemon_env(state, &[], &delay).await;
    let cold = create(&d, None).await;
    assert_eq!(start_of(&cold), "cold", "{}", cold.reply);
    wait_for(async || !snapshots(state).is_empty(), "the golden snapshot").await;
    let restored = create(&d, None).await;
    assert_eq!(start_of(&restored), "restore", "{}", restored.reply);
    // Leases' VMMs outlive a coinopd by design (the next one adopts them): not these.
    d.stop_lease(&cold.id, &cold.token).await;
    d.stop_lease(&restored.id, &restored.token).await;
    let (warm_id, warm_pid) = common::warm_restore::wait_for_one(state);
    let warm = coinopd::vmm_process::VmmProcess::of(warm_pid).expect("the warm VMM runs");

    let status = d.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "coinopd exits cleanly: {status:?}");
    assert!(
        !warm.is_running(),
        "the warm VMM {warm_id} (pid {warm_pid}) ended with coinopd"
    );
    assert!(
        common::guest_reaper::running_vmms(state).is_empty(),
        "no VMM of this state directory runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_guest_without_its_line_never_counts_as_booted() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let state = dir.path();
    let (_, guest) = vmm_and_guest().expect("checked by kvm_or_skip");
    // The same guest, not declared agent: nobody answers its 124, so it never gets ready,
    // and the create fails (refunded) at the boot timeout rather than hanging.
    let image = format!("tgp={},cmdline=mode=personalise", guest.display());
    let d = Daemon::spawn(
        state,
        &["--image", &image, "--boot-timeout-ms", "1500"],
        &[],
    )
    .await;
    let proofs = d.mint_credit(20).await;
    let r = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(json!({"vcpus": 1, "mem_mib": 64, "image": "tgp",
                        "payment": credit_payment(&proofs)})),
        )
        .await;
    assert_ne!(r.status, 201, "{}", r.text());
    assert!(r.text().contains("not ready"), "{}", r.text());
    let log = d.log();
    assert!(
        log.contains("not declared agent"),
        "the log says why:\n{log}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    d.shutdown().await;
}

/// A tenant's own command line on an agent image: the guest still gets the agent's words
/// (it is personalised like any other), and a guest that says it is ready without asking
/// for its line (here the test guest told `mode=idle`) failed its boot, refunded, never a
/// running lease without its network, key or entropy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_image_with_the_tenants_command_line_is_personalised_or_refunded() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = agent_daemon(dir.path(), &["--warm-restores", "0"]).await;
    let body = |cmdline: &str, payment: serde_json::Value| {
        json!({"vcpus": 1, "mem_mib": 64, "image": "tga", "cmdline": cmdline,
               "ssh_key": SSH_KEY, "payment": payment})
    };

    let proofs = d.mint_credit(20).await;
    let own = d
        .create_lease(body("mode=personalise", credit_payment(&proofs)))
        .await;
    let line = line_of(&d, &own).await;
    assert!(field(&line, "ssh_key").is_some(), "{line}");
    assert!(field(&line, "entropy").is_some(), "{line}");
    d.stop_lease(&own.id, &own.token).await;

    let proofs = d.mint_credit(20).await;
    let r = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(body("mode=idle", credit_payment(&proofs))),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let reply = r.json();
    assert_eq!(reply["error"]["code"], "boot_failed", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("without asking for its personalisation")),
        "{reply}"
    );
    assert!(
        reply["refund"]["refund_msat"].as_u64() > Some(0),
        "the payment is kept for the tenant: {reply}"
    );
    d.shutdown().await;
}
