//! coinop's privileged host mechanics: everything coinopd does to the kernel as root so that
//! a hostile guest, or a hostile tenant, can only hurt itself. It is kept apart from the
//! daemon (no async runtime, HTTP or database in here) so that the unsafe, syscall-heavy code
//! can be audited in one place.
//!
//! | module | job | main types |
//! |---|---|---|
//! | [`jail`] | namespaces, a read-only per-lease root, an unprivileged uid, rlimits, passed fds only; a child parked before exec | [`jail::JailConfig`], [`jail::Jail`], [`jail::ParkedJail`], [`jail::JailedChild`], [`jail::UidPool`] |
//! | [`cgroup`] | one cgroup per lease: CPU quota, memory, tasks; the kernel's count of CPU time | [`cgroup::Cgroups`], [`cgroup::CgroupSlot`], [`cgroup::Limits`] |
//! | [`guest_network`] | per-lease tap, routed /30, nftables rules (DNAT for SSH, masquerade, anti-spoofing) | [`guest_network::GuestNetwork`], [`guest_network::NetInfo`] |
//! | [`slot_pool`] | lease slots (cgroup + jail + parked child) built ahead of the request | [`slot_pool::SlotPool`], [`slot_pool::ReadySlot`] |
//! | [`pid_lock`] | "one coinopd at a time" for a state dir or a network namespace's guest networks: a `flock` on a file naming its holder | [`pid_lock::PidLock`], [`guest_network::netns_claim::NetnsClaim`] |
//! | [`claim_dir`] | `/run/coinop`, where those claims (and each jail uid's) live, writable by root alone | [`claim_dir::CLAIM_DIR`] |
//! | [`kvm_tuning`] | the host's KVM settings that slow every guest's start, read for advice | [`kvm_tuning::Advice`] |
//!
//! The daemon (`coinopd`) decides *when*; this crate only knows *how*.

pub mod cgroup;
pub mod claim_dir;
pub mod guest_network;
pub mod jail;
pub mod kvm_tuning;
pub mod pid_lock;
pub mod slot_pool;
