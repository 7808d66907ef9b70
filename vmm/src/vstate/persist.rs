//! The KVM state of a guest as a snapshot holds it: every vCPU's registers, FPU/XSAVE, XCRs,
//! debug registers, MSRs, LAPIC, pending events, CPUID and MP state, and the VM's PIC,
//! IOAPIC, PIT and clock. kvm-bindings' `serde` feature serializes each KVM struct as its raw
//! bytes, so nothing is copied field by field.
//!
//! Saving runs on each vCPU's own thread while it is parked outside KVM_RUN (see
//! [`crate::vstate::run_state`]), after the I/O it last exited for is completed
//! ([`complete_pending_io`]); the MP state and the pending events are read first (both
//! reads can change what the others report). Restoring runs on the new vCPU thread before
//! its first KVM_RUN, in the order KVM needs: CPUID first (it decides which MSRs and XSAVE
//! features exist), the MP state and registers (KVM_SET_REGS drops a pending exception, so
//! events come after it), the LAPIC after the segment registers (they carry the APIC base and
//! so its mode) and before the MSRs (the TSC-deadline MSR is only taken by a LAPIC in
//! deadline mode), the TSC-deadline MSR after every other MSR (KVM arms the timer against
//! the guest TSC as it is at that write), and the pending events last.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Errors saving or restoring KVM state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{what}: {call} failed: {source}")]
    Ioctl {
        /// "vCPU 1" or "VM".
        what: String,
        /// The ioctl.
        call: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// KVM took only part of the saved MSRs.
    #[error("vCPU {index}: KVM refused saved MSR {msr:#x}")]
    MsrRefused {
        /// vCPU index.
        index: u8,
        /// The first MSR KVM did not take.
        msr: u32,
    },
    /// The saved CPUID or MSR list does not fit KVM's limits (a corrupt snapshot).
    #[error("vCPU {index}: saved {what} has {count} entries, too many for KVM")]
    TooMany {
        /// vCPU index.
        index: u8,
        /// "CPUID" or "MSR list".
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// Completing the I/O a vCPU exited for took an exit that is not more of that I/O, or
    /// never finished.
    #[error("vCPU {index}: completing its pending I/O before the save: {detail}")]
    Completion {
        /// vCPU index.
        index: u8,
        /// What happened.
        detail: String,
    },
    /// The host's TSC runs at another frequency and KVM cannot scale the guest's.
    #[error("vCPU {index}: the snapshot's TSC ran at {saved} kHz, this host's at {host} kHz, and KVM cannot set it (no TSC_CONTROL)")]
    TscFrequency {
        /// vCPU index.
        index: u8,
        /// kHz when saved.
        saved: u32,
        /// kHz here.
        host: u32,
    },
}

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID as the VMM set it (KVM_GET_CPUID2).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (the 4 KiB legacy XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR of KVM_GET_MSR_INDEX_LIST that KVM would read, TSC and kvmclock included.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// The guest's TSC frequency.
    pub tsc_khz: u32,
}

fn vcpu_err(index: u8, call: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl {
        what: format!("vCPU {index}"),
        call,
        source,
    }
}

/// Reads vCPU `index`'s state. The vCPU must be outside KVM_RUN with any I/O it exited
/// for completed (see [`complete_pending_io`]). `msr_indices` comes from
/// KVM_GET_MSR_INDEX_LIST.
pub fn save_vcpu(vcpu: &VcpuFd, index: u8, msr_indices: &[u32]) -> Result<VcpuState, Error> {
    let err = |call| vcpu_err(index, call);
    // KVM_GET_MP_STATE accepts pending INIT/SIPI into the vCPU's state: read it first so the
    // rest is read as it will be restored.
    let mp_state = vcpu.get_mp_state().map_err(err("KVM_GET_MP_STATE"))?;
    // Without KVM_CAP_EXCEPTION_PAYLOAD (coinop does not enable it) KVM_GET_VCPU_EVENTS
    // writes a pending exception's payload into CR2 (#PF) or DR6 (#DB) as it reports the
    // exception: read the events before the registers that hold it, or the snapshot pairs a
    // #PF with the CR2 of the fault before.
    let events = vcpu.get_vcpu_events().map_err(err("KVM_GET_VCPU_EVENTS"))?;
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(err("KVM_GET_CPUID2"))?;
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        mp_state,
        regs: vcpu.get_regs().map_err(err("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(err("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(err("KVM_GET_XCRS"))?,
        debug_regs: vcpu.get_debug_regs().map_err(err("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?,
        msrs: read_msrs(vcpu, index, msr_indices)?,
        events,
        tsc_khz: vcpu.get_tsc_khz().map_err(err("KVM_GET_TSC_KHZ"))?,
    })
}

/// KVM_GET_MSRS stops at the first MSR it cannot read (some in the index list depend on
/// CPUID bits this guest lacks): such an MSR is left out and the rest read again.
fn read_msrs(vcpu: &VcpuFd, index: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut wanted: Vec<u32> = indices.to_vec();
    let mut read = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::TooMany {
            index,
            what: "MSR list",
            count: entries.len(),
        })?;
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(vcpu_err(index, "KVM_GET_MSRS"))?;
        read.extend_from_slice(&msrs.as_slice()[..n]);
        // Skip the unreadable one and go on after it.
        wanted.drain(..(n + 1).min(wanted.len()));
    }
    Ok(read)
}

/// Most exits one instruction's completion may take: a 16-byte MMIO access is two 8-byte
/// fragments; anything near this bound is a loop, not an instruction.
const MAX_COMPLETION_EXITS: usize = 64;

/// Lets KVM finish the instruction a vCPU exited for (an `in` whose value the VMM just
/// supplied, an MMIO read, the next fragment of a wide MMIO access) without running any
/// further guest code: KVM_RUN with `immediate_exit` set completes it and returns EINTR.
/// Until then the registers KVM reports do not hold the result, and KVM keeps the rest of
/// the instruction in state no snapshot can read (the KVM API's "completing pending
/// operations"). An instruction that needs more I/O to finish (a 16-byte MMIO access comes
/// as two exits) exits again instead: `serve` handles each such exit as the run loop would,
/// and KVM_RUN is entered again until it returns EINTR.
pub fn complete_pending_io(
    vcpu: &mut VcpuFd,
    index: u8,
    mut serve: impl FnMut(VcpuExit<'_>) -> Result<(), String>,
) -> Result<(), Error> {
    let completion = |detail: String| Error::Completion { index, detail };
    let mut result = Err(completion(format!(
        "still exiting after {MAX_COMPLETION_EXITS} exits"
    )));
    vcpu.set_kvm_immediate_exit(1);
    for _ in 0..MAX_COMPLETION_EXITS {
        match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                result = Ok(());
                break;
            }
            Err(source) => {
                result = Err(Error::Ioctl {
                    what: format!("vCPU {index}"),
                    call: "KVM_RUN (immediate exit)",
                    source,
                });
                break;
            }
            Ok(
                exit @ (VcpuExit::IoIn(..)
                | VcpuExit::IoOut(..)
                | VcpuExit::MmioRead(..)
                | VcpuExit::MmioWrite(..)),
            ) => {
                if let Err(detail) = serve(exit) {
                    result = Err(completion(detail));
                    break;
                }
            }
            // With immediate_exit set KVM never enters the guest, so no other exit can
            // come: one that does means the state cannot be trusted.
            Ok(other) => {
                result = Err(completion(format!("unexpected exit {other:?}")));
                break;
            }
        }
    }
    vcpu.set_kvm_immediate_exit(0);
    result
}

