//! A lease's VMM process, found again by something that survives a restart of coinopd: its
//! pid together with its start time (`/proc/PID/stat` field 22, clock ticks since boot),
//! both recorded in the ledger when the VMM is spawned. A pid alone is not an identity: once
//! the VMM is gone the kernel may give the number to any new process, and signalling that
//! one would kill a stranger. A start time cannot repeat for one pid, so pid + start time
//! name exactly one process for the life of the host.
//!
//! Signals go through a pidfd opened *before* the start time is checked: the pidfd pins the
//! process it was opened for, so even a pid reused between the check and the signal cannot
//! receive it. A zombie (exited, not reaped: `Z`) or dead (`X`) process counts as gone.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;

/// The VMM's process name (`comm`), jailed or not. Only used for pids recorded without a
/// start time (ledgers written before start times were recorded).
const VMM_COMM: &str = "coinop-vmm";

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    /// The state letter: `R`, `S`, `D`, `T` (stopped, e.g. SIGSTOP), `Z` (zombie), `X`...
    pub state: char,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_ticks: u64,
    /// Field 43: time its threads spent running a guest's vCPUs (the kernel's count), in
    /// clock ticks; `None` from a kernel that does not report it.
    pub guest_ticks: Option<u64>,
}

impl ProcStat {
    /// Reads `/proc/PID/stat`; `None` when there is no such process.
    pub fn read(pid: i32) -> Option<ProcStat> {
        if pid <= 0 {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ProcStat::parse(&text)
    }

    /// Parses `pid (comm) state ppid ... starttime ...`; comm may itself hold spaces and
    /// `)`, so the fields after it are counted from the last `)`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let mut rest = text.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        // `state` is field 3; starttime is field 22, i.e. 19 fields further on.
        let start_ticks = rest.nth(18)?.parse().ok()?;
        // guest_time is field 43, 21 fields after starttime.
        let guest_ticks = rest.nth(20).and_then(|f| f.parse().ok());
        Some(ProcStat {
            comm,
            state,
            start_ticks,
            guest_ticks,
        })
    }

    /// Whether the process still runs (a zombie or a dead task does not).
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// A VMM process as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmProcess {
    pub pid: i32,
    /// `None` only for a pid recorded before start times were (then the process name is
    /// checked instead, which cannot tell two VMMs apart).
    pub start_ticks: Option<u64>,
}

impl VmmProcess {
    /// The process `pid` is now, with its start time; `None` when there is none.
    pub fn of(pid: i32) -> Option<VmmProcess> {
        let stat = ProcStat::read(pid)?;
        Some(VmmProcess {
            pid,
            start_ticks: Some(stat.start_ticks),
        })
    }

    /// The kernel's count of the time this very process (same pid and start time) spent
    /// running its guest's vCPUs, µs; `None` when it is gone or the kernel does not say.
    pub fn guest_time_us(&self) -> Option<u64> {
        let stat = ProcStat::read(self.pid).filter(|s| self.matches(s))?;
        let ticks = stat.guest_ticks?;
        let per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)?;
        Some(ticks.saturating_mul(1_000_000) / per_s)
    }

    /// Whether this very process still runs: same pid and start time, not a zombie.
    pub fn is_running(&self) -> bool {
        ProcStat::read(self.pid).is_some_and(|s| self.matches(&s) && s.is_live())
    }

    /// Whether `stat` (of this pid) is this process.
    fn matches(&self, stat: &ProcStat) -> bool {
        match self.start_ticks {
            Some(t) => stat.start_ticks == t,
            None => stat.comm == VMM_COMM,
        }
    }

    /// Sends `signal` to this process if it is still this process; `Ok(false)` when it is
    /// gone (or the pid now names another process, which is left alone).
    pub fn signal(&self, signal: Signal) -> std::io::Result<bool> {
        let Some(pidfd) = pidfd_open(self.pid)? else {
            return Ok(false);
        };
        // Checked after the pidfd pins the process: what passes here is what gets the signal.
        if !ProcStat::read(self.pid).is_some_and(|s| self.matches(&s) && s.is_live()) {
            return Ok(false);
        }
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo (NULL) and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // It ended after the check.
            Some(libc::ESRCH) => Ok(false),
            _ => Err(e),
        }
    }

    /// SIGKILL, if it is still this process (see [`VmmProcess::signal`]).
    pub fn kill(&self) -> std::io::Result<bool> {
        self.signal(Signal::SIGKILL)
    }

    /// SIGKILLs it and waits (up to a second) until it is gone; whether it was killed.
    pub fn kill_and_wait(&self) -> bool {
        if !matches!(self.kill(), Ok(true)) {
            return false;
        }
        for _ in 0..100 {
            if !self.is_running() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    /// `PID START_TICKS` and a newline: how a marker file names a VMM that no ledger row
    /// records (a warm restore's, a golden snapshot build's).
    pub fn marker_text(&self) -> String {
        format!("{} {}\n", self.pid, self.start_ticks.unwrap_or(0))
    }

    /// The VMM a marker file's text names (see [`VmmProcess::marker_text`]); `None` for
    /// anything else, such as the empty marker written before a spawn.
    pub fn from_marker(text: &str) -> Option<VmmProcess> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_ticks = words.next()?.parse().ok()?;
        Some(VmmProcess {
            pid,
            start_ticks: Some(start_ticks),
        })
    }
}

