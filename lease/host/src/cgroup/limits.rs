//! What a lease's cgroup allows, computed from what the tenant paid for.

/// CFS period (µs); the quota is a whole number of periods per vCPU.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Memory the VMM needs beyond guest RAM: its binary, heap, thread stacks and the kernel's
/// KVM structures charged to the cgroup (vCPU state, page tables), with headroom.
pub const VMM_OVERHEAD_MIB: u64 = 32;

/// Extra memory per vCPU (KVM's per-vCPU kernel state and the thread's stack).
pub const PER_VCPU_OVERHEAD_MIB: u64 = 2;

/// Tasks beyond one per vCPU: the main, control, stdin and device threads, with headroom.
pub const EXTRA_TASKS: u64 = 16;

/// A lease's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CFS period, µs.
    pub cpu_period_us: u64,
    /// CPU time per period, µs: vCPUs × period, so the tenant gets what it paid for.
    pub cpu_quota_us: u64,
    /// Memory limit, bytes: guest RAM plus VMM overhead.
    pub memory_bytes: u64,
    /// Most tasks (threads) in the cgroup.
    pub pids_max: u64,
}

impl Limits {
    /// The caps for a guest with `vcpus` vCPUs and `mem_mib` MiB of RAM.
    pub fn for_guest(vcpus: u32, mem_mib: u64) -> Self {
        let vcpus = u64::from(vcpus.max(1));
        let mib = mem_mib
            .saturating_add(VMM_OVERHEAD_MIB)
            .saturating_add(PER_VCPU_OVERHEAD_MIB.saturating_mul(vcpus));
        Limits {
            cpu_period_us: CPU_PERIOD_US,
            cpu_quota_us: CPU_PERIOD_US.saturating_mul(vcpus),
            memory_bytes: mib.saturating_mul(1 << 20),
            pids_max: vcpus + EXTRA_TASKS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_one_period_per_vcpu() {
        let one = Limits::for_guest(1, 128);
        assert_eq!(one.cpu_quota_us, one.cpu_period_us);
        let four = Limits::for_guest(4, 128);
        assert_eq!(four.cpu_quota_us, 4 * CPU_PERIOD_US);
        assert_eq!(four.pids_max, 4 + EXTRA_TASKS);
    }

    #[test]
    fn memory_is_guest_plus_overhead() {
        let l = Limits::for_guest(2, 256);
        assert_eq!(
            l.memory_bytes,
            (256 + VMM_OVERHEAD_MIB + 2 * PER_VCPU_OVERHEAD_MIB) << 20
        );
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_overflowing() {
        let l = Limits::for_guest(u32::MAX, u64::MAX);
        assert_eq!(l.memory_bytes, u64::MAX);
        assert!(l.cpu_quota_us >= CPU_PERIOD_US);
    }
}
