//! Benchmark: where the time of a jailed spawn goes, step by step, on this host's real
//! cgroups: the lease cgroup's directories, its limits, the jail root, the clone → exec of
//! the jailed VMM with and without joining the cgroup, and the VMM's own start-up up to
//! `guest_ready`; and, interleaved, the same boot from a slot parked ahead of time (what
//! coinopd's slot pool does), where only the limits update and the launch are on the clock.
//! Prints the median and p95 of each step.
//!
//! `cargo run --release -p coinopd --example spawn_stages -- VMM_BIN GUEST_ELF [ROUNDS]` as
//! root.

use coinop_host::cgroup::{detect, Cgroups, Limits};
use coinop_host::jail::{JailConfig, UidPool, KERNEL_PATH};
use coinopd::clock::monotonic_us;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// µs of each VMM event after `start`.
fn events_us(events: impl std::io::Read) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in BufReader::new(events).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(name), Some(t)) = (v["event"].as_str(), v["t_us"].as_u64()) else {
            continue;
        };
        out.insert(name.to_string(), t);
        if name == "guest_ready" {
            break;
        }
    }
    out
}

struct Steps(BTreeMap<&'static str, Vec<u64>>);

impl Steps {
    fn add(&mut self, step: &'static str, us: u64) {
        self.0.entry(step).or_default().push(us);
    }
}

fn timed<T>(steps: &mut Steps, step: &'static str, f: impl FnOnce() -> T) -> T {
    let t0 = monotonic_us();
    let out = f();
    steps.add(step, monotonic_us() - t0);
    out
}

fn round(
    config: &JailConfig,
    cgroups: &Cgroups,
    guest: &std::path::Path,
    n: usize,
    steps: &mut Steps,
) {
    let id = format!("stages-{n}");
    let start = monotonic_us();
    let slot = timed(steps, "1 cgroup mkdir + limits", || {
        cgroups
            .create_slot(&id, &Limits::for_guest(1, 64))
            .expect("cgroup")
    });
    let procs = timed(steps, "2 open cgroup.procs", || {
        slot.as_ref()
            .map(|s| s.procs_files().expect("procs"))
            .unwrap_or_default()
    });
    let joins = n % 2 == 0;
    let jail = timed(steps, "3 jail root", || {
        config.prepare(&id, guest, None).expect("prepare")
    });
    let (args, fds, events_rx) = halting_vmm();
    let child = if joins {
        timed(steps, "4a clone..exec, joining the cgroup", || {
            jail.spawn(args, fds, procs).expect("spawn")
        })
    } else {
        let child = timed(steps, "4b clone..exec, no cgroup", || {
            jail.spawn(args, fds, Vec::new()).expect("spawn")
        });
        if let Some(slot) = &slot {
            timed(steps, "4c add_pid after exec", || {
                slot.add_pid(child.pid() as u32).expect("add pid")
            });
        }
        child
    };
    let spawned = monotonic_us();
    let events = events_us(std::fs::File::from(events_rx));
    let ready = monotonic_us();
    for (name, t) in &events {
        let key: &'static str = match name.as_str() {
            "vm_created" => "5 spawn → vm_created",
            "vcpus_started" => "6 spawn → vcpus_started",
            "guest_ready" => "7 spawn → guest_ready",
            _ => continue,
        };
        steps.add(key, *t);
    }
    steps.add("8 total, slot → guest_ready", ready - start);
    let _ = spawned;
    child.wait_blocking().expect("wait");
    timed(steps, "9 (off path) jail remove", || {
        jail.remove().expect("remove")
    });
    if let Some(slot) = slot {
        timed(steps, "9 (off path) cgroup remove", || {
            slot.remove().expect("remove cgroup")
        });
    }
}

fn pooled_round(
    config: &JailConfig,
    cgroups: &Cgroups,
    guest: &std::path::Path,
    n: usize,
    steps: &mut Steps,
) {
    let id = format!("parked-{n}");
    let parked_limits = Limits::for_guest(1, 128);
    let slot = timed(steps, "P0 (ahead) cgroup", || {
        cgroups.create_slot(&id, &parked_limits).expect("cgroup")
    });
    let procs = slot
        .as_ref()
        .map(|s| s.procs_files().expect("procs"))
        .unwrap_or_default();
    let parked = timed(steps, "P0 (ahead) park", || {
        config.park(&id, procs).expect("park")
    });
    let start = monotonic_us();
    if let Some(slot) = &slot {
        timed(steps, "P1 limits update", || {
            slot.update_limits(&parked_limits, &Limits::for_guest(1, 64))
                .expect("limits")
        });
    }
    let (args, fds, events_rx) = halting_vmm();
    let (child, jail) = timed(steps, "P2 launch ..exec", || {
        parked.launch(guest, None, None, args, fds).expect("launch")
    });
    let events = events_us(std::fs::File::from(events_rx));
    let ready = monotonic_us();
    if let Some(t) = events.get("vm_created") {
        steps.add("P3 launch → vm_created", *t);
    }
    if let Some(t) = events.get("guest_ready") {
        steps.add("P4 launch → guest_ready", *t);
    }
    steps.add("P5 total, taken → guest_ready", ready - start);
    child.wait_blocking().expect("wait");
    jail.remove().expect("remove");
    if let Some(slot) = slot {
        slot.remove().expect("remove cgroup");
    }
}

/// The jailed VMM's arguments and fds for one halting boot: stdin/out/err on /dev/null and
/// its events on fd 3, timed from now; and the read end of the event pipe.
fn halting_vmm() -> (Vec<OsString>, Vec<OwnedFd>, OwnedFd) {
    let (events_rx, events_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let null = || -> OwnedFd { std::fs::File::open("/dev/null").expect("null").into() };
    let fds = vec![null(), null(), null(), events_tx];
    let spawn_at = monotonic_us().to_string();
    let args = [
        "--kernel",
        KERNEL_PATH,
        "--cmdline",
        "mode=halt",
        "--serial",
        "none",
        "--events",
        "fd:3",
        "--start-time-us",
        &spawn_at,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    (args, fds, events_rx)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (vmm, guest) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(30);
    let base = std::env::temp_dir().join(format!("coinop-stages-{}", std::process::id()));
    let config = JailConfig::new(
        base.join("jails"),
        vmm,
        UidPool::new(4_200_000, 64).expect("uids"),
    )
    .expect("jail config");
    let parent = format!("coinop-stages-{}", std::process::id());
    let cgroups = detect(&parent);
    eprintln!("{}", cgroups.describe());
    let mut steps = Steps(BTreeMap::new());
    for n in 0..rounds {
        round(&config, &cgroups, &guest, n, &mut steps);
        pooled_round(&config, &cgroups, &guest, n, &mut steps);
    }
    println!("{rounds} jailed boots, µs per step:");
    println!("{:<40} {:>8} {:>8}", "step", "median", "p95");
    for (step, mut v) in steps.0 {
        v.sort_unstable();
        println!("{:<40} {:>8} {:>8}", step, pct(&v, 0.5), pct(&v, 0.95));
    }
    let _ = std::fs::remove_dir_all(&base);
    cgroups.remove_empty_parents();
}
