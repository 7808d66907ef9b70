//! A real `coinopd` process for the lease, burst and density scenarios: started on a fresh
//! state directory with a capacity that fits the scenario, talked to with the lease crate's
//! own client, and shut down with every guest it started stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coinop_cli::client::{Client, Reply};
use coinop_proto::replies::CreateResponse;
use coinop_proto::requests::{CreateRequest, PaymentBody};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engines::GuestImage;
use crate::error::BenchError;
use crate::proc_stats;

/// The image name the harness registers with the daemon.
pub const IMAGE: &str = "bench";

/// How to start a daemon: binaries and the capacity it sells.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    pub coinopd: PathBuf,
    pub vmm: PathBuf,
    pub guest: GuestImage,
    /// The shape of every lease the scenario creates; capacity is a whole number of them.
    pub vcpus: u32,
    pub mem_mib: u64,
    pub capacity_vcpus: u32,
    pub capacity_mib: u64,
    /// The metering tick (`--tick-ms`), so figures per tick know it.
    pub tick_ms: u64,
}

pub struct Daemon {
    child: Child,
    pub client: Client,
    pub socket: PathBuf,
    /// Leases this harness created and has not stopped: (id, token).
    live: Vec<(String, String)>,
    _state: tempfile::TempDir,
}

fn err(detail: impl std::fmt::Display) -> BenchError {
    BenchError::Run {
        what: "coinopd".into(),
        detail: detail.to_string(),
    }
}

impl DaemonSpec {
    /// `--image bench=KERNEL[,initrd=..][,cmdline=..]`: cmdline last, it swallows commas.
    fn image_flag(&self) -> String {
        let g = &self.guest;
        let mut s = format!("{IMAGE}={}", g.kernel.display());
        if let Some(i) = &g.initrd {
            s.push_str(&format!(",initrd={}", i.display()));
        }
        s.push_str(&format!(",cmdline={}", g.cmdline));
        s
    }

    /// coinopd's flags for a state directory and socket (the soak restarts on the same ones).
    pub fn args(&self, state: &Path, socket: &Path) -> Vec<String> {
        vec![
            "--state-dir".into(),
            state.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--network".into(),
            "regtest".into(),
            "--capacity-vcpus".into(),
            self.capacity_vcpus.to_string(),
            "--capacity-mib".into(),
            self.capacity_mib.to_string(),
            "--overcommit".into(),
            "1".into(),
            "--vmm-bin".into(),
            self.vmm.display().to_string(),
            "--testguest".into(),
            self.guest.kernel.display().to_string(),
            "--image".into(),
            self.image_flag(),
            "--tick-ms".into(),
            self.tick_ms.to_string(),
        ]
    }

