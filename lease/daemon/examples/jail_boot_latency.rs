//! Boot latency with and without isolation, interleaved in one run so host load hits every
//! variant alike: `coinop-vmm --no-seccomp`, `coinop-vmm` (seccomp on), and jailed +
//! seccomp + a lease cgroup (jail root built per boot, included in the time).
//!
//! `cargo run -p coinopd --example jail_boot_latency -- VMM_BIN GUEST_ELF [ROUNDS]` as root.
//! Each figure is µs from just before the spawn (or the jail preparation) to the
//! `guest_ready` event.

use coinop_host::cgroup::{detect, Cgroups, Limits};
use coinop_host::jail::{JailConfig, UidPool, KERNEL_PATH};
use coinopd::clock::monotonic_us;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn guest_ready_us(events: impl std::io::Read) -> Option<u64> {
    BufReader::new(events)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|e| e["event"] == "guest_ready")
        .and_then(|e| e["t_us"].as_u64())
}

fn plain(vmm: &Path, guest: &Path, seccomp: bool) -> u64 {
    let start = monotonic_us();
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(guest)
        .args(["--cmdline", "mode=halt", "--serial", "none"])
        .arg("--start-time-us")
        .arg(start.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !seccomp {
        cmd.arg("--no-seccomp");
    }
    let mut child = cmd.spawn().expect("spawn coinop-vmm");
    let ready = guest_ready_us(child.stderr.take().expect("piped")).expect("guest_ready");
    child.wait().expect("wait");
    ready
}

fn jailed(config: &JailConfig, cgroups: &Cgroups, guest: &Path, round: usize) -> u64 {
    let start = monotonic_us();
    let id = format!("bench-{round}");
    let slot = cgroups
        .create_slot(&id, &Limits::for_guest(1, 128))
        .expect("cgroup");
    let procs = slot
        .as_ref()
        .map(|s| s.procs_files().expect("procs"))
        .unwrap_or_default();
    let jail = config.prepare(&id, guest, None).expect("prepare");
    let (events_rx, events_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let null = || -> OwnedFd { std::fs::File::open("/dev/null").expect("null").into() };
    let fds = vec![null(), null(), null(), events_tx];
    let args: Vec<OsString> = [
        "--kernel",
        KERNEL_PATH,
        "--cmdline",
        "mode=halt",
        "--serial",
        "none",
        "--events",
        "fd:3",
        "--start-time-us",
        &start.to_string(),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let child = jail.spawn(args, fds, procs).expect("spawn");
    let ready = guest_ready_us(std::fs::File::from(events_rx)).expect("guest_ready");
    child.wait_blocking().expect("wait");
    jail.remove().expect("remove");
    if let Some(slot) = slot {
        slot.remove().expect("remove cgroup");
    }
    ready
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (vmm, guest) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(25);
    let base = std::env::temp_dir().join(format!("coinop-bench-{}", std::process::id()));
    let config = JailConfig::new(
        base.join("jails"),
        vmm.clone(),
        UidPool::new(4_000_000, 64).expect("uids"),
    )
    .expect("jail config");
    let cgroups = detect(&format!("coinop-bench-{}", std::process::id()));
    eprintln!("{}", cgroups.describe());
    let no_net = JailConfig {
        new_net_ns: false,
        ..config.clone()
    };
    let no_cgroups = Cgroups::Unavailable {
        reason: "benchmark variant".into(),
    };
    let mut figures = vec![Vec::new(); 5];
    for round in 0..rounds {
        figures[0].push(plain(&vmm, &guest, false));
        figures[1].push(plain(&vmm, &guest, true));
        figures[2].push(jailed(&config, &cgroups, &guest, round));
        figures[3].push(jailed(&no_net, &cgroups, &guest, round));
        figures[4].push(jailed(&no_net, &no_cgroups, &guest, round));
    }
    let [off, on, jail, jail_no_net, jail_only] = figures.try_into().expect("five variants");
    println!("boots per variant: {rounds}");
    println!(
        "no seccomp, no jail      median guest_ready {} µs",
        median(off)
    );
    println!(
        "seccomp, no jail         median guest_ready {} µs",
        median(on)
    );
    println!(
        "seccomp + jail + cgroup  median guest_ready {} µs",
        median(jail)
    );
    println!(
        "  same without a new network namespace  {} µs",
        median(jail_no_net)
    );
    println!(
        "  same without the cgroup either        {} µs",
        median(jail_only)
    );
    let _ = std::fs::remove_dir_all(&base);
    cgroups.remove_empty_parents();
}
