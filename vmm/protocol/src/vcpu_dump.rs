//! [`VcpuDump`]: what a vCPU held when the guest crashed, carried by the `exit` event as
//! `vcpu_state` so that a crash seen once in a log can be located afterwards (the guest
//! RIP against the kernel's System.map, the paging and exception state that led there).
//!
//! Register values are JSON strings in hex (`"0xffffffff81002ab6"`), not numbers: kernel
//! addresses exceed the 2^53 that JSON readers in JavaScript (and `jq`) hold exactly, and
//! hex is how registers are read. Fields are declared in alphabetical order, as the event
//! fields are (see [`crate::Event`]).
//!
//! On AMD hosts KVM re-initialises a vCPU after a shutdown intercept (the VMCB is
//! undefined after one; KVM then loads the INIT state), so a triple fault the CPU detected
//! itself leaves only that INIT state to read: [`VcpuDump::reset_state`] says so, and the
//! guest's registers at the fault are lost. A triple fault KVM synthesised (an exception it
//! queued while a #DF was pending), and every crash on Intel hosts, keep the guest's state.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A register value, written as a `0x`-prefixed hex string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hex(pub u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} lacks the 0x prefix")))?;
        u64::from_str_radix(digits, 16)
            .map(Hex)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// A segment register: what its selector loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The segment base.
    pub base: Hex,
    /// Its descriptor privilege level (for CS, the CPL).
    pub dpl: u8,
    /// The selector.
    pub selector: u16,
}

/// A descriptor table register (GDTR, IDTR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTable {
    /// The table's linear address.
    pub base: Hex,
    /// Its limit (size in bytes - 1; 0 with a base of 0 is an empty table).
    pub limit: u16,
}

/// An exception KVM holds for the vCPU (KVM_GET_VCPU_EVENTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionState {
    /// Its error code, for the exceptions that push one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Being delivered: the CPU was vectoring it when the exit happened.
    pub injected: bool,
    /// Queued by KVM, not yet delivered.
    pub pending: bool,
    /// Its vector (6 #UD, 8 #DF, 13 #GP, 14 #PF, ...).
    pub vector: u8,
}

/// An external interrupt being delivered (KVM_GET_VCPU_EVENTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptState {
    /// A software interrupt (`int n`) rather than an external one.
    pub soft: bool,
    /// Its vector.
    pub vector: u8,
}

/// The vCPU's NMI state (KVM_GET_VCPU_EVENTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NmiState {
    /// Being delivered.
    pub injected: bool,
    /// NMIs are blocked (one is being handled).
    pub masked: bool,
    /// Waiting to be delivered.
    pub pending: bool,
}

/// One vCPU's state as KVM reported it right after the exit that ended the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuDump {
    /// CR0 (bit 0 PE protected mode, bit 31 PG paging).
    pub cr0: Hex,
    /// CR2: the linear address of the last page fault.
    pub cr2: Hex,
    /// CR3: the page-table root.
    pub cr3: Hex,
    /// CR4.
    pub cr4: Hex,
    /// The code segment.
    pub cs: Segment,
    /// EFER (bit 8 LME, bit 10 LMA: long mode active).
    pub efer: Hex,
    /// An exception KVM holds for the vCPU, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionState>,
    /// GDTR.
    pub gdt: DescriptorTable,
    /// IDTR.
    pub idt: DescriptorTable,
    /// An interrupt being delivered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt: Option<InterruptState>,
    /// NMI state.
    pub nmi: NmiState,
    /// The vCPU holds the architectural INIT state (real mode at 0xf000:0xfff0, CR0 without
    /// PE): KVM reset it, as it does on AMD after a shutdown, and the guest's registers at
    /// the crash are lost. See the module docs.
    pub reset_state: bool,
    /// RFLAGS.
    pub rflags: Hex,
    /// The guest RIP.
    pub rip: Hex,
    /// The guest RSP.
    pub rsp: Hex,
    /// The stack segment.
    pub ss: Segment,
    /// Which vCPU (its index, 0 the BSP).
    pub vcpu: u8,
}

impl VcpuDump {
    /// Whether a vCPU with these registers is in the INIT state KVM loads after a reset:
    /// CS 0xf000 based at 0xffff0000, RIP 0xfff0, CR0 without PE.
    pub fn is_reset_state(rip: u64, cs: &Segment, cr0: u64) -> bool {
        rip == 0xfff0 && cs.selector == 0xf000 && cs.base.0 == 0xffff_0000 && cr0 & 1 == 0
    }
}

