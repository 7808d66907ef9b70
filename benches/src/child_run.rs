//! Runs one child process (a VMM): records when each of its output lines arrived, when its
//! serial console showed the guest's ready marker and the process's peak RSS at that
//! moment, and when it exited, with a deadline so a stuck guest can't stall the harness. An
//! optional driver (Firecracker's API calls) runs alongside; if it fails the child is
//! killed, a kill at the ready marker waits for the driver to finish first, and once the
//! child is reaped a driver still waiting for it is cancelled. A driver's failure is part of
//! the returned run, so the caller can judge it with the child's exit status and output.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use crate::clock::monotonic_us;
use crate::console_scan::{ForeignLog, MarkerScanner};
use crate::error::BenchError;
use crate::proc_stats;

#[derive(Debug)]
pub struct ChildRun {
    /// The child's pid, already reaped: only for messages, it may belong to another
    /// process by now.
    pub pid: u32,
    /// Monotonic µs just before the spawn: the origin of every figure.
    pub spawned_at_us: u64,
    /// The console (stdout) cut at newlines, for diagnostics; the ready marker is matched
    /// on the byte stream instead (see [`crate::console_scan`]).
    pub stdout: Vec<String>,
    /// coinop-vmm's events and every engine's log or errors.
    pub stderr: Vec<String>,
    /// Monotonic µs of the stdout read that completed the ready marker.
    pub ready_at_us: Option<u64>,
    /// The process's VmHWM (peak RSS so far) read right after that read, in the thread that
    /// made it. `None` when the marker never came or the process had already lost its
    /// memory (exiting) by then.
    pub hwm_at_ready_kib: Option<u64>,
    /// Monotonic µs when the process was reaped.
    pub reaped_at_us: u64,
    pub status: ExitStatus,
    /// True when the harness killed it: the deadline passed, the ready marker came with
    /// [`ReadyWatch::kill`], or the driver failed. (A SIGKILL sent to a child that had
    /// already exited by itself does not change its `status`.)
    pub killed: bool,
    /// The driver's failure, if it had one (cancelled included: the child was reaped while
    /// the driver still waited for it).
    pub drive_error: Option<String>,
}

impl ChildRun {
    /// µs from spawn to the ready marker.
    pub fn ready_us(&self) -> Option<u64> {
        self.ready_at_us
            .map(|at| at.saturating_sub(self.spawned_at_us))
    }

    /// Whether the child ended by itself with exit 0 (a harness kill gives SIGKILL, except
    /// on a child that had already exited).
    pub fn exited_cleanly(&self) -> bool {
        self.status.code() == Some(0)
    }
}

/// What the harness watches for while the child runs.
pub struct Watch {
    /// The child is killed when this much time has passed since the spawn.
    pub timeout: Duration,
    /// The guest's ready marker on stdout.
    pub ready: Option<ReadyWatch>,
}

