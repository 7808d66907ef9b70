//! Every test-guest mode through both boot entries (PVH, ELF64) on 1 and 2 vCPUs: console
//! text, events and exit codes from the real `coinop-vmm` on /dev/kvm.

mod common;

use common::{kvm_ready, Image, Vmm, READY_LINE};
use std::io::Write;

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

/// `mode=fault` loads an empty IDT and executes `ud2`: a triple fault, reported with the
/// crashed vCPU's registers (the RIP of that `ud2`, which the guest prints first, its
/// paging and long mode, its empty IDT) in the exit event and on stderr.
fn fault(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=fault").vcpus(vcpus).run();
    out.assert_lifecycle(vcpus, "triple_fault", 3);
    let ud2 = announced_fault(&out, 0, 0);
    assert!(
        out.messages
            .iter()
            .any(|m| m.to_lowercase().contains("triple fault")
                || m.to_lowercase().contains("triple_fault")),
        "the crash reason is on stderr\n{}",
        out.context()
    );
    let state = &out.event("exit")["vcpu_state"];
    if state["reset_state"] == true {
        // KVM on AMD re-initialises a vCPU after a shutdown the CPU detected: the state
        // says so, and the guest's own registers are gone.
        assert_eq!(state["rip"], "0xfff0", "{}", out.context());
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: this host's KVM reset the vCPU at the triple fault; its registers are lost"
        );
        return;
    }
    assert_guest_state(&out, ud2, (0, 0));
}

/// `mode=fault-mmio-idt`: the IDT lies in unbacked guest-physical memory (the MMIO gap), so
/// delivering the `ud2`'s #UD reads its gate from no memory at all. KVM ends the guest
/// (a triple fault, or an internal error for an event it could not deliver, depending on
/// the host), and the dump shows the guest where it was, with the IDT it loaded.
fn fault_mmio_idt(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=fault-mmio-idt").vcpus(vcpus).run();
    assert_eq!(out.code, Some(3), "a guest crash\n{}", out.context());
    let exit = out.event("exit");
    assert!(
        ["triple_fault", "internal_error"].contains(&exit["reason"].as_str().unwrap_or("")),
        "{}",
        out.context()
    );
    let ud2 = announced_fault(&out, 0xc000_0000, 0xfff);
    if exit["vcpu_state"]["reset_state"] == true {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: this host's KVM reset the vCPU at the triple fault; its registers are lost"
        );
        return;
    }
    assert_guest_state(&out, ud2, (0xc000_0000, 0xfff));
}

/// `mode=exec-mmio` jumps to 3 GiB, where no RAM is: KVM cannot fetch, let alone emulate,
/// the instruction there, and the emulation failure carries that RIP.
fn exec_mmio(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let out = Vmm::boot(image, "mode=exec-mmio").vcpus(vcpus).run();
    out.assert_lifecycle(vcpus, "emulation_failure", 3);
    assert_eq!(
        out.stdout,
        format!("{READY_LINE}exec-mmio: jumping to 3221225472\n"),
        "{}",
        out.context()
    );
    let state = &out.event("exit")["vcpu_state"];
    assert_eq!(state["rip"], "0xc0000000", "{}", out.context());
    assert_eq!(state["vcpu"], 0, "{}", out.context());
    assert_long_mode(&out);
    assert!(
        out.messages
            .iter()
            .any(|m| m.contains("emulation_failure: vCPU 0 state: rip 0xc0000000 ")),
        "the state is on stderr too\n{}",
        out.context()
    );
}

/// The `fault: ud2 at <addr> idt <base> limit <limit>` line the guest prints before it
/// faults; returns the `ud2`'s address.
fn announced_fault(out: &common::Outcome, idt_base: u64, idt_limit: u64) -> u64 {
    let line = out
        .stdout
        .strip_prefix(READY_LINE)
        .and_then(|rest| rest.strip_prefix("fault: ud2 at "))
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("no fault line\n{}", out.context()));
    let (addr, idt) = line
        .split_once(" idt ")
        .unwrap_or_else(|| panic!("no idt in the fault line\n{}", out.context()));
    assert_eq!(
        idt,
        format!("{idt_base} limit {idt_limit}"),
        "{}",
        out.context()
    );
    addr.parse()
        .unwrap_or_else(|e| panic!("ud2 address {addr:?}: {e}\n{}", out.context()))
}

