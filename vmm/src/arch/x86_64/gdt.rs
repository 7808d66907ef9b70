//! The boot GDT: encoding descriptors and turning them into the segment registers KVM wants.

use kvm_bindings::kvm_segment;

/// 64-bit code: present, ring 0, execute/read, L=1, G=1.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// 32-bit code for the PVH entry: present, ring 0, execute/read, D=1, G=1.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flat data: present, ring 0, read/write, B=1, G=1.
pub const DATA_FLAGS: u16 = 0xc093;
/// Busy 32/64-bit TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// Encodes a segment descriptor. `flags` holds the access byte in bits 0..8 and the
/// G/D/L/AVL nibble in bits 12..16, as in the hardware layout.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | (((flags as u64) & 0xf0ff) << 40)
}

/// The four-entry boot GDT (null, code, data, TSS); `code_flags` picks 64- or 32-bit code.
pub fn table(code_flags: u16) -> [u64; 4] {
    [
        0,
        entry(code_flags, 0, 0xfffff),
        entry(DATA_FLAGS, 0, 0xfffff),
        entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Decodes descriptor `index` of a GDT into the segment-register form KVM loads.
pub fn segment(table: &[u64], index: usize) -> kvm_segment {
    let e = table[index];
    let raw_limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let g = ((e >> 55) & 1) as u8;
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_canonical_flat_descriptors() {
        assert_eq!(entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn splits_base_across_both_fields() {
        let e = entry(DATA_FLAGS, 0x1234_5678, 0xabcde);
        let seg = segment(&[0, e], 1);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcd_efff);
        assert_eq!(seg.selector, 8);
    }

    #[test]
    fn decodes_long_mode_code_segment() {
        let gdt = table(CODE64_FLAGS);
        let cs = segment(&gdt, 1);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let tr = segment(&gdt, 3);
        assert_eq!((tr.s, tr.type_, tr.selector), (0, 0xb, 0x18));
        let null = segment(&gdt, 0);
        assert_eq!(null.unusable, 1);
    }
}
