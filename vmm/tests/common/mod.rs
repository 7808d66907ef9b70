//! Harness shared by the coinop-vmm integration tests: spawns the real binary on /dev/kvm
//! with the test guest built by build.rs, collects its console and JSON events while it
//! runs, enforces a timeout on every VMM, and speaks the control protocol.
#![allow(dead_code)] // each test crate uses a different part of the harness

use serde_json::Value;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_coinop-vmm");
/// No VMM in this suite may outlive this: a broken guest must fail a test, not hang it.
pub const VMM_TIMEOUT: Duration = Duration::from_secs(20);
pub const READY_LINE: &str = "coinop-testguest ready\n";

/// Which entry of the test guest the VMM takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    /// `XEN_ELFNOTE_PHYS32_ENTRY`: 32-bit entry with `hvm_start_info` in EBX.
    Pvh,
    /// No note: `e_entry` in long mode with boot_params in RSI.
    Elf64,
}

impl Image {
    pub const ALL: [Image; 2] = [Image::Pvh, Image::Elf64];

    pub fn path(self) -> &'static Path {
        Path::new(match self {
            Image::Pvh => env!("COINOP_TESTGUEST_PVH"),
            Image::Elf64 => env!("COINOP_TESTGUEST_ELF64"),
        })
    }
}

/// Returns true when /dev/kvm can be opened; otherwise says so on the real stderr (not the
/// captured test output, so the skip shows in the summary) and returns false.
pub fn kvm_ready() -> bool {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            // One write, so parallel tests' notices do not interleave mid-line.
            let notice = format!(
                "\nSKIPPED: /dev/kvm not available ({e}) in {}\n",
                std::thread::current().name().unwrap_or("test")
            );
            let _ = std::io::stderr().write_all(notice.as_bytes());
            false
        }
    }
}

/// Bytes a child writes to one pipe, readable while it runs.
#[derive(Default)]
struct Collector {
    data: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

impl Collector {
    fn spawn_reader(mut src: impl Read + Send + 'static) -> (Arc<Self>, JoinHandle<()>) {
        let me = Arc::new(Self::default());
        let sink = Arc::clone(&me);
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = src.read(&mut buf).unwrap_or(0);
                let mut guard = sink.data.lock().expect("collector lock is never poisoned");
                if n == 0 {
                    guard.1 = true;
                } else {
                    guard.0.extend_from_slice(&buf[..n]);
                }
                sink.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        (me, handle)
    }

    fn text(&self) -> String {
        let guard = self.data.lock().expect("collector lock is never poisoned");
        String::from_utf8_lossy(&guard.0).into_owned()
    }

    /// Waits until `cond` holds for the text so far; false at the deadline or on EOF.
    fn wait(&self, deadline: Instant, cond: &dyn Fn(&str) -> bool) -> bool {
        let mut guard = self.data.lock().expect("collector lock is never poisoned");
        loop {
            if cond(&String::from_utf8_lossy(&guard.0)) {
                return true;
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                return false;
            }
            guard = self
                .changed
                .wait_timeout(guard, deadline - now)
                .expect("collector lock is never poisoned")
                .0;
        }
    }
}

/// A `coinop-vmm` command line under construction.
pub struct Vmm {
    args: Vec<OsString>,
    stdin: bool,
    control: Option<(tempfile::TempDir, PathBuf)>,
}

impl Vmm {
    /// `coinop-vmm --kernel IMAGE` with the given command line.
    pub fn boot(image: Image, cmdline: &str) -> Self {
        Self::new()
            .arg("--kernel")
            .arg(image.path())
            .arg("--cmdline")
            .arg(cmdline)
    }

    /// The bare binary, for argument tests.
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            stdin: false,
            control: None,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<S: Into<OsString>>(mut self, list: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(list.into_iter().map(Into::into));
        self
    }

    pub fn vcpus(self, n: u32) -> Self {
        self.arg("--vcpus").arg(n.to_string())
    }

    /// Keep the VMM's stdin open as a pipe (serial input) instead of /dev/null.
    pub fn with_stdin(mut self) -> Self {
        self.stdin = true;
        self
    }

    /// A control socket in a scratch directory that lives as long as the VMM; reach it with
    /// [`Running::connect`].
    pub fn with_control(mut self) -> Self {
        let dir = scratch();
        let sock = socket_in(&dir);
        self = self.arg("--control").arg(&sock);
        self.control = Some((dir, sock));
        self
    }