/// Loads `state` into a freshly created vCPU.
pub fn restore_vcpu(vcpu: &VcpuFd, index: u8, state: &VcpuState) -> Result<(), Error> {
    let err = |call| vcpu_err(index, call);
    let host_khz = vcpu.get_tsc_khz().map_err(err("KVM_GET_TSC_KHZ"))?;
    if host_khz != state.tsc_khz {
        vcpu.set_tsc_khz(state.tsc_khz)
            .map_err(|_| Error::TscFrequency {
                index,
                saved: state.tsc_khz,
                host: host_khz,
            })?;
    }
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| Error::TooMany {
        index,
        what: "CPUID",
        count: state.cpuid.len(),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    vcpu.set_mp_state(state.mp_state)
        .map_err(err("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(err("KVM_SET_REGS"))?;
    vcpu.set_sregs(&sregs_to_load(state))
        .map_err(err("KVM_SET_SREGS"))?;
    // SAFETY: KVM_SET_XSAVE reads as many bytes as the vCPU's XSAVE area has for this
    // process (guest_fpu.uabi_size), not as many as the caller holds. That is the 4 KiB
    // of kvm_xsave unless the process was granted dynamic guest XSTATE (AMX tiles) with
    // arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM), which coinop-vmm never asks for: so KVM reads
    // within this 4 KiB kvm_xsave, which is whole (KVM_GET_XSAVE filled it).
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(err("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(err("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(err("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic).map_err(err("KVM_SET_LAPIC"))?;
    let (msrs, deadline) = msrs_to_load(&state.msrs);
    write_msrs(vcpu, index, &msrs)?;
    write_msrs(vcpu, index, &deadline)?;
    vcpu.set_vcpu_events(&events_to_load(&state.events))
        .map_err(err("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn write_msrs(vcpu: &VcpuFd, index: u8, entries: &[kvm_msr_entry]) -> Result<(), Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let msrs = Msrs::from_entries(entries).map_err(|_| Error::TooMany {
        index,
        what: "MSR list",
        count: entries.len(),
    })?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(vcpu_err(index, "KVM_SET_MSRS"))?;
    match entries.get(written) {
        Some(refused) => Err(Error::MsrRefused {
            index,
            msr: refused.index,
        }),
        None => Ok(()),
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;

/// The saved MSRs as the restore writes them: every MSR but the TSC deadline, then (a second
/// write) the TSC deadline alone.
///
/// - The deadline goes last so KVM arms the LAPIC timer against the restored TSC, whatever
///   order KVM_GET_MSR_INDEX_LIST listed them in. A deadline of 0 is written as the saved
///   TSC: KVM zeroes the MSR as it takes a fired deadline timer's interrupt, and a save
///   that lands in between keeps neither the interrupt nor the deadline, so the restored
///   guest (a Linux in NOHZ idle, a nanosleep()ing agent) would wait for a timer interrupt
///   that never comes. An early, spurious timer interrupt costs Linux one reprogramming.
///   A LAPIC not in deadline mode ignores the write.
/// - Asynchronous page faults are switched off (MSR_KVM_ASYNC_PF_EN = 0). A restored
///   guest's RAM is the snapshot file mapped copy-on-write, so its first touch of a page
///   not in the host's page cache blocks on a disk read, which is exactly when KVM injects
///   an async "page not present" #PF into a guest running user code (and, at this very MSR
///   write, a "wake all" interrupt). It is the one KVM path only restored guests take, and
///   only when the page cache is cold (a host under memory pressure, as the nested lab's
///   was when 1 of 11 restored leases triple-faulted); Firecracker and Cloud Hypervisor
///   users report guest crashes and hangs in it after restores. With it off such a fault
///   just stalls the vCPU until the page is read; the guest, which still believes the
///   feature on, never receives one. (Cold-booted guests are no longer offered it at all,
///   see `arch::x86_64::cpuid`.)
fn msrs_to_load(saved: &[kvm_msr_entry]) -> (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) {
    let tsc = saved
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data);
    let (mut deadline, mut rest): (Vec<_>, Vec<_>) = saved
        .iter()
        .copied()
        .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
    for entry in &mut deadline {
        if entry.data == 0 {
            entry.data = tsc.unwrap_or(0);
        }
    }
    for entry in &mut rest {
        if entry.index == MSR_KVM_ASYNC_PF_EN {
            entry.data = 0;
        }
    }
    (rest, deadline)
}

/// The saved events as KVM_SET_VCPU_EVENTS is to take them. KVM_GET_VCPU_EVENTS reports the
/// pending NMI count and the SIPI vector but does not set the flags that make
/// KVM_SET_VCPU_EVENTS load them, so without these an NMI pending at the save would be
/// dropped at the restore (QEMU sets them the same way for migration).
fn events_to_load(saved: &kvm_vcpu_events) -> kvm_vcpu_events {
    let mut events = *saved;
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    events
}

/// TSS type "available" (64-bit), and the bit that makes it "busy".
const TSS_AVAILABLE: u8 = 0x9;
const TSS_BUSY_BIT: u8 = 0x2;

/// The snapshot's segment registers as KVM_SET_SREGS is to get them. On AMD, TR goes back
/// as an available TSS (type 9): KVM's SVM reports it busy (type 11) whatever the VMCB
/// holds, while the guest's own LTR leaves the cached type available. Real AMD hardware
/// ignores the cached type in 64-bit mode and VMRUN checks none of it, but an emulated SVM
/// does not: QEMU's TCG (the nested lab's L1) grants user-space port I/O through the TSS
/// bitmap only for a type-9 TR, so a restored Linux guest's ioperm()ed `outb` took a #GP
/// (its agent could neither read its personalisation line nor signal guest_ready). VMX
/// requires type 11 for a 64-bit guest's TR: on Intel the state is loaded as saved.
fn sregs_to_load(state: &VcpuState) -> kvm_sregs {
    let mut sregs = state.sregs;
    if cpuid_vendor_is_amd(&state.cpuid) && sregs.tr.type_ == TSS_AVAILABLE | TSS_BUSY_BIT {
        sregs.tr.type_ = TSS_AVAILABLE;
    }
    sregs
}

/// Whether CPUID leaf 0 names AMD ("AuthenticAMD" in EBX, EDX, ECX).
fn cpuid_vendor_is_amd(cpuid: &[kvm_cpuid_entry2]) -> bool {
    cpuid.iter().find(|e| e.function == 0).is_some_and(|e| {
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&e.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&e.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&e.ecx.to_le_bytes());
        &vendor == b"AuthenticAMD"
    })
}

/// The VM-wide state: interrupt controllers, PIT and clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The master PIC.
    pub pic_master: kvm_irqchip,
    /// The slave PIC.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// PIT channels.
    pub pit: kvm_pit_state2,
    /// kvmclock's time base.
    pub clock: kvm_clock_data,
}

fn vm_err(call: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl {
        what: "VM".into(),
        call,
        source,
    }
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, Error> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(vm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the VM's state; every vCPU must be parked.
pub fn save_vm(vm: &VmFd) -> Result<VmState, Error> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(vm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(vm_err("KVM_GET_CLOCK"))?,
    })
}

/// Loads `state` into a VM whose irqchip and PIT exist and whose vCPUs are not running.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), Error> {
    vm.set_pit2(&state.pit).map_err(vm_err("KVM_SET_PIT2"))?;
    // The flags KVM_GET_CLOCK reports (TSC_STABLE, REALTIME...) are not all valid input to
    // KVM_SET_CLOCK: the saved value alone is what the guest's kvmclock continues from.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(vm_err("KVM_SET_CLOCK"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(vm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::regs::EntryMode;
    use crate::vstate::vcpu::{configure, VcpuSetup};
    use crate::vstate::{memory, vm};
    use kvm_ioctls::Cap;

    /// IA32_TSC and kvmclock's MSR_KVM_SYSTEM_TIME_NEW.
    const MSR_TSC: u32 = 0x10;
    const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

    fn kvm_or_skip() -> Option<kvm_ioctls::Kvm> {
        if !std::path::Path::new("/dev/kvm").exists() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: /dev/kvm not available");
            return None;
        }
        Some(vm::open_kvm().expect("/dev/kvm opens"))
    }

    fn make_vm(kvm: &kvm_ioctls::Kvm) -> (VmFd, vm_memory::GuestMemoryMmap) {
        let mem = memory::create(16).expect("16 MiB");
        let vm_fd = vm::create(kvm, &mem).expect("VM");
        vm::setup_irqchip(&vm_fd).expect("irqchip");
        (vm_fd, mem)
    }

    /// A BSP at 0x10_0000 in 64-bit mode, as a cold boot of a Linux vmlinux sets it up.
    fn boot_vcpu(kvm: &kvm_ioctls::Kvm, vm_fd: &VmFd, mem: vm_memory::GuestMemoryMmap) -> VcpuFd {
        let setup = VcpuSetup {
            supported_cpuid: kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .expect("cpuid"),
            vcpu_count: 1,
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            mem,
            entry: EntryMode::Linux64 {
                entry: 0x10_0000,
                zero_page: 0x7000,
            },
        };
        let vcpu = vm_fd.create_vcpu(0).expect("vCPU");
        configure(&vcpu, 0, &setup).expect("boot state");
        vcpu
    }

    fn no_exit_expected(exit: VcpuExit<'_>) -> Result<(), String> {
        Err(format!("no exit expected, got {exit:?}"))
    }

    fn msr(state: &VcpuState, index: u32) -> Option<u64> {
        state.msrs.iter().find(|m| m.index == index).map(|m| m.data)
    }

    #[test]
    fn a_saved_vcpu_and_vm_load_into_a_fresh_vm() {
        let Some(kvm) = kvm_or_skip() else { return };
        let msr_list = crate::snapshot::host::msr_indices(&kvm).expect("MSR list");
        let (source_vm, mem) = make_vm(&kvm);
        let mut source = boot_vcpu(&kvm, &source_vm, mem);
        // An NMI the guest has not taken yet: it must survive the restore.
        source.nmi().expect("KVM_NMI");
        complete_pending_io(&mut source, 0, no_exit_expected).expect("immediate exit");
        let mut saved = save_vcpu(&source, 0, &msr_list).expect("saved");
        let indices: Vec<u32> = saved.msrs.iter().map(|m| m.index).collect();
        assert!(indices.contains(&MSR_TSC), "{indices:x?}");
        assert!(indices.contains(&MSR_KVM_SYSTEM_TIME_NEW), "{indices:x?}");
        assert_eq!(
            msr(&saved, MSR_MTRR_DEF_TYPE),
            Some(0x806),
            "MTRRs on, write-back by default, as the cold boot set them"
        );
        assert_eq!(saved.events.nmi.pending, 1, "the NMI is saved as pending");
        // As a guest that enabled asynchronous page faults (delivered as interrupts, data at
        // 0x5000) would have it saved.
        let async_pf = MSR_KVM_ASYNC_PF_EN_VALUE;
        for entry in saved.msrs.iter_mut() {
            if entry.index == MSR_KVM_ASYNC_PF_EN {
                entry.data = async_pf;
            }
        }
        let saved_vm = save_vm(&source_vm).expect("VM state");

        // Through the snapshot encoding, as a restore sees it.
        let bytes = postcard::to_stdvec(&(&saved, &saved_vm)).expect("encodes");
        let (loaded, loaded_vm): (VcpuState, VmState) =
            postcard::from_bytes(&bytes).expect("decodes");

        let (target_vm, _mem) = make_vm(&kvm);
        restore_vm(&target_vm, &loaded_vm).expect("VM state loads");
        let target = target_vm.create_vcpu(0).expect("vCPU");
        restore_vcpu(&target, 0, &loaded).expect("vCPU state loads");
        let back = save_vcpu(&target, 0, &msr_list).expect("read back");
        assert_eq!(back.regs.rip, 0x10_0000);
        assert_eq!(back.regs.rsi, 0x7000);
        assert_eq!(back.sregs.cr0, saved.sregs.cr0);
        assert_eq!(back.sregs.efer, saved.sregs.efer);
        assert_eq!(back.cpuid.len(), saved.cpuid.len());
        assert_eq!(back.lapic.regs[..], saved.lapic.regs[..]);
        assert_eq!(back.mp_state.mp_state, saved.mp_state.mp_state);
        assert_eq!(back.events.nmi.pending, 1, "the pending NMI was restored");
        // The guest's TSC continues from the saved value (it has run on a little since).
        let (was, now) = (
            msr(&saved, MSR_TSC).expect("tsc"),
            msr(&back, MSR_TSC).expect("tsc"),
        );
        assert!(now >= was, "TSC went back: {was} → {now}");
        assert_eq!(msr(&back, MSR_MTRR_DEF_TYPE), Some(0x806));
        if msr(&saved, MSR_KVM_ASYNC_PF_EN).is_some() {
            assert_eq!(
                msr(&back, MSR_KVM_ASYNC_PF_EN),
                Some(0),
                "async page faults are off after a restore"
            );
        }
        let back_vm = save_vm(&target_vm).expect("VM state");
        assert_eq!(back_vm.ioapic.chip_id, saved_vm.ioapic.chip_id);
        // SAFETY: chip_id says this is the IOAPIC member of the union.
        let (a, b) = unsafe { (back_vm.ioapic.chip.ioapic, saved_vm.ioapic.chip.ioapic) };
        assert_eq!(a.base_address, b.base_address);
    }

    /// MSR_KVM_ASYNC_PF_EN as Linux writes it: enabled, delivered as an interrupt.
    const MSR_KVM_ASYNC_PF_EN_VALUE: u64 = 0x5000 | 1 | 8;

    fn entry(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn the_tsc_deadline_is_written_last_and_never_as_zero() {
        let saved = [
            entry(MSR_IA32_TSC_DEADLINE, 0),
            entry(MSR_KVM_ASYNC_PF_EN, MSR_KVM_ASYNC_PF_EN_VALUE),
            entry(MSR_TSC, 123_456),
            entry(MSR_KVM_SYSTEM_TIME_NEW, 0x7001),
        ];
        let (rest, deadline) = msrs_to_load(&saved);
        let pairs = |v: &[kvm_msr_entry]| v.iter().map(|m| (m.index, m.data)).collect::<Vec<_>>();
        assert_eq!(
            pairs(&rest),
            [
                (MSR_KVM_ASYNC_PF_EN, 0),
                (MSR_TSC, 123_456),
                (MSR_KVM_SYSTEM_TIME_NEW, 0x7001)
            ]
        );
        assert_eq!(pairs(&deadline), [(MSR_IA32_TSC_DEADLINE, 123_456)]);
        // An armed deadline is kept as saved.
        let (_, deadline) = msrs_to_load(&[entry(MSR_TSC, 5), entry(MSR_IA32_TSC_DEADLINE, 9)]);
        assert_eq!(pairs(&deadline), [(MSR_IA32_TSC_DEADLINE, 9)]);
    }

    #[test]
    fn nmi_and_sipi_flags_are_set_for_the_restore() {
        let saved = kvm_vcpu_events {
            flags: 4,
            ..Default::default()
        };
        let events = events_to_load(&saved);
        assert_eq!(
            events.flags,
            4 | KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR
        );
    }

    /// A vCPU state with CPUID leaf 0 naming `vendor` and TR of `tr_type`.
    fn state_of(vendor: &[u8; 12], tr_type: u8) -> VcpuState {
        let word = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().expect("4 bytes"));
        let leaf0 = kvm_cpuid_entry2 {
            function: 0,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.tr.type_ = tr_type;
        VcpuState {
            cpuid: vec![leaf0],
            mp_state: Default::default(),
            regs: Default::default(),
            sregs,
            xsave: Default::default(),
            xcrs: Default::default(),
            debug_regs: Default::default(),
            lapic: Default::default(),
            msrs: Vec::new(),
            events: Default::default(),
            tsc_khz: 0,
        }
    }

    #[test]
    fn a_busy_tss_goes_back_available_on_amd_only() {
        let amd = sregs_to_load(&state_of(b"AuthenticAMD", 0xb));
        assert_eq!(amd.tr.type_, 0x9, "AMD: the type the guest's LTR left");
        let intel = sregs_to_load(&state_of(b"GenuineIntel", 0xb));
        assert_eq!(intel.tr.type_, 0xb, "VMX wants a busy TR");
        let other = sregs_to_load(&state_of(b"AuthenticAMD", 0x3));
        assert_eq!(other.tr.type_, 0x3, "only a busy 64-bit TSS is touched");
    }
}
