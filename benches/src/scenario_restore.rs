//! Scenario `restore`: spawn → guest_ready of the test guest on host KVM, cold boot versus
//! restore from a snapshot of the same guest, in alternating runs of one invocation so
//! drift hits both alike.
//!
//! The snapshot is taken once at the start: the guest (`mode=count`, which keeps running)
//! boots, announces itself, and is snapshotted with `exit`. Every run then spawns
//! coinop-vmm with `--start-time-us` taken just before the spawn, reads its events until
//! `guest_ready`, takes the process's peak RSS (VmHWM) from that event (the VMM's own
//! `vmhwm_kib`; from /proc/PID/status right then for a VMM without it), and kills it: a cold
//! boot's `guest_ready` is the guest's boot-timer write, a restore's follows the restored
//! vCPUs' start (the snapshot records that the guest was ready; see coinop-vmm's
//! `devices::boot_timer`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm_protocol::{Event, Request};

use crate::clock::monotonic_us;
use crate::error::BenchError;
use crate::report::{ratio_summary, ScenarioReport};
use crate::sample_set::SampleSet;

/// The figure both sides have and the ratio is taken on.
const READY_METRIC: &str = "spawn→guest_ready ms";

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The test guest's PVH ELF (booted with mode=count).
    #[arg(long)]
    pub kernel: PathBuf,
    /// coinop-vmm binary (default: next to this executable).
    #[arg(long)]
    pub vmm_bin: Option<PathBuf>,
    /// vCPUs of the guest.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    pub mem_mib: u64,
    /// Measured runs per side.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Unmeasured runs per side first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Longest one start may take, seconds.
    #[arg(long, default_value_t = 20)]
    pub timeout_s: u64,
}

/// Cold boot or restore.
#[derive(Clone, Copy)]
enum Side {
    Cold,
    Restore,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Cold => "cold boot",
            Side::Restore => "restore",
        }
    }
}

/// What one start showed, µs since the spawn.
struct Start {
    vm_created: Option<u64>,
    restored: Option<u64>,
    vcpus_started: Option<u64>,
    guest_ready: u64,
    peak_rss_kib: Option<u64>,
}

