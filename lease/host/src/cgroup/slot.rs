//! A lease's cgroup: created with its limits, joined by the jailed VMM before it execs,
//! read for CPU usage, removed after the VMM is gone.

use super::{Cgroups, Error, Limits};
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`CgroupSlot::remove`] waits for the exited VMM's tasks to leave.
const REMOVE_WAIT: Duration = Duration::from_millis(500);

/// One lease's cgroup (one directory per v1 controller mount, or one v2 directory).
#[derive(Debug)]
pub struct CgroupSlot {
    /// Every directory of the slot, deduplicated (a process joins each).
    dirs: Vec<PathBuf>,
    /// The file holding the cumulative CPU usage.
    usage: Usage,
    /// The file holding the memory limit.
    memory_limit: PathBuf,
    /// Where the limits are written.
    limit_dirs: LimitDirs,
}

/// The directories holding the limit files.
#[derive(Debug)]
enum LimitDirs {
    /// v1: one per controller.
    V1 {
        cpu: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
    },
    /// v2: the one directory.
    V2(PathBuf),
}

#[derive(Debug)]
enum Usage {
    /// v1 `cpuacct.usage`: nanoseconds.
    V1(PathBuf),
    /// v2 `cpu.stat`: the `usage_usec` line.
    V2(PathBuf),
}

fn write(path: &Path, value: impl ToString) -> Result<(), Error> {
    let value = value.to_string();
    std::fs::write(path, &value).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        value,
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), Error> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::Create {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn read_parsed<T>(path: &Path, parse: impl Fn(&str) -> Option<T>) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(&text).ok_or_else(|| Error::Read {
        path: path.to_path_buf(),
        reason: format!("unexpected content '{}'", text.trim()),
    })
}

/// v1's swap-accounting limit (memory + swap), present when the kernel accounts swap
/// (`swapaccount=1`, the default since 5.8 where CONFIG_MEMCG_SWAP is built).
const V1_MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";

/// Sets a v1 memory cgroup's limit to `bytes`, and its memory + swap limit to the same
/// value where swap is accounted, so guest RAM past the limit is refused (the guest's OOM),
/// never pushed out to the host's swap, which every lease shares. The kernel keeps
/// memsw >= limit at every write, so the order depends on the direction: raising writes
/// memsw first, lowering the limit first. The direction is taken from the limit in force,
/// not from what the caller last wrote, so a slot an older coinopd made (memsw unlimited)
/// or any other state is brought to the pair without an EINVAL.
fn write_v1_memory(dir: &Path, bytes: u64) -> Result<(), Error> {
    let limit = dir.join("memory.limit_in_bytes");
    let memsw = dir.join(V1_MEMSW_LIMIT);
    if !memsw.exists() {
        return write(&limit, bytes);
    }
    let current = read_parsed(&limit, |t| t.trim().parse::<u64>().ok())?;
    if bytes > current {
        write(&memsw, bytes)?;
        write(&limit, bytes)
    } else {
        write(&limit, bytes)?;
        write(&memsw, bytes)
    }
}

/// Whether the host has swap in use (`/proc/swaps` lists a device or file). Read when a
/// slot is created: swap turned on later is the operator's act, and the next slot sees it.
fn host_has_swap() -> bool {
    std::fs::read_to_string("/proc/swaps")
        // The first line is the header; an unreadable file is taken as swap present, so the
        // check errs towards refusing an unguarded slot.
        .map_or(true, |t| t.lines().skip(1).any(|l| !l.trim().is_empty()))
}

/// Keeps a fresh v1 memory cgroup's RAM out of the host's swap.
///
/// `memory.swappiness` 0 stops reclaim at the cgroup's own limit from swapping its anonymous
/// memory (the guest's RAM), so a guest at its limit meets its OOM instead. It is written
/// everywhere: where memsw is set it also keeps global reclaim off guest RAM. Where swap is
/// not accounted (no memsw file) it is the only guard: if it cannot be written and the host
/// has swap, the slot is refused ([`Error::SwapUnguarded`]) rather than run a guest that
/// could spill without bound into swap every lease shares. Without swap there is nothing to
/// spill into. With memsw the hard bound already holds, so a failure is only logged.
fn keep_v1_out_of_swap(dir: &Path, host_has_swap: bool) -> Result<(), Error> {
    let swappiness = dir.join("memory.swappiness");
    let Err(e) = write(&swappiness, 0) else {
        return Ok(());
    };
    if dir.join(V1_MEMSW_LIMIT).exists() {
        tracing::warn!(error = %e, "memory + swap limit set; swappiness left as it was");
        Ok(())
    } else if host_has_swap {
        Err(Error::SwapUnguarded {
            dir: dir.to_path_buf(),
            source: Box::new(e),
        })
    } else {
        tracing::debug!(error = %e, "host has no swap; swappiness left as it was");
        Ok(())
    }
}

