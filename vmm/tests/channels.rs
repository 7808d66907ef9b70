//! The VMM's other channels: events on an inherited fd, the caller's start time, serial
//! output to a file or nowhere, and a control socket handed over as an inherited fd.

mod common;

use common::{kvm_ready, parse_events, scratch, Control, Image, Vmm, READY_LINE};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

/// Lets `fd` survive exec into the VMM (std opens everything close-on-exec).
fn inheritable(fd: RawFd) {
    // SAFETY: F_GETFD/F_SETFD only change the close-on-exec flag of an fd we own.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC)
    };
    assert_eq!(rc, 0, "fcntl(F_SETFD) on fd {fd}");
}

/// A pipe whose read end is non-blocking and close-on-exec and whose write end is not.
fn event_pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fresh fds into the two-element array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    inheritable(write.as_raw_fd());
    (std::fs::File::from(read), write)
}

fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[test]
fn events_on_an_inherited_fd() {
    if !kvm_ready() {
        return;
    }
    let (mut read, write) = event_pipe();
    let vm = Vmm::boot(Image::Pvh, "mode=halt")
        .arg("--events")
        .arg(format!("fd:{}", write.as_raw_fd()))
        .spawn();
    drop(write);
    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.context());
    // The boot-timing events and the exit event are copied to stderr (the supervisor's
    // log), each once, so that a supervisor that lost the stream still learns how the boot
    // went and how the VM ended.
    let on_stderr: Vec<&str> = out
        .events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        on_stderr,
        ["vm_created", "vcpus_started", "guest_ready", "exit"],
        "events copied to stderr\n{}",
        out.context()
    );
    // The VMM has exited, so everything it wrote is in the pipe (other tests' children
    // may hold the write end too, hence no wait for EOF).
    let mut text = String::new();
    let _ = read.read_to_string(&mut text);
    let names: Vec<String> = parse_events(&text)
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        names,
        ["vm_created", "vcpus_started", "guest_ready", "exit"],
        "events on the fd: {text}"
    );
    assert_eq!(
        out.events,
        parse_events(&text),
        "the same events on stderr as on the fd"
    );
}

#[test]
fn start_time_counts_the_callers_spawn() {
    if !kvm_ready() {
        return;
    }
    const EARLIER_US: u64 = 1_000_000;
    let start = monotonic_us() - EARLIER_US;
    let out = Vmm::boot(Image::Elf64, "mode=halt")
        .arg("--start-time-us")
        .arg(start.to_string())
        .run();
    out.assert_lifecycle(1, "guest_reset", 0);
    let created = out.event("vm_created")["t_us"].as_u64().unwrap_or(0);
    assert!(
        (EARLIER_US..EARLIER_US + 20_000_000).contains(&created),
        "vm_created at {created} µs after a start {EARLIER_US} µs before spawn\n{}",
        out.context()
    );
}

#[test]
fn serial_to_a_file() {
    if !kvm_ready() {
        return;
    }
    let dir = scratch();
    let console = dir.path().join("console.log");
    let out = Vmm::boot(Image::Pvh, "mode=spin:1")
        .arg("--serial")
        .arg(format!("file:{}", console.display()))
        .run();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert!(out.stdout.is_empty(), "{}", out.context());
    let written = std::fs::read_to_string(&console).expect("the console file exists");
    assert_eq!(written, format!("{READY_LINE}spin done\n"));
}

#[test]
fn serial_to_nowhere() {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(Image::Elf64, "mode=halt")
        .arg("--serial")
        .arg("none")
        .run();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert!(out.stdout.is_empty(), "{}", out.context());
}

#[test]
fn control_on_an_inherited_listener() {
    if !kvm_ready() {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("inherited.sock");
    let listener = UnixListener::bind(&path).expect("binding the control socket");
    inheritable(listener.as_raw_fd());
    let mut vm = Vmm::boot(Image::Pvh, "mode=spin:600000")
        .arg("--control")
        .arg(format!("fd:{}", listener.as_raw_fd()))
        .spawn();
    vm.wait_event("guest_ready");
    let mut ctl = Control::connect(&path);
    assert_eq!(ctl.ok("status")["state"], "running");
    ctl.ok("stop");
    vm.finish().assert_lifecycle(1, "stopped", 0);
    drop(listener);
}