    pub async fn start(&self) -> Result<Daemon, BenchError> {
        let state = tempfile::tempdir().map_err(|e| err(format!("state dir: {e}")))?;
        let socket = state.path().join("coinop.sock");
        let log = std::fs::File::create(state.path().join("coinopd.log"))
            .map_err(|e| err(format!("log file: {e}")))?;
        let log2 = log.try_clone().map_err(|e| err(format!("log file: {e}")))?;
        let child = Command::new(&self.coinopd)
            .args(self.args(state.path(), &socket))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|source| BenchError::Spawn {
                what: format!("coinopd ({})", self.coinopd.display()),
                source,
            })?;
        let mut d = Daemon {
            child,
            client: Client::new(&socket),
            socket,
            live: Vec::new(),
            _state: state,
        };
        d.wait_ready().await?;
        Ok(d)
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's state directory (ledger, `run/<lease>.sock` control sockets).
    pub fn state_dir(&self) -> &Path {
        self._state.path()
    }

    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self._state.path().join("coinopd.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(err(format!(
                    "exited at start ({status}): {}",
                    self.log_tail()
                )));
            }
            if let Ok(r) = self.client.call("GET", "/v1/host", None, None).await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(err(format!(
            "no answer on its socket within 20 s: {}",
            self.log_tail()
        )))
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, BenchError> {
        self.client
            .call(method, path, token, body)
            .await
            .map_err(|e| err(format!("{method} {path}: {e}")))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Reply, BenchError> {
        self.call("GET", path, token, None).await
    }

    /// POSTs `body`, one of the API's request types, as JSON.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &impl Serialize,
    ) -> Result<Reply, BenchError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| err(format!("POST {path}: encoding: {e}")))?;
        self.call("POST", path, token, Some(bytes)).await
    }

    /// Remembers a created lease so it is stopped before the daemon goes.
    pub fn track(&mut self, created: &CreateResponse) {
        self.live
            .push((created.lease_id.clone(), created.token.clone()));
    }

    /// Stops one lease (tracked or not), keeping its balance on it.
    pub async fn stop(&self, id: &str, token: &str) -> Result<Reply, BenchError> {
        stop_lease(&self.client, id, token).await
    }

    /// Stops every tracked lease (concurrently) and waits until the capacity is free again.
    pub async fn stop_all(&mut self) -> Result<(), BenchError> {
        let mut set = tokio::task::JoinSet::new();
        for (id, tok) in std::mem::take(&mut self.live) {
            let client = Client::new(&self.socket);
            set.spawn(async move { stop_lease(&client, &id, &tok).await });
        }
        while let Some(joined) = set.join_next().await {
            let r = joined.map_err(|e| err(format!("stop task: {e}")))??;
            // 409: the guest already ended by itself (e.g. mode=halt), which is fine.
            if r.status != 200 && r.status != 409 {
                return Err(err(format!(
                    "stop answered HTTP {}: {}",
                    r.status,
                    r.text()
                )));
            }
        }
        self.wait_vmms_gone(Duration::from_secs(20)).await
    }

    async fn wait_vmms_gone(&self, limit: Duration) -> Result<(), BenchError> {
        let start = Instant::now();
        while !proc_stats::children_named(self.pid(), "coinop-vmm").is_empty() {
            if start.elapsed() > limit {
                return Err(err("VMMs still running 20 s after their leases stopped"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Stops the guests, then the daemon; any VMM still there is killed by its pid.
    pub async fn shutdown(mut self) -> Result<(), BenchError> {
        let stopped = self.stop_all().await;
        for pid in proc_stats::children_named(self.pid(), "coinop-vmm") {
            kill(pid);
        }
        stop_bounded(&mut self.child, STOP_GRACE);
        stopped
    }
}

/// How long coinopd gets to end after SIGTERM before it is SIGKILLed (its own shutdown
/// stops leases, which the harness has already done).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// SIGTERM to our own child, then waits at most `grace` before SIGKILL: a daemon that hangs
/// in its shutdown must not hang the harness. Only this child is signalled.
fn stop_bounded(child: &mut std::process::Child, grace: std::time::Duration) {
    kill_term(child.id());
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    // Still our unreaped child (try_wait said so), so the pid is its own.
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    /// On an error path: leave nothing running that this harness started.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            for pid in proc_stats::children_named(self.pid(), "coinop-vmm") {
                kill(pid);
            }
            stop_bounded(&mut self.child, STOP_GRACE);
        }
    }
}

fn kill(pid: u32) {
    // SAFETY: plain syscall; `pid` was read from /proc as a child of our own daemon just now.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

fn kill_term(pid: u32) {
    // SAFETY: plain syscall on our own unreaped child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
}

/// `POST /v1/leases/{id}/stop` with no body at all (as the harness always sent it): no
/// outputs, so the balance stays on the lease, which the harness never collects.
async fn stop_lease(client: &Client, id: &str, token: &str) -> Result<Reply, BenchError> {
    let path = format!("/v1/leases/{id}/stop");
    client
        .call("POST", &path, Some(token), None)
        .await
        .map_err(|e| err(format!("POST {path}: {e}")))
}

/// A 2xx reply read as `T`, one of the API's reply types; `what` names the call.
pub fn read_ok<T: DeserializeOwned>(r: &Reply, what: &str) -> Result<T, BenchError> {
    let fail = |detail: String| BenchError::Run {
        what: what.to_string(),
        detail,
    };
    if !(200..300).contains(&r.status) {
        return Err(fail(format!("HTTP {}: {}", r.status, r.text())));
    }
    r.parse()
        .map_err(|e| fail(format!("reading the reply ({e}): {}", r.text())))
}

/// A lease request body for the bench image.
pub fn lease_body(vcpus: u32, mem_mib: u64, cmdline: &str, payment: PaymentBody) -> CreateRequest {
    CreateRequest {
        vcpus,
        mem_mib,
        image: IMAGE.to_string(),
        cmdline: Some(cmdline.to_string()),
        ssh_key: None,
        payment,
        outputs: None,
        recovery_key: None,
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo up; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        // Wait until the trap is set (sh prints after it), or SIGTERM would end it at once.
        let mut line = String::new();
        let out = child.stdout.take().expect("piped");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("read");
        let started = std::time::Instant::now();
        stop_bounded(&mut child, std::time::Duration::from_millis(200));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let status = child.try_wait().expect("try_wait").expect("reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }
}
