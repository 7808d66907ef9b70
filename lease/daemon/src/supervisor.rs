//! The supervisor: starts one `coinop-vmm` per lease in its own session (so a coinopd restart
//! or a terminal's SIGINT does not kill guests), jailed and in its cgroup unless isolation
//! is off, records its pid and start time in the ledger (how a restarted coinopd finds that
//! very process again: [`crate::vmm_process`]), reads its JSON-lines events from an
//! inherited pipe to time the boot, and reports guest exits (with the VMM's exit code: 3 is
//! a guest crash) to the scheduler after removing the lease's jail and cgroup.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::mpsc;

use crate::clock::monotonic_us;
use crate::device_limits::{DeviceRates, LeaseRates};
use crate::image_catalogue::ImageSpec;
use crate::isolation::Isolation;
use crate::ledger::Ledger;
use crate::personalisation::Personalisation;
use crate::state_dir::private_file;
use crate::vmm_process::VmmProcess;
use coinop_host::cgroup::{CgroupSlot, Limits};
use coinop_host::jail::{
    Ended, Jail, JailExtras, JailedChild, RootDisk, INITRD_PATH, KERNEL_PATH, OVERLAY_PATH,
    ROOTFS_PATH, SNAPSHOT_PATH,
};
use coinop_host::slot_pool::{ReadySlot, TakenSlot};
use vmm_protocol::Event;

/// The fd number the VMM finds its event pipe on (`--events fd:3`).
const EVENTS_FD: i32 = 3;
/// The fd number the VMM finds its tap on (`--net fd=5`; 4 is a jailed VMM's control
/// socket).
const TAP_FD: i32 = 5;
/// The fd number a plain (`--no-jail`) VMM finds its kernel command line on
/// (`--cmdline-fd 6`); a jailed VMM finds it after its other fds.
const CMDLINE_FD: i32 = 6;

/// A memfd holding `cmdline`, read by the VMM through `--cmdline-fd`. The command line
/// is the tenant's, and a process's arguments are readable by every local user in
/// /proc/PID/cmdline; an open file is readable only by its owner (and root).
fn cmdline_memfd(cmdline: &str) -> Result<OwnedFd, std::io::Error> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create("coinop-cmdline", MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, cmdline.as_bytes())?;
    std::io::Seek::rewind(&mut file)?;
    Ok(file.into())
}

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("guest cgroup: {0}")]
    Cgroup(#[from] coinop_host::cgroup::Error),
    #[error("guest jail: {0}")]
    Jail(#[from] coinop_host::jail::Error),
    #[error("guest files: {0}")]
    Files(std::io::Error),
    #[error("event pipe: {0}")]
    Pipe(String),
    #[error("guest exited before it was ready: {reason} (exit code {code:?})")]
    Exited { reason: String, code: Option<i64> },
    #[error("guest not ready within {0} ms")]
    Timeout(u64),
    #[error("guest not ready within {0} ms of its personalisation")]
    PersonaliseTimeout(u64),
    #[error(
        "the guest of an agent image said it was ready without asking for its \
         personalisation: it has none of the lease's network, key or entropy"
    )]
    ReadyUnpersonalised,
    #[error("guest root disk overlay: {0}")]
    Overlay(std::io::Error),
    #[error("sending the guest its personalisation: {0}")]
    Personalise(vmm_protocol::client::ControlError),
}

/// The lease's NIC: its tap, attached, and the guest's MAC.
#[derive(Debug)]
pub struct Nic {
    pub tap: OwnedFd,
    pub mac: String,
}

impl Nic {
    /// Another handle on the same tap.
    pub fn try_clone(&self) -> std::io::Result<Nic> {
        Ok(Nic {
            tap: self.tap.try_clone()?,
            mac: self.mac.clone(),
        })
    }
}

/// A guest that ended (from its event stream or process exit).
#[derive(Debug, Clone)]
pub struct GuestExit {
    pub lease_id: String,
    pub reason: String,
    /// The VMM's exit code, from its `exit` event or its exit status (`None` when it was
    /// killed by a signal): 0 a clean end, 1 a VMM failure, 3 a guest crash.
    pub code: Option<i32>,
    /// The process that ended.
    pub vmm: Option<VmmProcess>,
}

/// The VMM exit code of a guest crash (triple fault, emulation failure, failed VM entry;
/// see `vmm_protocol::ExitReason`).
pub const GUEST_CRASH_CODE: i32 = 3;

/// Where a lease's VMM lives on disk.
#[derive(Debug, Clone)]
pub struct GuestPaths {
    pub control: PathBuf,
    pub console: PathBuf,
    pub log: PathBuf,
}

impl GuestPaths {
    pub fn for_lease(run_dir: &Path, lease_id: &str) -> Self {
        GuestPaths {
            control: run_dir.join(format!("{lease_id}.sock")),
            console: run_dir.join(format!("{lease_id}.console")),
            log: run_dir.join(format!("{lease_id}.vmm.log")),
        }
    }
}

pub struct BootRequest<'a> {
    pub lease_id: &'a str,
    pub image: &'a ImageSpec,
    pub cmdline: &'a str,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub paths: &'a GuestPaths,
    /// `CLOCK_MONOTONIC` µs when the HTTP request arrived.
    pub arrival_us: u64,
    /// The boot figures before the spawn (payment check, ledger commit), kept in the ledger
    /// with the VMM's identity so that a restart can finish them ([`crate::boot_record`]).
    pub figures: coinop_proto::BootFigures,
    pub timeout_ms: u64,
    /// How long the guest may take from its personalisation line to `guest_ready`, ms
    /// (within `timeout_ms`): applying a line takes an agent milliseconds, so a guest past
    /// this is stuck, and the caller need not wait out the whole boot timeout to act.
    pub personalise_timeout_ms: u64,
    /// The slot built ahead of time for this lease (its id is `lease_id`), if the create
    /// got one from the pool.
    pub slot: Option<TakenSlot>,
    /// Passed to the VMM as `--net fd=5`.
    pub nic: Option<Nic>,
    /// A golden snapshot to start from, or to be written by this VMM.
    pub snapshot: SnapshotUse,
    /// For a guest agent (an `agent` image): the line is sent when the guest asks for it
    /// (`awaiting_personalisation`), the entropy and time made then.
    pub personalise: Option<Personalisation>,
    /// The event the boot waits for.
    pub ready_at: ReadyPoint,
}

/// The event at which a boot counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadyPoint {
    /// `guest_ready`: the guest is up (a lease's boot).
    #[default]
    GuestReady,
    /// `awaiting_personalisation`: an agent guest's init is done and it holds no per-lease
    /// state yet (a golden snapshot's build).
    AwaitingPersonalisation,
}