/// One line for a human (the VMM's stderr): every field, registers in hex.
impl fmt::Display for VcpuDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segment = |s: &Segment| format!("{:#x} base {} dpl {}", s.selector, s.base, s.dpl);
        write!(
            f,
            "vCPU {} state{}: rip {} rsp {} rflags {} cr0 {} cr2 {} cr3 {} cr4 {} efer {} \
             cs {} ss {} gdt {}/{:#x} idt {}/{:#x}",
            self.vcpu,
            if self.reset_state {
                " (KVM's INIT state after a reset: the guest's registers are lost)"
            } else {
                ""
            },
            self.rip,
            self.rsp,
            self.rflags,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer,
            segment(&self.cs),
            segment(&self.ss),
            self.gdt.base,
            self.gdt.limit,
            self.idt.base,
            self.idt.limit,
        )?;
        match &self.exception {
            Some(e) => {
                let how = match (e.injected, e.pending) {
                    (true, true) => "injected+pending",
                    (true, false) => "injected",
                    (false, true) => "pending",
                    (false, false) => "held",
                };
                write!(f, "; exception {} {how}", e.vector)?;
                if let Some(code) = e.error_code {
                    write!(f, " error code {code:#x}")?;
                }
            }
            None => write!(f, "; no exception")?,
        }
        if let Some(i) = &self.interrupt {
            let kind = if i.soft { "soft " } else { "" };
            write!(f, "; {kind}interrupt {} injected", i.vector)?;
        }
        write!(
            f,
            "; nmi injected {} pending {} masked {}",
            self.nmi.injected, self.nmi.pending, self.nmi.masked
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> VcpuDump {
        VcpuDump {
            cr0: Hex(0x8005_0033),
            cr2: Hex(0xffff_8880_0000_1000),
            cr3: Hex(0x0200_0000),
            cr4: Hex(0x0035_06f0),
            cs: Segment {
                base: Hex(0),
                dpl: 0,
                selector: 0x10,
            },
            efer: Hex(0xd01),
            exception: Some(ExceptionState {
                error_code: Some(0),
                injected: true,
                pending: false,
                vector: 13,
            }),
            gdt: DescriptorTable {
                base: Hex(0xffff_fe00_0000_1000),
                limit: 0x7f,
            },
            idt: DescriptorTable {
                base: Hex(0),
                limit: 0,
            },
            interrupt: None,
            nmi: NmiState {
                injected: false,
                masked: false,
                pending: false,
            },
            reset_state: false,
            rflags: Hex(0x10046),
            rip: Hex(0xffff_ffff_8100_2ab6),
            rsp: Hex(0xffff_c900_0000_3f58),
            ss: Segment {
                base: Hex(0),
                dpl: 0,
                selector: 0x18,
            },
            vcpu: 0,
        }
    }

    #[test]
    fn registers_are_hex_strings_and_read_back() {
        let json = serde_json::to_string(&dump()).expect("serializes");
        assert!(json.starts_with(r#"{"cr0":"0x80050033","cr2":"0xffff888000001000","#));
        assert!(json.contains(r#""rip":"0xffffffff81002ab6""#), "{json}");
        assert!(
            json.contains(
                r#""exception":{"error_code":0,"injected":true,"pending":false,"vector":13}"#
            ),
            "{json}"
        );
        assert!(
            !json.contains("interrupt"),
            "no interrupt, no field: {json}"
        );
        let back: VcpuDump = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, dump());
    }

    #[test]
    fn a_register_without_its_prefix_or_out_of_range_is_refused() {
        let json = serde_json::to_string(&dump()).expect("serializes");
        for bad in [
            r#""rip":"ffffffff81002ab6""#,
            r#""rip":"0x1ffffffff81002ab6""#,
        ] {
            let broken = json.replace(r#""rip":"0xffffffff81002ab6""#, bad);
            assert!(serde_json::from_str::<VcpuDump>(&broken).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_human_line_names_every_register_and_the_exception() {
        let line = dump().to_string();
        for part in [
            "vCPU 0 state: rip 0xffffffff81002ab6",
            "cr0 0x80050033",
            "cr2 0xffff888000001000",
            "efer 0xd01",
            "cs 0x10 base 0x0 dpl 0",
            "idt 0x0/0x0",
            "exception 13 injected error code 0x0",
            "nmi injected false",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
    }

    #[test]
    fn only_the_init_state_counts_as_a_reset() {
        let init_cs = Segment {
            base: Hex(0xffff_0000),
            dpl: 0,
            selector: 0xf000,
        };
        assert!(VcpuDump::is_reset_state(0xfff0, &init_cs, 0x6000_0010));
        assert!(!VcpuDump::is_reset_state(0xfff0, &init_cs, 0x6000_0011));
        assert!(!VcpuDump::is_reset_state(
            0xffff_ffff_8100_2ab6,
            &dump().cs,
            0x8005_0033
        ));
    }
}
