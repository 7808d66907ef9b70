//! One cgroup per lease, so no tenant takes more CPU, memory or tasks than it pays for, and
//! a second, kernel-kept count of the CPU time its VMM burned.
//!
//! Both hierarchies are supported and detected at start-up ([`detect`]): cgroup v2
//! (`cpu.max`, `memory.max`, `pids.max`, `cpu.stat`) when its root offers the cpu, memory and
//! pids controllers, else v1 (`cpu.cfs_quota_us`/`cpu.cfs_period_us`,
//! `memory.limit_in_bytes`, `pids.max`, `cpuacct.usage`), which is what hybrid hosts mount.
//! Guest RAM never spills past its limit into the host's swap: v2 sets `memory.swap.max` 0,
//! v1 `memory.memsw.limit_in_bytes` equal to the limit (where swap is accounted) and
//! `memory.swappiness` 0.
//! Lease cgroups live under `<parent>` inside coinopd's own cgroup in each hierarchy (the
//! delegation model: a daemon only manages its own subtree). Where nothing is writable (some
//! containers), [`Cgroups::Unavailable`] carries the reason, the daemon says so loudly at
//! start-up and leases run without caps.

mod detect;
mod limits;
mod slot;

pub use detect::{detect, parse_mountinfo, parse_proc_cgroup, Mounts};
pub use limits::{Limits, CPU_PERIOD_US, VMM_OVERHEAD_MIB};
pub use slot::CgroupSlot;

use std::path::PathBuf;

/// Errors creating, configuring or reading a lease cgroup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cgroup directory could not be created.
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A control file could not be written.
    #[error("writing '{value}' to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        source: std::io::Error,
    },
    /// A control file could not be read or parsed.
    #[error("reading {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// cgroup v1 without swap accounting (no `memory.memsw.limit_in_bytes`) on a host with
    /// swap, and `memory.swappiness` could not be set to 0: nothing would keep the guest's
    /// RAM past its limit out of the swap all leases share.
    #[error(
        "{dir}: the host has swap, swap is not accounted (no memory.memsw.limit_in_bytes; \
         boot with swapaccount=1) and memory.swappiness could not be set to 0 ({source}): a \
         guest past its memory limit could fill the host's swap"
    )]
    SwapUnguarded {
        /// The lease's memory cgroup.
        dir: PathBuf,
        /// The failed swappiness write.
        source: Box<Error>,
    },
    /// A lease id that is not a plain directory name.
    #[error("lease id '{0}' cannot name a cgroup (letters, digits, '-' and '_' only)")]
    BadLeaseId(String),
}

/// Which hierarchy holds the lease cgroups, and where coinop's parent cgroup is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// Unified hierarchy: one parent directory with cpu, memory and pids enabled below it.
    V2 {
        /// `<mount>/<own cgroup>/<parent>`.
        parent: PathBuf,
    },
    /// Legacy hierarchy: one parent per controller mount.
    V1 {
        /// Parent under the `cpu` controller.
        cpu: PathBuf,
        /// Parent under the `cpuacct` controller (the same as `cpu` when co-mounted).
        cpuacct: PathBuf,
        /// Parent under the `memory` controller.
        memory: PathBuf,
        /// Parent under the `pids` controller.
        pids: PathBuf,
    },
    /// No writable hierarchy: leases run uncapped.
    Unavailable {
        /// Why, for the start-up warning.
        reason: String,
    },
}

impl Cgroups {
    /// A one-line description for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Cgroups::V2 { parent } => format!("cgroup v2 under {}", parent.display()),
            Cgroups::V1 { cpu, memory, .. } => format!(
                "cgroup v1 under {} and {} (+cpuacct, pids)",
                cpu.display(),
                memory.display()
            ),
            Cgroups::Unavailable { reason } => format!("no cgroups: {reason}"),
        }
    }

    /// Creates and configures the cgroup for `lease_id`; `None` when cgroups are unavailable.
    pub fn create_slot(
        &self,
        lease_id: &str,
        limits: &Limits,
    ) -> Result<Option<CgroupSlot>, Error> {
        check_lease_id(lease_id)?;
        match self {
            Cgroups::Unavailable { .. } => Ok(None),
            _ => CgroupSlot::create(self, lease_id, limits).map(Some),
        }
    }

    /// The cgroup an earlier coinopd created for `lease_id`, for a re-adopted guest (to
    /// read its CPU usage and remove it once the guest ended); `None` when there is none or
    /// cgroups are unavailable.
    pub fn reopen_slot(&self, lease_id: &str) -> Result<Option<CgroupSlot>, Error> {
        check_lease_id(lease_id)?;
        match self {
            Cgroups::Unavailable { .. } => Ok(None),
            _ => CgroupSlot::reopen(self, lease_id),
        }
    }

    /// Removes the parent directories if they are empty (a test's or a benchmark's own
    /// parent, so runs do not pile them up); a parent that still holds a lease stays.
    pub fn remove_empty_parents(&self) {
        let dirs: Vec<&PathBuf> = match self {
            Cgroups::V2 { parent } => vec![parent],
            Cgroups::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
            } => vec![cpu, cpuacct, memory, pids],
            Cgroups::Unavailable { .. } => vec![],
        };
        for d in dirs {
            // rmdir refuses a cgroup with children or tasks, which is the point.
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn check_lease_id(lease_id: &str) -> Result<(), Error> {
    let plain = !lease_id.is_empty()
        && lease_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        Ok(())
    } else {
        Err(Error::BadLeaseId(lease_id.to_string()))
    }
}
