//! Shared by the isolation tests: finding coinop-vmm, building the test guest, starting a
//! jailed VMM with its event pipe and control socket, and SKIPPED notices.
#![allow(dead_code)]

use coinop_host::jail::{Ended, JailConfig, JailedChild, UidPool, KERNEL_PATH};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Prints a SKIPPED line on the real stderr (the harness captures eprintln!).
pub fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

/// coinop-vmm next to this crate's binaries (built by `cargo build -p vmm`).
pub fn vmm_bin() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_coinopd")).parent()?;
    let vmm = dir.join("coinop-vmm");
    vmm.exists().then_some(vmm)
}

/// Root, /dev/kvm and coinop-vmm present, or a SKIPPED line and false.
pub fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("isolation tests need root (namespaces, mknod, cgroups)");
        return false;
    }
    if !Path::new("/dev/kvm").exists() {
        skip("/dev/kvm not available");
        return false;
    }
    if vmm_bin().is_none() {
        skip("coinop-vmm not built in this target dir (cargo build -p vmm)");
        return false;
    }
    true
}

/// Builds the PVH test guest into `dir` with images/testguest/build.sh.
pub fn build_guest(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/testguest/build.sh");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("run build.sh");
    assert!(
        out.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("testguest-pvh.elf")
}

/// When `ready()`: a fresh temp dir and a jail configuration under it; else `None` after
/// the SKIPPED line.
pub fn ready_jail() -> Option<(tempfile::TempDir, JailConfig)> {
    if !ready() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = jail_config(dir.path());
    Some((dir, config))
}

/// A jail configuration under `dir`, with uids unlikely to clash with parallel tests.
pub fn jail_config(dir: &Path) -> JailConfig {
    let first = 3_000_000 + (std::process::id() % 10_000) * 16;
    JailConfig::new(
        dir.join("jails"),
        vmm_bin().expect("checked by ready()"),
        UidPool::new(first, 16).expect("valid uid range"),
    )
    .expect("ldd coinop-vmm")
}

/// A jailed VMM booted to `guest_ready`; killed and reaped when dropped, so a failing test
/// leaves no guest spinning behind it.
pub struct Booted {
    child: Option<JailedChild>,
    pub control: PathBuf,
    pub console: PathBuf,
    pub events: mpsc::Receiver<String>,
}

/// Starts `jail`'s VMM on the test guest with `cmdline`, joined to `cgroup_procs`, and
/// waits for `guest_ready`.
pub fn boot(
    jail: &coinop_host::jail::Jail,
    dir: &Path,
    cmdline: &str,
    vcpus: u32,
    mem_mib: u64,
    cgroup_procs: Vec<OwnedFd>,
) -> Booted {
    boot_with(dir, cmdline, vcpus, mem_mib, |args, fds| {
        jail.spawn(args, fds, cgroup_procs).expect("jailed spawn")
    })
}

/// Launches the VMM in `parked` on `guest` with `cmdline` and waits for `guest_ready`.
pub fn boot_parked(
    parked: coinop_host::jail::ParkedJail,
    guest: &Path,
    dir: &Path,
    cmdline: &str,
    vcpus: u32,
    mem_mib: u64,
) -> (Booted, coinop_host::jail::Jail) {
    let mut jail = None;
    let booted = boot_with(dir, cmdline, vcpus, mem_mib, |args, fds| {
        let (child, launched) = parked.launch(guest, None, None, args, fds).expect("launch");
        jail = Some(launched);
        child
    });
    (booted, jail.expect("launched"))
}

/// Runs `spawn` with the VMM's arguments and fds (null stdin, console, log, event pipe,
/// control listener) and waits for `guest_ready`.
fn boot_with(
    dir: &Path,
    cmdline: &str,
    vcpus: u32,
    mem_mib: u64,
    spawn: impl FnOnce(Vec<OsString>, Vec<OwnedFd>) -> JailedChild,
) -> Booted {
    let control = dir.join("control.sock");
    let _ = std::fs::remove_file(&control);
    let listener = UnixListener::bind(&control).expect("bind control socket");
    let console = dir.join("console.txt");
    let (events_rx, events_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let events_rx = std::fs::File::from(events_rx);
    let fds: Vec<OwnedFd> = vec![
        std::fs::File::open("/dev/null").expect("/dev/null").into(),
        std::fs::File::create(&console).expect("console").into(),
        std::fs::File::create(dir.join("vmm.log"))
            .expect("log")
            .into(),
        events_tx,
        listener.into(),
    ];
    let args: Vec<OsString> = [
        "--kernel",
        KERNEL_PATH,
        "--cmdline",
        cmdline,
        "--vcpus",
        &vcpus.to_string(),
        "--mem-mib",
        &mem_mib.to_string(),
        "--serial",
        "stdout",
        "--events",
        "fd:3",
        "--control",
        "fd:4",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let child = spawn(args, fds);
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(events_rx).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    loop {
        let line = events
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| {
                let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
                panic!("no guest_ready from the jailed VMM ({e}); log: {log}")
            });
        if line.contains("\"guest_ready\"") {
            break;
        }
    }
    Booted {
        child: Some(child),
        control,
        console,
        events,
    }
}

impl Booted {
    /// The VMM's pid in the host's namespace.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .expect("present until wait or drop")
            .pid()
    }

    /// SIGKILL.
    pub fn kill(&self) {
        if let Some(c) = &self.child {
            c.kill().expect("kill the jailed VMM");
        }
    }

    /// Waits for the VMM to end and reaps it.
    pub fn wait(&mut self) -> Ended {
        self.child
            .take()
            .expect("waited once")
            .wait_blocking()
            .expect("wait for the jailed VMM")
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait_blocking();
        }
    }
}

/// One request on the control socket; the reply line.
pub fn control(path: &Path, request: &str) -> String {
    let mut stream = UnixStream::connect(path).expect("connect control socket");
    writeln!(stream, "{request}").expect("send request");
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .expect("read reply");
    reply
}
