//! Local APIC wiring: LINT0 receives the PIC's ExtINT, LINT1 receives NMIs, as on a PC.

use kvm_bindings::kvm_lapic_state;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_MODE_NMI: u32 = 0x4;
const DELIVERY_MODE_EXTINT: u32 = 0x7;

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &state.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Rewrites LVT LINT0 as ExtINT and LINT1 as NMI in a `KVM_GET_LAPIC` snapshot.
pub fn wire_lint_pins(state: &mut kvm_lapic_state) {
    let lint0 = read_reg(state, APIC_LVT0);
    write_reg(
        state,
        APIC_LVT0,
        with_delivery_mode(lint0, DELIVERY_MODE_EXTINT),
    );
    let lint1 = read_reg(state, APIC_LVT1);
    write_reg(
        state,
        APIC_LVT1,
        with_delivery_mode(lint1, DELIVERY_MODE_NMI),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_delivery_modes_and_keeps_other_bits() {
        let mut state = kvm_lapic_state::default();
        write_reg(&mut state, APIC_LVT0, 0x0001_0000);
        write_reg(&mut state, APIC_LVT1, 0x0001_0700);
        wire_lint_pins(&mut state);
        assert_eq!(read_reg(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_reg(&state, APIC_LVT1), 0x0001_0400);
    }
}
