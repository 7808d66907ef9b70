//! How a VM ends: the reasons and process exit codes of the contract.

use vmm_protocol::ExitReason;

/// Why the VMM is ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked the i8042 for a CPU reset.
    GuestReset,
    /// The guest powered off (KVM system event).
    GuestPoweroff,
    /// A control client sent `stop`.
    Stopped,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault(String),
    /// KVM could not emulate an instruction.
    EmulationFailure(String),
    /// VM entry failed.
    FailEntry(String),
    /// KVM reported an internal error, a guest crash event, or an exit the VMM does not
    /// handle: the guest cannot continue.
    GuestError(String),
    /// A bug or host failure in the VMM itself.
    Vmm(String),
}

impl VmExit {
    /// The `reason` field of the `exit` event.
    pub fn reason(&self) -> ExitReason {
        match self {
            VmExit::GuestReset => ExitReason::GuestReset,
            VmExit::GuestPoweroff => ExitReason::GuestPoweroff,
            VmExit::Stopped => ExitReason::Stopped,
            VmExit::TripleFault(_) => ExitReason::TripleFault,
            VmExit::EmulationFailure(_) => ExitReason::EmulationFailure,
            VmExit::FailEntry(_) => ExitReason::FailEntry,
            VmExit::GuestError(_) | VmExit::Vmm(_) => ExitReason::InternalError,
        }
    }

    /// The process exit code.
    pub fn code(&self) -> i32 {
        match self {
            VmExit::GuestReset | VmExit::GuestPoweroff | VmExit::Stopped => 0,
            VmExit::Vmm(_) => 1,
            VmExit::TripleFault(_)
            | VmExit::EmulationFailure(_)
            | VmExit::FailEntry(_)
            | VmExit::GuestError(_) => 3,
        }
    }

    /// A human explanation, for failures.
    pub fn detail(&self) -> Option<&str> {
        match self {
            VmExit::GuestReset | VmExit::GuestPoweroff | VmExit::Stopped => None,
            VmExit::TripleFault(d)
            | VmExit::EmulationFailure(d)
            | VmExit::FailEntry(d)
            | VmExit::GuestError(d)
            | VmExit::Vmm(d) => Some(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_contract() {
        assert_eq!(VmExit::GuestReset.code(), 0);
        assert_eq!(VmExit::Stopped.reason(), ExitReason::Stopped);
        assert_eq!(VmExit::TripleFault("vCPU 0".into()).code(), 3);
        assert_eq!(VmExit::Vmm("bug".into()).code(), 1);
        assert_eq!(
            VmExit::EmulationFailure("x".into()).reason(),
            ExitReason::EmulationFailure
        );
        assert_eq!(VmExit::GuestPoweroff.detail(), None);
    }
}
