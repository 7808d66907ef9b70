//! Per-vCPU CPUID: KVM's supported set, adjusted so each vCPU sees its own APIC id, the
//! machine's topology (one socket, N single-thread cores), that it runs under a hypervisor,
//! KVM's paravirtual features without asynchronous page faults, no hardware
//! virtualisation of its own (VMX/SVM), and coinop's timing leaf 0x4000_0010.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf with the TSC and LAPIC bus frequencies (the VMware/KVM "timing information" leaf).
pub const TIMING_LEAF: u32 = 0x4000_0010;
const HYPERVISOR_BASE_LEAF: u32 = 0x4000_0000;
/// KVM's paravirtual feature bits (EAX).
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// KVM_FEATURE_ASYNC_PF, _ASYNC_PF_VMEXIT and _ASYNC_PF_INT: the guest may ask KVM for
/// asynchronous page faults. Not offered: a guest restored from a snapshot has its RAM
/// mapped from the snapshot file, and async page faults are the KVM path that makes its
/// slow first touches visible to the guest (see `vstate::persist`, which also turns them
/// off in guests snapshotted with them on). Without host swap a cold-booted guest never
/// gets one anyway.
const KVM_FEATURES_ASYNC_PF: u32 = (1 << 4) | (1 << 10) | (1 << 14);
/// KVM's LAPIC timer counts at 1 GHz (one tick per ns).
pub const LAPIC_BUS_KHZ: u32 = 1_000_000;

/// Leaf 1 ECX's VMX and leaf 0x8000_0001 ECX's SVM: hardware virtualisation, which KVM
/// offers a guest only when these bits are in its CPUID. Not offered: a guest running VMs
/// of its own has nested state (KVM_GET_NESTED_STATE) that a snapshot does not save, so a
/// guest restored mid-VMXON would fault; and KVM's nested VMX/SVM emulation is a large
/// surface of host kernel code a tenant's guest has no business reaching.
const LEAF1_ECX_VMX: u32 = 1 << 5;
const EXT_LEAF1: u32 = 0x8000_0001;
const EXT_LEAF1_ECX_SVM: u32 = 1 << 2;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Errors while building a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CPUID array is full.
    #[error("cannot add CPUID leaf {0:#x}: the CPUID table is full")]
    TableFull(u32),
}

/// What differs between vCPUs and hosts.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// This vCPU's APIC id (= its index).
    pub apic_id: u8,
    /// Number of vCPUs in the guest.
    pub vcpu_count: u8,
    /// The vCPU's TSC frequency in kHz (0 if KVM cannot tell).
    pub tsc_khz: u32,
    /// Whether KVM emulates the TSC-deadline LAPIC timer.
    pub tsc_deadline: bool,
}

/// Applies [`Context`] to a copy of KVM's supported CPUID.
pub fn filter(cpuid: &mut CpuId, ctx: &Context) -> Result<(), Error> {
    let mut has_base = false;
    let mut has_timing = false;
    for entry in cpuid.as_mut_slice() {
        has_base |= entry.function == HYPERVISOR_BASE_LEAF;
        has_timing |= entry.function == TIMING_LEAF;
        adjust_entry(entry, ctx);
    }
    if !has_base {
        push(cpuid, hypervisor_base_entry())?;
    }
    if !has_timing {
        let mut timing = kvm_cpuid_entry2 {
            function: TIMING_LEAF,
            ..Default::default()
        };
        adjust_entry(&mut timing, ctx);
        push(cpuid, timing)?;
    }
    Ok(())
}

fn push(cpuid: &mut CpuId, entry: kvm_cpuid_entry2) -> Result<(), Error> {
    cpuid
        .push(entry)
        .map_err(|_| Error::TableFull(entry.function))
}

fn hypervisor_base_entry() -> kvm_cpuid_entry2 {
    let sig = *b"KVMKVMKVM\0\0\0";
    let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    kvm_cpuid_entry2 {
        function: HYPERVISOR_BASE_LEAF,
        eax: TIMING_LEAF,
        ebx: word(0),
        ecx: word(4),
        edx: word(8),
        ..Default::default()
    }
}

