//! coinopd's pool of lease slots built ahead of time, on the real cgroup hierarchy with real
//! jailed guests: a create takes a ready slot (its lease id, its parked process becomes the
//! VMM) and gets its own size's limits, the pool refills (not until a moment after the boot:
//! the reply and the tenant's first connection go first), an empty pool falls back to
//! building the slot on the request path, slots left by a crash are removed at the next
//! start (but not those of re-adopted leases), and shutdown removes the unused ones.

mod common;

use coinop_host::cgroup::{detect, Cgroups, Limits};
use coinop_host::slot_pool::SETTLE;
use coinopd::isolation::CGROUP_PARENT;
use common::lease_pid::lease_pid;
use common::leases::testguest_body;
use common::{kvm_or_skip, wait_for, Daemon};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Root, KVM and a cgroup hierarchy, or a SKIPPED line.
fn ready() -> Option<Cgroups> {
    if !kvm_or_skip() {
        return None;
    }
    if !nix::unistd::geteuid().is_root() {
        let _ = writeln!(std::io::stderr(), "SKIPPED: jailing guests needs root");
        return None;
    }
    match detect(CGROUP_PARENT) {
        Cgroups::Unavailable { reason } => {
            let _ = writeln!(std::io::stderr(), "SKIPPED: no cgroups: {reason}");
            None
        }
        cgroups => Some(cgroups),
    }
}

fn pool_args<'a>(uid_base: &'a str, uid_count: &'a str, pool: &'a str) -> [&'a str; 6] {
    [
        "--jail-uid-base",
        uid_base,
        "--jail-uid-count",
        uid_count,
        "--jail-pool",
        pool,
    ]
}

/// The pool's slots on disk: lease id → the pid parked in it (`None` while the slot is
/// still being built), from the markers.
fn slots(state_dir: &Path) -> BTreeMap<String, Option<i32>> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("pool")) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let pid = text
                .strip_prefix("parked ")
                .and_then(|p| p.trim().parse().ok());
            Some((id, pid))
        })
        .collect()
}

/// Waits until `count` slots have a parked process, and returns them.
async fn full_pool(state_dir: &Path, count: usize, exclude: &[&str]) -> BTreeMap<String, i32> {
    let ready = || -> BTreeMap<String, i32> {
        slots(state_dir)
            .into_iter()
            .filter(|(id, _)| !exclude.contains(&id.as_str()))
            .filter_map(|(id, pid)| Some((id, pid?)))
            .collect()
    };
    wait_for(async || ready().len() == count, "a full slot pool").await;
    ready()
}

async fn create(d: &Daemon, vcpus: u32, mem_mib: u64) -> (String, String) {
    let q = d.quote(vcpus, mem_mib, 60).await;
    let payment =
        coinop_cli::regtest_pay::pay_quote(&d.client, q["quote_id"].as_str().expect("id"))
            .await
            .expect("regtest payment");
    let mut body = testguest_body("mode=echo", payment);
    body["vcpus"] = json!(vcpus);
    body["mem_mib"] = json!(mem_mib);
    let lease = d.create_lease(body).await;
    (lease.id, lease.token)
}