/// The exit event's vCPU state is the guest's at its `ud2`: that RIP, the IDT it loaded,
/// ring 0 in long mode with paging; and stderr has the same state in words.
fn assert_guest_state(out: &common::Outcome, ud2: u64, idt: (u64, u64)) {
    let ctx = out.context();
    let state = &out.event("exit")["vcpu_state"];
    assert_eq!(state["vcpu"], 0, "the BSP faulted\n{ctx}");
    assert_eq!(state["rip"], format!("{ud2:#x}"), "RIP at the ud2\n{ctx}");
    assert_eq!(state["idt"]["base"], format!("{:#x}", idt.0), "{ctx}");
    assert_eq!(state["idt"]["limit"], idt.1, "{ctx}");
    assert_eq!(state["reset_state"], false, "{ctx}");
    assert_long_mode(out);
    let reason = out.event("exit")["reason"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let words = format!("{reason}: vCPU 0 state: rip {ud2:#x} ");
    assert!(
        out.messages.iter().any(|m| m.contains(&words)),
        "{words:?} on stderr\n{ctx}"
    );
}

/// The dumped control registers are the test guest's: protected mode with paging, long
/// mode active, CPL 0.
fn assert_long_mode(out: &common::Outcome) {
    let ctx = out.context();
    let state = &out.event("exit")["vcpu_state"];
    let reg = |name: &str| {
        let text = state[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name}\n{ctx}"));
        u64::from_str_radix(text.trim_start_matches("0x"), 16)
            .unwrap_or_else(|e| panic!("{name} {text:?}: {e}\n{ctx}"))
    };
    const CR0_PE: u64 = 1;
    const CR0_PG: u64 = 1 << 31;
    const EFER_LMA: u64 = 1 << 10;
    assert_eq!(reg("cr0") & (CR0_PE | CR0_PG), CR0_PE | CR0_PG, "{ctx}");
    assert_ne!(reg("efer") & EFER_LMA, 0, "{ctx}");
    assert_ne!(reg("cr3"), 0, "the guest's page tables\n{ctx}");
    assert_eq!(state["cs"]["dpl"], 0, "{ctx}");
    assert_ne!(state["cs"]["selector"], 0, "{ctx}");
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

/// `mode=count`: numbered lines from 0 (with the busy APs' total, which only grows, on
/// more than one vCPU) and an answer per input line; Ctrl-D resets.
fn count(image: Image, vcpus: u32) {
    if !kvm_ready() {
        return;
    }
    let mut vm = Vmm::boot(image, "mode=count")
        .vcpus(vcpus)
        .with_stdin()
        .spawn();
    vm.wait_console("count 3");
    vm.write_stdin(b"ping\n\x04");
    let out = vm.finish();
    out.assert_lifecycle(vcpus, "guest_reset", 0);
    let ctx = out.context();
    let counted: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .collect();
    let mut last_ap = 0;
    for (i, rest) in counted.iter().enumerate() {
        let mut words = rest.split(" ap ");
        assert_eq!(
            words.next(),
            Some(i.to_string().as_str()),
            "line {i}\n{ctx}"
        );
        match (vcpus, words.next()) {
            (1, None) => {}
            (_, Some(ap)) if vcpus > 1 => {
                let ap: u64 = ap.parse().unwrap_or_else(|e| panic!("{ap:?}: {e}\n{ctx}"));
                assert!(ap >= last_ap, "the APs' total went back\n{ctx}");
                last_ap = ap;
            }
            other => panic!("line {i}: unexpected {other:?}\n{ctx}"),
        }
    }
    assert!(counted.len() >= 4, "{ctx}");
    assert!(out.stdout.contains("\nin ping\n"), "{ctx}");
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
    fault_mmio_idt_pvh_1vcpu => fault_mmio_idt(Pvh, 1);
    fault_mmio_idt_elf64_2vcpus => fault_mmio_idt(Elf64, 2);
    exec_mmio_pvh_1vcpu => exec_mmio(Pvh, 1);
    exec_mmio_elf64_1vcpu => exec_mmio(Elf64, 1);
    count_pvh_1vcpu => count(Pvh, 1);
    count_pvh_2vcpus => count(Pvh, 2);
    count_elf64_1vcpu => count(Elf64, 1);
    count_elf64_2vcpus => count(Elf64, 2);
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