pub struct ReadyWatch {
    pub marker: String,
    /// The engine's own log records that may land in the console (skipped when matching).
    pub foreign_log: Option<ForeignLog>,
    /// Kill the child at the marker (for peers whose guest can't end the VM by itself), but
    /// only once the driver has finished: killing Firecracker before it has answered
    /// `PUT /actions` fails the run for nothing.
    pub kill: bool,
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// What the collector hears.
enum Msg {
    Line(Stream, String),
    /// The ready marker was completed by the read at `at_us`; VmHWM read right after it.
    Ready {
        at_us: u64,
        hwm_kib: Option<u64>,
    },
    Driven(Result<(), String>),
    /// A pipe reached EOF (the driver may still hold a sender, so the channel stays open).
    Eof,
}

/// Work done against the running child (e.g. configuring it over its API socket). The flag
/// is set once the child has been reaped: a driver still waiting for the child (e.g. for
/// its socket to accept) must then give up rather than wait out its own timeout.
pub type Driver = Box<dyn FnOnce(&AtomicBool) -> Result<(), String> + Send>;

/// Spawns `cmd` and watches it until it is reaped. With `start_time_arg` (coinop-vmm's
/// `--start-time-us`), the flag and [`ChildRun::spawned_at_us`] are appended to the command
/// just before the spawn, so the child's own event times and the harness's figures count
/// from the same instant.
pub fn run_driven(
    mut cmd: Command,
    watch: &Watch,
    label: &str,
    start_time_arg: Option<&str>,
    driver: Option<Driver>,
) -> Result<ChildRun, BenchError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = cmd.get_program().to_owned();
    let spawned_at_us = monotonic_us();
    if let Some(flag) = start_time_arg {
        cmd.arg(flag).arg(spawned_at_us.to_string());
    }
    let mut child = cmd.spawn().map_err(|e| BenchError::Spawn {
        what: format!("{label} ({})", program.to_string_lossy()),
        source: e,
    })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let scanner = watch
        .ready
        .as_ref()
        .map(|r| MarkerScanner::new(&r.marker, r.foreign_log));
    let readers = [
        child
            .stdout
            .take()
            .map(|p| spawn_console_reader(p, pid, scanner, tx.clone())),
        child
            .stderr
            .take()
            .map(|p| spawn_line_reader(p, Stream::Err, tx.clone())),
    ];
    let has_driver = driver.is_some();
    let reaped = Arc::new(AtomicBool::new(false));
    let driving = driver.map(|d| {
        let reaped = Arc::clone(&reaped);
        thread::spawn(move || {
            let _ = tx.send(Msg::Driven(d(&reaped)));
        })
    });
    let open = readers.iter().flatten().count();
    let c = collect(pid, &rx, watch, spawned_at_us, open, has_driver);
    let reaped_result = reap(pid, label);
    // Set even when waitpid failed: nothing more will come from this child either way.
    reaped.store(true, Ordering::Release);
    let (status, reaped_at_us) = reaped_result?;
    for r in readers.into_iter().flatten() {
        // A reader ends at EOF, which the child's exit guarantees.
        let _ = r.join();
    }
    if let Some(d) = driving {
        // Bounded by the cancel flag just set (the driver polls it while it waits for the
        // child) or, in a request, by the connection the child's exit closed.
        let _ = d.join();
    }
    // Drain what was sent after the collector stopped listening.
    let Collected {
        mut out,
        mut err,
        killed,
        mut drive_error,
        mut ready,
    } = c;
    for msg in rx.try_iter() {
        match msg {
            Msg::Line(Stream::Out, line) => out.push(line),
            Msg::Line(Stream::Err, line) => err.push(line),
            Msg::Ready { at_us, hwm_kib } => ready = ready.or(Some((at_us, hwm_kib))),
            Msg::Driven(Err(e)) => drive_error = Some(e),
            Msg::Driven(Ok(())) | Msg::Eof => {}
        }
    }
    Ok(ChildRun {
        pid,
        spawned_at_us,
        stdout: out,
        stderr: err,
        ready_at_us: ready.map(|(at, _)| at),
        hwm_at_ready_kib: ready.and_then(|(_, hwm)| hwm),
        reaped_at_us,
        status,
        killed,
        drive_error,
    })
}

/// Reads the console as raw bytes, in whatever pieces the pipe gives: the marker is matched
/// on the stream, and VmHWM is read here, right after the read that completed it, so that
/// the channel hop to the collector does not widen the race with a guest that ends itself.
fn spawn_console_reader<R: Read + Send + 'static>(
    mut pipe: R,
    pid: u32,
    mut scanner: Option<MarkerScanner>,
    tx: mpsc::Sender<Msg>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = prompt_wakeups();
        let peak = proc_stats::PeakRss::open(pid);
        let mut buf = [0u8; 4096];
        let mut partial = Vec::new();
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let at_us = monotonic_us();
            let bytes = &buf[..n];
            if scanner.as_mut().is_some_and(|s| s.feed(bytes)) {
                let hwm_kib = peak.as_ref().and_then(proc_stats::PeakRss::read_kib);
                let _ = tx.send(Msg::Ready { at_us, hwm_kib });
            }
            for piece in bytes.split_inclusive(|&b| b == b'\n') {
                partial.extend_from_slice(piece);
                if partial.ends_with(b"\n") {
                    let line = console_line(&partial);
                    partial.clear();
                    if tx.send(Msg::Line(Stream::Out, line)).is_err() {
                        return;
                    }
                }
            }
        }
        if !partial.is_empty() {
            let _ = tx.send(Msg::Line(Stream::Out, console_line(&partial)));
        }
        let _ = tx.send(Msg::Eof);
    })
}