/// What a VMM has to do with a golden snapshot ([`crate::golden_snapshot`]).
#[derive(Debug, Clone, Default)]
pub enum SnapshotUse {
    /// A cold boot of the image.
    #[default]
    None,
    /// `--restore` from this host directory (bound read-only into the jail) instead of a
    /// cold boot: the VMM gets no kernel, command line or machine shape, only the lease's
    /// own devices, console, control socket and events.
    RestoreFrom(PathBuf),
    /// A cold boot that will be told to snapshot into this host directory (bound writable
    /// into the jail at [`SNAPSHOT_PATH`]).
    WriteInto(PathBuf),
}

impl SnapshotUse {
    /// What a new lease's root-disk overlay starts as a copy of: the golden snapshot's
    /// overlay for a restore, nothing (empty) for a cold boot.
    fn overlay_seed(&self) -> Option<PathBuf> {
        match self {
            SnapshotUse::RestoreFrom(dir) => Some(crate::golden_snapshot::overlay_in(dir)),
            SnapshotUse::None | SnapshotUse::WriteInto(_) => None,
        }
    }

    /// The jail's extra binds for it.
    fn jail_extras(&self) -> JailExtras {
        match self {
            SnapshotUse::None => JailExtras::default(),
            SnapshotUse::RestoreFrom(dir) => JailExtras {
                restore_from: Some(dir.clone()),
                snapshot_into: None,
            },
            SnapshotUse::WriteInto(dir) => JailExtras {
                restore_from: None,
                snapshot_into: Some(dir.clone()),
            },
        }
    }
}

/// The directory a jailed VMM sees a golden snapshot at.
pub fn jailed_snapshot_dir() -> &'static Path {
    Path::new(SNAPSHOT_PATH)
}

/// A booted guest.
#[derive(Debug)]
pub struct Booted {
    pub pid: Option<i32>,
    pub vmm_spawned_us: u64,
    pub vcpus_started_us: Option<u64>,
    pub guest_ready_us: u64,
}

/// The guest's VMM process: jailed (PID 1 of its own namespace, our child through a pidfd)
/// or, with `--no-jail`, a plain child.
enum GuestProcess {
    Jailed(JailedChild),
    Plain(tokio::process::Child),
}

impl GuestProcess {
    fn pid(&self) -> Option<i32> {
        match self {
            GuestProcess::Jailed(c) => Some(c.pid()),
            GuestProcess::Plain(c) => c.id().map(|p| p as i32),
        }
    }

    /// SIGKILL: a namespace's PID 1 ignores SIGTERM sent from outside.
    fn kill(&mut self) {
        let _ = match self {
            GuestProcess::Jailed(c) => c.kill().map_err(|e| e.to_string()),
            GuestProcess::Plain(c) => c.start_kill().map_err(|e| e.to_string()),
        };
    }

    /// Waits for the end; the exit code when it exited normally, and a description.
    async fn wait(self) -> (Option<i32>, String) {
        match self {
            GuestProcess::Jailed(c) => match wait_jailed(c).await {
                Ok(Ended::Exited(code)) => (Some(code), format!("exit code {code}")),
                Ok(Ended::Signaled(sig)) => (None, format!("killed by {sig}")),
                Err(e) => (None, e),
            },
            GuestProcess::Plain(mut c) => match c.wait().await {
                Ok(status) => (status.code(), status.to_string()),
                Err(e) => (None, e.to_string()),
            },
        }
    }
}

/// Waits for a jailed child without holding a runtime thread: its pidfd turns readable when
/// it exits, and the reap is then immediate.
async fn wait_jailed(child: JailedChild) -> Result<Ended, String> {
    let pid = child.pid();
    let shown = |e: std::io::Error| format!("jailed pid {pid}: waiting on its pidfd: {e}");
    let pidfd = child.pidfd().try_clone_to_owned().map_err(shown)?;
    // SAFETY: the AsyncFd owns `pidfd`, an OwnedFd that stays open and unchanged until the
    // AsyncFd is dropped at the end of this function.
    let ready = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }
        .map_err(|e| shown(e.into_parts().1))?;
    let _readable = ready.readable().await.map_err(shown)?;
    child.wait_blocking().map_err(|e| e.to_string())
}

type EventLines = crate::event_lines::EventLines<tokio::net::unix::pipe::Receiver>;

/// A VMM started and registered (its confinement is the isolation's), its events read up
/// to where its boot is.
struct Started {
    child: GuestProcess,
    vmm: Option<VmmProcess>,
    pid: Option<i32>,
    lines: EventLines,
    /// `CLOCK_MONOTONIC` µs its event times count from (`--start-time-us`).
    base_us: u64,
    /// µs from the arrival of the request that started it to its spawn.
    vmm_spawned_us: u64,
}

/// A VMM started ahead of its lease ([`Supervisor::start_ahead`]): restored, its guest
/// waiting for a personalisation line. It must end in [`Supervisor::hand_over`] or
/// [`Supervisor::discard_ahead`]; dropped otherwise, it runs on until coinopd's next start
/// removes it ([`crate::warm_restores`]).
pub struct Ahead {
    lease_id: String,
    control: PathBuf,
    started: Started,
}

impl Ahead {
    /// The lease id it was started under (its lease must carry it).
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    /// Its control socket.
    pub fn control(&self) -> &Path {
        &self.control
    }

    /// Its process (pid and start time), when it could be read.
    pub fn vmm(&self) -> Option<VmmProcess> {
        self.started.vmm
    }
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("lease_id", &self.lease_id)
            .field("pid", &self.started.pid)
            .finish_non_exhaustive()
    }
}

/// A started VMM with its confinement and the read end of its event pipe.
struct Spawned {
    child: GuestProcess,
    jail: Option<Jail>,
    slot: Option<CgroupSlot>,
    /// The read end of the VMM's event pipe, registered with the runtime before the spawn:
    /// a registration failing after it would leave a VMM whose end had to be reaped in the
    /// background, where it could release what a retry under the same id registered.
    events: tokio::net::unix::pipe::Receiver,
}

