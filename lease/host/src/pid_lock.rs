//! An exclusive `flock(2)` on a file that holds the holder's pid: "one coinopd at a time"
//! for whatever the file stands for (a state dir, a network namespace's guest networking).
//!
//! The kernel drops the lock when the last copy of its fd closes, so a crash leaves no
//! stale lock. The fd is close-on-exec, but a child cloned meanwhile holds a copy until it
//! execs or closes it (a jailed child does so within moments of its clone): a taker that
//! finds the lock held by a pid that is gone waits for that copy, briefly, instead of
//! failing. A live holder is another coinopd, named by its pid in the error.
//!
//! A lock whose file is removed when it is dropped ([`PidLock::take_removable`], for lock
//! files in a shared directory that would otherwise pile up) is safe to remove because every
//! taker checks, once it holds the lock, that the path still names the file it locked, and
//! starts again if not: a taker that opened the file before its removal cannot hold a lock
//! on a file nobody else can find.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// How long a taker waits for a lock whose holder has died (a child's copy of its fd).
pub const ORPHANED_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PidLockError {
    /// Another process holds it.
    #[error("{} is held by pid {}", .path.display(),
            .pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    Held {
        path: PathBuf,
        /// The holder's pid as written in the file (`None` if it has not written it yet,
        /// or the file does not hold one).
        pid: Option<u32>,
    },
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock (and removes the file, if taken removable).
#[derive(Debug)]
pub struct PidLock {
    file: Option<Flock<File>>,
    path: PathBuf,
    remove_on_drop: bool,
}

impl PidLock {
    /// Takes the lock on `path` (created with `mode` if it does not exist, set to `mode` if
    /// it does: whoever can open the file can hold its lock) without waiting
    /// on a live holder, and writes this process's pid in it. The file stays when the lock
    /// is dropped.
    pub fn take(path: &Path, mode: u32) -> Result<PidLock, PidLockError> {
        Self::take_with(path, mode, true, false)
    }

    /// As [`PidLock::take`], and the file is removed when the lock is dropped.
    pub fn take_removable(path: &Path, mode: u32) -> Result<PidLock, PidLockError> {
        Self::take_with(path, mode, true, true)
    }

    /// As [`PidLock::take_removable`], but a lock held by anyone, even a dead holder's
    /// child, is [`PidLockError::Held`] at once: for a taker with other choices (the next
    /// jail uid) that must not wait.
    pub fn try_take_removable(path: &Path, mode: u32) -> Result<PidLock, PidLockError> {
        Self::take_with(path, mode, false, true)
    }

    fn take_with(
        path: &Path,
        mode: u32,
        wait_for_orphans: bool,
        remove_on_drop: bool,
    ) -> Result<PidLock, PidLockError> {
        let io = |what: &'static str| {
            move |source: std::io::Error| PidLockError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        let deadline = Instant::now() + ORPHANED_LOCK_WAIT;
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(mode)
                .open(path)
                .map_err(io("open the lock file"))?;
            let mut locked = loop {
                match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(locked) => break locked,
                    Err((mut held, Errno::EWOULDBLOCK)) => {
                        let pid = holder_pid(&mut held);
                        if !wait_for_orphans
                            || pid.is_some_and(is_alive)
                            || Instant::now() >= deadline
                        {
                            return Err(PidLockError::Held {
                                path: path.to_path_buf(),
                                pid,
                            });
                        }
                        file = held;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err((_, errno)) => return Err(io("lock")(errno.into())),
                }
            };
            // Still the file the path names? A holder that removed it at its drop leaves us
            // a lock on a file nobody else would find: start again on the path's new file.
            let ours = locked.metadata().map_err(io("stat the lock file"))?;
            let named = std::fs::metadata(path).ok();
            if named.is_none_or(|n| (n.dev(), n.ino()) != (ours.dev(), ours.ino())) {
                continue;
            }
            // A file made by an older coinopd may have a wider mode: every open of it is a
            // way to hold its lock (flock needs no write access), so it is held to `mode`.
            if ours.mode() & 0o7777 != mode {
                use std::os::unix::fs::PermissionsExt;
                locked
                    .set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io("set the lock file's mode"))?;
            }
            // Ours now: the pid of an earlier holder (dead, or this process's own earlier
            // holder) is replaced.
            let pid = format!("{}\n", std::process::id());
            locked
                .set_len(0)
                .and_then(|()| locked.rewind())
                .and_then(|()| locked.write_all(pid.as_bytes()))
                .map_err(io("write the pid"))?;
            return Ok(PidLock {
                file: Some(locked),
                path: path.to_path_buf(),
                remove_on_drop,
            });
        }
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        if self.remove_on_drop {
            // Removed while still held: see the module's top.
            let _ = std::fs::remove_file(&self.path);
        }
        drop(self.file.take());
    }
}

/// Whether process `pid` exists (a zombie counts: it is on its way out, but its children
/// may not be).
fn is_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// The pid a holder wrote in the lock file.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_told_the_holder_and_a_drop_frees_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let first = PidLock::take(&path, 0o600).expect("first");
        match PidLock::take(&path, 0o600) {
            Err(PidLockError::Held { path: p, pid }) => {
                assert_eq!(p, path);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("second: {other:?}"),
        }
        drop(first);
        assert!(path.exists(), "a plain lock keeps its file");
        drop(PidLock::take(&path, 0o600).expect("free once dropped"));
    }

    #[test]
    fn a_lock_left_to_a_dead_holders_child_is_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let first = PidLock::take(&path, 0o600).expect("first");
        // As after a crash: the pid in the file is gone (above any pid_max), while another
        // copy of the fd (here, this one) still holds the lock for a moment.
        std::fs::write(&path, "4194305\n").expect("write a dead pid");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let started = Instant::now();
        let second = PidLock::take(&path, 0o600).expect("taken once the copy closes");
        assert!(started.elapsed() >= Duration::from_millis(150));
        release.join().expect("release");
        drop(second);
    }

    /// A taker waiting on a removable lock's file when its holder removes it does not end
    /// up holding the removed file: it locks the one the path names, which a third taker
    /// then finds held.
    #[test]
    fn a_removable_lock_is_never_held_on_a_removed_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.lock");
        let first = PidLock::take_removable(&path, 0o600).expect("first");
        // The holder's pid "gone", so the second taker waits instead of failing.
        std::fs::write(&path, "4194305\n").expect("write a dead pid");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = PidLock::take_removable(&path, 0o600).expect("second");
        release.join().expect("release");
        assert!(path.exists(), "the second holds a file the path names");
        assert!(
            matches!(
                PidLock::take_removable(&path, 0o600),
                Err(PidLockError::Held { .. })
            ),
            "a third taker finds it held"
        );
        drop(second);
        assert!(!path.exists(), "removed with its last holder");
    }
}
