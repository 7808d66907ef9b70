//! Files that must survive a crash or a power cut: the wallet (bearer notes, blinding
//! factors), its seed phrase, a create's recovery key. Syncing a file makes its bytes
//! durable but not its name: a file created or renamed into a directory can vanish at a
//! power cut, or come back under its old content, until the directory itself is synced.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A step of a durable write failed on `path`.
#[derive(Debug, Error)]
#[error("{}: {source}", path.display())]
pub struct DurableError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> DurableError + '_ {
    move |source| DurableError {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory that holds `path`: `.` for a bare file name, whose parent is the empty
/// path (which cannot be opened).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Syncs the directory holding `path`, so that its entry (a new file, a rename onto it)
/// is on disk.
pub fn sync_parent(path: &Path) -> Result<(), DurableError> {
    let dir = parent_dir(path);
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

/// Creates directory `dir` and any missing parents (mode 0700: what goes in them is money
/// or keys), each made durable in its own parent: a file synced into a directory whose own
/// entry a power cut loses is lost with it.
pub fn create_dirs(dir: &Path) -> Result<(), DurableError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => sync_parent(dir),
        // Another coinop made it meanwhile: its creator syncs it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(at(dir)(e)),
    }
}

/// Replaces `path` by `bytes`, atomically and durably: written to `tmp` (mode 0600, its
/// content is money) and synced, renamed onto `path`, and the directory synced. A crash at
/// any point leaves the old content or the new, and once this returns the new one stays.
///
/// The temporary file is made anew (a stale one from a crash removed first) and never
/// opened through a symlink: one planted at `tmp` in a directory others can write to would
/// otherwise get the notes written into its target, and the rename would install the link.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(tmp)(e)),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o600)
        .open(tmp)
        .map_err(at(tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(at(tmp))?;
    fs::rename(tmp, path).map_err(at(path))?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    //! What a power cut would lose cannot be observed from a test; these check the paths
    //! the syncs are made on, and that a replace leaves the new content in place.

    use super::*;

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        // Its parent is the empty path, which `File::open` refuses: syncing it would fail
        // every save of a wallet or key given as a bare name.
        assert_eq!(parent_dir(Path::new("wallet.json")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/wallet.json")), Path::new("a"));
        assert_eq!(parent_dir(Path::new("/wallet.json")), Path::new("/"));
    }

    #[test]
    fn a_symlink_at_the_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.json");
        let tmp = dir.path().join("w.tmp");
        let target = dir.path().join("elsewhere");
        fs::write(&target, b"theirs").expect("target");
        std::os::unix::fs::symlink(&target, &tmp).expect("planted link");
        replace(&path, &tmp, b"notes").expect("replace");
        assert_eq!(
            fs::read(&target).expect("target"),
            b"theirs",
            "not written through"
        );
        assert_eq!(fs::read(&path).expect("wallet"), b"notes");
        assert!(!fs::symlink_metadata(&path).expect("wallet").is_symlink());
    }

    #[test]
    fn missing_directories_are_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a").join("b");
        create_dirs(&deep).expect("made");
        create_dirs(&deep).expect("again: nothing to do");
        for d in [dir.path().join("a"), deep] {
            let mode = fs::metadata(&d).expect("dir").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn a_replace_leaves_the_new_content_and_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.json");
        let tmp = dir.path().join("w.tmp");
        replace(&path, &tmp, b"old").expect("first");
        replace(&path, &tmp, b"new").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert!(!tmp.exists());
        let err = replace(&dir.path().join("no/such/w.json"), &tmp, b"x").expect_err("no dir");
        assert!(err.to_string().contains("no/such"), "{err}");
    }
}
