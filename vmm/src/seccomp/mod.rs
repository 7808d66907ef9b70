//! Per-thread seccomp filters.
//!
//! Each kind of VMM thread runs under its own allow-list, reviewed as data in
//! `vmm/seccomp/x86_64.json` and compiled to BPF at build time (see `vmm/seccomp/compile.rs`),
//! so installing one is a single `seccomp(2)` call of a few µs:
//!
//! | filter | threads | installed |
//! |---|---|---|
//! | `vcpu` | every vCPU thread | after its initial register state is loaded, before its first KVM_RUN |
//! | `control` | the control-socket thread | first thing on the thread |
//! | `main` | the main thread and the stdin reader | the reader first thing; the main thread at the end of [`crate::builder::start`], after it started every thread |
//! | `device` | virtio device threads (epoll on queue eventfds, disk pread/pwrite/fdatasync, tap read/write) | first thing on the thread, before it serves any queue |
//!
//! Filters stack onto threads created later, so the main thread installs its filter only
//! after spawning the others, and the BSP waits for that ([`wait_until_sealed`]) before its
//! first KVM_RUN: no guest instruction runs while any VMM thread is unfiltered.
//!
//! A call outside the allow-list kills the whole process (`SECCOMP_RET_KILL_PROCESS`): the
//! parent sees death by SIGSYS, and the kernel logs the offending syscall number in its audit
//! log (`dmesg`: `type=1326 ... sig=31 syscall=N`). Killing is preferred to trapping because a
//! compromised thread must not get to run a signal handler.
//!
//! `--no-seccomp` turns all of this off for debugging; the VMM then emits one
//! `{"event":"warning","message":...}` line on its event stream, so the warning reaches
//! whoever reads events without breaking the JSON-lines format of stderr.

mod filters {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

use crate::events::EventSink;
use std::sync::{Condvar, Mutex, OnceLock};
use vmm_protocol::Event;

/// The thread kinds, one filter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread and device threads.
    Main,
    /// A vCPU thread.
    Vcpu,
    /// The control-socket thread.
    Control,
    /// A virtio device thread.
    Device,
}

impl ThreadKind {
    /// The filter's name in the JSON policy.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Control => "control",
            ThreadKind::Device => "device",
        }
    }

    /// Parses a filter name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Control,
            ThreadKind::Device,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
    }

    /// The compiled BPF program.
    pub fn program(self) -> &'static [seccompiler::sock_filter] {
        match self {
            ThreadKind::Main => filters::MAIN,
            ThreadKind::Vcpu => filters::VCPU,
            ThreadKind::Control => filters::CONTROL,
            ThreadKind::Device => filters::DEVICE,
        }
    }
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the filter.
    #[error("installing the '{}' seccomp filter: {source}", kind.name())]
    Install {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::Error,
    },
}

/// How the process uses seccomp, fixed once at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Install filters (off only with `--no-seccomp`).
    pub enabled: bool,
    /// Test builds only: the thread kind that calls a forbidden syscall right after
    /// installing its filter.
    pub selftest: Option<ThreadKind>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            selftest: None,
        }
    }
}

static POLICY: OnceLock<Policy> = OnceLock::new();

/// Opened once the main thread has its filter; the BSP waits for it.
static SEALED: Mutex<bool> = Mutex::new(false);
static SEALED_CHANGED: Condvar = Condvar::new();

/// Fixes the policy for the process (first call wins) and warns on `events` when filters
/// are off.
pub fn configure(policy: Policy, events: &EventSink) {
    let policy = *POLICY.get_or_init(|| policy);
    if !policy.enabled {
        events.emit(|t_us| Event::Warning {
            t_us,
            message: "seccomp disabled by --no-seccomp: VMM threads run unfiltered".into(),
        });
    }
}

fn policy() -> Policy {
    POLICY.get().copied().unwrap_or_default()
}

/// Installs `kind`'s filter on the calling thread.
pub fn install(kind: ThreadKind) -> Result<(), Error> {
    let policy = policy();
    if policy.enabled {
        seccompiler::apply_filter(kind.program())
            .map_err(|source| Error::Install { kind, source })?;
    }
    if policy.selftest == Some(kind) {
        call_forbidden_syscall();
    }
    Ok(())
}

/// Installs `kind`'s filter on a thread that has no caller to report to: failing to filter
/// a thread must not leave it running, so the process ends with code 1.
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        eprintln!("coinop-vmm: {e}");
        // SAFETY: _exit has no preconditions; no guest is safe to keep running unfiltered.
        unsafe { libc::_exit(1) }
    }
}

/// Installs the main filter on the (main) calling thread and lets the BSP enter the guest.
/// Call after every VMM thread has been started.
pub fn seal_main_thread() -> Result<(), Error> {
    let installed = install(ThreadKind::Main);
    // Open the gate even on failure: the caller ends the process, and a waiting BSP must
    // not hang it.
    *SEALED.lock().unwrap_or_else(|p| p.into_inner()) = true;
    SEALED_CHANGED.notify_all();
    installed
}

/// Blocks until [`seal_main_thread`] ran.
pub fn wait_until_sealed() {
    let mut sealed = SEALED.lock().unwrap_or_else(|p| p.into_inner());
    while !*sealed {
        sealed = SEALED_CHANGED
            .wait(sealed)
            .unwrap_or_else(|p| p.into_inner());
    }
}

/// A syscall no filter allows: opening a network socket.
fn call_forbidden_syscall() {
    // SAFETY: socket(2) takes plain integers; the descriptor, if any, is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned to us and nothing else uses it.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_is_compiled_and_named() {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Control,
            ThreadKind::Device,
        ] {
            assert!(!kind.program().is_empty(), "{} is empty", kind.name());
            assert_eq!(ThreadKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ThreadKind::from_name("api"), None);
    }

    #[test]
    fn filters_differ_per_thread_kind() {
        assert_ne!(ThreadKind::Vcpu.program(), ThreadKind::Control.program());
        assert_ne!(ThreadKind::Main.program(), ThreadKind::Vcpu.program());
        assert_ne!(ThreadKind::Device.program(), ThreadKind::Main.program());
    }
}