pub fn run(a: &RestoreArgs, default_vmm: PathBuf) -> Result<Vec<ScenarioReport>, BenchError> {
    if a.runs == 0 {
        return Err(BenchError::Usage("--runs must be at least 1".into()));
    }
    let vmm = a.vmm_bin.clone().unwrap_or(default_vmm);
    let timeout = Duration::from_secs(a.timeout_s);
    let dir = tempfile::tempdir().map_err(|e| run_err("restore", format!("temp dir: {e}")))?;
    let snapshot = dir.path().join("snapshot");
    take_snapshot(a, &vmm, dir.path(), &snapshot, timeout)?;
    let snapshot_kib = std::fs::metadata(snapshot.join("state"))
        .map(|m| m.len() / 1024)
        .unwrap_or(0);

    for _ in 0..a.warmup {
        for side in [Side::Cold, Side::Restore] {
            start_once(a, &vmm, &snapshot, side, timeout)?;
        }
    }
    let mut samples = SampleSet::default();
    for round in 0..a.runs {
        let order = if round % 2 == 0 {
            [Side::Cold, Side::Restore]
        } else {
            [Side::Restore, Side::Cold]
        };
        for side in order {
            let s = start_once(a, &vmm, &snapshot, side, timeout)?;
            record(side, &s, &mut samples);
        }
    }
    let ratios = match (
        samples.get(Side::Restore.name(), READY_METRIC),
        samples.get(Side::Cold.name(), READY_METRIC),
    ) {
        (Some(ours), Some(theirs)) => ratio_summary(ours, theirs)
            .map(|r| vec![(format!("restore/cold boot {READY_METRIC}"), r)])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(vec![ScenarioReport {
        scenario: "restore".into(),
        config: format!(
            "{}x{} MiB, test guest mode=count, snapshot state {snapshot_kib} KiB",
            a.vcpus, a.mem_mib
        ),
        runs: a.runs,
        warmup: a.warmup,
        rows: samples.rows(),
        ratios,
        notes: vec![
            "cold boot guest_ready: the guest's boot-timer write; restore guest_ready: right \
             after the restored (ready) guest's vCPUs start"
                .into(),
            "each run is killed at guest_ready; peak RSS is VmHWM at guest_ready, the VMM's \
             own figure in that event"
                .into(),
        ],
    }])
}

fn run_err(what: &str, detail: String) -> BenchError {
    BenchError::Run {
        what: what.into(),
        detail,
    }
}

/// A spawned coinop-vmm that is killed and reaped when dropped, on every error path too:
/// `std::process::Child` does neither, and a `mode=count` guest never ends by itself.
struct VmmChild(Child);

impl Drop for VmmChild {
    fn drop(&mut self) {
        // Our own child, not yet reaped while we hold it (a reaped one makes both no-ops
        // that fail harmlessly).
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the guest, waits for it to be ready, and snapshots it into `snapshot` with exit.
fn take_snapshot(
    a: &RestoreArgs,
    vmm: &Path,
    scratch: &Path,
    snapshot: &Path,
    timeout: Duration,
) -> Result<(), BenchError> {
    let sock = scratch.join("control.sock");
    let mut cmd = cold_command(a, vmm);
    cmd.arg("--control").arg(&sock);
    let mut child = VmmChild(spawn(cmd, "snapshot source")?);
    let events = read_events(&mut child.0);
    let deadline = Instant::now() + timeout;
    wait_ready(&mut child.0, &events, deadline, "snapshot source")?;
    let request = Request::Snapshot {
        dir: snapshot.display().to_string(),
        exit: true,
    };
    let reply = control_request(&sock, &request.to_line())
        .map_err(|e| run_err("snapshot", format!("control socket: {e}")))?;
    if !reply.contains("\"ok\":true") {
        return Err(run_err("snapshot", format!("refused: {}", reply.trim())));
    }
    let status = wait_bounded(&mut child.0, timeout)?;
    if status.code() != Some(0) {
        return Err(run_err("snapshot", format!("the VMM ended with {status}")));
    }
    Ok(())
}

/// Waits for a VMM that said it is stopping, at most `timeout`; one that has not exited by
/// then is an error (the guard kills it).
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus, BenchError> {
    let started = Instant::now();
    loop {
        let waited = child.try_wait().map_err(|source| BenchError::Wait {
            what: "snapshot source".into(),
            source,
        })?;
        if let Some(status) = waited {
            return Ok(status);
        }
        if started.elapsed() >= timeout {
            return Err(BenchError::SnapshotSourceStuck {
                pid: child.id(),
                waited_ms: started.elapsed().as_millis(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn control_request(sock: &Path, line: &str) -> std::io::Result<String> {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply)
}

fn cold_command(a: &RestoreArgs, vmm: &Path) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(&a.kernel)
        .arg("--cmdline")
        .arg("mode=count")
        .arg("--vcpus")
        .arg(a.vcpus.to_string())
        .arg("--mem-mib")
        .arg(a.mem_mib.to_string());
    cmd
}

fn spawn(mut cmd: Command, what: &str) -> Result<Child, BenchError> {
    cmd.arg("--serial")
        .arg("none")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            what: what.into(),
            source,
        })
}

/// The child's events, as a reader thread parses them off its stderr.
fn read_events(child: &mut Child) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = Event::from_line(&line) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        });
    }
    rx
}

/// Events up to and including `guest_ready`; an `exit` or the deadline first is an error.
fn wait_ready(
    child: &mut Child,
    events: &mpsc::Receiver<Event>,
    deadline: Instant,
    what: &str,
) -> Result<Vec<Event>, BenchError> {
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match events.recv_timeout(left) {
            Ok(event) => event,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(run_err(what, format!("no guest_ready (events: {seen:?})")));
            }
        };
        match event {
            Event::GuestReady { .. } => {
                seen.push(event);
                return Ok(seen);
            }
            Event::Exit { .. } => {
                let _ = child.wait();
                return Err(run_err(
                    what,
                    format!("ended before guest_ready: {event:?}"),
                ));
            }
            other => seen.push(other),
        }
    }
}

