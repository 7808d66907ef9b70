//! Every test-guest mode through both boot entries (PVH, ELF64) on 1 and 2 vCPUs: console
//! text, events and exit codes from the real `coinop-vmm` on /dev/kvm.

mod common;

use common::{kvm_ready, Image, Vmm, READY_LINE};

fn halt(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=halt").vcpus(vcpus).run();
    out.assert_lifecycle(vcpus, "guest_reset", 0);
    assert_eq!(out.stdout, READY_LINE, "{}", out.context());
}

fn spin(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=spin:200").vcpus(vcpus).run();
    out.assert_lifecycle(vcpus, "guest_reset", 0);
    assert_eq!(
        out.stdout,
        format!("{READY_LINE}spin done\n"),
        "{}",
        out.context()
    );
    // The guest times its spin with the TSC frequency the VMM advertises in CPUID
    // 0x40000010: a wrong (too high) figure would end the spin early.
    let spun = out.event("exit")["t_us"].as_u64().unwrap_or(0)
        - out.event("guest_ready")["t_us"].as_u64().unwrap_or(0);
    assert!(
        spun >= 190_000,
        "spin:200 ended after {spun} µs\n{}",
        out.context()
    );
}

fn echo_stdin(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(image, "mode=echo")
        .vcpus(vcpus)
        .with_stdin()
        .spawn();
    vm.wait_console(READY_LINE);
    vm.write_stdin(b"hello coinop\n\x04");
    let out = vm.finish();
    out.assert_lifecycle(vcpus, "guest_reset", 0);
    assert_eq!(
        out.stdout,
        format!("{READY_LINE}hello coinop\n"),
        "{}",
        out.context()
    );
}

/// The MP table lists every vCPU; each AP wakes on INIT/SIPI and reports its APIC id.
fn smp(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=smp").vcpus(vcpus).run();
    out.assert_lifecycle(vcpus, "guest_reset", 0);
    let ctx = out.context();
    let body = out
        .stdout
        .strip_prefix(READY_LINE)
        .unwrap_or_else(|| panic!("no ready line first\n{ctx}"));
    let lines: Vec<&str> = body.lines().collect();
    for id in 0..vcpus {
        let want = format!("cpu {id} online");
        let seen = lines.iter().filter(|l| **l == want).count();
        assert_eq!(seen, 1, "{want:?} seen {seen} times\n{ctx}");
    }
    assert_eq!(
        lines.last().copied(),
        Some(format!("smp: {vcpus} cpus online").as_str()),
        "summary line\n{ctx}"
    );
    assert_eq!(lines.len(), vcpus as usize + 1, "unexpected lines\n{ctx}");
}

fn fault(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=fault").vcpus(vcpus).run();
    out.assert_lifecycle(vcpus, "triple_fault", 3);
    assert_eq!(out.stdout, READY_LINE, "{}", out.context());
    assert!(
        out.messages
            .iter()
            .any(|m| m.to_lowercase().contains("triple fault")
                || m.to_lowercase().contains("triple_fault")),
        "the crash reason is on stderr\n{}",
        out.context()
    );
}

/// `crash:<ms>` spins, then triple-faults: a guest that crashes some time after its boot.
fn crash_later(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=crash:200").vcpus(vcpus).run();
    out.assert_lifecycle(vcpus, "triple_fault", 3);
    assert_eq!(
        out.stdout,
        format!("{READY_LINE}spin done\n"),
        "{}",
        out.context()
    );
    let lived = out.event("exit")["t_us"].as_u64().unwrap_or(0)
        - out.event("guest_ready")["t_us"].as_u64().unwrap_or(0);
    assert!(
        lived >= 190_000,
        "crashed after {lived} µs\n{}",
        out.context()
    );
}

macro_rules! boots {
    ($($name:ident => $check:ident($image:ident, $vcpus:literal);)*) => {
        $(
            #[test]
            fn $name() {
                $check(Image::$image, $vcpus)
            }
        )*
    };
}

boots! {
    halt_pvh_1vcpu => halt(Pvh, 1);
    halt_pvh_2vcpus => halt(Pvh, 2);
    halt_elf64_1vcpu => halt(Elf64, 1);
    halt_elf64_2vcpus => halt(Elf64, 2);
    spin_pvh_1vcpu => spin(Pvh, 1);
    spin_pvh_2vcpus => spin(Pvh, 2);
    spin_elf64_1vcpu => spin(Elf64, 1);
    spin_elf64_2vcpus => spin(Elf64, 2);
    echo_pvh_1vcpu => echo_stdin(Pvh, 1);
    echo_pvh_2vcpus => echo_stdin(Pvh, 2);
    echo_elf64_1vcpu => echo_stdin(Elf64, 1);
    echo_elf64_2vcpus => echo_stdin(Elf64, 2);
    smp_pvh_1vcpu => smp(Pvh, 1);
    smp_pvh_2vcpus => smp(Pvh, 2);
    smp_elf64_1vcpu => smp(Elf64, 1);
    smp_elf64_2vcpus => smp(Elf64, 2);
    smp_pvh_4vcpus => smp(Pvh, 4);
    smp_elf64_32vcpus => smp(Elf64, 32);
    fault_pvh_1vcpu => fault(Pvh, 1);
    fault_pvh_2vcpus => fault(Pvh, 2);
    fault_elf64_1vcpu => fault(Elf64, 1);
    fault_elf64_2vcpus => fault(Elf64, 2);
    crash_later_pvh_1vcpu => crash_later(Pvh, 1);
    crash_later_elf64_2vcpus => crash_later(Elf64, 2);
}

