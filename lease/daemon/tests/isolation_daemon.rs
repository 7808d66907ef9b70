//! A lease created through coinopd runs jailed: in its own PID namespace, as a pool uid,
//! inside its own cgroup; stopping the lease removes the cgroup, the jail root and the
//! control socket file.

mod common;
mod proc_status;

use common::lease_pid::lease_pid;
use common::leases::{testguest_body, CreatedLease};
use common::{kvm_or_skip, wait_for, Daemon};
use proc_status::status_field;
use std::io::Write;
use std::path::Path;

/// The test's own uid range, clear of other test binaries running at the same time.
const UID_BASE: u32 = 4_100_000;
const UID_COUNT: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_runs_jailed_in_its_cgroup_and_stop_cleans_up() {
    if !kvm_or_skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        let _ = writeln!(std::io::stderr(), "SKIPPED: jailing guests needs root");
        return;
    }
    let dir = common::StateDir::new();
    let base = UID_BASE.to_string();
    let count = UID_COUNT.to_string();
    let d = Daemon::start(
        dir.path(),
        &["--jail-uid-base", &base, "--jail-uid-count", &count],
    )
    .await;
    let payment = d.onchain_payment(60).await;
    let CreatedLease { id, token, .. } = d.create_lease(testguest_body("mode=echo", payment)).await;
    let pid = lease_pid(dir.path(), &id);

    // Own PID namespace: PID 1 inside.
    assert_eq!(status_field(pid, "NSpid:"), format!("{pid}\t1"));
    // A pool uid, for every uid kind.
    let uids: Vec<u32> = status_field(pid, "Uid:")
        .split_whitespace()
        .map(|u| u.parse().expect("numeric uid"))
        .collect();
    assert_eq!(uids.len(), 4);
    assert!(uids.iter().all(|u| *u == uids[0]), "{uids:?}");
    assert!(
        (UID_BASE..UID_BASE + UID_COUNT).contains(&uids[0]),
        "uid {} outside the pool",
        uids[0]
    );
    assert_eq!(status_field(pid, "Seccomp:"), "2");

    // Its cgroup: every hierarchy the daemon uses places it in `.../coinop/<lease id>`.
    let cgroups = coinop_host::cgroup::detect(coinopd::isolation::CGROUP_PARENT);
    let slot = cgroups.reopen_slot(&id).expect("lease id is valid");
    let jail_root = dir.path().join("jail").join(&id);
    assert!(
        jail_root.join("dev/kvm").exists(),
        "jail root with /dev/kvm"
    );
    if let Some(slot) = &slot {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let suffix = format!("/{}/{id}", coinopd::isolation::CGROUP_PARENT);
        let lines: Vec<&str> = membership.lines().collect();
        assert!(
            lines.iter().any(|l| l.ends_with(&suffix)),
            "not in its cgroup: {membership}"
        );
        for dir in slot.dirs() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("procs");
            assert!(
                procs.lines().any(|p| p == pid.to_string()),
                "{} lacks {pid}",
                dir.display()
            );
        }
        let path = format!("/v1/leases/{id}");
        wait_for(
            async || {
                d.call("GET", &path, Some(&token), None).await.json()["used"]["cgroup_cpu_us"]
                    .as_u64()
                    > Some(0)
            },
            "the cgroup's CPU count in GET",
        )
        .await;
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (cgroup part): {}",
            cgroups.describe()
        );
    }

    d.stop_lease(&id, &token).await;
    let control = dir.path().join("run").join(format!("{id}.sock"));
    wait_for(
        async || !jail_root.exists() && !control.exists(),
        "jail root and control socket removed",
    )
    .await;
    if let Some(slot) = &slot {
        for dir in slot.dirs() {
            assert!(!dir.exists(), "{} still there", dir.display());
        }
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || status_field(pid, "State:").starts_with('Z'),
        "the VMM is gone"
    );
    d.shutdown().await;
}

