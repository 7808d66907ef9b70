//! Errors that keep a VM from starting, and the exit code each maps to.

use crate::arch::x86_64::{boot_params, mptable};
use crate::{cli, control, kernel, seccomp, vstate};

/// Why the VMM could not start the guest.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad arguments.
    #[error(transparent)]
    Cli(#[from] cli::Error),
    /// Kernel, initrd or command line unusable.
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    /// Guest memory could not be mapped.
    #[error(transparent)]
    Memory(#[from] vstate::memory::Error),
    /// Boot structures do not fit the guest.
    #[error(transparent)]
    BootParams(#[from] boot_params::Error),
    /// The MP table does not fit the guest.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] control::Error),
    /// The console output file could not be opened.
    #[error("--serial file:{path}: {source}")]
    SerialFile {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// KVM unavailable or a VM ioctl failed.
    #[error(transparent)]
    Vm(#[from] vstate::vm::Error),
    /// A vCPU could not be configured.
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::Error),
    /// A virtio disk or NIC could not be attached.
    #[error(transparent)]
    Virtio(#[from] crate::devices::virtio::attach::Error),
    /// The eventfd that raises COM1's interrupt could not be created.
    #[error("creating the COM1 eventfd: {0}")]
    Com1Eventfd(#[source] std::io::Error),
    /// KVM refused the irqfd that wires COM1's eventfd to its IRQ line.
    #[error("KVM_IRQFD for COM1: {0}")]
    Com1Irqfd(#[source] kvm_ioctls::Error),
    /// The eventfd that raises the personalisation port's (COM2's) interrupt could not be
    /// created.
    #[error("creating the COM2 (personalisation port) eventfd: {0}")]
    Com2Eventfd(#[source] std::io::Error),
    /// KVM refused the irqfd that wires COM2's eventfd to its IRQ line.
    #[error("KVM_IRQFD for COM2 (personalisation port): {0}")]
    Com2Irqfd(#[source] kvm_ioctls::Error),
    /// KVM would not say which CPUID leaves it supports.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// KVM refused to create a vCPU.
    #[error("KVM_CREATE_VCPU {index}: {source}")]
    CreateVcpu {
        /// The vCPU's index (and APIC id).
        index: u8,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// The signal handler that kicks vCPUs out of KVM_RUN could not be installed.
    #[error(transparent)]
    KickHandler(vstate::run_state::Error),
    /// A vCPU thread could not be started.
    #[error("starting vCPU thread {index}: {source}")]
    VcpuThread {
        /// The vCPU's index.
        index: usize,
        /// Why.
        source: std::io::Error,
    },
    /// The main thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(seccomp::Error),
    /// `--restore`: the snapshot is unusable here.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// `--restore`: KVM refused the snapshot's VM state.
    #[error("--restore: {0}")]
    RestoreState(vstate::persist::Error),
    /// `--restore`: the snapshot's COM1 state is unusable.
    #[error("--restore: {0}")]
    ConsoleState(#[from] crate::devices::serial::RestoreError),
    /// `--restore`: the snapshot's personalisation-port state is unusable.
    #[error("--restore: {0}")]
    PersonalisationState(#[from] crate::devices::personalisation::RestoreError),
}

impl StartError {
    /// 2 for unusable input (including a host without usable /dev/kvm), 1 for VMM failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Cli(_)
            | StartError::Kernel(_)
            | StartError::Memory(_)
            | StartError::BootParams(_)
            | StartError::MpTable(_)
            | StartError::Control(control::Error::Bind { .. })
            | StartError::SerialFile { .. }
            | StartError::Vm(vstate::vm::Error::KvmUnavailable(_)) => 2,
            StartError::Virtio(e) if e.is_bad_input() => 2,
            StartError::Snapshot(e) if e.is_bad_input() => 2,
            StartError::ConsoleState(_) | StartError::PersonalisationState(_) => 2,
            _ => 1,
        }
    }
}
