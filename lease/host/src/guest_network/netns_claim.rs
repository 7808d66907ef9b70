//! One coinopd manages guest networking in a network namespace. Its taps are named `cop*`,
//! its rules live in the `ip coinop` table, and its sweep removes every `cop*` tap no lease
//! of its own holds and renders that table from its own leases alone: a second coinopd with
//! guest networking in the same namespace (another state dir on the same host) would tear
//! down the first one's guests' networks at its start. [`NetnsClaim`] makes the second one
//! refuse to start instead, naming the first.
//!
//! The claim is a [`PidLock`] on `/run/coinop/guest-network-net<INODE>.lock`, the inode
//! being the namespace's (`/proc/thread-self/ns/net`), so coinopds in different namespaces
//! (the tests' throwaway ones) do not meet. The directory must be writable by its owner
//! only: a local user who could create the file could hold the claim and keep coinopd from
//! starting. The file is removed when the claim is dropped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::claim_dir::ClaimDirError;
use crate::pid_lock::{PidLock, PidLockError};

pub use crate::claim_dir::CLAIM_DIR;

/// Why the claim was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another coinopd manages guest networking in this namespace.
    #[error(
        "guest networking in this network namespace is managed by coinopd pid {} (its claim \
         {} is held): its taps (cop*) and rule table (ip coinop) would be torn down by this \
         one's start; stop it, or run this coinopd with --guest-network never or in another \
         network namespace",
        .pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()), .path.display()
    )]
    Held { path: PathBuf, pid: Option<u32> },
    /// The claim directory may be written by others than its owner.
    #[error("{}: writable by others than its owner (mode {mode:o}, uid {uid}); refusing to keep \
             coinopd's claims there", .dir.display())]
    UnsafeDir { dir: PathBuf, mode: u32, uid: u32 },
    #[error("reading this network namespace's identity: {0}")]
    Namespace(std::io::Error),
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// This process's claim on guest networking in its (the calling thread's) network
/// namespace; released when dropped.
#[derive(Debug)]
pub struct NetnsClaim {
    _lock: PidLock,
}

impl NetnsClaim {
    /// Takes the claim in [`CLAIM_DIR`].
    pub fn take() -> Result<NetnsClaim, ClaimError> {
        Self::take_in(Path::new(CLAIM_DIR))
    }

    /// Takes the claim in `dir` (created 0755 if missing; owned by this process's user and
    /// written by nobody else).
    pub fn take_in(dir: &Path) -> Result<NetnsClaim, ClaimError> {
        crate::claim_dir::prepare(dir).map_err(|e| match e {
            ClaimDirError::Unsafe { dir, mode, uid } => ClaimError::UnsafeDir { dir, mode, uid },
            ClaimDirError::Io { dir, what, source } => ClaimError::Io {
                path: dir,
                what,
                source,
            },
        })?;
        let netns = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(ClaimError::Namespace)?
            .ino();
        let path = dir.join(format!("guest-network-net{netns}.lock"));
        match PidLock::take_removable(&path, 0o600) {
            Ok(lock) => Ok(NetnsClaim { _lock: lock }),
            Err(PidLockError::Held { path, pid }) => Err(ClaimError::Held { path, pid }),
            Err(PidLockError::Io { path, what, source }) => {
                Err(ClaimError::Io { path, what, source })
            }
        }
    }
}
