//! Reading a crashed vCPU's state for the `exit` event ([`vmm_protocol::VcpuDump`]): its
//! general registers, control and segment registers, descriptor tables and the exception,
//! interrupt and NMI KVM holds for it. Called on the vCPU's own thread right after the exit
//! that ended the guest (the ioctls are in the `vcpu` seccomp filter).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::VcpuFd;
use vmm_protocol::{
    DescriptorTable, ExceptionState, Hex, InterruptState, NmiState, Segment, VcpuDump,
};

/// Reads vCPU `index`'s state; the error names the ioctl KVM refused.
pub fn read(vcpu: &VcpuFd, index: u8) -> Result<VcpuDump, String> {
    let regs = vcpu
        .get_regs()
        .map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
    let events = vcpu
        .get_vcpu_events()
        .map_err(|e| format!("KVM_GET_VCPU_EVENTS failed: {e}"))?;
    Ok(dump(index, &regs, &sregs, &events))
}

/// The dump of these KVM structures.
fn dump(index: u8, regs: &kvm_regs, sregs: &kvm_sregs, events: &kvm_vcpu_events) -> VcpuDump {
    let cs = segment(&sregs.cs);
    let exception = &events.exception;
    let interrupt = &events.interrupt;
    let nmi = &events.nmi;
    VcpuDump {
        cr0: Hex(sregs.cr0),
        cr2: Hex(sregs.cr2),
        cr3: Hex(sregs.cr3),
        cr4: Hex(sregs.cr4),
        cs,
        efer: Hex(sregs.efer),
        // Without KVM_CAP_EXCEPTION_PAYLOAD KVM reports a pending exception as injected.
        exception: (exception.injected != 0 || exception.pending != 0).then(|| ExceptionState {
            error_code: (exception.has_error_code != 0).then_some(exception.error_code),
            injected: exception.injected != 0,
            pending: exception.pending != 0,
            vector: exception.nr,
        }),
        gdt: DescriptorTable {
            base: Hex(sregs.gdt.base),
            limit: sregs.gdt.limit,
        },
        idt: DescriptorTable {
            base: Hex(sregs.idt.base),
            limit: sregs.idt.limit,
        },
        interrupt: (interrupt.injected != 0).then_some(InterruptState {
            soft: interrupt.soft != 0,
            vector: interrupt.nr,
        }),
        nmi: NmiState {
            injected: nmi.injected != 0,
            masked: nmi.masked != 0,
            pending: nmi.pending != 0,
        },
        reset_state: VcpuDump::is_reset_state(regs.rip, &cs, sregs.cr0),
        rflags: Hex(regs.rflags),
        rip: Hex(regs.rip),
        rsp: Hex(regs.rsp),
        ss: segment(&sregs.ss),
        vcpu: index,
    }
}

fn segment(s: &kvm_segment) -> Segment {
    Segment {
        base: Hex(s.base),
        dpl: s.dpl,
        selector: s.selector,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_fields_land_in_their_dump_fields() {
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_2ab6,
            rsp: 0xffff_c900_0000_3f58,
            rflags: 0x10046,
            ..Default::default()
        };
        let mut sregs = kvm_sregs {
            cr0: 0x8005_0033,
            cr2: 0xdead_b000,
            cr3: 0x200_0000,
            cr4: 0x6f0,
            efer: 0xd01,
            ..Default::default()
        };
        sregs.cs.selector = 0x10;
        sregs.cs.dpl = 0;
        sregs.ss.selector = 0x2b;
        sregs.ss.dpl = 3;
        sregs.ss.base = 0x1000;
        sregs.idt.base = 0xffff_fe00_0000_0000;
        sregs.idt.limit = 0xfff;
        sregs.gdt.limit = 0x7f;
        let mut events = kvm_vcpu_events::default();
        events.exception.injected = 1;
        events.exception.nr = 14;
        events.exception.has_error_code = 1;
        events.exception.error_code = 2;
        events.interrupt.injected = 1;
        events.interrupt.nr = 0xec;
        events.nmi.masked = 1;

        let d = dump(1, &regs, &sregs, &events);
        assert_eq!(d.vcpu, 1);
        assert_eq!(d.rip, Hex(0xffff_ffff_8100_2ab6));
        assert_eq!(d.rsp, Hex(0xffff_c900_0000_3f58));
        assert_eq!(d.rflags, Hex(0x10046));
        assert_eq!(
            (d.cr0, d.cr2, d.cr3, d.cr4),
            (
                Hex(0x8005_0033),
                Hex(0xdead_b000),
                Hex(0x200_0000),
                Hex(0x6f0)
            )
        );
        assert_eq!(d.efer, Hex(0xd01));
        assert_eq!(
            (d.cs.selector, d.ss.selector, d.ss.dpl, d.ss.base),
            (0x10, 0x2b, 3, Hex(0x1000))
        );
        assert_eq!(
            (d.idt.base, d.idt.limit, d.gdt.limit),
            (Hex(0xffff_fe00_0000_0000), 0xfff, 0x7f)
        );
        let e = d.exception.expect("an injected exception");
        assert_eq!(
            (e.vector, e.error_code, e.injected, e.pending),
            (14, Some(2), true, false)
        );
        let i = d.interrupt.expect("an injected interrupt");
        assert_eq!((i.vector, i.soft), (0xec, false));
        assert!(d.nmi.masked && !d.nmi.pending && !d.nmi.injected);
        assert!(!d.reset_state);
    }

    #[test]
    fn nothing_held_means_no_exception_and_no_interrupt() {
        let mut events = kvm_vcpu_events::default();
        // A vector number alone, without injected/pending, is stale.
        events.exception.nr = 8;
        events.interrupt.nr = 0x30;
        let d = dump(0, &kvm_regs::default(), &kvm_sregs::default(), &events);
        assert_eq!(d.exception, None);
        assert_eq!(d.interrupt, None);
    }
}
