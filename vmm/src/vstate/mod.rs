//! The KVM objects of one guest: its memory, the VM, the vCPUs and their run state.

pub mod cpu_time;
pub mod memory;
pub mod run_state;
pub mod vcpu;
pub mod vm;
