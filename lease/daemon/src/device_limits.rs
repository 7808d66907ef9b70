//! The disk and network rates every lease's VMM is held to (the VMM's own token buckets:
//! `--disk ...,bw=,iops=` and `--net ...,bw=`), so one guest cannot saturate the host's
//! disk (writes, or FLUSHes, each an fdatasync) or its uplink for every other lease.
//!
//! The settings are per vCPU and a lease gets its vCPUs' worth: the vCPU is what the host
//! sells, so a lease's share of the disk and the uplink follows what its tenant pays for,
//! and the host's total is bounded by what it sells (`--capacity-vcpus` × `--overcommit`
//! × the rate), which the operator can size against the hardware. A rate of 0 is an
//! explicit "unlimited", warned about at start-up. Each bucket holds one second of its
//! rate and starts full, so a boot that reads less than that is not slowed at all.

/// Disk bytes per second per vCPU by default: 64 MiB/s, several times what a small
/// guest's boot reads in its first second (images/rootfs is a 64 MiB ext4 of which a boot
/// reads a few MiB; a distribution image's boot reads tens of MiB over seconds), about a
/// cloud general-purpose volume's baseline for a small instance, and a fraction of an SSD.
pub const DEFAULT_DISK_BYTES_PER_S_PER_VCPU: u64 = 64 << 20;

/// Disk requests per second per vCPU by default (reads, writes and flushes alike): 1000,
/// room for a boot's reads (hundreds of requests of up to 512 KiB with readahead) and an
/// honest database's syncs, while one guest's fdatasync storm stays a bounded share of a
/// device that does tens of thousands.
pub const DEFAULT_DISK_IOPS_PER_VCPU: u64 = 1000;

/// Network bytes per second per vCPU, each way, by default: 12.5 MB/s (100 Mbit/s),
/// plenty for SSH and package downloads, while a few guests cannot fill a 1 Gbit/s uplink.
pub const DEFAULT_NET_BYTES_PER_S_PER_VCPU: u64 = 12_500_000;

/// The rates per vCPU (0: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRates {
    /// Disk bytes per second per vCPU.
    pub disk_bytes_per_s: u64,
    /// Disk requests per second per vCPU.
    pub disk_iops: u64,
    /// Network bytes per second per vCPU, each way.
    pub net_bytes_per_s: u64,
}

impl Default for DeviceRates {
    fn default() -> Self {
        DeviceRates {
            disk_bytes_per_s: DEFAULT_DISK_BYTES_PER_S_PER_VCPU,
            disk_iops: DEFAULT_DISK_IOPS_PER_VCPU,
            net_bytes_per_s: DEFAULT_NET_BYTES_PER_S_PER_VCPU,
        }
    }
}

/// One lease's rates (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRates {
    pub disk_bytes_per_s: Option<u64>,
    pub disk_iops: Option<u64>,
    pub net_bytes_per_s: Option<u64>,
}

impl DeviceRates {
    /// The rates of a lease with `vcpus` vCPUs (at least one vCPU's worth).
    pub fn for_lease(&self, vcpus: u32) -> LeaseRates {
        let vcpus = u64::from(vcpus.max(1));
        // 0 stays 0 (unlimited); a product past u64 saturates, which is unlimited in effect.
        let scaled = |per_vcpu: u64| (per_vcpu > 0).then(|| per_vcpu.saturating_mul(vcpus));
        LeaseRates {
            disk_bytes_per_s: scaled(self.disk_bytes_per_s),
            disk_iops: scaled(self.disk_iops),
            net_bytes_per_s: scaled(self.net_bytes_per_s),
        }
    }

    /// The settings left unlimited, as their flags, for the start-up warning.
    pub fn unlimited_flags(&self) -> Vec<&'static str> {
        [
            ("--disk-bytes-per-s-per-vcpu", self.disk_bytes_per_s),
            ("--disk-iops-per-vcpu", self.disk_iops),
            ("--net-bytes-per-s-per-vcpu", self.net_bytes_per_s),
        ]
        .into_iter()
        .filter(|(_, rate)| *rate == 0)
        .map(|(flag, _)| flag)
        .collect()
    }
}

impl LeaseRates {
    /// What follows a `--disk` value's path and overlay: `,bw=N,iops=N` for the limits set.
    pub fn disk_options(&self) -> String {
        let mut s = String::new();
        if let Some(bw) = self.disk_bytes_per_s {
            s.push_str(&format!(",bw={bw}"));
        }
        if let Some(iops) = self.disk_iops {
            s.push_str(&format!(",iops={iops}"));
        }
        s
    }

    /// What follows a `--net` value's tap and MAC: `,bw=N` when limited.
    pub fn net_options(&self) -> String {
        self.net_bytes_per_s
            .map(|bw| format!(",bw={bw}"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_scale_with_vcpus_and_zero_is_unlimited() {
        let rates = DeviceRates {
            disk_bytes_per_s: 1000,
            disk_iops: 0,
            net_bytes_per_s: 7,
        };
        let two = rates.for_lease(2);
        assert_eq!(two.disk_bytes_per_s, Some(2000));
        assert_eq!(two.disk_iops, None);
        assert_eq!(two.disk_options(), ",bw=2000");
        assert_eq!(two.net_options(), ",bw=14");
        assert_eq!(rates.for_lease(0), rates.for_lease(1), "at least one vCPU");
        assert_eq!(rates.unlimited_flags(), ["--disk-iops-per-vcpu"]);
        let huge = DeviceRates {
            disk_bytes_per_s: u64::MAX,
            ..rates
        };
        assert_eq!(huge.for_lease(32).disk_bytes_per_s, Some(u64::MAX));
    }

    #[test]
    fn defaults_are_finite() {
        let one = DeviceRates::default().for_lease(1);
        assert_eq!(one.disk_options(), format!(",bw={},iops=1000", 64 << 20));
        assert_eq!(one.net_options(), ",bw=12500000");
        assert!(DeviceRates::default().unlimited_flags().is_empty());
    }
}
