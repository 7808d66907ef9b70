//! Runs one child process (a VMM) and records when each of its output lines arrived, when it
//! exited, and its peak RSS, with a deadline so a stuck guest can't stall the harness. An
//! optional driver (Firecracker's API calls) runs alongside; if it fails the child is killed.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::clock::monotonic_us;
use crate::error::BenchError;

/// A line of output and the monotonic µs at which the harness read it.
#[derive(Clone, Debug)]
pub struct TimedLine {
    pub at_us: u64,
    pub text: String,
}

#[derive(Debug)]
pub struct ChildRun {
    /// Monotonic µs just before the spawn: the origin of every figure.
    pub spawned_at_us: u64,
    pub stdout: Vec<TimedLine>,
    pub stderr: Vec<TimedLine>,
    /// Monotonic µs when the process was reaped.
    pub reaped_at_us: u64,
    pub status: ExitStatus,
    /// Peak resident set size: the child's VmHWM read at its exit event or just before the
    /// harness killed it. `None` when the process was gone before the read: the reaped
    /// child's rusage is no substitute, it is floored at the harness's own RSS (see
    /// `vm_hwm_kib`).
    pub max_rss_kib: Option<u64>,
    /// True when the harness killed it: the deadline passed or `kill_after` matched.
    pub killed: bool,
}

impl ChildRun {
    /// µs from spawn to the first stdout line containing `marker`.
    pub fn stdout_marker_us(&self, marker: &str) -> Option<u64> {
        self.stdout
            .iter()
            .find(|l| l.text.contains(marker))
            .map(|l| l.at_us.saturating_sub(self.spawned_at_us))
    }
}

/// What ends a run early.
pub struct Deadline {
    pub timeout: Duration,
    /// Kill the child as soon as a stdout line contains this (for peers whose guest can't end
    /// the VM by itself).
    pub kill_after: Option<String>,
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// What the collector hears: a line, or the driver's outcome.
enum Msg {
    Line(Stream, TimedLine),
    Driven(Result<(), String>),
    /// A pipe reached EOF (the driver may still hold a sender, so the channel stays open).
    Eof,
}

/// Work done against the running child (e.g. configuring it over its API socket).
pub type Driver = Box<dyn FnOnce() -> Result<(), String> + Send>;

pub fn run_driven(
    mut cmd: Command,
    deadline: &Deadline,
    label: &str,
    driver: Option<Driver>,
) -> Result<ChildRun, BenchError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned_at_us = monotonic_us();
    let mut child = cmd.spawn().map_err(|e| BenchError::Spawn {
        what: label.to_string(),
        source: e,
    })?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    let readers = [
        spawn_reader(child.stdout.take(), Stream::Out, tx.clone()),
        spawn_reader(child.stderr.take(), Stream::Err, tx.clone()),
    ];
    let driving = driver.map(|d| {
        thread::spawn(move || {
            let _ = tx.send(Msg::Driven(d()));
        })
    });
    let open = readers.iter().flatten().count();
    let c = collect(pid, &rx, deadline, spawned_at_us, open);
    let (status, reaped_at_us) = reap(pid, label)?;
    let max_rss_kib = c.hwm_kib;
    for r in readers.into_iter().flatten() {
        // A reader ends at EOF, which the child's exit guarantees.
        let _ = r.join();
    }
    if let Some(d) = driving {
        // The driver's own timeout bounds it.
        let _ = d.join();
    }
    // Drain what was sent after the collector stopped listening.
    let (mut stdout, mut stderr, mut drive_error) = (c.out, c.err, c.drive_error);
    for msg in rx.try_iter() {
        match msg {
            Msg::Line(Stream::Out, line) => stdout.push(line),
            Msg::Line(Stream::Err, line) => stderr.push(line),
            Msg::Driven(Err(e)) => drive_error = Some(e),
            Msg::Driven(Ok(())) | Msg::Eof => {}
        }
    }
    if let Some(detail) = drive_error {
        return Err(BenchError::Run {
            what: label.to_string(),
            detail,
        });
    }
    let killed = c.killed;
    Ok(ChildRun {
        spawned_at_us,
        stdout,
        stderr,
        reaped_at_us,
        status,
        max_rss_kib,
        killed,
    })
}

