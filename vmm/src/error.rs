//! Errors that keep a VM from starting, and the exit code each maps to.

use crate::arch::x86_64::{boot_params, mptable};
use crate::{cli, control, kernel, vstate};

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
    /// Anything else the VMM needs from the host (threads, eventfds, signals).
    #[error("{0}")]
    Host(String),
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
            _ => 1,
        }
    }
}