/// `flood:<kib>` prints that many KiB of numbered 64-byte lines, then `flood done`, then
/// stays up idle (a guest that fills its console; the daemon caps what it keeps).
#[test]
fn flood_prints_its_kib_then_idles() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, "mode=flood:8").with_control().spawn();
    vm.wait_console("flood done\n");
    let mut ctl = vm.connect();
    assert_eq!(ctl.ok("status")["state"], "running", "idle after the flood");
    assert_eq!(ctl.ok("stop")["state"], "stopping");
    let out = vm.finish();
    out.assert_lifecycle(1, "stopped", 0);
    let flood = out
        .stdout
        .strip_prefix(READY_LINE)
        .and_then(|s| s.strip_suffix("flood done\n"))
        .unwrap_or_else(|| panic!("{}", out.context()));
    assert_eq!(flood.len(), 8 * 1024, "{}", out.context());
    let lines: Vec<&str> = flood.lines().collect();
    assert_eq!(lines.len(), 8 * 16);
    assert!(lines[127].starts_with("flood 127 ."), "{}", lines[127]);
    assert!(
        lines.iter().all(|l| l.len() == 63),
        "64 bytes with the newline"
    );
}

#[test]
fn no_mode_behaves_as_halt() {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::new().arg("--kernel").arg(Image::Elf64.path()).run();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert_eq!(out.stdout, READY_LINE, "{}", out.context());
}

#[test]
fn unknown_mode_is_reported_by_the_guest() {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(Image::Pvh, "quiet mode=dance").run();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert_eq!(
        out.stdout,
        format!("{READY_LINE}unknown mode\n"),
        "{}",
        out.context()
    );
}

/// The VMM advertises the TSC frequency in CPUID 0x40000010 (and the max hypervisor leaf
/// reaches it), so the guest needs no PIT calibration.
#[test]
fn tsc_frequency_comes_from_cpuid() {
    if !kvm_ready() {
        return;
    }
    for image in Image::ALL {
        let out = Vmm::boot(image, "mode=tsc").run();
        out.assert_lifecycle(1, "guest_reset", 0);
        let ctx = out.context();
        let line = out
            .stdout
            .strip_prefix(READY_LINE)
            .and_then(|rest| rest.strip_prefix("tsc "))
            .and_then(|rest| rest.strip_suffix(" khz from cpuid\n"))
            .unwrap_or_else(|| panic!("want 'tsc <khz> khz from cpuid'\n{ctx}"));
        let khz: u64 = line
            .parse()
            .unwrap_or_else(|e| panic!("kHz {line:?}: {e}\n{ctx}"));
        assert!(
            (100_000..20_000_000).contains(&khz),
            "implausible TSC {khz} kHz\n{ctx}"
        );
    }
}

/// Input that arrives before the guest polls COM1 is kept, not dropped.
#[test]
fn echo_input_sent_before_boot() {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(Image::Pvh, "mode=echo").with_stdin().spawn();
    vm.write_stdin(b"early bird\n\x04");
    let out = vm.finish();
    out.assert_lifecycle(1, "guest_reset", 0);
    assert_eq!(
        out.stdout,
        format!("{READY_LINE}early bird\n"),
        "{}",
        out.context()
    );
}

/// 4 GiB of RAM straddles the 32-bit MMIO gap: RAM continues above 4 GiB.
#[test]
fn memory_across_the_mmio_gap() {
    if !kvm_ready() {
        return;
    }
    for image in Image::ALL {
        let out = Vmm::boot(image, "mode=halt")
            .arg("--mem-mib")
            .arg("4096")
            .run();
        out.assert_lifecycle(1, "guest_reset", 0);
        assert_eq!(out.stdout, READY_LINE, "{}", out.context());
    }
}

/// `--serial-max-bytes` keeps that much of the guest's output, then one marker line, and
/// drops the rest while the guest prints on.
#[test]
fn console_output_past_serial_max_bytes_is_dropped_after_a_marker() {
    if !kvm_ready() {
        return;
    }
    const MARKER: &str = "[coinop-vmm: console output capped; the rest is dropped]\n";
    let mut vm = Vmm::boot(Image::Pvh, "mode=flood:64")
        .arg("--serial-max-bytes")
        .arg("1000")
        .with_control()
        .spawn();
    vm.wait_console(MARKER);
    // The guest prints on meanwhile (64 KiB, then `flood done`): none of it may appear.
    let mut ctl = vm.connect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(ctl.ok("stop")["state"], "stopping");
    let out = vm.finish();
    out.assert_lifecycle(1, "stopped", 0);
    let mut printed = String::from(READY_LINE);
    for line in 0..20 {
        let number = line.to_string();
        printed += &format!("flood {number} {}\n", ".".repeat(56 - number.len()));
    }
    let kept = &printed[..1000];
    let newline = if kept.ends_with('\n') { "" } else { "\n" };
    assert_eq!(
        out.stdout,
        format!("{kept}{newline}{MARKER}"),
        "{}",
        out.context()
    );
}