    pub fn spawn(self) -> Running {
        let mut child = Command::new(VMM)
            .args(&self.args)
            .stdin(if self.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {VMM}: {e}"));
        let (stdout, out_thread) =
            Collector::spawn_reader(child.stdout.take().expect("stdout was piped"));
        let (stderr, err_thread) =
            Collector::spawn_reader(child.stderr.take().expect("stderr was piped"));
        Running {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers: vec![out_thread, err_thread],
            deadline: Instant::now() + VMM_TIMEOUT,
            args: self.args,
            control: self.control,
        }
    }

    /// Runs to completion (or the timeout) and returns what happened.
    pub fn run(self) -> Outcome {
        self.spawn().finish()
    }
}

/// A live VMM process; killed on drop so no test leaves one behind.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Collector>,
    stderr: Arc<Collector>,
    readers: Vec<JoinHandle<()>>,
    deadline: Instant,
    args: Vec<OsString>,
    control: Option<(tempfile::TempDir, PathBuf)>,
}

impl Running {
    /// The control socket's path (spawned [`Vmm::with_control`]).
    pub fn control_path(&self) -> &Path {
        &self.control.as_ref().expect("spawned with_control()").1
    }

    /// A new client of the control socket.
    pub fn connect(&self) -> Control {
        Control::connect(self.control_path())
    }

    fn describe(&self) -> String {
        format!(
            "coinop-vmm {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args,
            self.stdout.text(),
            self.stderr.text()
        )
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("{what}\n{}", self.describe());
    }

    /// Waits (within the VMM timeout) until the console shows `text`.
    pub fn wait_console(&mut self, text: &str) {
        if !self.stdout.wait(self.deadline, &|s| s.contains(text)) {
            self.fail(&format!("console never showed {text:?}"));
        }
    }

    /// Waits until the VMM has emitted the event `name` on stderr; returns it.
    pub fn wait_event(&mut self, name: &str) -> Value {
        let has = |s: &str| parse_events(s).iter().any(|e| e["event"] == name);
        if !self.stderr.wait(self.deadline, &has) {
            self.fail(&format!("no {name:?} event"));
        }
        parse_events(&self.stderr.text())
            .into_iter()
            .find(|e| e["event"] == name)
            .expect("the wait above saw this event")
    }