/// Rewrites one leaf for this vCPU.
pub fn adjust_entry(entry: &mut kvm_cpuid_entry2, ctx: &Context) {
    let count = u32::from(ctx.vcpu_count);
    match entry.function {
        1 => {
            entry.ebx = (entry.ebx & 0x0000_00ff)
                | (u32::from(ctx.apic_id) << 24)
                | (count << 16)
                | (8 << 8);
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            entry.ecx &= !LEAF1_ECX_VMX;
            if ctx.tsc_deadline {
                entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
            } else {
                entry.ecx &= !LEAF1_ECX_TSC_DEADLINE;
            }
            if count > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            } else {
                entry.edx &= !LEAF1_EDX_HTT;
            }
        }
        4 if entry.eax & 0x1f != 0 => {
            let cache_level = (entry.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { count - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
        }
        EXT_LEAF1 => entry.ecx &= !EXT_LEAF1_ECX_SVM,
        0xb | 0x1f => adjust_topology_entry(entry, ctx),
        HYPERVISOR_BASE_LEAF => entry.eax = entry.eax.max(TIMING_LEAF),
        KVM_FEATURES_LEAF => entry.eax &= !KVM_FEATURES_ASYNC_PF,
        TIMING_LEAF => {
            entry.eax = ctx.tsc_khz;
            entry.ebx = LAPIC_BUS_KHZ;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

/// Extended topology: level 0 is SMT (one thread per core), level 1 is the core level
/// holding all vCPUs; higher sub-leaves are invalid. EDX is always the x2APIC id.
fn adjust_topology_entry(entry: &mut kvm_cpuid_entry2, ctx: &Context) {
    let count = u32::from(ctx.vcpu_count);
    entry.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    entry.edx = u32::from(ctx.apic_id);
    match entry.index {
        0 => {
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = apic_id_bits(count);
            entry.ebx = count;
            entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
        }
        _ => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = entry.index;
        }
    }
}

/// Bits of the APIC id needed to number `count` cores.
pub fn apic_id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(apic_id: u8, vcpu_count: u8) -> Context {
        Context {
            apic_id,
            vcpu_count,
            tsc_khz: 2_500_000,
            tsc_deadline: true,
        }
    }

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = leaf(1, 0);
        e.ebx = 0xffff_ffff;
        adjust_entry(&mut e, &ctx(3, 4));
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn hardware_virtualisation_is_not_offered() {
        let mut basic = leaf(1, 0);
        basic.ecx = u32::MAX;
        adjust_entry(&mut basic, &ctx(0, 1));
        assert_eq!(basic.ecx & LEAF1_ECX_VMX, 0, "VMX offered");
        assert_ne!(
            basic.ecx & LEAF1_ECX_TSC_DEADLINE,
            0,
            "other leaf 1 bits kept"
        );
        let mut ext = leaf(EXT_LEAF1, 0);
        ext.ecx = u32::MAX;
        ext.edx = u32::MAX;
        adjust_entry(&mut ext, &ctx(0, 1));
        assert_eq!(ext.ecx, !EXT_LEAF1_ECX_SVM, "only SVM cleared");
        assert_eq!(ext.edx, u32::MAX);
    }

    #[test]
    fn tsc_deadline_bit_follows_kvm() {
        let mut e = leaf(1, 0);
        e.ecx = LEAF1_ECX_TSC_DEADLINE;
        let mut c = ctx(0, 1);
        c.tsc_deadline = false;
        adjust_entry(&mut e, &c);
        assert_eq!(e.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_reports_x2apic_id_and_core_count() {
        let mut smt = leaf(0xb, 0);
        let mut core = leaf(0xb, 1);
        let mut invalid = leaf(0xb, 2);
        for e in [&mut smt, &mut core, &mut invalid] {
            adjust_entry(e, &ctx(5, 6));
        }
        assert_eq!((smt.ebx, smt.ecx >> 8, smt.edx), (1, 1, 5));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (3, 6, 2, 5));
        assert_eq!((invalid.ebx, invalid.ecx >> 8), (0, 0));
    }

    #[test]
    fn async_page_faults_are_not_offered() {
        let mut e = leaf(KVM_FEATURES_LEAF, 0);
        // kvmclock (bits 0, 3), async PF (4), PV EOI (6), async PF VM exit (10), async PF
        // as an interrupt (14).
        e.eax = (1 << 0) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 10) | (1 << 14);
        adjust_entry(&mut e, &ctx(0, 1));
        assert_eq!(e.eax, (1 << 0) | (1 << 3) | (1 << 6));
    }

    #[test]
    fn apic_id_bits_round_up() {
        assert_eq!(apic_id_bits(1), 0);
        assert_eq!(apic_id_bits(2), 1);
        assert_eq!(apic_id_bits(3), 2);
        assert_eq!(apic_id_bits(32), 5);
    }

    #[test]
    fn adds_timing_leaf_and_raises_hypervisor_max_leaf() {
        let mut base = leaf(HYPERVISOR_BASE_LEAF, 0);
        base.eax = 0x4000_0001;
        let mut cpuid = CpuId::from_entries(&[leaf(0, 0), base]).expect("two entries fit");
        filter(&mut cpuid, &ctx(0, 1)).expect("room for one more leaf");
        let entries = cpuid.as_slice();
        let base = entries
            .iter()
            .find(|e| e.function == HYPERVISOR_BASE_LEAF)
            .expect("kept");
        assert!(base.eax >= TIMING_LEAF);
        let timing = entries
            .iter()
            .find(|e| e.function == TIMING_LEAF)
            .expect("added");
        assert_eq!((timing.eax, timing.ebx), (2_500_000, LAPIC_BUS_KHZ));
    }

    #[test]
    fn adds_hypervisor_base_leaf_when_missing() {
        let mut cpuid = CpuId::from_entries(&[leaf(0, 0)]).expect("one entry fits");
        filter(&mut cpuid, &ctx(0, 1)).expect("room");
        let base = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == HYPERVISOR_BASE_LEAF)
            .copied()
            .expect("added");
        assert_eq!(base.eax, TIMING_LEAF);
        assert_eq!(&base.ebx.to_le_bytes(), b"KVMK");
    }
}
