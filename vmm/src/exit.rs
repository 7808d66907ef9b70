//! How a VM ends: the reasons and process exit codes of the contract, and for a guest
//! crash what is known about it ([`Crash`]).

use vmm_protocol::{ExitReason, VcpuDump};

/// A guest crash a vCPU reported: the human explanation and, once the vCPU's thread has
/// read it, that vCPU's state (see [`crate::vstate::crash_dump`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    /// Names the vCPU, the KVM exit and what KVM said about it.
    pub detail: String,
    /// The crashed vCPU's registers; `None` until read, or when KVM refused to report them
    /// (then `detail` says why).
    pub vcpu_state: Option<Box<VcpuDump>>,
}

impl Crash {
    /// A crash known so far only by its explanation.
    pub fn new(detail: impl Into<String>) -> Self {
        Crash {
            detail: detail.into(),
            vcpu_state: None,
        }
    }
}

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
    TripleFault(Crash),
    /// KVM could not emulate an instruction.
    EmulationFailure(Crash),
    /// VM entry failed.
    FailEntry(Crash),
    /// KVM reported an internal error, a guest crash event, or an exit the VMM does not
    /// handle: the guest cannot continue.
    GuestError(Crash),
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

    /// The guest crash, for the exits that are one.
    pub fn crash(&self) -> Option<&Crash> {
        match self {
            VmExit::TripleFault(c)
            | VmExit::EmulationFailure(c)
            | VmExit::FailEntry(c)
            | VmExit::GuestError(c) => Some(c),
            VmExit::GuestReset | VmExit::GuestPoweroff | VmExit::Stopped | VmExit::Vmm(_) => None,
        }
    }

    fn crash_mut(&mut self) -> Option<&mut Crash> {
        match self {
            VmExit::TripleFault(c)
            | VmExit::EmulationFailure(c)
            | VmExit::FailEntry(c)
            | VmExit::GuestError(c) => Some(c),
            VmExit::GuestReset | VmExit::GuestPoweroff | VmExit::Stopped | VmExit::Vmm(_) => None,
        }
    }

    /// For a guest crash: records what `read` says about the crashed vCPU (its state, and
    /// its RIP in the detail; or why it could not be read, appended to the detail). Other exits are left alone and
    /// `read` is not called.
    pub fn with_vcpu_state(mut self, read: impl FnOnce() -> Result<VcpuDump, String>) -> Self {
        if let Some(crash) = self.crash_mut() {
            match read() {
                Ok(dump) => {
                    // The RIP in the human line too, where readers of `detail` look first.
                    crash.detail += &if dump.reset_state {
                        " (its registers are lost: KVM reset the vCPU)".to_string()
                    } else {
                        format!(" at rip {}", dump.rip)
                    };
                    crash.vcpu_state = Some(Box::new(dump));
                }
                Err(why) => crash.detail += &format!(" (vCPU state unreadable: {why})"),
            }
        }
        self
    }

    /// A human explanation, for failures.
    pub fn detail(&self) -> Option<&str> {
        match self {
            VmExit::Vmm(d) => Some(d),
            other => other.crash().map(|c| c.detail.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_protocol::{DescriptorTable, Hex, NmiState, Segment};

    fn some_dump() -> VcpuDump {
        let segment = Segment {
            base: Hex(0),
            dpl: 0,
            selector: 0x10,
        };
        let table = DescriptorTable {
            base: Hex(0),
            limit: 0,
        };
        VcpuDump {
            cr0: Hex(0x8000_0011),
            cr2: Hex(0),
            cr3: Hex(0x1000),
            cr4: Hex(0x20),
            cs: segment,
            efer: Hex(0x500),
            exception: None,
            gdt: table,
            idt: table,
            interrupt: None,
            nmi: NmiState {
                injected: false,
                masked: false,
                pending: false,
            },
            reset_state: false,
            rflags: Hex(2),
            rip: Hex(0x10_0000),
            rsp: Hex(0x8000),
            ss: segment,
            vcpu: 0,
        }
    }

    #[test]
    fn codes_follow_the_contract() {
        assert_eq!(VmExit::GuestReset.code(), 0);
        assert_eq!(VmExit::Stopped.reason(), ExitReason::Stopped);
        assert_eq!(VmExit::TripleFault(Crash::new("vCPU 0")).code(), 3);
        assert_eq!(VmExit::Vmm("bug".into()).code(), 1);
        assert_eq!(
            VmExit::EmulationFailure(Crash::new("x")).reason(),
            ExitReason::EmulationFailure
        );
        assert_eq!(VmExit::GuestPoweroff.detail(), None);
        assert_eq!(VmExit::Vmm("bug".into()).detail(), Some("bug"));
    }

    #[test]
    fn only_crashes_take_the_vcpu_state() {
        let crash = VmExit::TripleFault(Crash::new("vCPU 0")).with_vcpu_state(|| Ok(some_dump()));
        assert_eq!(
            crash.crash().and_then(|c| c.vcpu_state.as_deref()),
            Some(&some_dump())
        );
        assert_eq!(crash.detail(), Some("vCPU 0 at rip 0x100000"));
        let reset = VmExit::TripleFault(Crash::new("vCPU 0")).with_vcpu_state(|| {
            Ok(VcpuDump {
                reset_state: true,
                ..some_dump()
            })
        });
        assert_eq!(
            reset.detail(),
            Some("vCPU 0 (its registers are lost: KVM reset the vCPU)")
        );
        let unreadable =
            VmExit::FailEntry(Crash::new("vCPU 1")).with_vcpu_state(|| Err("EIO".into()));
        assert_eq!(
            unreadable.detail(),
            Some("vCPU 1 (vCPU state unreadable: EIO)")
        );
        let reset = VmExit::GuestReset.with_vcpu_state(|| panic!("not read for a clean end"));
        assert_eq!(reset, VmExit::GuestReset);
    }
}
