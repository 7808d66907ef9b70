//! The state directory's two guarantees, set up before anything else reads or writes it:
//!
//! - **One coinopd at a time.** An exclusive `flock(2)` on `STATE/coinopd.lock`, held for
//!   the life of the [`StateLock`] (the daemon's `AppState`), with the holder's pid written
//!   in the file so a second coinopd can say who holds it. A second coinopd on the same
//!   state dir would otherwise bind the socket over the first one's and sweep its slots and
//!   networks as left-overs. The kernel drops the lock when the last copy of its fd closes,
//!   so a crash never leaves a stale lock behind: the fd is close-on-exec, so neither a VMM
//!   nor a helper command keeps it, and a child cloned meanwhile closes its copy within
//!   moments (the next coinopd waits for that when the holder's pid is gone).
//! - **Private.** The directory is 0700 and the files that hold tenants' secrets or their
//!   guests' output are 0600, owned by root: the ledger (token hashes, payments, refund
//!   records) with its WAL and shared-memory files, the mint's keys, and each lease's
//!   console and VMM log. coinopd opens those for the VMM and passes the fds, so a jailed
//!   VMM never needs a path into the state dir; a tenant reads its console through the API
//!   with its lease's token.

use std::fs::{File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use coinop_host::pid_lock::{PidLock, PidLockError};
use thiserror::Error;

/// The lock file's name in the state dir.
pub const LOCK_FILE: &str = "coinopd.lock";
/// Mode of the state dir and of `run/`: only root may look inside.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the ledger, keys, consoles and logs: only root may read them.
pub const FILE_MODE: u32 = 0o600;
#[derive(Debug, Error)]
pub enum StateDirError {
    /// Another coinopd holds the state dir.
    #[error("state dir {} is in use by coinopd pid {} (its lock {LOCK_FILE} is held); \
             stop that coinopd first, or give this one another --state-dir",
            .state_dir.display(), .pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    Held {
        state_dir: PathBuf,
        /// The holder's pid as written in the lock file (`None` if it has not written it
        /// yet, or the file does not hold one).
        pid: Option<u32>,
    },
    #[error("state dir {}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> StateDirError + 'a {
    move |source| StateDirError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// The held lock on a state dir ([`PidLock`]); dropping it releases the lock (the file
/// stays: removing it would only make every taker check it locked the file the path names).
#[derive(Debug)]
pub struct StateLock {
    _lock: PidLock,
}

impl StateLock {
    /// Creates the state dir if needed (0700), takes its lock without waiting on a live
    /// holder, and writes this process's pid in the lock file. Fails with
    /// [`StateDirError::Held`] naming the holder's pid when another coinopd has it.
    pub fn take(state_dir: &Path) -> Result<StateLock, StateDirError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(state_dir)
            .map_err(io(state_dir, "create"))?;
        match PidLock::take(&state_dir.join(LOCK_FILE), FILE_MODE) {
            Ok(lock) => Ok(StateLock { _lock: lock }),
            Err(PidLockError::Held { pid, .. }) => Err(StateDirError::Held {
                state_dir: state_dir.to_path_buf(),
                pid,
            }),
            Err(PidLockError::Io { path, what, source }) => {
                Err(StateDirError::Io { path, what, source })
            }
        }
    }
}

/// Makes the state dir private: the dir and `run_dir` 0700, the ledger and its WAL and
/// shared-memory files 0600 (the ledger is created empty with that mode if it does not
/// exist, so SQLite, which gives its side files the main file's mode, never makes them
/// readable), and every file already in `run_dir` (consoles, VMM logs of earlier runs)
/// 0600. Runs right after [`StateLock::take`], before the ledger opens.
pub fn make_private(state_dir: &Path, run_dir: &Path, ledger: &Path) -> Result<(), StateDirError> {
    std::fs::set_permissions(state_dir, Permissions::from_mode(DIR_MODE))
        .map_err(io(state_dir, "chmod"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(run_dir)
        .map_err(io(run_dir, "create"))?;
    std::fs::set_permissions(run_dir, Permissions::from_mode(DIR_MODE))
        .map_err(io(run_dir, "chmod"))?;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(ledger)
        .map_err(io(ledger, "create"))?;
    let mut files: Vec<PathBuf> = ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut name = ledger.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        })
        .collect();
    let entries = std::fs::read_dir(run_dir).map_err(io(run_dir, "list"))?;
    files.extend(
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path()),
    );
    for file in files {
        match std::fs::set_permissions(&file, Permissions::from_mode(FILE_MODE)) {
            Ok(()) => {}
            // A side file that does not exist yet, or one a VMM removed meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&file, "chmod")(e)),
        }
    }
    Ok(())
}

/// Creates (or truncates) a lease's console or log file, 0600: only coinopd (root) opens
/// it; the VMM writes to the fd it is handed.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // `mode` applies only when the file is created: one left by an earlier run keeps its
    // mode unless it is set here.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_naming_the_holder_and_drop_releases_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = StateLock::take(&state).expect("first lock");
        match StateLock::take(&state) {
            Err(StateDirError::Held { state_dir, pid }) => {
                assert_eq!(state_dir, state);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        let again = StateLock::take(&state).expect("the lock is free once dropped");
        drop(again);
        let mode = std::fs::metadata(&state)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, DIR_MODE);
    }

    #[test]
    fn make_private_closes_an_open_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let run = state.join("run");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::set_permissions(&state, Permissions::from_mode(0o755)).expect("chmod");
        let console = run.join("l1.console");
        std::fs::write(&console, "hello").expect("console");
        std::fs::set_permissions(&console, Permissions::from_mode(0o644)).expect("chmod");
        let ledger = state.join("ledger.db");
        make_private(&state, &run, &ledger).expect("private");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&run), 0o700);
        assert_eq!(mode(&console), 0o600);
        assert_eq!(mode(&ledger), 0o600);
    }
}