pub struct Supervisor {
    vmm_bin: PathBuf,
    /// Console bytes each VMM keeps (`--serial-max-bytes`).
    console_max_bytes: u64,
    /// Disk and network rates per vCPU, given to every VMM with its devices.
    device_rates: DeviceRates,
    isolation: Arc<Isolation>,
    /// Where each VMM's pid and start time are recorded as soon as it is spawned.
    ledger: Arc<Ledger>,
    exits: mpsc::UnboundedSender<GuestExit>,
    /// Leases whose VMM is this coinopd's child: its reaper reports the end, with the exit
    /// code, so nobody else may conclude it from a vanished control socket until the
    /// scheduler has handled that report.
    own_children: Mutex<HashSet<String>>,
    /// Leases whose VMM's run state (running or paused) the next tick must read: found
    /// paused at re-adoption, or paused for lack of funds at an earlier tick.
    recheck: Mutex<HashSet<String>>,
    /// Leases whose VMM runs with nothing listening at its control socket, since when
    /// (the scheduler's first such reading).
    unreachable: Mutex<HashMap<String, Instant>>,
    /// What each running lease's readings are held to (the kernel's count, coinopd's clock).
    usage_floors: crate::usage_floor::UsageFloors,
}

/// How a VMM that missed its boot timeout is ended.
#[derive(Debug, Clone, Copy)]
enum TimedOut {
    /// Killed, and reaped (its confinement removed, its end reported) in the background:
    /// its lease fails, so no other boot takes its id meanwhile, and a boot's failure is
    /// not held up by a VMM slow to die.
    ReapLater,
    /// Killed, waited for and its confinement removed before the caller goes on: a warm
    /// hand-over, whose lease boots on its own under the same id next. A removal after
    /// that boot registered its confinement would take that boot's tap, control socket,
    /// jail and cgroup, and an end reported then would end its lease.
    EndNow,
}

/// A lease-id set's or map's lock, also after a panic elsewhere (one insert or removal
/// cannot leave it half-changed).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pipe_err(e: impl std::fmt::Display) -> BootError {
    BootError::Pipe(e.to_string())
}

/// The VMM's device arguments: the root disk (paths as the VMM sees them) and the NIC,
/// each with the lease's rates, so no guest takes the host's disk or uplink from the others.
/// A restore gets them too: the snapshot keeps the buckets' tokens, not their rates.
fn device_args(disk: Option<&RootDisk>, mac: Option<&str>, rates: &LeaseRates) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(d) = disk {
        args.push("--disk".into());
        args.push(
            format!(
                "path={},cow={}{}",
                d.base.display(),
                d.overlay.display(),
                rates.disk_options()
            )
            .into(),
        );
    }
    if let Some(mac) = mac {
        args.push("--net".into());
        args.push(format!("fd={TAP_FD},mac={mac}{}", rates.net_options()).into());
    }
    args
}

