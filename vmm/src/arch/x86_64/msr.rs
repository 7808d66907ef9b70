//! The MSR values a vCPU boots with: syscall MSRs cleared, the TSC at 0, fast strings on and
//! write-back as the default memory type.

use kvm_bindings::{kvm_msr_entry, Msrs};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// Errors while building the boot MSR list.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The list does not fit KVM's MSR array.
    #[error("boot MSR list of {0} entries does not fit kvm_msrs")]
    TooMany(usize),
}

/// (index, value) pairs every vCPU starts with.
pub fn boot_entries() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// The boot MSRs in the form `KVM_SET_MSRS` takes.
pub fn boot_msrs() -> Result<Msrs, Error> {
    let entries: Vec<kvm_msr_entry> = boot_entries()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| Error::TooMany(entries.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_set_enables_wb_mtrr_and_fast_strings() {
        let msrs = boot_msrs().expect("eleven entries fit");
        let find = |i: u32| {
            msrs.as_slice()
                .iter()
                .find(|e| e.index == i)
                .map(|e| e.data)
        };
        assert_eq!(find(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(find(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(find(MSR_LSTAR), Some(0));
        assert_eq!(msrs.as_slice().len(), boot_entries().len());
    }
}
