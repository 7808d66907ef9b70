//! A running jailed process: coinopd's direct child, PID 1 of its own PID namespace, tracked
//! through a pidfd so waiting needs no SIGCHLD handling and never races with pid reuse.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;

/// Errors waiting for or signalling the process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("jailed pid {pid}: {what}: {source}")]
    Sys {
        /// The pid.
        pid: i32,
        /// The call.
        what: &'static str,
        /// Why.
        source: nix::Error,
    },
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// exit(code).
    Exited(i32),
    /// Killed by a signal.
    Signaled(Signal),
}

/// A jailed child process.
#[derive(Debug)]
pub struct JailedChild {
    pid: Pid,
    pidfd: OwnedFd,
}

impl JailedChild {
    /// Tracks `pid`, this process's child that has just exec'd. Without its pidfd (out of
    /// descriptors) the child is killed and reaped before the error returns: nobody could
    /// track it, and its jail and uid go back to the pool with the error. Safe by pid: an
    /// unreaped child's pid cannot have been reused.
    pub(super) fn new(pid: Pid) -> Result<Self, Error> {
        match super::syscalls::pidfd_open(pid) {
            Ok(pidfd) => Ok(JailedChild { pid, pidfd }),
            Err(source) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                Err(Error::Sys {
                    pid: pid.as_raw(),
                    what: "pidfd_open",
                    source,
                })
            }
        }
    }

    /// The pid in coinopd's namespace (inside its own namespace the process is PID 1).
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Sends SIGKILL (PID 1 of a namespace ignores other signals from outside unless it
    /// handles them).
    pub fn kill(&self) -> Result<(), Error> {
        nix::sys::signal::kill(self.pid, Signal::SIGKILL).map_err(|source| Error::Sys {
            pid: self.pid.as_raw(),
            what: "kill",
            source,
        })
    }

    /// Waits for the process to end, blocking the thread.
    pub fn wait_blocking(self) -> Result<Ended, Error> {
        loop {
            match waitpid(self.pid, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Ended::Exited(code)),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(Ended::Signaled(signal)),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(source) => {
                    return Err(Error::Sys {
                        pid: self.pid.as_raw(),
                        what: "waitpid",
                        source,
                    })
                }
            }
        }
    }

    /// The pidfd: it turns readable when the process exits, so an event loop can wait for
    /// it without a thread and then reap with [`Self::wait_blocking`] at once.
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.pidfd.as_fd()
    }
}
