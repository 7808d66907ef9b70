//! x86_64 guest setup: memory layout, boot structures and initial vCPU state.

pub mod boot_params;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