fn start_once(
    a: &RestoreArgs,
    vmm: &Path,
    snapshot: &Path,
    side: Side,
    timeout: Duration,
) -> Result<Start, BenchError> {
    let mut cmd = match side {
        Side::Cold => cold_command(a, vmm),
        Side::Restore => {
            let mut cmd = Command::new(vmm);
            cmd.arg("--restore").arg(snapshot);
            cmd
        }
    };
    let start_us = monotonic_us();
    cmd.arg("--start-time-us").arg(start_us.to_string());
    let mut child = VmmChild(spawn(cmd, side.name())?);
    let events = read_events(&mut child.0);
    let seen = wait_ready(&mut child.0, &events, Instant::now() + timeout, side.name())?;
    let own = seen.iter().find_map(|e| match e {
        Event::GuestReady { vmhwm_kib, .. } => *vmhwm_kib,
        _ => None,
    });
    let peak_rss_kib = own.or_else(|| vm_hwm_kib(child.0.id()));
    drop(child);
    let at = |pick: fn(&Event) -> bool| seen.iter().find(|e| pick(e)).map(Event::t_us);
    Ok(Start {
        vm_created: at(|e| matches!(e, Event::VmCreated { .. })),
        restored: at(|e| matches!(e, Event::Restored { .. })),
        vcpus_started: at(|e| matches!(e, Event::VcpusStarted { .. })),
        guest_ready: at(|e| matches!(e, Event::GuestReady { .. }))
            .expect("wait_ready returns once guest_ready is among the events"),
        peak_rss_kib,
    })
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn record(side: Side, s: &Start, samples: &mut SampleSet) {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut push = |metric: &str, v: Option<f64>| {
        if let Some(v) = v {
            samples.push(side.name(), metric, v);
        }
    };
    push("spawn→vm_created ms", s.vm_created.map(ms));
    push("spawn→restored ms", s.restored.map(ms));
    push("spawn→vcpus_started ms", s.vcpus_started.map(ms));
    push(READY_METRIC, Some(ms(s.guest_ready)));
    push("peak RSS MiB", s.peak_rss_kib.map(|k| k as f64 / 1024.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_snapshot_request_kills_and_reaps_its_vmm() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("pid");
        // Ready, but no control socket ever: the request fails to connect.
        let vmm = dir.path().join("coinop-vmm");
        std::fs::write(
            &vmm,
            format!(
                "#!/bin/sh\necho $$ > {}\n\
                 echo '{{\"event\":\"guest_ready\",\"t_us\":1}}' >&2\nexec sleep 30\n",
                pid_file.display()
            ),
        )
        .expect("write script");
        std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let args = RestoreArgs {
            kernel: "/nonexistent/kernel".into(),
            vmm_bin: None,
            vcpus: 1,
            mem_mib: 128,
            runs: 1,
            warmup: 0,
            timeout_s: 10,
        };
        let snapshot = dir.path().join("snapshot");
        let err = take_snapshot(&args, &vmm, dir.path(), &snapshot, Duration::from_secs(10))
            .expect_err("no control socket");
        assert!(err.to_string().contains("control socket"), "{err}");
        let pid = std::fs::read_to_string(&pid_file).expect("the script ran");
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "VMM {} still there (or unreaped) after the error",
            pid.trim()
        );
    }

    #[test]
    fn a_vmm_that_does_not_exit_after_its_snapshot_is_not_waited_for_forever() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let started = Instant::now();
        let err = wait_bounded(&mut child, Duration::from_millis(100)).expect_err("still running");
        assert!(
            matches!(err, BenchError::SnapshotSourceStuck { .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(VmmChild(child));
    }
}
