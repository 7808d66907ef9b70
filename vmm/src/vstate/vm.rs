//! The VM file descriptor: memory slots, the in-kernel irqchip and PIT.

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors creating and configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm cannot be opened: a property of the host, reported as unusable input.
    #[error("/dev/kvm is not usable: {0}")]
    KvmUnavailable(kvm_ioctls::Error),
    /// A VM ioctl failed.
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
}

/// Opens /dev/kvm.
pub fn open_kvm() -> Result<Kvm, Error> {
    Kvm::new().map_err(Error::KvmUnavailable)
}

/// Creates the VM and registers guest memory. Memory goes in before the irqchip exists
/// because each slot added after KVM_CREATE_IRQCHIP costs milliseconds on these hosts.
pub fn create(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, Error> {
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Ioctl("KVM_CREATE_VM", e))?;
    for (slot, region) in mem.iter().enumerate() {
        let table = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
        // the caller keeps alive until the process exits (the VM never outlives it).
        unsafe { vm.set_user_memory_region(table) }
            .map_err(|e| Error::Ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(vm)
}

/// Creates the in-kernel PIC/IOAPIC/LAPICs and the PIT.
pub fn setup_irqchip(vm: &VmFd) -> Result<(), Error> {
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(|e| Error::Ioctl("KVM_SET_TSS_ADDR", e))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(|e| Error::Ioctl("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::Ioctl("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Ioctl("KVM_CREATE_PIT2", e))?;
    Ok(())
}
