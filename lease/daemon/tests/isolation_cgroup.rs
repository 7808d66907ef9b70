//! Lease cgroups on this host's real hierarchy: a jailed VMM joins its cgroup before exec,
//! the memory limit is what [`Limits::for_guest`] computes, and a spinning guest cannot burn
//! more CPU than its quota (measured from the cgroup's own CPU usage).

mod isolation_support;

use coinop_host::cgroup::{detect, Cgroups, Limits};
use isolation_support::{boot, build_guest, jail_config, ready, skip};
use std::time::{Duration, Instant};

/// How long the quota is watched: many CFS periods.
const WINDOW: Duration = Duration::from_millis(1500);

fn cgroups_or_skip(name: &str) -> Option<Cgroups> {
    match detect(name) {
        Cgroups::Unavailable { reason } => {
            skip(&format!("no writable cgroup hierarchy: {reason}"));
            None
        }
        cgroups => Some(cgroups),
    }
}

/// Boots a spinning guest in a cgroup with `limits`; returns (cgroup CPU µs, wall µs) over
/// the window and the slot's memory limit.
fn spin_under(limits: Limits, tag: &str) -> Option<(u64, u64, u64)> {
    let cgroups = cgroups_or_skip(&format!("coinop-test-{}-{tag}", std::process::id()))?;
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = build_guest(&dir.path().join("guest"));
    let slot = cgroups
        .create_slot("lease", &limits)
        .expect("create cgroup")
        .expect("available");
    let config = jail_config(dir.path());
    let jail = config.prepare(tag, &guest, None).expect("prepare jail");
    let mut vm = boot(
        &jail,
        dir.path(),
        "mode=spin:600000",
        1,
        64,
        slot.procs_files().expect("cgroup.procs"),
    );
    let (cpu0, t0) = (slot.cpu_usage_us().expect("usage"), Instant::now());
    std::thread::sleep(WINDOW);
    let (cpu1, wall) = (slot.cpu_usage_us().expect("usage"), t0.elapsed());
    let memory = slot.memory_limit_bytes().expect("memory limit");
    println!(
        "{tag}: cgroup CPU {} µs in {} µs wall",
        cpu1 - cpu0,
        wall.as_micros()
    );
    vm.kill();
    vm.wait();
    jail.remove().expect("remove jail");
    slot.remove().expect("remove cgroup");
    let parent = match &cgroups {
        Cgroups::V1 {
            cpu,
            memory,
            pids,
            cpuacct,
        } => vec![cpu.clone(), cpuacct.clone(), memory.clone(), pids.clone()],
        Cgroups::V2 { parent } => vec![parent.clone()],
        Cgroups::Unavailable { .. } => vec![],
    };
    for dir in parent {
        let _ = std::fs::remove_dir(dir);
    }
    Some((cpu1 - cpu0, wall.as_micros() as u64, memory))
}

#[test]
fn one_vcpu_quota_caps_the_guest_at_one_cpu_and_memory_is_set() {
    if !ready() {
        return;
    }
    let limits = Limits::for_guest(1, 64);
    let Some((cpu_us, wall_us, memory)) = spin_under(limits, "one") else {
        return;
    };
    assert_eq!(memory, limits.memory_bytes, "memory limit as computed");
    assert!(
        cpu_us > 0,
        "the cgroup counted the spinning guest's CPU time"
    );
    assert!(
        cpu_us as f64 <= wall_us as f64 * 1.1,
        "{cpu_us} µs of CPU in {wall_us} µs of wall time exceeds one CPU"
    );
}

/// A quota far below what the spinning guest gets even on a loaded host (a quarter of a
/// CPU here with load 14 on 2 cores), so the cap, not the scheduler, is what holds it.
#[test]
fn a_small_quota_is_enforced_on_a_spinning_guest() {
    if !ready() {
        return;
    }
    let limits = Limits {
        cpu_quota_us: coinop_host::cgroup::CPU_PERIOD_US / 20,
        ..Limits::for_guest(1, 64)
    };
    let Some((cpu_us, wall_us, _)) = spin_under(limits, "small") else {
        return;
    };
    assert!(
        cpu_us > 0,
        "the cgroup counted the spinning guest's CPU time"
    );
    assert!(
        cpu_us as f64 <= wall_us as f64 * 0.07,
        "{cpu_us} µs of CPU in {wall_us} µs of wall time exceeds the 5% quota"
    );
}