/// Two coinopds on one host whose jail uid ranges overlap (as two on the default range do)
/// never run two guests as one uid: each claims its uids in /run/coinop and skips the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coinopds_on_one_uid_range_never_share_a_uid() {
    if !kvm_or_skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        let _ = writeln!(std::io::stderr(), "SKIPPED: jailing guests needs root");
        return;
    }
    // Its own range (clear of the other tests'), the same for both daemons.
    let base = (UID_BASE + 100).to_string();
    let count = UID_COUNT.to_string();
    // One slot built ahead each: with both daemons' leases and refills, 6 of the 8 uids.
    let args = [
        "--jail-uid-base",
        &base,
        "--jail-uid-count",
        &count,
        "--jail-pool",
        "1",
    ];
    let (dir_a, dir_b) = (common::StateDir::new(), common::StateDir::new());
    let a = Daemon::start(dir_a.path(), &args).await;
    let b = Daemon::start(dir_b.path(), &args).await;
    let uid_of = |dir: &Path, id: &str| -> u32 {
        let pid = lease_pid(dir, id);
        status_field(pid, "Uid:")
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .expect("numeric uid")
    };
    let (mut seen, mut leases) = (Vec::new(), Vec::new());
    for (d, dir) in [(&a, &dir_a), (&b, &dir_b), (&a, &dir_a), (&b, &dir_b)] {
        let payment = d.onchain_payment(60).await;
        let lease = d.create_lease(testguest_body("mode=echo", payment)).await;
        let uid = uid_of(dir.path(), &lease.id);
        assert!(
            (UID_BASE + 100..UID_BASE + 100 + UID_COUNT).contains(&uid),
            "uid {uid} outside the range"
        );
        seen.push(uid);
        leases.push((d, lease));
    }
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seen.len(),
        "guests of two coinopds share a uid: {seen:?}"
    );
    // Each claimed on the host while its guest runs.
    for uid in &seen {
        assert!(
            Path::new(&format!("/run/coinop/jail-uid-{uid}.lock")).exists(),
            "no claim for uid {uid}"
        );
    }
    for (d, lease) in leases {
        d.stop_lease(&lease.id, &lease.token).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// A lease paused for lack of funds has its VMM held to a sliver of CPU in its cgroup
/// (`cpu.max` 1 ms a period): the pause is the VMM's to carry out, and one that a hostile
/// guest took over could run on through the grace. A top-up gives the quota back before
/// the guest resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_out_of_funds_is_held_to_a_sliver_of_cpu_until_topped_up() {
    if !kvm_or_skip() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        let _ = writeln!(std::io::stderr(), "SKIPPED: jailing guests needs root");
        return;
    }
    let cgroups = coinop_host::cgroup::detect(coinopd::isolation::CGROUP_PARENT);
    if let coinop_host::cgroup::Cgroups::Unavailable { reason } = &cgroups {
        let _ = writeln!(std::io::stderr(), "SKIPPED: no cgroups: {reason}");
        return;
    }
    let dir = common::StateDir::new();
    let base = (UID_BASE + 200).to_string();
    let count = UID_COUNT.to_string();
    let d = Daemon::start(
        dir.path(),
        &[
            "--jail-uid-base",
            &base,
            "--jail-uid-count",
            &count,
            "--grace-s",
            "60",
        ],
    )
    .await;
    // 3 sat: about 2.7 s of one spinning vCPU with 64 MiB.
    let proofs = d.mint_credit(3).await;
    let more = d.mint_credit(5).await;
    let CreatedLease { id, token, .. } = d
        .create_lease(testguest_body(
            "mode=spin:600000",
            common::leases::credit_payment(&proofs),
        ))
        .await;
    let slot = cgroups
        .reopen_slot(&id)
        .expect("a lease id")
        .expect("its cgroup");
    let quota = || slot.cpu_quota_us().expect("cpu quota");
    // One vCPU: a whole CPU each period while it runs.
    assert_eq!(quota(), Some(100_000));
    let path = format!("/v1/leases/{id}");
    wait_for(
        async || {
            d.call("GET", &path, Some(&token), None).await.json()["state"] == "paused_unfunded"
        },
        "pause at zero",
    )
    .await;
    wait_for(
        async || quota() == Some(coinopd::isolation::PAUSED_CPU_QUOTA_US),
        "the paused lease's cgroup held to 1 ms a period",
    )
    .await;
    let t = d
        .call(
            "POST",
            &format!("/v1/leases/{id}/topup"),
            Some(&token),
            Some(serde_json::json!({"payment": {"credit": {"proofs": more}}})),
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["state"], "running");
    assert_eq!(quota(), Some(100_000), "its quota back with the top-up");
    // And it runs again: its vCPU time moves.
    let used = || async {
        d.call("GET", &path, Some(&token), None).await.json()["used"]["vcpu_us"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = used().await;
    wait_for(
        async || used().await > before + 100_000,
        "the guest running on its quota",
    )
    .await;
    d.stop_lease(&id, &token).await;
    d.shutdown().await;
}

/// A jail uid range overlapping a local user's subordinate uids (here a test file in place
/// of /etc/subuid) is refused at start-up, naming the file, the line and both ranges,
/// before the API is bound; the same range clear of the file starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jail_uid_range_overlapping_a_users_subuids_is_refused_at_start() {
    if !nix::unistd::geteuid().is_root() {
        let _ = writeln!(std::io::stderr(), "SKIPPED: jailing guests needs root");
        return;
    }
    let files = tempfile::tempdir().expect("tempdir");
    let subuid = files.path().join("subuid");
    // useradd's layout, one user's 65536 ids ending inside the test's range.
    let start = UID_BASE - 65_536 + 3;
    std::fs::write(&subuid, format!("root:100000:65536\nalice:{start}:65536\n"))
        .expect("write the test's subuid");
    let subuid_arg = subuid.display().to_string();
    let (base, count) = (UID_BASE.to_string(), UID_COUNT.to_string());
    let uid_flags = ["--jail-uid-base", &base, "--jail-uid-count", &count];
    let dir = common::StateDir::new();
    let socket = dir.path().join("coinop.sock");
    let mut extra = uid_flags.to_vec();
    extra.extend(["--subid-file", &subuid_arg]);
    let log = files.path().join("coinopd.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coinopd"))
        .args(&common::daemon_args(dir.path(), &socket, &extra)[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("run coinopd");
    // Bounded: a coinopd that accepts the range runs on, and is ended here, not waited for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait coinopd") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("coinopd started on the range: {stderr}"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = UID_BASE + UID_COUNT - 1;
    for said in [
        format!("{} line 2", subuid.display()),
        format!("alice: {start}-{}", start + 65_535),
        format!("jail uid range {UID_BASE}-{last}"),
    ] {
        assert!(stderr.contains(&said), "{said:?} not in: {stderr}");
    }
    assert!(!socket.exists(), "refused before binding the API");

    std::fs::write(&subuid, "root:100000:65536\nalice:165536:65536\n").expect("rewrite");
    let d = Daemon::spawn(dir.path(), &extra, &[]).await;
    assert_eq!(d.call("GET", "/v1/host", None, None).await.status, 200);
    d.shutdown().await;
}