/// A close-on-exec copy of `fd` numbered 64 or above: above every fd a plain VMM's child
/// places (its events, tap and command line), so placing one cannot overwrite another's
/// source.
fn high_copy(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd, BootError> {
    // SAFETY: F_DUPFD_CLOEXEC on a live fd returns a new fd we then own.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
    if high < 0 {
        return Err(BootError::Files(std::io::Error::last_os_error()));
    }
    // SAFETY: `high` is a fresh descriptor nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
}

/// The VMM arguments both spawn paths share (paths as the VMM sees them): a cold boot's
/// kernel and machine, its command line on fd `cmdline_fd`, or `--restore` from `restore`
/// (the snapshot fixes the machine).
fn common_args(
    req: &BootRequest<'_>,
    kernel: &Path,
    initrd: Option<&Path>,
    restore: Option<&Path>,
    cmdline_fd: i32,
) -> Vec<OsString> {
    if let Some(dir) = restore {
        return vec![
            "--restore".into(),
            dir.into(),
            "--events".into(),
            format!("fd:{EVENTS_FD}").into(),
        ];
    }
    let mut args: Vec<OsString> = vec!["--kernel".into(), kernel.into()];
    if let Some(initrd) = initrd {
        args.extend(["--initrd".into(), initrd.into()]);
    }
    args.extend([
        "--cmdline-fd".into(),
        cmdline_fd.to_string().into(),
        "--vcpus".into(),
        req.vcpus.to_string().into(),
        "--mem-mib".into(),
        req.mem_mib.to_string().into(),
        "--events".into(),
        format!("fd:{EVENTS_FD}").into(),
    ]);
    args
}

impl Supervisor {
    pub fn new(
        vmm_bin: PathBuf,
        console_max_bytes: u64,
        device_rates: DeviceRates,
        isolation: Arc<Isolation>,
        ledger: Arc<Ledger>,
        exits: mpsc::UnboundedSender<GuestExit>,
    ) -> Self {
        Supervisor {
            vmm_bin,
            console_max_bytes,
            device_rates,
            isolation,
            ledger,
            exits,
            own_children: Mutex::default(),
            recheck: Mutex::default(),
            unreachable: Mutex::default(),
            usage_floors: Default::default(),
        }
    }

    /// Whether `lease_id`'s VMM is this coinopd's child whose end is not handled yet (its
    /// reaper reports it).
    pub fn is_own_child(&self, lease_id: &str) -> bool {
        locked(&self.own_children).contains(lease_id)
    }

    /// The scheduler handled the end of `lease_id`'s VMM.
    pub fn exit_handled(&self, lease_id: &str) {
        locked(&self.own_children).remove(lease_id);
    }

    /// Makes the next tick read `lease_id`'s VMM's run state.
    pub fn recheck_state(&self, lease_id: &str) {
        locked(&self.recheck).insert(lease_id.to_string());
    }

    /// Whether `lease_id`'s VMM's run state is to be read now (once).
    pub fn take_recheck(&self, lease_id: &str) -> bool {
        locked(&self.recheck).remove(lease_id)
    }

    /// Forgets the rechecks, the unreachable control sockets and the usage floors of leases
    /// not in `live` (the metered ones); an unreachable one `frozen` (paused for a reorg,
    /// not metered) is kept too.
    pub fn keep_live(&self, live: &HashSet<&str>, frozen: &HashSet<&str>) {
        locked(&self.recheck).retain(|id| live.contains(id.as_str()));
        locked(&self.unreachable)
            .retain(|id, _| live.contains(id.as_str()) || frozen.contains(id.as_str()));
        self.usage_floors.keep_live(live);
    }

    /// The floors under the running leases' readings ([`crate::usage_floor`]).
    pub fn usage_floors(&self) -> &crate::usage_floor::UsageFloors {
        &self.usage_floors
    }

    /// `lease_id`'s VMM runs and nothing listens at its control socket: for how long so
    /// far, and whether this is the first such reading.
    pub fn unreachable_for(&self, lease_id: &str) -> (Duration, bool) {
        let mut map = locked(&self.unreachable);
        match map.get(lease_id) {
            Some(since) => (since.elapsed(), false),
            None => {
                map.insert(lease_id.to_string(), Instant::now());
                (Duration::ZERO, true)
            }
        }
    }

    /// How long `lease_id`'s VMM has been silent (its reads failing), if it is; unlike
    /// [`Supervisor::unreachable_for`], asking starts no count.
    pub fn silent_for(&self, lease_id: &str) -> Option<Duration> {
        locked(&self.unreachable)
            .get(lease_id)
            .map(|since| since.elapsed())
    }

    /// `lease_id`'s VMM answered (or was stopped): it is not unreachable.
    pub fn reached(&self, lease_id: &str) {
        locked(&self.unreachable).remove(lease_id);
    }

    /// The daemon's isolation settings and per-lease confinements.
    pub fn isolation(&self) -> &Arc<Isolation> {
        &self.isolation
    }

    /// Starts the VMM and waits for `guest_ready` (or `req.ready_at`), sending an agent
    /// guest its personalisation when it asks. On any failure the VMM is killed and its
    /// jail, cgroup, network and root-disk overlay removed.
    pub async fn boot(&self, mut req: BootRequest<'_>) -> Result<Booted, BootError> {
        // No slot is built for the pool while this boot runs (it would compete for CPU,
        // coinopd's memory map and the cgroup lock); the refill follows right after.
        let _quiet = self.isolation.hold_off_pool();
        let started = self.start(&mut req)?;
        self.record(&req, &started).await;
        crate::fault::hit(crate::fault::point::CREATE_VMM_RECORDED);
        self.follow_to_ready(started, &req, TimedOut::ReapLater, None)
            .await
    }

    /// Starts a VMM ahead of its lease (a warm restore, [`crate::warm_restores`]): as
    /// [`Supervisor::boot`] up to `awaiting_personalisation`, where the guest waits, with no
    /// ledger record (there is no lease yet) and its event stream held for
    /// [`Supervisor::hand_over`]. `req.personalise` must be `None`.
    pub async fn start_ahead(&self, mut req: BootRequest<'_>) -> Result<Ahead, BootError> {
        let _quiet = self.isolation.hold_off_pool();
        req.ready_at = ReadyPoint::AwaitingPersonalisation;
        let mut started = self.start(&mut req)?;
        let outcome = tokio::time::timeout(
            Duration::from_millis(req.timeout_ms),
            wait_ready(
                &mut started.lines,
                &req,
                started.base_us,
                &self.isolation,
                None,
            ),
        )
        .await;
        match outcome {
            Ok(Ok(_)) => {
                // The guest has time to spare until a create takes it: rung, an agent guest
                // spends it on its first SSH connection's costs (images/rootfs/
                // PERSONALISE.md, "Time to spare"), which would otherwise fall between its
                // guest_ready and the tenant's first connection. Best effort: a guest that
                // is not rung only keeps those costs for later.
                if let Err(e) = vmm_protocol::client::ring(&req.paths.control).await {
                    tracing::warn!(lease = req.lease_id, error = %e, "could not ring a warm restore's guest");
                }
                Ok(Ahead {
                    lease_id: req.lease_id.to_string(),
                    control: req.paths.control.clone(),
                    started,
                })
            }
            Ok(Err(e)) => {
                self.end_failed(req.lease_id, started).await;
                Err(e)
            }
            Err(_) => {
                self.end_failed(req.lease_id, started).await;
                Err(BootError::Timeout(req.timeout_ms))
            }
        }
    }

    /// Gives a VMM started ahead to the lease `req` names (its id must be the one the VMM
    /// was started under, and its ledger row committed): records the VMM in the ledger,
    /// sends the guest its personalisation and waits for `guest_ready`. On failure the VMM
    /// is gone with its confinement, as for a failed [`Supervisor::boot`].
    pub async fn hand_over(&self, ahead: Ahead, req: BootRequest<'_>) -> Result<Booted, BootError> {
        let _quiet = self.isolation.hold_off_pool();
        let Ahead { mut started, .. } = ahead;
        // Spawned before the request arrived.
        started.vmm_spawned_us = 0;
        // The guest waits for its line: the record's commit (an fsync) runs beside the
        // line and the guest's steps, as a boot's runs beside the boot, not in front of
        // them. A coinopd that dies before the record finds the VMM through the lease's
        // cgroup, as after a spawn.
        let line = async {
            match &req.personalise {
                Some(p) => send_personalisation(&req, p, &self.isolation).await,
                None => Ok(()),
            }
        };
        let ((), sent) = tokio::join!(self.record(&req, &started), line);
        crate::fault::hit(crate::fault::point::CREATE_VMM_RECORDED);
        let line_sent = match sent {
            Ok(()) => req.personalise.as_ref().map(|_| Instant::now()),
            Err(e) => {
                self.end_failed(req.lease_id, started).await;
                return Err(e);
            }
        };
        // The create boots its lease on its own, under this id, when this fails.
        self.follow_to_ready(started, &req, TimedOut::EndNow, line_sent)
            .await
    }

    /// Ends a VMM started ahead that no lease took (its snapshot changed, coinopd stops, or
    /// its room is wanted): the VMM and its whole confinement go.
    pub async fn discard_ahead(&self, ahead: Ahead) {
        let Ahead {
            lease_id, started, ..
        } = ahead;
        self.end_failed(&lease_id, started).await;
    }

    /// Kills a VMM whose boot failed, waits for it and removes its confinement.
    async fn end_failed(&self, lease_id: &str, started: Started) {
        self.end_now(lease_id, started.child).await;
    }

    /// Kills `child`, waits for it and removes `lease_id`'s confinement; its exit code.
    async fn end_now(&self, lease_id: &str, mut child: GuestProcess) -> Option<i32> {
        child.kill();
        let (code, _) = child.wait().await;
        self.isolation_release(lease_id).await;
        code
    }

    /// Spawns the VMM for `req` (in the slot it brings, else in one built now) and
    /// registers its confinement.
    fn start(&self, req: &mut BootRequest<'_>) -> Result<Started, BootError> {
        let nic = req.nic.take();
        let limits = Limits::for_guest(req.vcpus, req.mem_mib);
        let mut slot = req.slot.take();
        if matches!(req.snapshot, SnapshotUse::WriteInto(_)) {
            // A slot built ahead has no writable directory to snapshot into.
            if let Some(slot) = slot.take() {
                slot.discard();
            }
        }
        let pooled = slot.map(|taken| taken.use_for(limits));
        let was_pooled = pooled.is_some();
        let start_us = monotonic_us();
        let spawned = match pooled {
            Some(ready) => {
                // A failed launch has closed the fds it was given: the request-path build
                // after it needs its own handle on the tap.
                let spare = nic.as_ref().map(Nic::try_clone).transpose();
                match self.launch_pooled(ready, req, &limits, start_us, nic) {
                    Ok(spawned) => Ok(spawned),
                    Err(e) => {
                        tracing::warn!(lease = req.lease_id, error = %e,
                            "the slot built ahead failed; building one on the request path");
                        spare
                            .map_err(BootError::Files)
                            .and_then(|nic| self.spawn_fresh(req, &limits, start_us, nic))
                    }
                }
            }
            None => self.spawn_fresh(req, &limits, start_us, nic),
        };
        let Spawned {
            child,
            jail,
            slot,
            events,
        } = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                // Nothing registered: this releases the network and overlay and forgets a
                // pool marker.
                self.isolation.release(req.lease_id);
                return Err(e);
            }
        };
        self.isolation
            .register_jailed(req.lease_id, req.paths.control.clone(), jail, slot);
        let vmm_spawned_us = monotonic_us().saturating_sub(req.arrival_us);
        tracing::info!(
            lease = req.lease_id,
            pooled = was_pooled,
            boot_start_us = start_us.saturating_sub(req.arrival_us),
            vmm_spawned_us,
            "VMM started"
        );
        let pid = child.pid();
        let vmm = pid.and_then(VmmProcess::of);
        Ok(Started {
            child,
            vmm,
            pid,
            lines: EventLines::new(events),
            base_us: start_us,
            vmm_spawned_us,
        })
    }

    /// Records the VMM's identity in the ledger (`req.lease_id`'s row; a golden snapshot's
    /// build, which has none, in its marker file) while the guest boots: a coinopd that dies
    /// from here on leaves a VMM its successor finds by pid and start time, never an unknown
    /// orphan. The guest
    /// boots meanwhile (its events wait in the pipe), so the commit's fsync delays the
    /// reply only if it outlasts the boot.
    async fn record(&self, req: &BootRequest<'_>, started: &Started) {
        let Some(vmm) = started.vmm else {
            return;
        };
        if let SnapshotUse::WriteInto(staging) = &req.snapshot {
            // A golden snapshot's build: no lease, no row. Its marker, beside the staging
            // directory (coinopd's: only the directory is bound into the jail), is how
            // coinopd ends the VMM at shutdown or, after a crash, at the next start.
            let marker = crate::golden_snapshot::build_vmm_marker(staging);
            if let Err(e) = std::fs::write(&marker, vmm.marker_text()) {
                tracing::error!(lease = req.lease_id, marker = %marker.display(), error = %e,
                    "cannot name the golden build's VMM; a crash now would leave it running");
            }
            crate::fault::hit(crate::fault::point::GOLDEN_VMM_RECORDED);
            crate::fault::delay(crate::fault::point::GOLDEN_VMM_RECORDED).await;
            return;
        }
        let spawn = crate::boot_record::SpawnRecord {
            figures: coinop_proto::BootFigures {
                vmm_spawned_us: started.vmm_spawned_us,
                ..req.figures.clone()
            },
            vmm_base_us: started.base_us.saturating_sub(req.arrival_us),
            files: Some(crate::boot_record::SpawnFiles {
                console_max_bytes: self.console_max_bytes,
                rootfs_bytes: req
                    .image
                    .rootfs
                    .as_deref()
                    .and_then(|base| std::fs::metadata(base).ok())
                    .map(|m| m.len()),
            }),
        }
        .to_json();
        let ledger = Arc::clone(&self.ledger);
        let id = req.lease_id.to_string();
        let recorded =
            tokio::task::spawn_blocking(move || ledger.record_vmm(&id, vmm, Some(&spawn))).await;
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(lease = req.lease_id, error = %e,
                "cannot record the VMM's pid; a restart finds it through its cgroup only"),
            Err(e) => tracing::error!(lease = req.lease_id, error = %e,
                "recording the VMM's pid"),
        }
    }

    /// Reads the VMM's events until `req.ready_at` (answering a personalisation request),
    /// then leaves its stream and its end to a reaper; on failure or timeout the VMM is
    /// killed and its confinement removed (before returning, except after the boot
    /// timeout with [`TimedOut::ReapLater`]). `line_sent`: when the guest's line went, if
    /// it went before (a hand-over).
    async fn follow_to_ready(
        &self,
        mut started: Started,
        req: &BootRequest<'_>,
        timed_out: TimedOut,
        line_sent: Option<Instant>,
    ) -> Result<Booted, BootError> {
        let outcome = tokio::time::timeout(
            Duration::from_millis(req.timeout_ms),
            wait_ready(
                &mut started.lines,
                req,
                started.base_us,
                &self.isolation,
                line_sent,
            ),
        )
        .await;
        let Started {
            child,
            vmm,
            pid,
            lines,
            vmm_spawned_us,
            ..
        } = started;
        let (vcpus_started_us, guest_ready_us) = match outcome {
            Ok(Ok(figures)) => figures,
            Ok(Err(e)) => {
                let code = self.end_now(req.lease_id, child).await;
                return Err(match e {
                    BootError::Exited { reason, code: None } => BootError::Exited {
                        reason,
                        code: code.map(i64::from),
                    },
                    e => e,
                });
            }
            Err(_) => {
                match timed_out {
                    TimedOut::ReapLater => {
                        let mut child = child;
                        child.kill();
                        self.reap_in_background(req.lease_id, child, vmm, None);
                    }
                    TimedOut::EndNow => {
                        self.end_now(req.lease_id, child).await;
                    }
                }
                return Err(BootError::Timeout(req.timeout_ms));
            }
        };
        self.reap_in_background(req.lease_id, child, vmm, Some(lines));
        Ok(Booted {
            pid,
            vmm_spawned_us,
            vcpus_started_us,
            guest_ready_us,
        })
    }

    /// Builds the lease's cgroup (and jail) on the request path and starts the VMM.
    fn spawn_fresh(
        &self,
        req: &BootRequest<'_>,
        limits: &Limits,
        start_us: u64,
        nic: Option<Nic>,
    ) -> Result<Spawned, BootError> {
        let slot = self.isolation.cgroups.create_slot(req.lease_id, limits)?;
        let pipe = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err);
        let _ = std::fs::remove_file(&req.paths.control);
        let spawned = pipe.and_then(|(read_end, write_end)| {
            let events = event_receiver(read_end)?;
            let started = match &self.isolation.jail {
                Some(config) => {
                    self.spawn_jailed(config, req, write_end, start_us, slot.as_ref(), nic)
                }
                None => self.spawn_plain(req, write_end, start_us, slot.as_ref(), nic),
            };
            started.map(|(child, jail)| (child, jail, events))
        });
        match spawned {
            Ok((child, jail, events)) => Ok(Spawned {
                child,
                jail,
                slot,
                events,
            }),
            Err(e) => {
                if let Some(slot) = slot {
                    let _ = slot.remove();
                }
                Err(e)
            }
        }
    }

    /// Starts the VMM in a slot built ahead of time: its cgroup gets the limits that differ
    /// for this lease, and its parked child execs the VMM on the lease's image (with its
    /// root disk: the base and a new overlay owned by the slot's uid, passed in as
    /// detached mounts like the kernel) and NIC. On failure the slot is gone (child, root,
    /// cgroup).
    fn launch_pooled(
        &self,
        ready: ReadySlot,
        req: &BootRequest<'_>,
        limits: &Limits,
        start_us: u64,
        nic: Option<Nic>,
    ) -> Result<Spawned, BootError> {
        let ReadySlot {
            cgroup,
            limits: had,
            jail: parked,
            ..
        } = ready;
        let launched = cgroup
            .as_ref()
            .map_or(Ok(()), |c| c.update_limits(&had, limits))
            .map_err(BootError::from)
            .and_then(|()| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err))
            .and_then(|(read_end, write_end)| {
                let events = event_receiver(read_end)?;
                let _ = std::fs::remove_file(&req.paths.control);
                let disk = match &req.image.rootfs {
                    Some(base) => Some(RootDisk {
                        base: base.clone(),
                        overlay: self
                            .isolation
                            .create_overlay(
                                req.lease_id,
                                Some(parked.uid()),
                                req.snapshot.overlay_seed().as_deref(),
                            )
                            .map_err(BootError::Overlay)?,
                    }),
                    None => None,
                };
                let (args, fds) = self.jailed_launch(req, write_end, start_us, nic)?;
                let initrd = req.image.initrd.as_deref();
                let snapshot = match &req.snapshot {
                    SnapshotUse::RestoreFrom(dir) => Some(dir.as_path()),
                    _ => None,
                };
                let mut parked = parked;
                parked.set_max_file_bytes(self.max_file_bytes(req)?);
                let (child, jail) = parked.launch_restoring(
                    &req.image.kernel,
                    initrd,
                    disk.as_ref(),
                    snapshot,
                    args,
                    fds,
                )?;
                Ok((child, jail, events))
            });
        match launched {
            Ok((child, jail, events)) => Ok(Spawned {
                child: GuestProcess::Jailed(child),
                jail: Some(jail),
                slot: cgroup,
                events,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&req.paths.control);
                if let Some(c) = cgroup {
                    let _ = c.remove();
                }
                Err(e)
            }
        }
    }

    /// Starts the VMM in a fresh jail for the lease, joined to its cgroup before exec. The
    /// control socket is bound here, on the host, and passed in (the jail root is
    /// read-only).
    fn spawn_jailed(
        &self,
        config: &coinop_host::jail::JailConfig,
        req: &BootRequest<'_>,
        events: OwnedFd,
        start_us: u64,
        slot: Option<&CgroupSlot>,
        nic: Option<Nic>,
    ) -> Result<(GuestProcess, Option<Jail>), BootError> {
        let disk = req.image.rootfs.as_ref().map(|base| RootDisk {
            base: base.clone(),
            overlay: self.isolation.overlay_path(req.lease_id),
        });
        let max_file_bytes = self.max_file_bytes(req)?;
        let mut jail = config.prepare_with_extras(
            req.lease_id,
            &req.image.kernel,
            req.image.initrd.as_deref(),
            disk.as_ref(),
            &req.snapshot.jail_extras(),
        )?;
        jail.set_max_file_bytes(max_file_bytes);
        let spawned = match disk {
            Some(_) => self
                .isolation
                .create_overlay(
                    req.lease_id,
                    Some(jail.uid()),
                    req.snapshot.overlay_seed().as_deref(),
                )
                .map(drop)
                .map_err(BootError::Overlay),
            None => Ok(()),
        }
        .and_then(|()| self.spawn_in(&jail, req, events, start_us, slot, nic));
        match spawned {
            Ok(child) => Ok((GuestProcess::Jailed(child), Some(jail))),
            Err(e) => {
                let _ = jail.remove();
                let _ = std::fs::remove_file(&req.paths.control);
                Err(e)
            }
        }
    }

    fn spawn_in(
        &self,
        jail: &Jail,
        req: &BootRequest<'_>,
        events: OwnedFd,
        start_us: u64,
        slot: Option<&CgroupSlot>,
        nic: Option<Nic>,
    ) -> Result<JailedChild, BootError> {
        let (args, fds) = self.jailed_launch(req, events, start_us, nic)?;
        let procs = slot.map(CgroupSlot::procs_files).transpose()?;
        Ok(jail.spawn(args, fds, procs.unwrap_or_default())?)
    }

    /// The largest file `req`'s VMM may write, its RLIMIT_FSIZE
    /// ([`crate::vmm_file_bounds::max_file_bytes`]).
    fn max_file_bytes(&self, req: &BootRequest<'_>) -> Result<u64, BootError> {
        let rootfs_bytes = match &req.image.rootfs {
            Some(base) => Some(std::fs::metadata(base).map_err(BootError::Files)?.len()),
            None => None,
        };
        let snapshot_mem_bytes = matches!(req.snapshot, SnapshotUse::WriteInto(_))
            .then(|| req.mem_mib.saturating_mul(1 << 20));
        Ok(crate::vmm_file_bounds::max_file_bytes(
            self.console_max_bytes,
            rootfs_bytes,
            snapshot_mem_bytes,
        ))
    }

    /// A jailed VMM's arguments (paths as seen inside) and fds: null stdin, the console,
    /// the log, the event pipe, the control socket, bound here on the host, and the tap.
    fn jailed_launch(
        &self,
        req: &BootRequest<'_>,
        events: OwnedFd,
        start_us: u64,
        nic: Option<Nic>,
    ) -> Result<(Vec<OsString>, Vec<OwnedFd>), BootError> {
        let listener =
            std::os::unix::net::UnixListener::bind(&req.paths.control).map_err(BootError::Files)?;
        let null = std::fs::File::open("/dev/null").map_err(BootError::Files)?;
        // 0600, root's: the VMM writes through the fds, tenants read through the API.
        let console = private_file(&req.paths.console).map_err(BootError::Files)?;
        let log = private_file(&req.paths.log).map_err(BootError::Files)?;
        let mut fds: Vec<OwnedFd> = vec![
            null.into(),
            console.into(),
            log.into(),
            events,
            listener.into(),
        ];
        let mac = nic.as_ref().map(|n| n.mac.clone());
        if let Some(nic) = nic {
            fds.push(nic.tap);
        }
        let initrd = req.image.initrd.as_ref().map(|_| Path::new(INITRD_PATH));
        let restore = match req.snapshot {
            SnapshotUse::RestoreFrom(_) => Some(Path::new(SNAPSHOT_PATH)),
            _ => None,
        };
        // After the fds above, whichever of them this VMM has (a restore takes no command
        // line).
        let cmdline_fd = i32::try_from(fds.len()).expect("a handful of fds fit in an i32");
        if restore.is_none() {
            fds.push(cmdline_memfd(req.cmdline).map_err(BootError::Files)?);
        }
        let mut args = common_args(req, Path::new(KERNEL_PATH), initrd, restore, cmdline_fd);
        let disk = req.image.rootfs.as_ref().map(|_| RootDisk {
            base: ROOTFS_PATH.into(),
            overlay: OVERLAY_PATH.into(),
        });
        let rates = self.device_rates.for_lease(req.vcpus);
        args.extend(device_args(disk.as_ref(), mac.as_deref(), &rates));
        args.extend(
            [
                "--serial",
                "stdout",
                "--serial-max-bytes",
                &self.console_max_bytes.to_string(),
                "--control",
                "fd:4",
                "--start-time-us",
                &start_us.to_string(),
            ]
            .map(OsString::from),
        );
        if self.isolation.no_seccomp {
            args.push("--no-seccomp".into());
        }
        Ok((args, fds))
    }

    /// `--no-jail`: the VMM as a plain child in its own session, moved into its cgroup
    /// right after the spawn.
    fn spawn_plain(
        &self,
        req: &BootRequest<'_>,
        write_end: OwnedFd,
        start_us: u64,
        slot: Option<&CgroupSlot>,
        nic: Option<Nic>,
    ) -> Result<(GuestProcess, Option<Jail>), BootError> {
        let log = private_file(&req.paths.log).map_err(pipe_err)?;
        // The VMM opens the console by path (truncating, keeping the mode): 0600 first.
        drop(private_file(&req.paths.console).map_err(pipe_err)?);
        let disk = match &req.image.rootfs {
            Some(base) => Some(RootDisk {
                base: base.clone(),
                overlay: self
                    .isolation
                    .create_overlay(req.lease_id, None, req.snapshot.overlay_seed().as_deref())
                    .map_err(BootError::Overlay)?,
            }),
            None => None,
        };
        // Above every fd the child places, so placing the event pipe cannot overwrite it.
        // (The event pipe is placed first: later placements may overwrite its source.)
        let tap = nic.as_ref().map(|n| high_copy(n.tap.as_fd())).transpose()?;
        let tap_fd = tap.as_ref().map(AsRawFd::as_raw_fd);
        let mut cmd = tokio::process::Command::new(&self.vmm_bin);
        let restore = match &req.snapshot {
            SnapshotUse::RestoreFrom(dir) => Some(dir.as_path()),
            _ => None,
        };
        // Above every fd the child places too, like the tap's copy.
        let cmdline = match restore {
            Some(_) => None,
            None => Some(high_copy(
                cmdline_memfd(req.cmdline)
                    .map_err(BootError::Files)?
                    .as_fd(),
            )?),
        };
        let cmdline_src = cmdline.as_ref().map(AsRawFd::as_raw_fd);
        cmd.args(common_args(
            req,
            &req.image.kernel,
            req.image.initrd.as_deref(),
            restore,
            CMDLINE_FD,
        ))
        .args(device_args(
            disk.as_ref(),
            nic.as_ref().map(|n| n.mac.as_str()),
            &self.device_rates.for_lease(req.vcpus),
        ))
        .arg("--serial")
        .arg(format!("file:{}", req.paths.console.display()))
        .arg("--serial-max-bytes")
        .arg(self.console_max_bytes.to_string())
        .arg("--control")
        .arg(&req.paths.control)
        .arg("--start-time-us")
        .arg(start_us.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(false);
        if self.isolation.no_seccomp {
            cmd.arg("--no-seccomp");
        }
        let write_fd = write_end.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (setsid, dup2, fcntl) on fds we own (the event pipe's
        // write end and the high copies of the tap and the command line, all alive until
        // after the spawn).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if write_fd == EVENTS_FD {
                    // dup2 onto itself keeps O_CLOEXEC: clear it explicitly.
                    if libc::fcntl(EVENTS_FD, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(write_fd, EVENTS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 leaves the copy without close-on-exec: the VMM inherits it.
                if let Some(tap) = tap_fd {
                    if libc::dup2(tap, TAP_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(cmdline) = cmdline_src {
                    if libc::dup2(cmdline, CMDLINE_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| BootError::Spawn {
            bin: self.vmm_bin.clone(),
            source,
        })?;
        drop(write_end);
        drop(tap);
        drop(cmdline);
        if let (Some(slot), Some(pid)) = (slot, child.id()) {
            if let Err(e) = slot.add_pid(pid) {
                let _ = child.start_kill();
                return Err(e.into());
            }
        }
        Ok((GuestProcess::Plain(child), None))
    }

    /// Removes the lease's jail and cgroup off the async runtime's threads.
    async fn isolation_release(&self, lease_id: &str) {
        let isolation = Arc::clone(&self.isolation);
        let id = lease_id.to_string();
        let _ = tokio::task::spawn_blocking(move || isolation.release(&id)).await;
    }

    /// Follows the rest of the event stream and reaps the process (teardown stays off the
    /// request path), removes its jail and cgroup; a guest that ends is reported to the
    /// scheduler.
    fn reap_in_background(
        &self,
        lease_id: &str,
        child: GuestProcess,
        vmm: Option<VmmProcess>,
        lines: Option<EventLines>,
    ) {
        let exits = self.exits.clone();
        let isolation = Arc::clone(&self.isolation);
        let lease_id = lease_id.to_string();
        locked(&self.own_children).insert(lease_id.clone());
        tokio::spawn(async move {
            let mut reason = None;
            let mut code = None;
            if let Some(mut lines) = lines {
                match lines.follow_to_exit().await {
                    Ok(exit) => {
                        if let Some((why, c)) = exit {
                            reason = Some(why);
                            code = Some(c);
                        }
                    }
                    // Dropped here: the process's own end is what the lease waits for.
                    Err(why) => tracing::error!(lease = %lease_id, why,
                        "no longer reading the VMM's events: it wrote what an honest one does not"),
                }
            }
            let (exit_code, status) = child.wait().await;
            let cgroup_cpu_us = isolation.cgroup_cpu_us(&lease_id);
            let id = lease_id.clone();
            let _ = tokio::task::spawn_blocking(move || isolation.release(&id)).await;
            tracing::info!(lease = %lease_id, %status, ?reason, ?cgroup_cpu_us, "guest VMM exited");
            let _ = exits.send(GuestExit {
                lease_id,
                reason: reason.unwrap_or_else(|| "exited".into()),
                code: code.or(exit_code),
                vmm,
            });
        });
    }
}

/// The read end of a VMM's event pipe as the runtime reads it (nonblocking, registered).
fn event_receiver(read_end: OwnedFd) -> Result<tokio::net::unix::pipe::Receiver, BootError> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).map_err(pipe_err)
}

/// Reads events until `guest_ready` or whatever `req.ready_at` names (µs from arrival of
/// `vcpus_started` and of that event; `base_us` is when the VMM's event clock started),
/// answering `awaiting_personalisation` with the request's personalisation line. From the
/// line's send (`line_sent`, if the caller sent it) the guest has
/// `req.personalise_timeout_ms` more.
async fn wait_ready(
    lines: &mut EventLines,
    req: &BootRequest<'_>,
    base_us: u64,
    isolation: &Isolation,
    mut line_sent: Option<Instant>,
) -> Result<(Option<u64>, u64), BootError> {
    let lease_id = req.lease_id;
    // A VMM started ahead of its lease reports times from before the arrival: those are 0.
    let since_arrival = |t_us: u64| base_us.saturating_add(t_us).saturating_sub(req.arrival_us);
    let bound = Duration::from_millis(req.personalise_timeout_ms);
    let mut vcpus_started = None;
    loop {
        let next = lines.next_line();
        let line = match line_sent {
            // `next_line` is cancel-safe; past the bound the VMM is ended anyway.
            Some(sent) => tokio::time::timeout_at((sent + bound).into(), next)
                .await
                .map_err(|_| BootError::PersonaliseTimeout(req.personalise_timeout_ms))?,
            None => next.await,
        };
        let line = line.map_err(pipe_err)?;
        let Some(line) = line else {
            return Err(BootError::Exited {
                reason: "event stream closed".into(),
                code: None,
            });
        };
        let Ok(ev) = Event::from_line(&line) else {
            tracing::warn!(lease = lease_id, line, "unparsable VMM event");
            continue;
        };
        // Each event's time from the create's arrival: the per-phase figures of a boot
        // (the lab's restore step prints them).
        tracing::info!(
            lease = lease_id,
            since_arrival_us = since_arrival(ev.t_us()),
            event = %line.trim(),
            "VMM event"
        );
        match ev {
            Event::VcpusStarted { t_us, .. } => vcpus_started = Some(since_arrival(t_us)),
            // An agent image's guest owes the line before it is ready: ready without it,
            // it has neither the lease's address nor its keys (its tenant was told a host
            // key it does not hold), so the boot failed and is refunded, not billed.
            Event::GuestReady { .. } if req.personalise.is_some() && line_sent.is_none() => {
                return Err(BootError::ReadyUnpersonalised)
            }
            Event::GuestReady { t_us, .. } => return Ok((vcpus_started, since_arrival(t_us))),
            Event::AwaitingPersonalisation { t_us } => {
                if req.ready_at == ReadyPoint::AwaitingPersonalisation {
                    return Ok((vcpus_started, since_arrival(t_us)));
                }
                if let Some(p) = &req.personalise {
                    send_personalisation(req, p, isolation).await?;
                    line_sent = Some(Instant::now());
                } else {
                    tracing::warn!(
                        lease = lease_id,
                        "the guest asks for a personalisation but its image is not declared \
                         agent: it will not get one"
                    );
                }
            }
            Event::Exit { reason, code, .. } => {
                return Err(BootError::Exited {
                    reason: reason.as_str().to_string(),
                    code: Some(i64::from(code)),
                })
            }
            Event::VmCreated { .. }
            | Event::Restored { .. }
            | Event::Warning { .. }
            | Event::Personalised { .. } => {}
        }
    }
}

/// Sends the guest of `req` its personalisation line `p`, its host key on record first.
async fn send_personalisation(
    req: &BootRequest<'_>,
    p: &Personalisation,
    isolation: &Isolation,
) -> Result<(), BootError> {
    let lease_id = req.lease_id;
    crate::fault::hit(crate::fault::point::CREATE_AWAITING_PERSONALISATION);
    crate::fault::delay(crate::fault::point::CREATE_AWAITING_PERSONALISATION).await;
    let line = p.line();
    // The key on record before the line leaves: a coinopd that dies after sending leaves
    // its successor the key the guest got.
    isolation.set_host_key(lease_id, &p.host_key_openssh(), &line);
    let request = vmm_protocol::Request::Personalise { line };
    vmm_protocol::client::request(&req.paths.control, &request)
        .await
        .map_err(BootError::Personalise)?;
    crate::fault::hit(crate::fault::point::CREATE_PERSONALISATION_SENT);
    tracing::info!(
        lease = lease_id,
        sent_us = monotonic_us().saturating_sub(req.arrival_us),
        "personalisation sent"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn device_args_carry_the_leases_rates() {
        let disk = RootDisk {
            base: ROOTFS_PATH.into(),
            overlay: OVERLAY_PATH.into(),
        };
        let rates = DeviceRates::default().for_lease(2);
        let args = strings(device_args(Some(&disk), Some("02:c0:1e:00:00:00"), &rates));
        assert_eq!(
            args,
            [
                "--disk".to_string(),
                format!(
                    "path={ROOTFS_PATH},cow={OVERLAY_PATH},bw={},iops=2000",
                    2u64 * (64 << 20)
                ),
                "--net".to_string(),
                "fd=5,mac=02:c0:1e:00:00:00,bw=25000000".to_string(),
            ]
        );
        let unlimited = DeviceRates {
            disk_bytes_per_s: 0,
            disk_iops: 0,
            net_bytes_per_s: 0,
        }
        .for_lease(2);
        let args = strings(device_args(Some(&disk), Some("m"), &unlimited));
        assert_eq!(args[1], format!("path={ROOTFS_PATH},cow={OVERLAY_PATH}"));
        assert_eq!(args[3], "fd=5,mac=m");
    }
}
