//! The KVM objects of one guest: its memory, the VM, the vCPUs and their run state, their
//! state as a snapshot saves it ([`persist`]) and as a guest crash reports it
//! ([`crash_dump`]).

pub mod cpu_time;
pub mod crash_dump;
pub mod memory;
pub mod persist;
pub mod run_state;
pub mod vcpu;
pub mod vm;