impl CgroupSlot {
    /// Where `lease_id`'s cgroup lives under `cgroups` (nothing is touched).
    fn layout(cgroups: &Cgroups, lease_id: &str) -> Result<Self, Error> {
        match cgroups {
            Cgroups::V1 {
                cpu,
                cpuacct,
                memory,
                pids,
            } => {
                let mut dirs = vec![
                    cpu.join(lease_id),
                    cpuacct.join(lease_id),
                    memory.join(lease_id),
                    pids.join(lease_id),
                ];
                dirs.dedup();
                Ok(CgroupSlot {
                    dirs,
                    usage: Usage::V1(cpuacct.join(lease_id).join("cpuacct.usage")),
                    memory_limit: memory.join(lease_id).join("memory.limit_in_bytes"),
                    limit_dirs: LimitDirs::V1 {
                        cpu: cpu.join(lease_id),
                        memory: memory.join(lease_id),
                        pids: pids.join(lease_id),
                    },
                })
            }
            Cgroups::V2 { parent } => {
                let dir = parent.join(lease_id);
                Ok(CgroupSlot {
                    usage: Usage::V2(dir.join("cpu.stat")),
                    memory_limit: dir.join("memory.max"),
                    limit_dirs: LimitDirs::V2(dir.clone()),
                    dirs: vec![dir],
                })
            }
            Cgroups::Unavailable { reason } => Err(Error::Create {
                path: PathBuf::new(),
                source: std::io::Error::other(reason.clone()),
            }),
        }
    }

    /// Creates `lease_id`'s cgroup under `cgroups` and writes `limits`.
    pub(super) fn create(
        cgroups: &Cgroups,
        lease_id: &str,
        limits: &Limits,
    ) -> Result<Self, Error> {
        let slot = Self::layout(cgroups, lease_id)?;
        slot.dirs.iter().try_for_each(|d| mkdir(d))?;
        slot.write_limits(None, limits)?;
        Ok(slot)
    }

    /// Sets the slot's limits to `to`, writing only the files whose value differs from
    /// `from` (what the slot was last given), so re-using a slot for a lease of the same
    /// size writes nothing.
    pub fn update_limits(&self, from: &Limits, to: &Limits) -> Result<(), Error> {
        self.write_limits(Some(from), to)
    }

    fn write_limits(&self, from: Option<&Limits>, to: &Limits) -> Result<(), Error> {
        let changed = |field: fn(&Limits) -> u64| from.is_none_or(|f| field(f) != field(to));
        let cpu_changed = changed(|l| l.cpu_quota_us) || changed(|l| l.cpu_period_us);
        match &self.limit_dirs {
            LimitDirs::V1 { cpu, memory, pids } => {
                if cpu_changed {
                    // The quota must fit the period: period first on a fresh cgroup (its
                    // quota is unlimited), and the period is a constant afterwards.
                    write(&cpu.join("cpu.cfs_period_us"), to.cpu_period_us)?;
                    write(&cpu.join("cpu.cfs_quota_us"), to.cpu_quota_us)?;
                }
                if changed(|l| l.memory_bytes) {
                    write_v1_memory(memory, to.memory_bytes)?;
                }
                if from.is_none() {
                    keep_v1_out_of_swap(memory, host_has_swap())?;
                }
                if changed(|l| l.pids_max) {
                    write(&pids.join("pids.max"), to.pids_max)?;
                }
            }
            LimitDirs::V2(dir) => {
                if cpu_changed {
                    write(
                        &dir.join("cpu.max"),
                        format!("{} {}", to.cpu_quota_us, to.cpu_period_us),
                    )?;
                }
                if changed(|l| l.memory_bytes) {
                    write(&dir.join("memory.max"), to.memory_bytes)?;
                }
                // Without swap accounting the file is absent; with it, guest RAM must not
                // spill to swap past the limit.
                let swap = dir.join("memory.swap.max");
                if from.is_none() && swap.exists() {
                    write(&swap, 0)?;
                }
                if changed(|l| l.pids_max) {
                    write(&dir.join("pids.max"), to.pids_max)?;
                }
            }
        }
        Ok(())
    }

    /// The existing cgroup of `lease_id` (a guest that outlived an earlier coinopd), if
    /// any of its directories is still there.
    pub(super) fn reopen(cgroups: &Cgroups, lease_id: &str) -> Result<Option<Self>, Error> {
        let slot = Self::layout(cgroups, lease_id)?;
        Ok(slot.dirs.iter().any(|d| d.is_dir()).then_some(slot))
    }

