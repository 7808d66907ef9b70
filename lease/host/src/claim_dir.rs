//! `/run/coinop`: where coinopd keeps its claims on host-wide things (a network namespace's
//! guest networking, each jail uid), as [`crate::pid_lock::PidLock`] files that every
//! coinopd on the host sees.
//!
//! The directory must be writable by its owner only: a local user who could create a file
//! there could hold a claim and keep coinopd from starting, or from using a uid.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The host's claim directory.
pub const CLAIM_DIR: &str = "/run/coinop";

/// Why the claim directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClaimDirError {
    /// The directory may be written by others than its owner, or is not this user's.
    #[error("{}: writable by others than its owner (mode {mode:o}, uid {uid}); refusing to keep \
             coinopd's claims there", .dir.display())]
    Unsafe { dir: PathBuf, mode: u32, uid: u32 },
    #[error("{}: {what}: {source}", .dir.display())]
    Io {
        dir: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Creates `dir` (0755) if missing and checks that it is a directory of this process's user
/// that nobody else may write.
pub fn prepare(dir: &Path) -> Result<(), ClaimDirError> {
    let io = |what: &'static str| {
        move |source| ClaimDirError::Io {
            dir: dir.to_path_buf(),
            what,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io("create"))?;
    let meta = std::fs::symlink_metadata(dir).map_err(io("stat"))?;
    let writable_by_others = meta.mode() & 0o022 != 0;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || writable_by_others {
        return Err(ClaimDirError::Unsafe {
            dir: dir.to_path_buf(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("claims");
        prepare(&dir).expect("created and ours");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        match prepare(&dir) {
            Err(ClaimDirError::Unsafe { mode, .. }) => assert_eq!(mode, 0o777),
            other => panic!("{other:?}"),
        }
    }
}