fn spawn_reader<R: Read + Send + 'static>(
    pipe: Option<R>,
    stream: Stream,
    tx: mpsc::Sender<Msg>,
) -> Option<thread::JoinHandle<()>> {
    let pipe = pipe?;
    Some(thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(text) = line else { break };
            let timed = TimedLine {
                at_us: monotonic_us(),
                text,
            };
            if tx.send(Msg::Line(stream, timed)).is_err() {
                break;
            }
        }
        let _ = tx.send(Msg::Eof);
    }))
}

struct Collected {
    out: Vec<TimedLine>,
    err: Vec<TimedLine>,
    killed: bool,
    drive_error: Option<String>,
    /// The process's own VmHWM, read while it was still alive.
    hwm_kib: Option<u64>,
}

/// The last line a coinop-vmm prints while its memory is all still mapped.
const EXIT_EVENT: &str = r#""event":"exit""#;

/// Peak RSS of `pid`'s current image (VmHWM in /proc/PID/status). The rusage of a reaped
/// child can't be used for this: at exec the kernel folds the pre-exec (vforked) image's
/// high-water mark, i.e. the harness's own RSS, into it, which floors every figure at ours.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Gathers lines until both pipes close, killing the child at the deadline, the marker, or
/// a failed driver.
fn collect(
    pid: libc::pid_t,
    rx: &mpsc::Receiver<Msg>,
    deadline: &Deadline,
    start_us: u64,
    mut pipes_open: usize,
) -> Collected {
    let (mut out, mut err, mut killed) = (Vec::new(), Vec::new(), false);
    let mut drive_error = None;
    let mut hwm_kib = None;
    let limit_us = start_us + deadline.timeout.as_micros() as u64;
    while pipes_open > 0 {
        let left = limit_us.saturating_sub(monotonic_us());
        match rx.recv_timeout(Duration::from_micros(left.max(1))) {
            Ok(Msg::Line(Stream::Out, line)) => {
                let hit = deadline
                    .kill_after
                    .as_deref()
                    .is_some_and(|m| line.text.contains(m));
                out.push(line);
                if hit && !killed {
                    hwm_kib = vm_hwm_kib(pid).or(hwm_kib);
                    kill(pid);
                    killed = true;
                }
            }
            Ok(Msg::Line(Stream::Err, line)) => {
                if line.text.contains(EXIT_EVENT) {
                    hwm_kib = vm_hwm_kib(pid).or(hwm_kib);
                }
                err.push(line);
            }
            Ok(Msg::Driven(Err(e))) => {
                drive_error = Some(e);
                if !killed {
                    kill(pid);
                    killed = true;
                }
            }
            Ok(Msg::Driven(Ok(()))) => {}
            Ok(Msg::Eof) => pipes_open -= 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !killed {
                    kill(pid);
                    killed = true;
                }
            }
        }
    }
    Collected {
        out,
        err,
        killed,
        drive_error,
        hwm_kib,
    }
}

fn kill(pid: libc::pid_t) {
    // SAFETY: plain syscall on the pid of a child we have not reaped yet, so it can't have
    // been recycled for another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Waits for the child (retrying on EINTR); returns its status and when it was reaped.
fn reap(pid: libc::pid_t, label: &str) -> Result<(ExitStatus, u64), BenchError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is valid for writes; `pid` is our own, not yet reaped child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(BenchError::Wait {
                what: label.to_string(),
                source: e,
            });
        }
    }
    Ok((ExitStatus::from_raw(status), monotonic_us()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_live_process_high_water_mark() {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let kib = vm_hwm_kib(me).expect("our own /proc status has VmHWM");
        assert!(
            kib > 100,
            "a Rust test binary maps more than 100 KiB, got {kib}"
        );
        assert_eq!(vm_hwm_kib(-1), None, "no such process");
    }
}