async fn stop(d: &Daemon, id: &str, token: &str) {
    d.stop_lease(id, token).await;
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The cgroup limits of `id` as (cpu quota µs, memory bytes, pids).
fn limits_of(cgroups: &Cgroups, id: &str) -> (u64, u64, u64) {
    let num = |s: String| s.parse::<u64>().unwrap_or_else(|_| panic!("number: {s}"));
    match cgroups {
        Cgroups::V1 {
            cpu, memory, pids, ..
        } => (
            num(read_trimmed(&cpu.join(id).join("cpu.cfs_quota_us"))),
            num(read_trimmed(&memory.join(id).join("memory.limit_in_bytes"))),
            num(read_trimmed(&pids.join(id).join("pids.max"))),
        ),
        Cgroups::V2 { parent } => {
            let dir = parent.join(id);
            let cpu_max = read_trimmed(&dir.join("cpu.max"));
            let quota = cpu_max.split(' ').next().unwrap_or_default().to_string();
            (
                num(quota),
                num(read_trimmed(&dir.join("memory.max"))),
                num(read_trimmed(&dir.join("pids.max"))),
            )
        }
        Cgroups::Unavailable { .. } => unreachable!("checked by ready()"),
    }
}

fn gone(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    !status
        .lines()
        .any(|l| l.starts_with("State:") && !l.contains('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_takes_a_ready_slot_with_its_own_limits_and_the_pool_refills() {
    let Some(cgroups) = ready() else {
        return;
    };
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &pool_args("4200000", "8", "2")).await;
    let before = full_pool(dir.path(), 2, &[]).await;

    // A size different from what the slots were built with (1 vCPU, 128 MiB).
    let (id, token) = create(&d, 2, 96).await;
    let pid = lease_pid(dir.path(), &id);
    assert_eq!(
        before.get(&id),
        Some(&pid),
        "the lease took a ready slot (its id) and its parked process is the VMM"
    );
    let want = Limits::for_guest(2, 96);
    assert_eq!(
        limits_of(&cgroups, &id),
        (want.cpu_quota_us, want.memory_bytes, want.pids_max),
        "the slot's limits are the lease's"
    );

    // Refilled: two ready slots besides the lease's, all new.
    let after = full_pool(dir.path(), 2, &[&id]).await;
    assert!(after.keys().all(|k| *k != id));
    assert_eq!(
        after.keys().filter(|k| before.contains_key(*k)).count(),
        1,
        "the untouched slot stays, one new: {before:?} → {after:?}"
    );

    stop(&d, &id, &token).await;
    let marker = dir.path().join("pool").join(&id);
    wait_for(
        async || !marker.exists() && !dir.path().join("jail").join(&id).exists(),
        "the lease's marker and jail root removed",
    )
    .await;
    d.shutdown().await;
    for (slot, parked) in after {
        assert!(
            !dir.path().join("jail").join(&slot).exists(),
            "{slot}'s root"
        );
        assert!(
            cgroups.reopen_slot(&slot).expect("id").is_none(),
            "{slot}'s cgroup"
        );
        assert!(gone(parked), "{slot}'s parked process {parked}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("pool"))
        .expect("pool dir")
        .collect();
    assert!(left.is_empty(), "markers left: {left:?}");
}

/// The refill after a create waits [`SETTLE`] after the boot ended: the slot that replaces
/// the one taken was begun (its marker made) no earlier than that after the create was sent,
/// which the boot's end followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refill_waits_a_moment_after_the_boot() {
    if ready().is_none() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &pool_args("4200400", "8", "1")).await;
    let before = full_pool(dir.path(), 1, &[]).await;
    let q = d.quote(1, 64, 60).await;
    let payment =
        coinop_cli::regtest_pay::pay_quote(&d.client, q["quote_id"].as_str().expect("id"))
            .await
            .expect("regtest payment");
    let sent = std::time::SystemTime::now();
    let lease = d.create_lease(testguest_body("mode=echo", payment)).await;
    assert!(
        before.contains_key(&lease.id),
        "the lease took the ready slot"
    );

    let after = full_pool(dir.path(), 1, &[&lease.id]).await;
    let (refill, _) = after.iter().next().expect("one slot");
    let marker = dir.path().join("pool").join(refill);
    let begun = match std::fs::metadata(&marker).and_then(|m| m.created()) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: no creation time for {}: {e}",
                marker.display()
            );
            stop(&d, &lease.id, &lease.token).await;
            d.shutdown().await;
            return;
        }
    };
    let waited = begun.duration_since(sent).unwrap_or_default();
    assert!(
        waited >= SETTLE,
        "the refill began {waited:?} after the create was sent, before the boot's end + {SETTLE:?}"
    );
    stop(&d, &lease.id, &lease.token).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pool_falls_back_to_building_the_slot_on_the_request_path() {
    let Some(cgroups) = ready() else {
        return;
    };
    let dir = common::StateDir::new();
    // Two uids: the pool keeps the last free one for creates, so it holds one slot and
    // cannot refill while the first lease runs.
    let d = Daemon::start(dir.path(), &pool_args("4200100", "2", "2")).await;
    let before = full_pool(dir.path(), 1, &[]).await;
    let (first, first_token) = create(&d, 1, 64).await;
    assert!(
        before.contains_key(&first),
        "the first create used the slot"
    );

    let (second, second_token) = create(&d, 1, 64).await;
    let pid = lease_pid(dir.path(), &second);
    assert!(
        !dir.path().join("pool").join(&second).exists(),
        "the second create built its own slot"
    );
    let ns = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        ns.lines().any(|l| l == format!("NSpid:\t{pid}\t1")),
        "jailed all the same: {ns}"
    );
    let want = Limits::for_guest(1, 64);
    assert_eq!(
        limits_of(&cgroups, &second),
        (want.cpu_quota_us, want.memory_bytes, want.pids_max)
    );
    stop(&d, &first, &first_token).await;
    stop(&d, &second, &second_token).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_left_by_a_crash_are_removed_at_start_but_a_live_lease_keeps_its_own() {
    let Some(cgroups) = ready() else {
        return;
    };
    let dir = common::StateDir::new();
    let args = pool_args("4200200", "8", "2");
    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    full_pool(dir.path(), 2, &[]).await;
    let (id, token) = create(&d, 1, 64).await;
    let pid = lease_pid(dir.path(), &id);
    let stale = full_pool(dir.path(), 2, &[&id]).await;
    d.kill9();

    // The parked processes end with the daemon (their socket closed); the guest does not.
    for parked in stale.values() {
        let parked = *parked;
        wait_for(async || gone(parked), "the parked process ended").await;
    }
    assert!(!gone(pid), "the guest outlives coinopd");
    for slot in stale.keys() {
        assert!(
            dir.path().join("jail").join(slot).exists(),
            "left by the crash"
        );
    }

    let d = Daemon::spawn(dir.path(), &args, &[]).await;
    // The filler removes stale slots before it builds new ones.
    let mut old: Vec<&str> = stale.keys().map(String::as_str).collect();
    old.push(&id);
    let fresh = full_pool(dir.path(), 2, &old).await;
    for slot in stale.keys() {
        assert!(!fresh.contains_key(slot));
        assert!(
            !dir.path().join("jail").join(slot).exists(),
            "{slot}'s jail root removed"
        );
        assert!(
            cgroups.reopen_slot(slot).expect("id").is_none(),
            "{slot}'s cgroup removed"
        );
        assert!(!dir.path().join("pool").join(slot).exists());
    }
    // The re-adopted lease kept its slot, and its stop removes it.
    assert!(dir.path().join("jail").join(&id).join("dev/kvm").exists());
    assert!(cgroups.reopen_slot(&id).expect("id").is_some());
    assert!(dir.path().join("pool").join(&id).exists());
    stop(&d, &id, &token).await;
    wait_for(
        async || {
            gone(pid)
                && !dir.path().join("pool").join(&id).exists()
                && !dir.path().join("jail").join(&id).exists()
                && cgroups.reopen_slot(&id).is_ok_and(|c| c.is_none())
        },
        "the re-adopted lease's slot removed",
    )
    .await;
    d.shutdown().await;
    for slot in fresh.keys() {
        assert!(!dir.path().join("jail").join(slot).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_pool_builds_nothing_ahead() {
    if ready().is_none() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &pool_args("4200300", "4", "0")).await;
    let (id, token) = create(&d, 1, 64).await;
    assert!(
        slots(dir.path()).is_empty(),
        "no slot built: {:?}",
        slots(dir.path())
    );
    let jails: Vec<String> = std::fs::read_dir(dir.path().join("jail"))
        .expect("jail dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    assert_eq!(jails, vec![id.clone()], "only the lease's own jail root");
    stop(&d, &id, &token).await;
    d.shutdown().await;
}
