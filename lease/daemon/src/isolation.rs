//! How coinopd confines guests, decided once at start-up (jail, cgroups, seccomp), and the
//! confinement of each live lease: its jail root and cgroup, kept by lease id so whoever
//! sees the guest end (the reaper of our own child, or the scheduler for a guest re-adopted
//! after a restart) can remove both and read the cgroup's CPU count meanwhile. Jailed
//! leases normally start in a slot built ahead of time ([`coinop_host::slot_pool`]): the jail and
//! cgroup then already exist, under the lease id the slot gave the create. A lease's
//! network (tap, addresses, rules: [`coinop_host::guest_network`]) and its root disk's
//! copy-on-write overlay are released with them.
//!
//! Without root the jail cannot be built (namespaces, mknod, pivot_root, setuid): coinopd
//! then refuses to start unless `--no-jail` says to run guests unconfined. Without a
//! writable cgroup hierarchy it starts anyway and says loudly that guests run uncapped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use coinop_host::cgroup::{self, CgroupSlot, Cgroups};
use coinop_host::guest_network::netns_claim::{ClaimError, NetnsClaim};
use coinop_host::guest_network::{GuestNetwork, NetError, NetInfo, NetworkSettings, PendingRoute};
use coinop_host::jail::{self, Jail, JailConfig, UidPool};
use coinop_host::slot_pool::{SlotPool, TakenSlot};

/// Name of coinop's parent cgroup under coinopd's own.
pub const CGROUP_PARENT: &str = "coinop";

