//! Teardown for tests that start coinopd: a state directory that, when dropped (also when
//! the test panics), kills every coinop-vmm the daemons on it started and removes their
//! cgroups and those of the slots they built ahead. Guests deliberately outlive a coinopd (re-adoption), so ending the daemon is
//! not enough; the state directory is what a test's guests belong to.
//!
//! A VMM belongs to the directory when its command line names a path inside it (an
//! unjailed VMM's control socket and console), it sits in the cgroup of one of the
//! directory's leases or warm restores (a jailed VMM), or the ledger or the marker of a
//! warm restore or of a golden snapshot build records its pid and start time (the pid
//! alone would name another test's VMM once the pid is reused: pid_max can be 32768).
//! Other tests' VMMs (other binaries run in parallel) never match.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coinopd::guest_stop::vmm_running;
use coinopd::vmm_process::VmmProcess;

/// How long killed VMMs get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A temporary coinopd state directory that kills its guests when dropped.
pub struct StateDir {
    dir: tempfile::TempDir,
}

impl StateDir {
    pub fn new() -> StateDir {
        StateDir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let killed = reap_guests(self.dir.path());
        if !killed.is_empty() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "teardown: killed coinop-vmm pid(s) {killed:?} still running for {}",
                self.dir.path().display()
            );
        }
    }
}

/// The leases in the state directory's ledger with their VMM when recorded (none
/// without a ledger), and the warm restores a daemon keeps ahead of leases (`warm/ID`
/// markers: `PID START_TICKS` once restored), which no ledger holds.
pub fn leases(state_dir: &Path) -> Vec<(String, Option<VmmProcess>)> {
    let mut found = ledger_leases(state_dir);
    if let Ok(markers) = std::fs::read_dir(state_dir.join("warm")) {
        for marker in markers.flatten() {
            let vmm = std::fs::read_to_string(marker.path())
                .ok()
                .and_then(|text| VmmProcess::from_marker(&text));
            found.push((marker.file_name().to_string_lossy().into_owned(), vmm));
        }
    }
    found
}

/// The VMMs of golden snapshot builds a daemon named in their markers
/// (`snapshots/IMAGE/.build-KEY.vmm`). By pid only: a build's cgroup is no lease's.
fn golden_build_vmms(state_dir: &Path) -> Vec<VmmProcess> {
    coinopd::golden_snapshot::build_markers(&state_dir.join("snapshots"))
        .into_iter()
        .filter_map(|(marker, _)| std::fs::read_to_string(marker).ok())
        .filter_map(|text| VmmProcess::from_marker(&text))
        .collect()
}

fn ledger_leases(state_dir: &Path) -> Vec<(String, Option<VmmProcess>)> {
    let path = state_dir.join("ledger.db");
    let Ok(db) =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut q) = db.prepare("SELECT id, pid, vmm_start_ticks FROM leases") else {
        return Vec::new();
    };
    q.query_map([], |r| {
        let vmm = r.get::<_, Option<i32>>(1)?.map(|pid| VmmProcess {
            pid,
            start_ticks: r.get::<_, Option<i64>>(2).ok().flatten().map(|t| t as u64),
        });
        Ok((r.get::<_, String>(0)?, vmm))
    })
    .map(|rows| rows.filter_map(Result::ok).collect())
    .unwrap_or_default()
}

/// Pids of the running coinop-vmm processes that belong to `state_dir`.
pub fn running_vmms(state_dir: &Path) -> Vec<i32> {
    let mut leases = leases(state_dir);
    // Matched by their process alone (an id no cgroup has).
    leases.extend(
        golden_build_vmms(state_dir)
            .into_iter()
            .map(|v| (String::new(), Some(v))),
    );
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| vmm_running(pid) && belongs_to(pid, state_dir, &leases))
        .collect()
}

fn belongs_to(pid: i32, state_dir: &Path, leases: &[(String, Option<VmmProcess>)]) -> bool {
    // This very process: its pid and start time (a recorded VMM that ended may have left
    // its pid to another test's).
    if leases
        .iter()
        .any(|(_, v)| v.as_ref().is_some_and(|v| v.pid == pid && v.is_running()))
    {
        return true;
    }
    let dir = state_dir.as_os_str().as_encoded_bytes();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.windows(dir.len()).any(|w| w == dir) {
        return true;
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    cgroups.lines().any(|line| {
        leases
            .iter()
            .any(|(id, _)| line.ends_with(&format!("/{}/{id}", coinopd::isolation::CGROUP_PARENT)))
    })
}

/// Kills every VMM of `state_dir`, waits for them to go and removes the leases' cgroups;
/// returns the pids it killed.
pub fn reap_guests(state_dir: &Path) -> Vec<i32> {
    let pids = running_vmms(state_dir);
    for &pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + KILL_WAIT;
    while pids.iter().any(|&p| vmm_running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_cgroups(state_dir);
    pids
}

/// Removes the (now empty) cgroups a daemon left for the directory: its leases', its warm
/// restores', its slot pool's (`pool/ID` markers: a killed daemon leaves its parked slots)
/// and every jailed VMM's (`jail/ID` roots, golden snapshot builds' too).
fn remove_cgroups(state_dir: &Path) {
    let mut ids: Vec<String> = leases(state_dir).into_iter().map(|(id, _)| id).collect();
    for dir in ["pool", "jail"] {
        if let Ok(entries) = std::fs::read_dir(state_dir.join(dir)) {
            ids.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from)),
            );
        }
    }
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return;
    }
    let cgroups = coinop_host::cgroup::detect(coinopd::isolation::CGROUP_PARENT);
    for id in ids {
        if let Ok(Some(slot)) = cgroups.reopen_slot(&id) {
            let dirs: Vec<PathBuf> = slot.dirs().to_vec();
            if slot.remove().is_err() {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "teardown: cannot remove cgroup {dirs:?}");
            }
        }
    }
}
