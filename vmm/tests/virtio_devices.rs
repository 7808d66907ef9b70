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