/// A pidfd for `pid`; `None` when there is no such process.
fn pidfd_open(pid: i32) -> std::io::Result<Option<OwnedFd>> {
    if pid <= 0 {
        return Ok(None);
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns; the syscall returns an int, so
    // it fits.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// The pids in the cgroup directories `dirs` (their `cgroup.procs`), for a lease whose VMM
/// pid was never recorded (coinopd died between the spawn and the record).
pub fn cgroup_pids(dirs: &[std::path::PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (coinop-vmm) S 1 4242 4242 0 -1 4194560 2361 0 0 0 15 8 0 0 \
                        20 0 3 0 987654 145608704 3366 18446744073709551615 1 1 0 0 0 0 0 \
                        4096 17415 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn the_start_time_is_field_22_and_comm_may_hold_spaces_and_parens() {
        let s = ProcStat::parse(STAT).expect("parses");
        assert_eq!(
            (s.comm.as_str(), s.state, s.start_ticks),
            ("coinop-vmm", 'S', 987654)
        );
        let odd = STAT.replace("(coinop-vmm)", "(a) b (c)");
        let s = ProcStat::parse(&odd).expect("parses");
        assert_eq!((s.comm.as_str(), s.start_ticks), ("a) b (c", 987654));
        assert!(ProcStat::parse("4242 (x) S 1 2").is_none());
        assert!(ProcStat::parse("garbage").is_none());
    }

    #[test]
    fn the_guest_time_is_field_43() {
        assert_eq!(ProcStat::parse(STAT).expect("parses").guest_ticks, Some(0));
        let busy = STAT.replace(" 17 1 0 0 0 0 0", " 17 1 0 0 0 1234 0");
        assert_eq!(
            ProcStat::parse(&busy).expect("parses").guest_ticks,
            Some(1234)
        );
        // An old kernel's shorter line: no guest time, still a process.
        let old: String = STAT.split(' ').take(30).collect::<Vec<_>>().join(" ");
        let s = ProcStat::parse(&old).expect("parses");
        assert_eq!((s.start_ticks, s.guest_ticks), (987654, None));
    }

    #[test]
    fn a_zombie_is_not_live() {
        let z = ProcStat::parse(&STAT.replace(") S ", ") Z ")).expect("parses");
        assert!(!z.is_live());
        let t = ProcStat::parse(&STAT.replace(") S ", ") T ")).expect("parses");
        assert!(t.is_live(), "a SIGSTOPped process still exists");
    }

    #[test]
    fn this_process_is_itself_and_not_with_another_start_time() {
        let me = VmmProcess::of(std::process::id() as i32).expect("self");
        assert!(me.is_running());
        let other = VmmProcess {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me
        };
        assert!(!other.is_running());
        assert!(!other.signal(Signal::SIGCONT).expect("signal"));
        // Without a start time only a coinop-vmm counts.
        let legacy = VmmProcess {
            start_ticks: None,
            ..me
        };
        assert!(!legacy.is_running());
        // Signal 0 would do; SIGCONT to ourselves is harmless and proves the pidfd path.
        assert!(me.signal(Signal::SIGCONT).expect("signal"));
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let p = VmmProcess::of(child.id() as i32).expect("child");
        child.wait().expect("wait");
        assert!(!p.is_running());
        assert!(!p.kill().expect("kill"));
    }

    #[test]
    fn an_unreaped_child_is_a_zombie_and_gone() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let p = VmmProcess::of(child.id() as i32).expect("child");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while ProcStat::read(p.pid).is_some_and(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!p.is_running(), "a zombie counts as gone");
        child.wait().expect("reap");
    }
}
