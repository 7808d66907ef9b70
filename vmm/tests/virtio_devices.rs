//! `--disk` and `--net` on the command line: a guest boots with virtio devices attached
//! (this host's test guest does not drive them; the Linux lab does), and unusable device
//! arguments end with exit 2 and one line naming the problem.

mod common;

use common::{kvm_ready, scratch, Image, Vmm};

fn disk_file(dir: &tempfile::TempDir, name: &str, bytes: usize) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, vec![0u8; bytes]).expect("disk image");
    path
}

#[test]
fn guest_boots_with_raw_and_cow_disks_attached() {
    if !kvm_ready() {
        return;
    }
    let dir = scratch();
    let raw = disk_file(&dir, "raw.img", 1 << 20);
    let base = disk_file(&dir, "base.img", 1 << 20);
    let overlay = dir.path().join("lease.overlay");
    let out = Vmm::boot(Image::Pvh, "mode=halt")
        .arg("--disk")
        .arg(format!("path={},iops=1000", raw.display()))
        .arg("--disk")
        .arg(format!("path={},cow={}", base.display(), overlay.display()))
        .run();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert!(overlay.exists(), "the overlay is created at start");
    assert_eq!(
        std::fs::read(&base).expect("base"),
        vec![0u8; 1 << 20],
        "the base is untouched"
    );
}

/// A guest that fails its disk 2,000 times (reset, DRIVER_OK with nothing set up) gets
/// each failure refused, and the VMM's stderr (a file in coinopd's run directory) says so
/// a bounded number of times, not once per failure.
#[test]
fn a_guest_failing_its_device_in_a_loop_cannot_flood_stderr() {
    if !kvm_ready() {
        return;
    }
    let dir = scratch();
    let raw = disk_file(&dir, "raw.img", 1 << 20);
    let out = Vmm::boot(Image::Pvh, "mode=virtio-fail:2000")
        .arg("--disk")
        .arg(format!("path={}", raw.display()))
        .run();
    out.assert_lifecycle(1, "guest_reset", 0);
    let ctx = out.context();
    assert!(out.stdout.contains("virtio-fail done"), "{ctx}");
    let failures = out.stderr.matches("device needs reset").count();
    assert!(failures > 0, "the failures are said: {ctx}");
    assert!(
        failures <= vmm::devices::device_log::BUDGET as usize,
        "{failures} failure lines for 2,000 failures"
    );
    assert!(out.stderr.contains("later ones are left out"), "{ctx}");
    assert!(
        out.stderr.len() < 16 << 10,
        "{} bytes on stderr",
        out.stderr.len()
    );
}

#[test]
fn missing_disk_image_is_named() {
    if !kvm_ready() {
        return;
    }
    Vmm::boot(Image::Pvh, "mode=halt")
        .arg("--disk")
        .arg("path=/nonexistent/disk.img")
        .run()
        .assert_usage_error(&["/nonexistent/disk.img"]);
}

#[test]
fn malformed_device_specs_are_usage_errors() {
    for (flag, value, topic) in [
        ("--disk", "file=/x", "file=/x"),
        ("--disk", "path=/x,ro,cow=/y", "exclude"),
        ("--disk", "path=/x,bw=fast", "bw=fast"),
        ("--net", "tap=tap0", "mac"),
        ("--net", "tap=tap0,mac=02:00:00:00:00", "mac"),
    ] {
        Vmm::boot(Image::Pvh, "mode=halt")
            .arg(flag)
            .arg(value)
            .run()
            .assert_usage_error(&[topic]);
    }
}

#[test]
fn more_devices_than_irq_lines_is_a_usage_error() {
    let dir = scratch();
    let disk = disk_file(&dir, "d.img", 4096);
    let mut vmm = Vmm::boot(Image::Pvh, "mode=halt");
    for _ in 0..10 {
        vmm = vmm.arg("--disk").arg(format!("path={},ro", disk.display()));
    }
    vmm.run().assert_usage_error(&["at most 9"]);
}

#[test]
fn overlay_for_another_base_is_refused() {
    if !kvm_ready() {
        return;
    }
    let dir = scratch();
    let small = disk_file(&dir, "small.img", 4096);
    let big = disk_file(&dir, "big.img", 8192);
    let overlay = dir.path().join("o");
    let spec =
        |base: &std::path::Path| format!("path={},cow={}", base.display(), overlay.display());
    Vmm::boot(Image::Pvh, "mode=halt")
        .arg("--disk")
        .arg(spec(&small))
        .run()
        .assert_lifecycle(1, "guest_reset", 0);
    Vmm::boot(Image::Pvh, "mode=halt")
        .arg("--disk")
        .arg(spec(&big))
        .run()
        .assert_usage_error(&["overlay"]);
}

/// `file` left open across exec (std opens everything close-on-exec), as a parent hands a
/// tap to the VMM; returns the fd number for `--net fd=N`.
fn inheritable(file: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    assert_eq!(
        // SAFETY: F_SETFD with an int argument on an fd this test owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) },
        0,
        "clear FD_CLOEXEC"
    );
    fd
}

/// Opens /dev/net/tun and attaches it to a fresh tap `name` as coinopd does.
fn attached_tap(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes one ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}

#[test]
fn guest_boots_with_an_inherited_tap_fd() {
    // Creating a tap needs CAP_NET_ADMIN.
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !kvm_ready() || !root {
        return;
    }
    let name = format!("cvt{}", std::process::id() % 100_000);
    let tap = attached_tap(&name);
    let fd = inheritable(&tap);
    let out = Vmm::boot(Image::Pvh, "mode=halt")
        .arg("--net")
        .arg(format!("fd={fd},mac=02:00:00:00:00:07"))
        .run();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert!(
        std::path::Path::new("/sys/class/net").join(&name).exists(),
        "the tap lives while its creator holds it"
    );
}

#[test]
fn an_inherited_fd_that_is_not_a_tap_is_refused() {
    if !kvm_ready() {
        return;
    }
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let fd = inheritable(&null);
    Vmm::boot(Image::Pvh, "mode=halt")
        .arg("--net")
        .arg(format!("fd={fd},mac=02:00:00:00:00:07"))
        .run()
        .assert_usage_error(&[&format!("tap fd {fd}"), "TUNGETIFF"]);
}