/// Lets the calling thread preempt ordinary (CFS) threads when it wakes: SCHED_FIFO at the
/// lowest priority. On a loaded host this keeps the time from the console write to the
/// harness's read (part of every engine's ready figure) short, and with it the window in
/// which a guest that ends itself can exit before its VmHWM is read. The thread only reads
/// a pipe and scans a few bytes, so it hardly takes CPU from the VMM it watches. Without
/// the privilege (not root, or an RT limit of 0) it stays an ordinary thread.
fn prompt_wakeups() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_FIFO.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether console readers will get their SCHED_FIFO priority here (tried on a short-lived
/// thread), for the report.
pub fn prompt_wakeups_available() -> bool {
    thread::spawn(|| prompt_wakeups().is_ok())
        .join()
        .unwrap_or(false)
}

/// A console line as text, without its line ending (serial consoles send `\r\n`).
fn console_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.trim_end_matches(['\n', '\r']).to_string()
}

fn spawn_line_reader<R: Read + Send + 'static>(
    pipe: R,
    stream: Stream,
    tx: mpsc::Sender<Msg>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(text) = line else { break };
            if tx.send(Msg::Line(stream, text)).is_err() {
                break;
            }
        }
        let _ = tx.send(Msg::Eof);
    })
}

struct Collected {
    out: Vec<String>,
    err: Vec<String>,
    killed: bool,
    drive_error: Option<String>,
    /// (µs of the read that completed the marker, VmHWM then)
    ready: Option<(u64, Option<u64>)>,
}

/// Gathers output until both pipes close, killing the child at the deadline, at the ready
/// marker (once the driver is done) or when the driver fails.
fn collect(
    pid: u32,
    rx: &mpsc::Receiver<Msg>,
    watch: &Watch,
    start_us: u64,
    mut pipes_open: usize,
    mut driver_running: bool,
) -> Collected {
    let mut c = Collected {
        out: Vec::new(),
        err: Vec::new(),
        killed: false,
        drive_error: None,
        ready: None,
    };
    let kill_at_ready = watch.ready.as_ref().is_some_and(|r| r.kill);
    let mut kill_when_driven = false;
    let kill = |c: &mut Collected| {
        if !c.killed {
            kill_child(pid);
            c.killed = true;
        }
    };
    let timeout_us = u64::try_from(watch.timeout.as_micros()).unwrap_or(u64::MAX);
    let limit_us = start_us.saturating_add(timeout_us);
    while pipes_open > 0 {
        let left = limit_us.saturating_sub(monotonic_us());
        match rx.recv_timeout(Duration::from_micros(left.max(1))) {
            Ok(Msg::Line(Stream::Out, line)) => c.out.push(line),
            Ok(Msg::Line(Stream::Err, line)) => c.err.push(line),
            Ok(Msg::Ready { at_us, hwm_kib }) => {
                c.ready = Some((at_us, hwm_kib));
                if kill_at_ready {
                    if driver_running {
                        kill_when_driven = true;
                    } else {
                        kill(&mut c);
                    }
                }
            }
            Ok(Msg::Driven(outcome)) => {
                driver_running = false;
                if let Err(e) = outcome {
                    c.drive_error = Some(e);
                    kill(&mut c);
                } else if kill_when_driven {
                    kill(&mut c);
                }
            }
            Ok(Msg::Eof) => pipes_open -= 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => kill(&mut c),
        }
    }
    c
}

