//! What a snapshot may only be restored on: a host whose KVM offers the same CPUID, MSRs
//! and capabilities. Restoring elsewhere could hand the guest CPU features that vanished
//! under it, so the VMM compares a fingerprint of all three and refuses on a mismatch.

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};

/// The capabilities whose presence (and value) the guest's state depends on.
const CAPS: [Cap; 10] = [
    Cap::Irqchip,
    Cap::Pit2,
    Cap::Xsave,
    Cap::Xcrs,
    Cap::Debugregs,
    Cap::VcpuEvents,
    Cap::TscDeadlineTimer,
    Cap::TscControl,
    Cap::AdjustClock,
    Cap::X2ApicApi,
];

/// KVM refused a query the fingerprint needs.
#[derive(Debug, thiserror::Error)]
#[error("reading this host's KVM identity: {call} failed: {source}")]
pub struct Error {
    call: &'static str,
    source: kvm_ioctls::Error,
}

/// CRC-32 over the KVM API version, KVM_GET_SUPPORTED_CPUID, KVM_GET_MSR_INDEX_LIST and
/// the values of [`CAPS`]: equal on hosts a snapshot can move between, different otherwise.
pub fn fingerprint(kvm: &Kvm) -> Result<u32, Error> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&kvm.get_api_version().to_le_bytes());
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| Error {
            call: "KVM_GET_SUPPORTED_CPUID",
            source,
        })?;
    for e in cpuid.as_slice() {
        for word in stable_words(e) {
            hasher.update(&word.to_le_bytes());
        }
    }
    for index in msr_indices(kvm)? {
        hasher.update(&index.to_le_bytes());
    }
    for cap in CAPS {
        hasher.update(&kvm.check_extension_int(cap).to_le_bytes());
    }
    Ok(hasher.finalize())
}

/// A supported-CPUID entry without the fields KVM fills from the host CPU the calling
/// thread happens to run on (its APIC ids and topology position): those differ between
/// two calls on one host, and a restored guest gets its saved CPUID anyway.
fn stable_words(e: &kvm_bindings::kvm_cpuid_entry2) -> [u32; 7] {
    let (mut eax, mut ebx, mut ecx, mut edx) = (e.eax, e.ebx, e.ecx, e.edx);
    match e.function {
        // EBX[31:24]: initial APIC id.
        0x1 => ebx &= 0x00ff_ffff,
        // EDX: x2APIC id.
        0xb | 0x1f => edx = 0,
        // AMD: extended APIC id, core and node ids.
        0x8000_001e => (eax, ebx, ecx) = (0, 0, 0),
        _ => {}
    }
    [e.function, e.index, e.flags, eax, ebx, ecx, edx]
}

/// The memory-type range registers KVM emulates for a guest but leaves out of
/// KVM_GET_MSR_INDEX_LIST: MTRRdefType (a cold boot sets it to write-back, enabled), the
/// eight variable-range base/mask pairs and the eleven fixed-range registers. Without them
/// a restored vCPU would read MTRRs off (every range uncached). MTRRcap is read-only, so
/// not written back.
const MTRR_MSRS: [u32; 28] = [
    0x2ff, // MTRRdefType
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, // variable ranges 0-3
    0x208, 0x209, 0x20a, 0x20b, 0x20c, 0x20d, 0x20e, 0x20f, // variable ranges 4-7
    0x250, 0x258, 0x259, // fixed: 64K_00000, 16K_80000, 16K_A0000
    0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f, // fixed: 4K_C0000-4K_F8000
];

/// The MSRs a snapshot saves and restores: those KVM lists (KVM_GET_MSR_INDEX_LIST) and
/// the MTRRs. A vCPU that cannot read one of them (its CPUID lacks the feature) leaves it
/// out of its saved state.
pub fn msr_indices(kvm: &Kvm) -> Result<Vec<u32>, Error> {
    let mut indices = kvm
        .get_msr_index_list()
        .map(|list| list.as_slice().to_vec())
        .map_err(|source| Error {
            call: "KVM_GET_MSR_INDEX_LIST",
            source,
        })?;
    for msr in MTRR_MSRS {
        if !indices.contains(&msr) {
            indices.push(msr);
        }
    }
    Ok(indices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_the_same_on_every_cpu_of_the_host() {
        if !std::path::Path::new("/dev/kvm").exists() {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: /dev/kvm not available");
            return;
        }
        let kvm = Kvm::new().expect("/dev/kvm opens");
        let first = fingerprint(&kvm).expect("fingerprint");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for cpu in 0..cpus {
            // SAFETY: the cpu_set_t is zeroed and then filled by the libc macros; pinning
            // only affects this test thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            assert_eq!(
                fingerprint(&kvm).expect("fingerprint"),
                first,
                "on CPU {cpu}"
            );
        }
    }
}
