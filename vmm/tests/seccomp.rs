//! The per-thread seccomp filters on a live VMM: every thread is filtered while the guest
//! runs and the control protocol still works under them; a thread that calls a forbidden
//! syscall (the test-only `--seccomp-selftest`) takes the process down with SIGSYS before
//! the guest runs; `--no-seccomp` announces itself and leaves threads unfiltered.

mod common;

use common::{kvm_ready, scratch, socket_in, Image, Vmm, READY_LINE, VMM};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SPIN_FOREVER: &str = "mode=spin:600000";

/// `Seccomp:` mode of every VMM thread (kernel threads such as KVM's `kvm-nx-lpage-re` are
/// left out), by thread name.
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let mut modes = Vec::new();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if comm.starts_with("kvm") || status.is_empty() {
            continue;
        }
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|m| m.trim().to_string())
            .unwrap_or_default();
        modes.push((comm, mode));
    }
    modes.sort();
    modes
}

#[test]
fn every_thread_is_filtered_and_control_works_under_the_filters() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, SPIN_FOREVER)
        .vcpus(2)
        .with_control()
        .with_stdin()
        .spawn();
    vm.wait_event("guest_ready");
    let modes = seccomp_modes(vm.pid());
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["vcpu0", "vcpu1", "control", "stdin", "coinop-vmm"] {
        assert!(
            names.contains(&expected),
            "no {expected} thread in {modes:?}"
        );
    }
    for (name, mode) in &modes {
        assert_eq!(
            mode, "2",
            "thread {name} is not in seccomp filter mode: {modes:?}"
        );
    }

    // Every control command, including the vCPU kick (tgkill) behind pause.
    let mut ctl = vm.connect();
    assert_eq!(ctl.ok("status")["state"], "running");
    assert_eq!(ctl.ok("pause")["state"], "paused");
    assert!(ctl.ok("usage")["vcpu_total_us"].as_u64().is_some());
    assert_eq!(ctl.ok("resume")["state"], "running");
    let reply = ctl.send_line(r#"{"cmd":"console_input","data":"x"}"#);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(ctl.send_line(r#"{"cmd":"nope"}"#)["ok"], false);
    assert_eq!(ctl.ok("stop")["state"], "stopping");
    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.context());
    assert_eq!(out.event("exit")["reason"], "stopped", "{}", out.context());
}

/// Runs the VMM on the guest `mode` with `--seccomp-selftest kind`; returns how it ended
/// and its stdout.
fn selftest(kind: &str, mode: &str, extra: &[&str]) -> (ExitStatus, String) {
    let dir = scratch();
    let sock = socket_in(&dir);
    let mut child = Command::new(VMM)
        .arg("--kernel")
        .arg(Image::Pvh.path())
        .args([
            "--cmdline",
            mode,
            "--vcpus",
            "2",
            "--seccomp-selftest",
            kind,
        ])
        .arg("--control")
        .arg(&sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn coinop-vmm");
    let deadline = Instant::now() + common::VMM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("coinop-vmm --seccomp-selftest {kind} still running");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stdout = String::new();
    use std::io::Read;
    let _ = child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout);
    (status, stdout)
}

#[test]
fn a_forbidden_syscall_kills_the_process_with_sigsys() {
    if !kvm_ready() {
        return;
    }
    for kind in ["main", "vcpu", "control"] {
        // An idle guest never ends the VMM by itself: only the filter's SIGSYS can, even
        // when the control thread starts late (a halting guest could exit first).
        let (status, stdout) = selftest(kind, "mode=idle", &[]);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "--seccomp-selftest {kind}: {status:?}"
        );
        if kind != "control" {
            // The control thread may start after the guest did; the others filter first.
            assert!(
                !stdout.contains(READY_LINE),
                "the guest ran before the {kind} filter was in place: {stdout:?}"
            );
        }
    }
}

#[test]
fn no_seccomp_warns_and_the_same_call_is_harmless() {
    if !kvm_ready() {
        return;
    }
    let (status, stdout) = selftest("vcpu", "mode=halt", &["--no-seccomp"]);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(stdout.contains(READY_LINE), "{stdout:?}");

    let out = Vmm::boot(Image::Pvh, "mode=halt").arg("--no-seccomp").run();
    assert_eq!(out.code, Some(0), "{}", out.context());
    let warning = out.event("warning");
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("--no-seccomp")),
        "{warning}"
    );
}

#[test]
fn with_filters_on_there_is_no_warning() {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(Image::Pvh, "mode=halt").run();
    assert_eq!(out.code, Some(0), "{}", out.context());
    assert!(
        out.events.iter().all(|e| e["event"] != "warning"),
        "{}",
        out.context()
    );
}