    /// The slot's directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Open `cgroup.procs` files, one per directory: a child writes "0" to each to join the
    /// cgroup itself before it execs, so no thread of the VMM ever runs outside it.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>, Error> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| Error::Write {
                        path,
                        value: "(open)".into(),
                        source,
                    })
            })
            .collect()
    }

    /// Moves an already running process into the slot.
    pub fn add_pid(&self, pid: u32) -> Result<(), Error> {
        self.dirs
            .iter()
            .try_for_each(|dir| write(&dir.join("cgroup.procs"), pid))
    }

    /// CPU time consumed by everything in the slot so far, µs (the kernel's count, a second
    /// source for metering next to the VMM's own `usage` report).
    pub fn cpu_usage_us(&self) -> Result<u64, Error> {
        match &self.usage {
            Usage::V1(path) => {
                read_parsed(path, |t| t.trim().parse::<u64>().ok()).map(|ns| ns / 1000)
            }
            Usage::V2(path) => read_parsed(path, |t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
            }),
        }
    }

    /// The CPU quota per period in force, µs (`None`: unlimited).
    pub fn cpu_quota_us(&self) -> Result<Option<u64>, Error> {
        match &self.limit_dirs {
            // -1: unlimited.
            LimitDirs::V1 { cpu, .. } => read_parsed(&cpu.join("cpu.cfs_quota_us"), |t| {
                let v: i64 = t.trim().parse().ok()?;
                Some(u64::try_from(v).ok())
            }),
            // "QUOTA PERIOD", or "max PERIOD".
            LimitDirs::V2(dir) => read_parsed(&dir.join("cpu.max"), |t| {
                match t.split_whitespace().next()? {
                    "max" => Some(None),
                    q => q.parse().ok().map(Some),
                }
            }),
        }
    }

    /// The memory limit in force, bytes.
    pub fn memory_limit_bytes(&self) -> Result<u64, Error> {
        read_parsed(&self.memory_limit, |t| t.trim().parse().ok())
    }

    /// Removes the slot once its processes are gone (waits briefly for exiting tasks).
    pub fn remove(self) -> Result<(), Error> {
        let deadline = Instant::now() + REMOVE_WAIT;
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(Error::Create {
                            path: dir.clone(),
                            source: e,
                        })
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v2() -> (tempfile::TempDir, Cgroups) {
        let root = tempfile::tempdir().expect("tempdir");
        let parent = root.path().join("coinop");
        std::fs::create_dir(&parent).expect("mkdir");
        (root, Cgroups::V2 { parent })
    }

    #[test]
    fn v2_files_carry_the_limits() {
        let (_root, cgroups) = fake_v2();
        let limits = Limits::for_guest(2, 64);
        let slot = cgroups
            .create_slot("lease-1", &limits)
            .expect("created")
            .expect("available");
        let dir = &slot.dirs()[0];
        let cpu_max = std::fs::read_to_string(dir.join("cpu.max")).expect("cpu.max");
        assert_eq!(cpu_max, "200000 100000");
        assert_eq!(
            slot.memory_limit_bytes().expect("read"),
            limits.memory_bytes
        );
        std::fs::write(dir.join("cpu.stat"), "usage_usec 12345\nuser_usec 1\n").expect("write");
        assert_eq!(slot.cpu_usage_us().expect("usage"), 12345);
    }

    #[test]
    fn updating_limits_writes_only_what_changed() {
        let (_root, cgroups) = fake_v2();
        let small = Limits::for_guest(1, 64);
        let slot = cgroups
            .create_slot("pooled", &small)
            .expect("created")
            .expect("available");
        let dir = slot.dirs()[0].clone();
        // Gone files show which ones an update writes.
        std::fs::remove_file(dir.join("memory.max")).expect("rm");
        std::fs::remove_file(dir.join("pids.max")).expect("rm");
        let two_cpus = Limits::for_guest(2, 62);
        assert_eq!(two_cpus.memory_bytes, small.memory_bytes);
        slot.update_limits(&small, &two_cpus).expect("update");
        let cpu_max = std::fs::read_to_string(dir.join("cpu.max")).expect("cpu.max");
        assert_eq!(cpu_max, "200000 100000");
        assert!(
            !dir.join("memory.max").exists(),
            "same memory limit rewritten"
        );
        let pids = std::fs::read_to_string(dir.join("pids.max")).expect("pids.max");
        assert_eq!(pids, two_cpus.pids_max.to_string());
        slot.update_limits(&two_cpus, &Limits::for_guest(2, 128))
            .expect("update");
        assert_eq!(
            slot.memory_limit_bytes().expect("read"),
            Limits::for_guest(2, 128).memory_bytes
        );
    }

    #[test]
    fn v1_dedups_comounted_controllers() {
        let root = tempfile::tempdir().expect("tempdir");
        let both = root.path().join("cpu,cpuacct/coinop");
        let memory = root.path().join("memory/coinop");
        let pids = root.path().join("pids/coinop");
        for d in [&both, &memory, &pids] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let cgroups = Cgroups::V1 {
            cpu: both.clone(),
            cpuacct: both.clone(),
            memory,
            pids,
        };
        let slot = cgroups
            .create_slot("l1", &Limits::for_guest(1, 16))
            .expect("created")
            .expect("available");
        assert_eq!(slot.dirs().len(), 3);
        std::fs::write(both.join("l1/cpuacct.usage"), "5000000\n").expect("write");
        assert_eq!(slot.cpu_usage_us().expect("usage"), 5000);
    }

    /// A v1 layout in a temp dir whose memory parent has `memory.memsw.limit_in_bytes`
    /// files as a kernel with swap accounting shows them (cgroupfs creates them per cgroup;
    /// here the test makes the lease's directory and files first).
    fn fake_v1_with_memsw(lease_id: &str) -> (tempfile::TempDir, Cgroups, PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        let [cpu, memory, pids] = ["cpu,cpuacct", "memory", "pids"].map(|c| {
            let d = root.path().join(c).join("coinop");
            std::fs::create_dir_all(&d).expect("mkdir");
            d
        });
        let lease_memory = memory.join(lease_id);
        std::fs::create_dir(&lease_memory).expect("mkdir");
        for f in ["memory.limit_in_bytes", V1_MEMSW_LIMIT] {
            std::fs::write(lease_memory.join(f), "9223372036854771712\n").expect("write");
        }
        let cgroups = Cgroups::V1 {
            cpu: cpu.clone(),
            cpuacct: cpu,
            memory,
            pids,
        };
        (root, cgroups, lease_memory)
    }

    fn read_u64(path: &Path) -> u64 {
        std::fs::read_to_string(path)
            .expect("read")
            .trim()
            .parse()
            .expect("a number")
    }

    #[test]
    fn v1_memory_and_swap_limits_match_and_swappiness_is_zero() {
        let (_root, cgroups, memory) = fake_v1_with_memsw("l1");
        let limits = Limits::for_guest(1, 64);
        let slot = cgroups
            .create_slot("l1", &limits)
            .expect("created")
            .expect("available");
        assert_eq!(
            slot.memory_limit_bytes().expect("read"),
            limits.memory_bytes
        );
        assert_eq!(read_u64(&memory.join(V1_MEMSW_LIMIT)), limits.memory_bytes);
        assert_eq!(read_u64(&memory.join("memory.swappiness")), 0);
        let bigger = Limits::for_guest(1, 256);
        slot.update_limits(&limits, &bigger).expect("update");
        assert_eq!(read_u64(&memory.join(V1_MEMSW_LIMIT)), bigger.memory_bytes);
    }

    #[test]
    fn v1_without_swap_accounting_refuses_an_unguarded_slot_only_with_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: the write fails as on a cgroupfs that
        // refuses it.
        std::fs::create_dir(dir.path().join("memory.swappiness")).expect("mkdir");
        assert!(matches!(
            keep_v1_out_of_swap(dir.path(), true),
            Err(Error::SwapUnguarded { .. })
        ));
        keep_v1_out_of_swap(dir.path(), false).expect("no swap to fill");
        std::fs::write(dir.path().join(V1_MEMSW_LIMIT), "1").expect("write");
        keep_v1_out_of_swap(dir.path(), true).expect("memsw bounds the swap");
    }

    #[test]
    fn lease_ids_cannot_escape_the_parent() {
        let (_root, cgroups) = fake_v2();
        for bad in ["", "..", "a/b", "x y"] {
            assert!(matches!(
                cgroups.create_slot(bad, &Limits::for_guest(1, 16)),
                Err(Error::BadLeaseId(_))
            ));
        }
    }

    #[test]
    fn reopen_finds_only_existing_slots() {
        let (_root, cgroups) = fake_v2();
        assert!(cgroups.reopen_slot("gone").expect("no error").is_none());
        let created = cgroups
            .create_slot("kept", &Limits::for_guest(1, 16))
            .expect("created")
            .expect("available");
        std::fs::write(created.dirs()[0].join("cpu.stat"), "usage_usec 77\n").expect("write");
        let reopened = cgroups
            .reopen_slot("kept")
            .expect("no error")
            .expect("found");
        assert_eq!(reopened.dirs(), created.dirs());
        assert_eq!(reopened.cpu_usage_us().expect("usage"), 77);
    }

    #[test]
    fn unavailable_gives_no_slot() {
        let cgroups = Cgroups::Unavailable {
            reason: "test".into(),
        };
        assert!(cgroups
            .create_slot("l1", &Limits::for_guest(1, 16))
            .expect("no error")
            .is_none());
    }
}
