//! The Intel MultiProcessor Specification 1.4 table that tells a guest how many CPUs it has
//! and how interrupts are wired: a floating pointer followed by the configuration table
//! (processors, the ISA bus, the IOAPIC, IO and local interrupt assignments).

use super::layout::{APIC_DEFAULT_BASE, BASE_MEMORY_END, EBDA_START, IOAPIC_DEFAULT_BASE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

const SPEC_REVISION: u8 = 4;
const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// ISA IRQs routed to the IOAPIC pins of the same number.
const ISA_IRQS: u8 = 16;
/// Family 6 signature with the FPU and APIC feature flags, as firmware reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Largest guest the table is built for (the VMM's vCPU limit).
pub const MAX_CPUS: u8 = 32;

/// Errors building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad vCPU count.
    #[error("MP table: vCPU count {0} is outside 1..={MAX_CPUS}")]
    CpuCount(u8),
    /// The table does not fit between the EBDA start and the end of base memory.
    #[error("MP table of {0} bytes does not fit in the EBDA")]
    TooLarge(usize),
    /// Writing into guest memory failed.
    #[error("MP table: writing guest memory: {0}")]
    Write(#[from] GuestMemoryError),
}

/// Builds the floating pointer plus configuration table for `cpus` vCPUs (APIC ids 0..cpus,
/// vCPU 0 the bootstrap processor), to be placed at guest address `base`.
pub fn build(cpus: u8, base: u32) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::CpuCount(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let table_len = HEADER_SIZE + entries.len();
    let total = FLOATING_POINTER_SIZE + table_len;
    if total as u64 > BASE_MEMORY_END - EBDA_START {
        return Err(Error::TooLarge(total));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&floating_pointer(base + FLOATING_POINTER_SIZE as u32));
    let header_at = out.len();
    out.extend_from_slice(b"PCMP");
    out.extend_from_slice(&(table_len as u16).to_le_bytes());
    out.extend_from_slice(&[SPEC_REVISION, 0]);
    out.extend_from_slice(b"COINOP  ");
    out.extend_from_slice(b"MICROVM     ");
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&entries);
    out[header_at + 7] = checksum(&out[header_at..]);
    Ok(out)
}

fn floating_pointer(table_addr: u32) -> [u8; FLOATING_POINTER_SIZE] {
    let mut fp = [0u8; FLOATING_POINTER_SIZE];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&table_addr.to_le_bytes());
    fp[8] = 1;
    fp[9] = SPEC_REVISION;
    fp[10] = checksum(&fp);
    fp
}

/// The byte that makes `bytes` (with the checksum field at 0) sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Writes the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), Error> {
    let table = build(cpus, EBDA_START as u32)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_valid() {
        for cpus in [1, 2, 7, 32] {
            let t = build(cpus, EBDA_START as u32).expect("valid count");
            assert_eq!(sum(&t[..16]), 0, "floating pointer, {cpus} cpus");
            assert_eq!(sum(&t[16..]), 0, "config table, {cpus} cpus");
        }
    }

    #[test]
    fn layout_lists_every_cpu_then_bus_ioapic_and_interrupts() {
        let t = build(3, EBDA_START as u32).expect("valid count");
        assert_eq!(&t[0..4], b"_MP_");
        let pointer = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(pointer, EBDA_START as u32 + 16);
        let h = &t[16..];
        assert_eq!(&h[0..4], b"PCMP");
        assert_eq!(u16::from_le_bytes([h[4], h[5]]) as usize, h.len());
        let count = u16::from_le_bytes([h[34], h[35]]);
        assert_eq!(count, 3 + 1 + 1 + 16 + 2);
        let cpus: Vec<(u8, u8)> = (0..3)
            .map(|i| (h[44 + 20 * i + 1], h[44 + 20 * i + 3]))
            .collect();
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
        let bus = &h[44 + 60..];
        assert_eq!(bus[0], ENTRY_BUS);
        assert_eq!(bus[8], ENTRY_IOAPIC);
        assert_eq!(bus[9], 3, "IOAPIC id follows the CPUs");
    }

    #[test]
    fn rejects_bad_counts_and_fits_the_largest() {
        assert!(matches!(build(0, 0), Err(Error::CpuCount(0))));
        assert!(matches!(build(33, 0), Err(Error::CpuCount(33))));
        assert!(build(MAX_CPUS, 0).expect("fits").len() <= 1024);
    }
}