fn kill_child(pid: u32) {
    // SAFETY: plain syscall on the pid of a child we have not reaped yet, so it can't have
    // been recycled for another process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Waits for the child (retrying on EINTR); returns its status and when it was reaped. By
/// then the kernel has released the child's memory and closed its files (a KVM VM's fd
/// among them), which the exit does before the process becomes reapable.
fn reap(pid: u32, label: &str) -> Result<(ExitStatus, u64), BenchError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is valid for writes; `pid` is our own, not yet reaped child.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if rc == pid as libc::pid_t {
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
    //! With `sh` standing in for a VMM: these check the harness's bookkeeping (when the
    //! marker counts, when the child is killed, what is read), not any VMM.
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn watch(marker: &str, kill: bool) -> Watch {
        Watch {
            timeout: Duration::from_secs(20),
            ready: Some(ReadyWatch {
                marker: marker.into(),
                foreign_log: Some(ForeignLog::FIRECRACKER),
                kill,
            }),
        }
    }

    #[test]
    fn a_marker_split_across_writes_and_a_log_record_counts() {
        // printf's pieces reach the pipe as separate writes, with sleeps between them.
        let script = "printf 'boot\\ncoinop-test'; sleep 0.05; \
             printf '2026-12-04T21:22:50.123456789 [anonymous-instance:fc_vcpu 0] exit\\n'; \
             sleep 0.05; printf 'guest rea'; sleep 0.05; printf 'dy\\n'; sleep 0.2";
        let run = run_driven(
            sh(script),
            &watch("coinop-testguest ready", false),
            "sh",
            None,
            None,
        )
        .expect("runs");
        let ready = run.ready_us().expect("marker found across the log record");
        assert!(ready >= 150_000, "not before the last piece: {ready} µs");
        assert!(!run.killed && run.status.success());
        assert_eq!(run.stdout[0], "boot", "{:?}", run.stdout);
        assert!(
            run.hwm_at_ready_kib.is_some_and(|k| k > 0),
            "sh was still running at the marker: {:?}",
            run.hwm_at_ready_kib
        );
    }

    #[test]
    fn the_kill_at_ready_waits_for_the_driver() {
        // Firecracker answers PUT /actions after its guest may already have printed: the
        // child must live until the driver has its reply.
        let driven_at = Arc::new(AtomicU64::new(0));
        let d = driven_at.clone();
        let driver: Driver = Box::new(move |_| {
            thread::sleep(Duration::from_millis(300));
            d.store(monotonic_us(), Ordering::SeqCst);
            Ok(())
        });
        let run = run_driven(
            sh("echo coinop-testguest ready; exec sleep 20"),
            &watch("coinop-testguest ready", true),
            "sh",
            None,
            Some(driver),
        )
        .expect("runs");
        let driven = driven_at.load(Ordering::SeqCst);
        assert!(driven > 0, "the driver finished");
        assert!(run.killed, "killed at the marker, not ended by itself");
        assert!(
            run.reaped_at_us >= driven,
            "killed only after the driver finished ({} < {driven})",
            run.reaped_at_us
        );
        assert!(run.ready_at_us.is_some_and(|r| r < driven));
        assert!(
            !std::path::Path::new(&format!("/proc/{}", run.pid)).exists(),
            "the child is reaped before run_driven returns"
        );
    }

    #[test]
    fn without_a_driver_the_kill_comes_at_the_marker() {
        let run = run_driven(
            sh("echo coinop-testguest ready; exec sleep 20"),
            &watch("coinop-testguest ready", true),
            "sh",
            None,
            None,
        )
        .expect("runs");
        assert!(run.killed);
        let ready = run.ready_at_us.expect("marker");
        assert!(
            run.reaped_at_us - ready < 5_000_000,
            "killed at the marker, not at the 20 s sleep's end"
        );
    }

    #[test]
    fn a_failing_driver_kills_the_child_and_is_reported_with_the_run() {
        let driver: Driver = Box::new(|_| Err("connection closed before message completed".into()));
        let run = run_driven(
            sh("exec sleep 20"),
            &watch("never", true),
            "sh",
            None,
            Some(driver),
        )
        .expect("the run comes back for the caller to judge");
        assert!(run.killed, "killed when the driver failed");
        assert_eq!(run.status.signal(), Some(libc::SIGKILL));
        assert!(
            run.drive_error
                .as_deref()
                .is_some_and(|e| e.contains("connection closed")),
            "{:?}",
            run.drive_error
        );
    }

    #[test]
    fn a_child_that_printed_and_exited_before_the_driver_failed_keeps_its_exit_status() {
        // Firecracker after its guest's i8042 reset: the line is out and the process ends
        // with 0 before the API's reply to InstanceStart is written.
        let driver: Driver = Box::new(|_| {
            thread::sleep(Duration::from_millis(300));
            Err("connection closed before message completed".into())
        });
        let run = run_driven(
            sh("echo coinop-testguest ready; exit 0"),
            &watch("coinop-testguest ready", true),
            "sh",
            None,
            Some(driver),
        )
        .expect("runs");
        assert!(run.ready_at_us.is_some());
        assert!(run.drive_error.is_some());
        assert!(
            run.exited_cleanly(),
            "the kill after the driver's failure reached a zombie: {}",
            run.status
        );
    }

    #[test]
    fn a_driver_waiting_for_a_child_that_exited_is_cancelled() {
        // Firecracker gone before its API socket accepts: the driver must not wait out its
        // 20 s connect timeout, and the child's status must survive for the message.
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("missing.sock");
        let vm = crate::firecracker_api::FcVm::new(
            &crate::engines::GuestImage {
                kernel: "/k".into(),
                initrd: None,
                cmdline: String::new(),
                ready_line: "x".into(),
                boot_timer: false,
                ends_itself: false,
            },
            crate::engines::VmShape {
                vcpus: 1,
                mem_mib: 128,
            },
        );
        let driver: Driver = Box::new(move |cancel| {
            crate::firecracker_api::drive(&sock, &vm, Duration::from_secs(20), cancel)
                .map_err(|e| e.to_string())
        });
        let started = std::time::Instant::now();
        let run = run_driven(
            sh("echo bad flag >&2; exit 3"),
            &watch("never", true),
            "sh",
            None,
            Some(driver),
        )
        .expect("runs");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(run.status.code(), Some(3));
        assert_eq!(run.stderr, ["bad flag"]);
        assert!(
            run.drive_error
                .as_deref()
                .is_some_and(|e| e.contains("exited")),
            "{:?}",
            run.drive_error
        );
    }

    #[test]
    fn the_start_time_argument_is_the_spawn_instant() {
        let w = watch("never", false);
        // `sh -c SCRIPT A B` runs SCRIPT with $0 = A, $1 = B.
        let run =
            run_driven(sh("echo \"$1\""), &w, "sh", Some("--start-time-us"), None).expect("runs");
        assert_eq!(run.stdout, [run.spawned_at_us.to_string()]);
    }

    #[test]
    fn a_missing_program_names_its_path() {
        let w = watch("ready", false);
        let err = run_driven(Command::new("/nonexistent/vmm"), &w, "coinop", None, None)
            .expect_err("cannot spawn");
        let text = err.to_string();
        assert!(text.contains("coinop (/nonexistent/vmm)"), "{text}");
    }

    #[test]
    fn the_deadline_kills_a_child_that_never_gets_ready() {
        let w = Watch {
            timeout: Duration::from_millis(200),
            ready: Some(ReadyWatch {
                marker: "never".into(),
                foreign_log: None,
                kill: false,
            }),
        };
        let run = run_driven(sh("exec sleep 20"), &w, "sh", None, None).expect("runs");
        assert!(run.killed);
        assert_eq!(run.ready_at_us, None);
        assert_eq!(run.hwm_at_ready_kib, None);
    }
}