/// Why isolation could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The jail needs root.
    #[error(
        "jailing guests needs root (namespaces, mknod /dev/kvm, pivot_root, setuid to the \
         pool uid) and coinopd runs as uid {0}: run it as root, or pass --no-jail (debugging \
         only: guests then run unconfined)"
    )]
    NotRoot(u32),
    /// --jail-uid-base/--jail-uid-count out of range.
    #[error("--jail-uid-base/--jail-uid-count: {0}")]
    UidRange(#[from] jail::UidPoolError),
    /// The jail uid range overlaps a user's subordinate uid or gid range, or such a file
    /// could not be read.
    #[error(transparent)]
    SubordinateIds(#[from] jail::SubordinateIdError),
    /// The jail settings could not be built (e.g. ldd of the VMM failed).
    #[error("jail for {bin}: {source}")]
    Jail { bin: PathBuf, source: jail::Error },
    /// Guest networking is wanted (--guest-network) but cannot be set up.
    #[error("{0} (or start coinopd with --guest-network never)")]
    Network(#[from] NetError),
    /// Another coinopd manages guest networking in this network namespace, or the claim
    /// on it could not be taken.
    #[error(transparent)]
    NetworkClaim(#[from] ClaimError),
}

/// The CPU time per period a paused lease's VMM gets ([`Isolation::hold_paused`]): 1 ms in
/// the 100 ms period, the least cgroup v2 takes. An honest paused VMM only answers its
/// control socket, which takes far less.
pub const PAUSED_CPU_QUOTA_US: u64 = 1000;

/// A live lease's confinement.
#[derive(Debug, Default)]
struct Confinement {
    /// The host-side control socket file (bound by coinopd for a jailed VMM, which cannot
    /// unlink it from inside its jail).
    control: Option<PathBuf>,
    jail: Option<Jail>,
    slot: Option<CgroupSlot>,
    /// Whether the CPU-count disagreement was already logged for this lease.
    warned: bool,
    /// When [`Isolation::check_cpu`] may next read the cgroup's count.
    next_cpu_check: Option<Instant>,
    /// The CPU quota coinopd last wrote to, or read from, the slot's cgroup, µs per period
    /// (`None` until known): [`Isolation::hold_paused`], asked every tick, writes only on a
    /// change and reads the cgroup only while this is unknown. coinopd alone sets it (the
    /// cgroup is its own), so what it wrote is what is in force.
    cpu_quota_us: Option<u64>,
}

/// How often [`Isolation::check_cpu`] compares a lease's two CPU counts: a diagnostic that
/// logs once, so not worth a read of the cgroup at every tick of every lease.
const CPU_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Daemon-wide isolation settings and the per-lease confinements.
#[derive(Debug)]
pub struct Isolation {
    /// `None` with `--no-jail`.
    pub jail: Option<JailConfig>,
    pub cgroups: Cgroups,
    /// Passed to every VMM as `--no-seccomp`.
    pub no_seccomp: bool,
    /// Slots built ahead of creates (jailed guests only; `None` with `--jail-pool 0`).
    pool: Option<SlotPool>,
    /// `None` when no lease gets a NIC (see [`Config::guest_network_wanted`]).
    pub network: Option<GuestNetwork>,
    /// Held while `network` is: no other coinopd manages this namespace's guest networks.
    _network_claim: Option<NetnsClaim>,
    overlay_dir: PathBuf,
    leases: Mutex<HashMap<String, Confinement>>,
}

impl Isolation {
    /// Detects cgroups, builds the jail settings and logs what guests will get.
    pub fn start(config: &Config) -> Result<Self, IsolationError> {
        let cgroups = cgroup::detect(CGROUP_PARENT);
        match &cgroups {
            Cgroups::Unavailable { reason } => tracing::error!(
                reason,
                "NO CGROUPS: guests run without CPU, memory or pids caps and CPU time is \
                 metered only from the VMMs' own reports"
            ),
            c => tracing::info!(cgroups = %c.describe(), "guest cgroups"),
        }
        if let Some(advice) = coinop_host::kvm_tuning::advice() {
            tracing::info!(setting = %advice.current, "host KVM: {}", advice.suggestion);
        }
        let rates = config.device_rates;
        let unlimited = rates.unlimited_flags();
        if unlimited.is_empty() {
            tracing::info!(
                disk_bytes_per_s = rates.disk_bytes_per_s,
                disk_iops = rates.disk_iops,
                net_bytes_per_s = rates.net_bytes_per_s,
                "guests' disk and network rates, per vCPU"
            );
        } else {
            tracing::warn!(
                flags = %unlimited.join(", "),
                "set to 0: these disk or network rates are NOT limited, so one guest can \
                 take the host's disk or uplink from the others"
            );
        }
        if config.no_seccomp {
            tracing::warn!(
                "--no-seccomp: guests' VMMs run WITHOUT seccomp filters (debugging only)"
            );
        }
        let jail = if config.no_jail {
            tracing::warn!(
                "--no-jail: guests' VMMs run UNJAILED as coinopd's user, in the host's \
                 namespaces (debugging only)"
            );
            None
        } else {
            let euid = nix::unistd::geteuid();
            if !euid.is_root() {
                return Err(IsolationError::NotRoot(euid.as_raw()));
            }
            // Before any uid is used: a local user holding jail uids as subordinate ids could
            // act as the tenants' VMMs.
            jail::check_clear_of(
                config.jail_uid_base,
                config.jail_uid_count,
                &config.subid_files,
            )?;
            // Claimed host-wide: another coinopd here (another state dir) on an overlapping
            // range, as two on the default are, never hands out a uid this one uses.
            let uids = UidPool::with_claims(
                config.jail_uid_base,
                config.jail_uid_count,
                Path::new(coinop_host::claim_dir::CLAIM_DIR),
            )?;
            let jail = JailConfig::new(config.jail_dir(), config.vmm_bin.clone(), uids).map_err(
                |source| IsolationError::Jail {
                    bin: config.vmm_bin.clone(),
                    source,
                },
            )?;
            tracing::info!(
                base = %jail.base.display(),
                uids = %format!("{}..{}", config.jail_uid_base,
                                u64::from(config.jail_uid_base) + u64::from(config.jail_uid_count)),
                "guests' VMMs are jailed"
            );
            Some(jail)
        };
        let pool = jail.as_ref().filter(|_| config.jail_pool > 0).map(|j| {
            SlotPool::new(
                config.jail_pool,
                j.clone(),
                cgroups.clone(),
                config.pool_dir(),
                crate::token::new_lease_id,
            )
        });
        let (network, network_claim) = if config.guest_network_wanted() {
            // First: a second coinopd's start would sweep the first one's taps and rules.
            let claim = NetnsClaim::take()?;
            let net = GuestNetwork::start(NetworkSettings {
                pool: config.guest_net_pool,
                ssh_ports: config.guest_ssh_ports,
                ssh_host: config.guest_ssh_host.clone(),
                record_dir: config.run_dir(),
                flows_per_guest: config.guest_max_flows,
            })?;
            tracing::info!(
                pool = %format!("{}/{}", config.guest_net_pool.base, config.guest_net_pool.len),
                ssh_ports = %format!("{}-{}", config.guest_ssh_ports.0, config.guest_ssh_ports.1),
                flows_per_guest = config.guest_max_flows,
                slots = net.capacity(),
                "guest networking on (routed /30 per lease, NAT, SSH port forward)"
            );
            (Some(net), Some(claim))
        } else {
            (None, None)
        };
        Ok(Isolation {
            jail,
            cgroups,
            no_seccomp: config.no_seccomp,
            pool,
            network,
            _network_claim: network_claim,
            overlay_dir: config.overlay_dir(),
            leases: Mutex::default(),
        })
    }

    /// Once the guests of earlier runs are re-adopted: removes the slots an earlier coinopd
    /// built but no live lease uses, and starts filling the pool (in the background).
    pub fn start_pool(&self) {
        if let Some(pool) = &self.pool {
            let in_use = self.leases().keys().cloned().collect();
            pool.start(in_use);
        }
    }

    /// A slot built ahead of time, if the pool has one; its lease id is the one to use.
    pub fn take_slot(&self) -> Option<TakenSlot> {
        self.pool.as_ref()?.take()
    }

    /// Keeps the pool's filler idle while the guard lives (held for each boot).
    pub fn hold_off_pool(&self) -> Option<coinop_host::slot_pool::HoldOff> {
        self.pool.as_ref().map(SlotPool::hold_off)
    }

    /// How long until no boot is in flight and the last one settled (zero: now; `None`
    /// while one is in flight); zero without a pool.
    pub fn quiet_in(&self) -> Option<std::time::Duration> {
        match &self.pool {
            Some(pool) => pool.quiet_in(),
            None => Some(std::time::Duration::ZERO),
        }
    }

    /// Removes every slot not handed to a lease (at shutdown; guests keep running).
    pub fn shutdown_pool(&self) {
        if let Some(pool) = &self.pool {
            pool.shutdown();
        }
    }

    /// Sets up `lease_id`'s network: the tap's fd for the VMM and what the tenant is told.
    pub fn attach_network(
        &self,
        lease_id: &str,
    ) -> Result<Option<(std::os::fd::OwnedFd, NetInfo)>, NetError> {
        self.network
            .as_ref()
            .map(|n| n.attach(lease_id))
            .transpose()
    }

    /// The part of `lease_id`'s network its VMM needs to start (the tap's fd and what the
    /// tenant is told), and what is left to do ([`Isolation::route_network`]), which may
    /// run while the VMM starts.
    pub fn reserve_network(
        &self,
        lease_id: &str,
    ) -> Result<Option<(std::os::fd::OwnedFd, NetInfo, PendingRoute)>, NetError> {
        self.network
            .as_ref()
            .map(|n| n.reserve(lease_id))
            .transpose()
    }

    /// The host's side of a reserved network and its rules (blocking: runs `nft`, `ip`).
    pub fn route_network(&self, pending: PendingRoute) -> Result<(), NetError> {
        match &self.network {
            Some(n) => n.route(pending),
            None => Ok(()),
        }
    }

    /// `lease_id`'s network while it is up.
    pub fn network_info(&self, lease_id: &str) -> Option<NetInfo> {
        self.network.as_ref()?.info(lease_id)
    }

    /// Records the SSH host key (its public key line) in the personalisation `line` about
    /// to be sent to `lease_id`'s guest, in the lease's network, for the lease view; before
    /// the line is sent, so a restart finds it whichever line the guest got.
    pub fn set_host_key(&self, lease_id: &str, host_key: &str, line: &str) {
        if let Some(n) = &self.network {
            n.set_host_key(lease_id, host_key, crc32fast::hash(line.as_bytes()));
        }
    }

    /// After a restart: names the host key of the line `lease_id`'s VMM says it holds
    /// (status `line_crc32`). Whether that line's key was on record (always, unless the
    /// lease has no network or its records were lost).
    pub fn confirm_host_key(&self, lease_id: &str, line_crc32: u32) -> bool {
        self.network
            .as_ref()
            .is_some_and(|n| n.confirm_host_key(lease_id, line_crc32))
    }

    /// Creates `lease_id`'s copy-on-write overlay, 0600 and owned by `owner` (the jail's
    /// uid) when given: empty for a cold boot (the VMM sizes it on first open), or for a
    /// restore a copy of `seed`, the golden snapshot's overlay, because the restored guest's
    /// memory (page cache, filesystem journal) assumes what the golden guest wrote to its
    /// disk ([`crate::golden_snapshot`]).
    pub fn create_overlay(
        &self,
        lease_id: &str,
        owner: Option<u32>,
        seed: Option<&Path>,
    ) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&self.overlay_dir)?;
        let path = self.overlay_path(lease_id);
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        if let Some(uid) = owner {
            let id = Some(nix::unistd::Uid::from_raw(uid));
            nix::unistd::chown(&path, id, Some(nix::unistd::Gid::from_raw(uid)))
                .map_err(std::io::Error::from)?;
        }
        if let Some(seed) = seed {
            let started = std::time::Instant::now();
            let from = std::fs::File::open(seed)?;
            let bytes = crate::sparse_copy::copy_sparse(&from, &file)?;
            tracing::info!(
                lease = lease_id,
                bytes,
                copy_us = started.elapsed().as_micros() as u64,
                "root-disk overlay copied from the golden snapshot's"
            );
        }
        Ok(path)
    }

    /// Where `lease_id`'s root-disk overlay lives on the host.
    pub fn overlay_path(&self, lease_id: &str) -> PathBuf {
        self.overlay_dir.join(format!("{lease_id}.overlay"))
    }

    /// After re-adoption: removes the networks and overlays of leases that are not live
    /// (a crashed coinopd's left-overs).
    pub fn sweep_left_overs(&self) {
        if let Some(net) = &self.network {
            if let Err(e) = net.sweep() {
                tracing::warn!(error = %e, "sweeping left-over guest networks");
            }
        }
        let live: Vec<String> = self.leases().keys().cloned().collect();
        let Ok(entries) = std::fs::read_dir(&self.overlay_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_suffix(".overlay")
                .is_some_and(|id| !live.iter().any(|l| l == id));
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Confinement>> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `lease_id`'s jail, cgroup and (for a jailed VMM) control socket file until
    /// [`Isolation::release`].
    fn register_with(
        &self,
        lease_id: &str,
        control: Option<PathBuf>,
        jail: Option<Jail>,
        slot: Option<CgroupSlot>,
    ) {
        let control = control.filter(|_| jail.is_some());
        self.leases().insert(
            lease_id.to_string(),
            Confinement {
                control,
                jail,
                slot,
                warned: false,
                next_cpu_check: None,
                cpu_quota_us: None,
            },
        );
    }

    /// Like [`Isolation::register`] for a jailed VMM whose control socket coinopd bound at
    /// `control`.
    pub fn register_jailed(
        &self,
        lease_id: &str,
        control: PathBuf,
        jail: Option<Jail>,
        slot: Option<CgroupSlot>,
    ) {
        self.register_with(lease_id, Some(control), jail, slot);
    }

    /// Whether `lease_id`'s confinement is registered (its VMM started by this coinopd, or
    /// re-adopted).
    pub fn knows(&self, lease_id: &str) -> bool {
        self.leases().contains_key(lease_id)
    }

    /// Ends what is left under `id`, which no lease owns (a warm restore or a golden build
    /// that a coinopd gave up or died with): every `coinop-vmm` still in its cgroup is
    /// killed and waited for, then its jail root, cgroup, control socket (`control`),
    /// network and overlay go. Its confinement is this coinopd's when registered (its uid
    /// still claimed), else found on disk. Blocking; returns how many VMMs it killed.
    pub fn end_left_over(&self, id: &str, control: PathBuf) -> usize {
        let mut killed = 0;
        if let Ok(Some(slot)) = self.cgroups.reopen_slot(id) {
            let vmms = crate::vmm_process::cgroup_pids(slot.dirs())
                .into_iter()
                .filter(|&p| crate::guest_stop::vmm_running(p));
            for pid in vmms {
                if let Some(v) = crate::vmm_process::VmmProcess::of(pid) {
                    killed += usize::from(v.kill_and_wait());
                }
            }
        }
        if !self.knows(id) {
            self.readopt(id, control);
        }
        self.release(id);
        killed
    }

    /// Finds the jail and cgroup an earlier coinopd left for a re-adopted guest whose
    /// control socket is at `control`.
    pub fn readopt(&self, lease_id: &str, control: PathBuf) {
        let jail = match self.jail.as_ref().map(|j| j.reopen(lease_id)) {
            Some(Ok(jail)) => jail,
            Some(Err(e @ jail::Error::Uid(jail::UidPoolError::HeldElsewhere { .. }))) => {
                // Taken by another coinopd while this one was down: its guest and this one
                // now share a uid until one of them ends.
                tracing::error!(lease = lease_id, error = %e,
                    "a re-adopted guest's jail uid is in use by another coinopd's guest");
                None
            }
            Some(Err(e)) => {
                tracing::warn!(lease = lease_id, error = %e, "cannot reopen the jail");
                None
            }
            None => None,
        };
        let slot = self.cgroups.reopen_slot(lease_id).unwrap_or_else(|e| {
            tracing::warn!(lease = lease_id, error = %e, "cannot reopen the cgroup");
            None
        });
        if let Some(net) = &self.network {
            net.readopt(lease_id);
        }
        self.register_with(lease_id, Some(control), jail, slot);
    }

    /// Removes `lease_id`'s jail root, cgroup, network and overlay (and pool marker, for a
    /// lease that took a slot built ahead) once its VMM is gone (blocking: the cgroup
    /// removal waits briefly for exiting tasks). Idempotent.
    pub fn release(&self, lease_id: &str) {
        if let Some(pool) = &self.pool {
            pool.forget(lease_id);
        }
        self.release_disk_and_network(lease_id);
        let Some(c) = self.leases().remove(lease_id) else {
            return;
        };
        if let Some(slot) = c.slot {
            if let Err(e) = slot.remove() {
                tracing::warn!(lease = lease_id, error = %e, "cannot remove the cgroup");
            }
        }
        if let Some(control) = c.control {
            let _ = std::fs::remove_file(control);
        }
        if let Some(jail) = c.jail {
            if let Err(e) = jail.remove() {
                tracing::warn!(lease = lease_id, error = %e, "cannot remove the jail");
            }
        }
    }

    /// Removes `lease_id`'s network and overlay (a boot that failed before its VMM was
    /// registered). Idempotent.
    pub fn release_disk_and_network(&self, lease_id: &str) {
        if let Some(net) = &self.network {
            net.detach(lease_id);
        }
        let _ = std::fs::remove_file(self.overlay_path(lease_id));
    }

    /// The processes in `lease_id`'s cgroup (none without one): its VMM, found without a
    /// recorded pid.
    pub fn cgroup_pids(&self, lease_id: &str) -> Vec<i32> {
        let leases = self.leases();
        let Some(slot) = leases.get(lease_id).and_then(|c| c.slot.as_ref()) else {
            return Vec::new();
        };
        crate::vmm_process::cgroup_pids(slot.dirs())
    }

    /// Holds `lease_id`'s VMM (`vcpus`, `mem_mib`) to [`PAUSED_CPU_QUOTA_US`] of CPU per
    /// period while coinopd has its guest paused (`hold`), or gives it back its lease's
    /// quota. A pause is the VMM's to carry out, and one that a hostile guest took over could
    /// run on through the grace; held, it gets a sliver of one CPU, enough to answer its
    /// control socket. Idempotent (the scheduler asks every tick, so a race between a pause
    /// and a top-up is mended at the next one). Without a cgroup, nothing to do.
    pub fn hold_paused(&self, lease_id: &str, vcpus: u32, mem_mib: u64, hold: bool) {
        let mut leases = self.leases();
        let Some(c) = leases.get_mut(lease_id) else {
            return;
        };
        let Some(slot) = c.slot.as_ref() else {
            return;
        };
        let full = cgroup::Limits::for_guest(vcpus, mem_mib);
        let held = cgroup::Limits {
            cpu_quota_us: PAUSED_CPU_QUOTA_US,
            ..full
        };
        let (from, to) = if hold { (full, held) } else { (held, full) };
        // Idempotent: a quota already in force is not written again (every tick asks).
        let in_force = c
            .cpu_quota_us
            .or_else(|| slot.cpu_quota_us().ok().flatten());
        if in_force == Some(to.cpu_quota_us) {
            c.cpu_quota_us = in_force;
            return;
        }
        match slot.update_limits(&from, &to) {
            Ok(()) => c.cpu_quota_us = Some(to.cpu_quota_us),
            Err(e) => {
                // Unknown again: the next tick reads what is in force and tries again.
                c.cpu_quota_us = None;
                tracing::warn!(lease = lease_id, hold, error = %e,
                    "setting the CPU quota of a paused lease's cgroup failed");
            }
        }
    }

    /// The kernel's count of CPU time `lease_id`'s cgroup used, µs (`None` without one).
    pub fn cgroup_cpu_us(&self, lease_id: &str) -> Option<u64> {
        let leases = self.leases();
        let slot = leases.get(lease_id)?.slot.as_ref()?;
        slot.cpu_usage_us().ok()
    }

    /// Compares the VMM's own vCPU time with the cgroup's count (which also holds the
    /// VMM's other threads) and logs once per lease when they differ by more than
    /// 10% + 5 ms. Looks at most every [`CPU_CHECK_EVERY`], and never again once it logged.
    pub fn check_cpu(&self, lease_id: &str, vmm_vcpu_us: u64) {
        let mut leases = self.leases();
        let Some(c) = leases.get_mut(lease_id) else {
            return;
        };
        let now = Instant::now();
        if c.warned || c.next_cpu_check.is_some_and(|at| now < at) {
            return;
        }
        c.next_cpu_check = Some(now + CPU_CHECK_EVERY);
        let Some(cgroup_us) = c.slot.as_ref().and_then(|s| s.cpu_usage_us().ok()) else {
            return;
        };
        if !c.warned && !cpu_counts_agree(vmm_vcpu_us, cgroup_us) {
            c.warned = true;
            tracing::warn!(
                lease = lease_id,
                vmm_vcpu_us,
                cgroup_cpu_us = cgroup_us,
                "the VMM's vCPU time and its cgroup's CPU time disagree by more than 10% + 5 ms"
            );
        }
    }
}

/// Whether two CPU-time counts agree within 10% of the larger plus 5 ms.
pub fn cpu_counts_agree(a_us: u64, b_us: u64) -> bool {
    a_us.abs_diff(b_us) <= a_us.max(b_us) / 10 + 5_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counts_agree_within_a_tenth_plus_5_ms() {
        assert!(cpu_counts_agree(0, 5_000));
        assert!(!cpu_counts_agree(0, 5_600));
        assert!(cpu_counts_agree(1_000_000, 1_105_000));
        assert!(!cpu_counts_agree(1_000_000, 1_130_000));
        assert!(cpu_counts_agree(1_130_000, 1_020_000));
    }
}
