//! The supervisor: starts one `coinop-vmm` per lease in its own session (so a coinopd restart
//! or a terminal's SIGINT does not kill guests), reads its JSON-lines events from an
//! inherited pipe to time the boot, and reports guest exits to the scheduler.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::clock::monotonic_us;
use crate::image_catalogue::ImageSpec;

/// The fd number the VMM finds its event pipe on (`--events fd:3`).
const EVENTS_FD: i32 = 3;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("event pipe: {0}")]
    Pipe(String),
    #[error("guest exited before it was ready: {reason} (exit code {code:?})")]
    Exited { reason: String, code: Option<i64> },
    #[error("guest not ready within {0} ms")]
    Timeout(u64),
}

/// Boot figures, µs from request arrival (api.md `boot`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootFigures {
    pub payment_verified_us: u64,
    pub ledger_committed_us: u64,
    pub vmm_spawned_us: u64,
    pub vcpus_started_us: Option<u64>,
    pub guest_ready_us: Option<u64>,
}

/// What the VMM's event stream said, as far as coinopd cares.
#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    t_us: u64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    code: Option<i64>,
}

/// A guest that ended (from its event stream or process exit).
#[derive(Debug, Clone)]
pub struct GuestExit {
    pub lease_id: String,
    pub reason: String,
}

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
    pub timeout_ms: u64,
}

/// A booted guest.
#[derive(Debug)]
pub struct Booted {
    pub pid: Option<i32>,
    pub vmm_spawned_us: u64,
    pub vcpus_started_us: Option<u64>,
    pub guest_ready_us: u64,
}

pub struct Supervisor {
    vmm_bin: PathBuf,
    exits: mpsc::UnboundedSender<GuestExit>,
}

fn pipe_err(e: impl std::fmt::Display) -> BootError {
    BootError::Pipe(e.to_string())
}

impl Supervisor {
    pub fn new(vmm_bin: PathBuf, exits: mpsc::UnboundedSender<GuestExit>) -> Self {
        Supervisor { vmm_bin, exits }
    }

    /// Starts the VMM and waits for `guest_ready`. On any failure the VMM is killed.
    pub async fn boot(&self, req: BootRequest<'_>) -> Result<Booted, BootError> {
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err)?;
        let _ = std::fs::remove_file(&req.paths.control);
        let log = std::fs::File::create(&req.paths.log).map_err(pipe_err)?;
        let start_us = monotonic_us();
        let mut cmd = tokio::process::Command::new(&self.vmm_bin);
        cmd.arg("--kernel").arg(&req.image.kernel);
        if let Some(initrd) = &req.image.initrd {
            cmd.arg("--initrd").arg(initrd);
        }
        cmd.arg("--cmdline")
            .arg(req.cmdline)
            .arg("--vcpus")
            .arg(req.vcpus.to_string())
            .arg("--mem-mib")
            .arg(req.mem_mib.to_string())
            .arg("--serial")
            .arg(format!("file:{}", req.paths.console.display()))
            .arg("--control")
            .arg(&req.paths.control)
            .arg("--events")
            .arg(format!("fd:{EVENTS_FD}"))
            .arg("--start-time-us")
            .arg(start_us.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(false);
        let write_fd = write_end.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (setsid, dup2, fcntl) on fds we own.
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
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| BootError::Spawn {
            bin: self.vmm_bin.clone(),
            source,
        })?;
        drop(write_end);
        let vmm_spawned_us = monotonic_us().saturating_sub(req.arrival_us);
        let pid = child.id().map(|p| p as i32);
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).map_err(pipe_err)?;
        let mut lines = BufReader::new(rx).lines();
        let offset = start_us.saturating_sub(req.arrival_us);
        let wait = async {
            let mut vcpus_started = None;
            loop {
                let line = lines.next_line().await.map_err(pipe_err)?;
                let Some(line) = line else {
                    let status = child.wait().await.ok().and_then(|s| s.code());
                    return Err(BootError::Exited {
                        reason: "event stream closed".into(),
                        code: status.map(i64::from),
                    });
                };
                let Ok(ev) = serde_json::from_str::<Event>(&line) else {
                    tracing::warn!(lease = req.lease_id, line, "unparsable VMM event");
                    continue;
                };
                match ev.event.as_str() {
                    "vcpus_started" => vcpus_started = Some(offset + ev.t_us),
                    "guest_ready" => return Ok((vcpus_started, offset + ev.t_us)),
                    "exit" => {
                        return Err(BootError::Exited {
                            reason: ev.reason.unwrap_or_else(|| "unknown".into()),
                            code: ev.code,
                        })
                    }
                    _ => {}
                }
            }
        };
        let outcome = tokio::time::timeout(Duration::from_millis(req.timeout_ms), wait).await;
        let (vcpus_started_us, guest_ready_us) = match outcome {
            Ok(Ok(figures)) => figures,
            Ok(Err(e)) => {
                self.reap_in_background(req.lease_id, child, None);
                return Err(e);
            }
            Err(_) => {
                let _ = child.start_kill();
                self.reap_in_background(req.lease_id, child, None);
                return Err(BootError::Timeout(req.timeout_ms));
            }
        };
        self.reap_in_background(req.lease_id, child, Some(lines));
        Ok(Booted {
            pid,
            vmm_spawned_us,
            vcpus_started_us,
            guest_ready_us,
        })
    }

    /// Follows the rest of the event stream and reaps the process (teardown stays off the
    /// request path); a guest that ends is reported to the scheduler.
    fn reap_in_background(
        &self,
        lease_id: &str,
        mut child: tokio::process::Child,
        lines: Option<tokio::io::Lines<BufReader<tokio::net::unix::pipe::Receiver>>>,
    ) {
        let exits = self.exits.clone();
        let lease_id = lease_id.to_string();
        tokio::spawn(async move {
            let mut reason = None;
            if let Some(mut lines) = lines {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                        if ev.event == "exit" {
                            reason = ev.reason;
                        }
                    }
                }
            }
            let status = child.wait().await;
            tracing::info!(lease = %lease_id, ?status, ?reason, "guest VMM exited");
            let _ = exits.send(GuestExit {
                lease_id,
                reason: reason.unwrap_or_else(|| "exited".into()),
            });
        });
    }
}

/// Whether a process with this pid still exists (for re-adopted guests, which are not our
/// children any more).
pub fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}
