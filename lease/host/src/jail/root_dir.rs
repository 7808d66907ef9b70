//! The per-lease root directory: empty mount points for the read-only bind mounts (VMM
//! binary, its libraries, kernel, initrd) and a private /dev/kvm node owned by the lease's
//! uid. Nothing else of the host is reachable from inside.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// /dev/kvm's device number (misc major 10, minor 232).
const KVM_MAJOR: u64 = 10;
const KVM_MINOR: u64 = 232;

/// Errors building the directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system step failed.
    #[error("jail root {path}: {what}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// mknod or chown of /dev/kvm failed.
    #[error("jail root {path}: {what}: {source}")]
    Node {
        /// The path.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Why.
        source: nix::Error,
    },
    /// A bind-mount target that is not a plain absolute path.
    #[error("jail path {0} must be absolute without '..'")]
    BadJailPath(PathBuf),
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// `root` joined with an absolute in-jail path, refusing anything that could leave `root`.
pub fn host_path(root: &Path, in_jail: &Path) -> Result<PathBuf, Error> {
    let mut out = root.to_path_buf();
    let mut components = in_jail.components();
    if components.next() != Some(Component::RootDir) {
        return Err(Error::BadJailPath(in_jail.to_path_buf()));
    }
    for c in components {
        match c {
            Component::Normal(part) => out.push(part),
            _ => return Err(Error::BadJailPath(in_jail.to_path_buf())),
        }
    }
    Ok(out)
}

/// Creates `root` (fresh) with an empty file at each of `mount_points` and /dev/kvm for
/// `uid`/`gid`.
pub fn build(root: &Path, mount_points: &[PathBuf], uid: u32, gid: u32) -> Result<(), Error> {
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(io(root, "removing a stale jail"))?;
    }
    std::fs::create_dir_all(root).map_err(io(root, "mkdir"))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
        .map_err(io(root, "chmod 0755"))?;
    for point in mount_points {
        let path = host_path(root, point)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir, "mkdir"))?;
        }
        std::fs::File::create(&path).map_err(io(&path, "creating a mount point"))?;
    }
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(io(&dev, "mkdir"))?;
    let kvm = dev.join("kvm");
    let node = |what, source| Error::Node {
        path: kvm.clone(),
        what,
        source,
    };
    nix::sys::stat::mknod(
        &kvm,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(KVM_MAJOR, KVM_MINOR),
    )
    .map_err(|e| node("mknod c 10 232", e))?;
    nix::unistd::chown(
        &kvm,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| node("chown", e))?;
    Ok(())
}

/// Creates an empty directory at `point` in a built `root`, as the mount point of a
/// directory bind.
pub fn make_dir_point(root: &Path, point: &Path) -> Result<(), Error> {
    let path = host_path(root, point)?;
    std::fs::create_dir_all(&path).map_err(io(&path, "creating a directory mount point"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_paths_stay_inside_the_root() {
        let root = Path::new("/srv/jail/l1");
        assert_eq!(
            host_path(root, Path::new("/lib64/ld.so")).expect("ok"),
            PathBuf::from("/srv/jail/l1/lib64/ld.so")
        );
        assert!(host_path(root, Path::new("/../etc/passwd")).is_err());
        assert!(host_path(root, Path::new("relative")).is_err());
    }
}
