//! The KVM objects of one guest: its memory, the VM, the vCPUs and their run state, and
//! their state as a snapshot saves it ([`persist`]).

pub mod cpu_time;
pub mod memory;
pub mod persist;
pub mod run_state;
pub mod vcpu;
pub mod vm;
