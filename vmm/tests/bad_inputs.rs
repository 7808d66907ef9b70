//! Unusable kernels and out-of-range arguments end with exit 2 and one clear stderr line,
//! never a panic, a hang or a guest start.

mod common;

use common::{kvm_ready, scratch, Image, Vmm};
use std::path::Path;

fn with_kernel(kernel: &Path) -> Vmm {
    Vmm::new()
        .arg("--kernel")
        .arg(kernel)
        .arg("--cmdline")
        .arg("mode=halt")
}

fn kernel_from_bytes(bytes: &[u8], check: impl FnOnce(&Path)) {
    let dir = scratch();
    let path = dir.path().join("kernel");
    std::fs::write(&path, bytes).expect("writing the test kernel");
    check(&path);
}

fn guest_bytes() -> Vec<u8> {
    std::fs::read(Image::Elf64.path()).expect("build.rs produced the test guest")
}

#[test]
fn truncated_elf_headers() {
    if !kvm_ready() {
        return;
    }
    // The ELF header survives, the program headers do not.
    kernel_from_bytes(&guest_bytes()[..100], |k| {
        with_kernel(k).run().assert_usage_error(&["kernel", "elf"])
    });
}

#[test]
fn truncated_elf_segments() {
    if !kvm_ready() {
        return;
    }
    // Headers intact, a loadable segment's bytes cut short.
    let bytes = guest_bytes();
    kernel_from_bytes(&bytes[..bytes.len() / 2], |k| {
        with_kernel(k).run().assert_usage_error(&["kernel", "elf"])
    });
}

#[test]
fn random_bytes() {
    if !kvm_ready() {
        return;
    }
    // A fixed xorshift stream: reproducible noise that is neither ELF nor bzImage.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    kernel_from_bytes(&noise, |k| {
        with_kernel(k).run().assert_usage_error(&["kernel"])
    });
}

#[test]
fn empty_file() {
    if !kvm_ready() {
        return;
    }
    kernel_from_bytes(&[], |k| {
        with_kernel(k).run().assert_usage_error(&["kernel"])
    });
}

#[test]
fn missing_file() {
    if !kvm_ready() {
        return;
    }
    let dir = scratch();
    let missing = dir.path().join("no-such-vmlinux");
    let out = with_kernel(&missing).run();
    out.assert_usage_error(&["no-such-vmlinux"]);
}

#[test]
fn a_host_program_is_not_a_kernel() {
    if !kvm_ready() {
        return;
    }
    // A valid ELF64, but a PIE user program linked near address 0, not a kernel.
    with_kernel(Path::new("/bin/true"))
        .run()
        .assert_usage_error(&["kernel", "elf", "entry"]);
}

fn bad_arg(flag: &str, value: &str, topics: &[&str]) {
    if !kvm_ready() {
        return;
    }
    Vmm::boot(Image::Pvh, "mode=halt")
        .arg(flag)
        .arg(value)
        .run()
        .assert_usage_error(topics);
}

#[test]
fn zero_memory() {
    bad_arg("--mem-mib", "0", &["mem"]);
}

#[test]
fn one_tib_of_memory() {
    bad_arg("--mem-mib", "1048576", &["mem"]);
}

#[test]
fn zero_vcpus() {
    bad_arg("--vcpus", "0", &["vcpu"]);
}

#[test]
fn thirty_three_vcpus() {
    bad_arg("--vcpus", "33", &["vcpu"]);
}

#[test]
fn memory_too_small_for_the_kernel() {
    // The test guest loads at 1 MiB, so 1 MiB of RAM cannot hold it.
    bad_arg("--mem-mib", "1", &["mem", "kernel"]);
}

#[test]
fn missing_kernel_argument() {
    if !kvm_ready() {
        return;
    }
    Vmm::new()
        .args(["--cmdline", "mode=halt"])
        .run()
        .assert_usage_error(&["--kernel"]);
}

#[test]
fn malformed_serial_target() {
    bad_arg("--serial", "tcp:1234", &["serial"]);
}

#[test]
fn malformed_events_target() {
    bad_arg("--events", "fd:notanumber", &["events"]);
}

#[test]
fn events_fd_not_open() {
    // Nothing in this test binary makes fds inheritable, so 987 is closed in the child.
    bad_arg("--events", "fd:987", &["events", "987"]);
}

#[test]
fn control_socket_in_a_missing_directory() {
    bad_arg(
        "--control",
        "/nonexistent-coinop/dir/control.sock",
        &["control"],
    );
}

#[test]
fn missing_initrd() {
    bad_arg("--initrd", "/nonexistent-coinop/initrd.img", &["initrd"]);
}