    /// The events emitted so far, without waiting.
    pub fn events_so_far(&self) -> Vec<Value> {
        parse_events(&self.stderr.text())
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("spawned with_stdin()");
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing the VMM's stdin: {e}"));
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for exit (killing the VMM at the timeout and failing the test).
    pub fn finish(mut self) -> Outcome {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => self.fail(&format!("VMM still running after {VMM_TIMEOUT:?}")),
                Err(e) => self.fail(&format!("waiting for the VMM: {e}")),
            }
        };
        self.stdin.take();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = self.stderr.text();
        Outcome {
            code: status.code(),
            stdout: self.stdout.text(),
            events: parse_events(&stderr),
            messages: stderr
                .lines()
                .filter(|l| as_event(l).is_none())
                .map(str::to_owned)
                .collect(),
            stderr,
            args: std::mem::take(&mut self.args),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn as_event(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(|v| v.get("event").is_some())
}

/// Every complete JSON event line in `text`.
pub fn parse_events(text: &str) -> Vec<Value> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| as_event(l.trim_end()))
        .collect()
}

/// What a finished VMM left behind.
#[derive(Debug)]
pub struct Outcome {
    /// None when killed by a signal (a crash: always a failure here).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub events: Vec<Value>,
    /// stderr lines that are not events.
    pub messages: Vec<String>,
    args: Vec<OsString>,
}

impl Outcome {
    pub fn context(&self) -> String {
        format!(
            "coinop-vmm {:?} exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }

    pub fn event(&self, name: &str) -> &Value {
        let mut found = self.events.iter().filter(|e| e["event"] == name);
        let first = found
            .next()
            .unwrap_or_else(|| panic!("no {name:?} event\n{}", self.context()));
        assert!(
            found.next().is_none(),
            "{name:?} emitted twice\n{}",
            self.context()
        );
        first
    }

    /// The boot events came once each, in order, with growing `t_us`, and the `exit`
    /// event agrees with the process's exit code and `reason`.
    pub fn assert_lifecycle(&self, vcpus: u32, reason: &str, code: i32) {
        let ctx = self.context();
        assert_eq!(self.code, Some(code), "exit code\n{ctx}");
        assert!(!self.stderr.contains("panicked"), "VMM panicked\n{ctx}");
        let mut last = 0u64;
        for name in ["vm_created", "vcpus_started", "guest_ready", "exit"] {
            let e = self.event(name);
            let t = e["t_us"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} has no integer t_us\n{ctx}"));
            assert!(t > last, "{name} t_us {t} not after {last}\n{ctx}");
            last = t;
        }
        for pair in self.events.windows(2) {
            let (a, b) = (pair[0]["t_us"].as_u64(), pair[1]["t_us"].as_u64());
            assert!(a <= b, "events out of time order: {pair:?}\n{ctx}");
        }
        assert_eq!(
            self.event("vcpus_started")["vcpus"],
            vcpus,
            "vcpus_started.vcpus\n{ctx}"
        );
        assert_plausible_vmhwm(self.event("guest_ready"), &ctx);
        let exit = self.event("exit");
        assert_eq!(exit["reason"], reason, "exit reason\n{ctx}");
        assert_eq!(exit["code"], code, "exit event code\n{ctx}");
    }

    /// Exit 2 with exactly one clear, non-JSON line on stderr that mentions one of `topics`.
    pub fn assert_usage_error(&self, topics: &[&str]) {
        let ctx = self.context();
        assert_eq!(self.code, Some(2), "exit code\n{ctx}");
        assert!(!self.stderr.contains("panicked"), "VMM panicked\n{ctx}");
        assert_eq!(self.messages.len(), 1, "want one message line\n{ctx}");
        let msg = self.messages[0].to_lowercase();
        assert!(
            topics.iter().any(|t| msg.contains(&t.to_lowercase())),
            "message names none of {topics:?}\n{ctx}"
        );
        assert!(self.stdout.is_empty(), "no console expected\n{ctx}");
    }
}

/// A client of the VMM's JSON-lines control socket.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Connects, retrying while the VMM has not created the socket yet.
    pub fn connect(path: &Path) -> Self {
        let deadline = Instant::now() + VMM_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    panic!("control socket {} never accepted: {e}", path.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        stream
            .set_read_timeout(Some(VMM_TIMEOUT))
            .expect("a non-zero timeout is valid");
        Self {
            reader: BufReader::new(stream.try_clone().expect("cloning a Unix stream")),
            writer: stream,
        }
    }

    /// Sends one raw line, returns the reply line parsed as JSON.
    pub fn send_line(&mut self, line: &str) -> Value {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending {line:?}: {e}"));
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("reply to {line:?}: {e}"));
        assert!(
            n > 0,
            "control socket closed instead of replying to {line:?}"
        );
        serde_json::from_str(reply.trim_end())
            .unwrap_or_else(|e| panic!("reply to {line:?} is not JSON ({e}): {reply:?}"))
    }

    pub fn cmd(&mut self, cmd: &str) -> Value {
        self.send_line(&serde_json::json!({ "cmd": cmd }).to_string())
    }

    /// A command that must succeed.
    pub fn ok(&mut self, cmd: &str) -> Value {
        let reply = self.cmd(cmd);
        assert_eq!(reply["ok"], true, "{cmd}: {reply}");
        reply
    }

    /// `usage.vcpu_total_us`, checked against the per-vCPU figures.
    pub fn vcpu_total_us(&mut self, vcpus: usize) -> u64 {
        let usage = self.ok("usage");
        let per_vcpu: Vec<u64> = usage["vcpu_us"]
            .as_array()
            .unwrap_or_else(|| panic!("usage without vcpu_us: {usage}"))
            .iter()
            .map(|v| v.as_u64().unwrap_or_else(|| panic!("bad vcpu_us: {usage}")))
            .collect();
        assert_eq!(per_vcpu.len(), vcpus, "one vcpu_us per vCPU: {usage}");
        let total = usage["vcpu_total_us"]
            .as_u64()
            .unwrap_or_else(|| panic!("usage without vcpu_total_us: {usage}"));
        assert_eq!(
            per_vcpu.iter().sum::<u64>(),
            total,
            "total is the sum: {usage}"
        );
        total
    }
}

/// A fresh directory for sockets and files, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

pub fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("control.sock")
}

/// `guest_ready` carries the VMM's own peak RSS: read under the vCPU's seccomp filter, so
/// its presence also shows the filter allows the read. A VMM with a guest of a few MiB
/// peaks at a few MiB; anything at or past 1 GiB would be the spawner's figure or garbage.
pub fn assert_plausible_vmhwm(guest_ready: &Value, ctx: &str) {
    let kib = guest_ready["vmhwm_kib"]
        .as_u64()
        .unwrap_or_else(|| panic!("guest_ready without vmhwm_kib: {guest_ready}\n{ctx}"));
    assert!(
        kib > 0 && kib < 1 << 20,
        "guest_ready vmhwm_kib {kib} not in 1 KiB..1 GiB\n{ctx}"
    );
}
