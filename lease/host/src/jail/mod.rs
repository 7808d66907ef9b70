//! The jail each guest's `coinop-vmm` runs in, after Firecracker's jailer: new mount, PID,
//! IPC, UTS (and optionally network) namespaces; a per-lease root holding only the VMM
//! binary and the libraries it loads, the kernel, the initrd, the image's root filesystem
//! and a private /dev/kvm, all read-only, plus the lease's copy-on-write overlay, the one
//! writable file; rlimits (no core, no locked memory, a few fds, and the largest file the
//! caller allows: [`Jail::set_max_file_bytes`]); every inherited fd closed but the ones
//! passed; an unprivileged uid/gid from a pool, one per running lease.
//!
//! The control socket, console and event pipe are passed as fds rather than created in the
//! jail, so the jail root can be read-only: coinopd binds the control socket on the host and
//! hands the listener over (`--control fd:N`).
//!
//! Use: [`JailConfig::new`] once at start-up, [`JailConfig::prepare`] per lease,
//! [`Jail::spawn`] to start the VMM, [`Jail::remove`] after it ended. Or ahead of a lease:
//! [`JailConfig::park`] (a child already jailed, waiting before exec) and
//! [`ParkedJail::launch`] once the lease's image and arguments are known.

mod child;
mod libraries;
mod parked;
mod root_dir;
mod spawn;
mod subordinate_ids;
mod syscalls;
mod uid_pool;

pub use child::{Ended, JailedChild};
pub use libraries::{needed_by, parse_ldd};
pub use spawn::Step;
pub use subordinate_ids::{check_clear_of, SubordinateIdError, SUBORDINATE_ID_FILES};
pub use uid_pool::{Error as UidPoolError, JailUid, UidPool};

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where the VMM binary appears inside the jail.
pub const VMM_PATH: &str = "/coinop-vmm";
/// Where the kernel appears inside the jail.
pub const KERNEL_PATH: &str = "/kernel";
/// Where the initrd appears inside the jail.
pub const INITRD_PATH: &str = "/initrd";
/// Where the image's root filesystem (read-only base) appears inside the jail.
pub const ROOTFS_PATH: &str = "/rootfs";
/// Where the lease's copy-on-write overlay (writable) appears inside the jail.
pub const OVERLAY_PATH: &str = "/overlay";

/// Where a golden snapshot's directory appears inside the jail: read-only for a lease
/// restored from it (its `state` and `memory` files), writable for the VMM that takes it.
pub const SNAPSHOT_PATH: &str = "/snapshot";

/// RLIMIT_FSIZE's "no limit" (RLIM_INFINITY): a jail's VMM writes files of any size until
/// [`Jail::set_max_file_bytes`] says otherwise.
pub const NO_FILE_SIZE_LIMIT: u64 = nix::libc::RLIM_INFINITY;

/// What a jail holds besides the VMM, kernel, initrd and root disk (see
/// [`JailConfig::prepare_with_extras`]).
#[derive(Debug, Clone, Default)]
pub struct JailExtras {
    /// A golden snapshot's directory on the host, whose `state` and `memory` files are bound
    /// read-only at [`SNAPSHOT_PATH`]`/state` and `/memory` (a `--restore` lease).
    pub restore_from: Option<PathBuf>,
    /// A host directory (owned by the jail's uid, see [`Jail::uid`]) bound writable at
    /// [`SNAPSHOT_PATH`]: where the VMM that takes a golden snapshot writes it.
    pub snapshot_into: Option<PathBuf>,
}

/// A root disk for the guest: the image's shared base and the lease's overlay (host paths).
#[derive(Debug, Clone)]
pub struct RootDisk {
    pub base: PathBuf,
    pub overlay: PathBuf,
}

/// Errors of the jail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Finding the VMM's libraries failed.
    #[error(transparent)]
    Libraries(#[from] libraries::Error),
    /// No uid free.
    #[error(transparent)]
    Uid(#[from] uid_pool::Error),
    /// Building the root failed.
    #[error(transparent)]
    Root(#[from] root_dir::Error),
    /// Starting the process failed.
    #[error(transparent)]
    Spawn(#[from] spawn::Error),
    /// Tracking the process failed.
    #[error(transparent)]
    Child(#[from] child::Error),
    /// Removing the root failed.
    #[error("removing jail {path}: {source}")]
    Remove {
        /// The root.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading back a jail an earlier coinopd left failed.
    #[error("reopening jail {path}: {source}")]
    Reopen {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory a golden snapshot is written into could not be given to the jail's uid.
    #[error("giving snapshot directory {path} to the jail's uid: {source}")]
    SnapshotDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// A lease id that cannot name a directory.
    #[error("lease id '{0}' cannot name a jail directory (letters, digits, '-' and '_' only)")]
    BadLeaseId(String),
}

/// Daemon-wide jail settings.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// Directory holding one root per lease.
    pub base: PathBuf,
    /// The VMM binary on the host.
    pub vmm_bin: PathBuf,
    /// Its loader and libraries (host paths, bound at the same paths in the jail).
    pub libraries: Vec<PathBuf>,
    /// uids for jailed VMMs.
    pub uids: UidPool,
    /// Also give each VMM an empty network namespace.
    pub new_net_ns: bool,
}

impl JailConfig {
    /// Settings for jails under `base` running `vmm_bin`; finds its libraries now.
    pub fn new(base: PathBuf, vmm_bin: PathBuf, uids: UidPool) -> Result<Self, Error> {
        let libraries = libraries::needed_by(&vmm_bin)?;
        Ok(JailConfig {
            base,
            vmm_bin,
            libraries,
            uids,
            new_net_ns: true,
        })
    }

    /// Builds a root for `lease_id` with mount points for any image, takes a uid and starts
    /// a child in it that has done everything but exec (see [`parked`]): in its namespaces
    /// and in the cgroup of `cgroup_procs`, pivoted into the root with the VMM and its
    /// libraries bound read-only. Blocks until the child is parked (a few ms).
    pub fn park(&self, lease_id: &str, cgroup_procs: Vec<OwnedFd>) -> Result<ParkedJail, Error> {
        let root = self.root_of(lease_id)?;
        let uid = self.uids.take()?;
        let mut binds = vec![(self.vmm_bin.clone(), PathBuf::from(VMM_PATH))];
        binds.extend(self.libraries.iter().map(|lib| (lib.clone(), lib.clone())));
        let mut points: Vec<PathBuf> = binds.iter().map(|(_, inside)| inside.clone()).collect();
        points.extend([KERNEL_PATH, INITRD_PATH, ROOTFS_PATH, OVERLAY_PATH].map(PathBuf::from));
        points.extend(["state", "memory"].map(|f| Path::new(SNAPSHOT_PATH).join(f)));
        root_dir::build(&root, &points, uid.get(), uid.get())?;
        let plan = parked::ParkPlan {
            root: root.clone(),
            binds,
            program: PathBuf::from(VMM_PATH),
            cgroup_procs,
            uid: uid.get(),
            new_net_ns: self.new_net_ns,
        };
        match parked::park(plan) {
            Ok(child) => Ok(ParkedJail {
                jail: Jail {
                    root,
                    uid,
                    binds: Vec::new(),
                    writable: Vec::new(),
                    new_net_ns: self.new_net_ns,
                    max_file_bytes: NO_FILE_SIZE_LIMIT,
                },
                child,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&root);
                Err(e.into())
            }
        }
    }

    /// Builds the root for `lease_id` with `kernel` and `initrd` and takes a uid for it.
    pub fn prepare(
        &self,
        lease_id: &str,
        kernel: &Path,
        initrd: Option<&Path>,
    ) -> Result<Jail, Error> {
        self.prepare_with_disk(lease_id, kernel, initrd, None)
    }

    /// Like [`JailConfig::prepare`], with `disk`'s base bound read-only at [`ROOTFS_PATH`]
    /// and its overlay (which must exist, owned by the jail's uid: see [`Jail::uid`])
    /// bound writable at [`OVERLAY_PATH`].
    pub fn prepare_with_disk(
        &self,
        lease_id: &str,
        kernel: &Path,
        initrd: Option<&Path>,
        disk: Option<&RootDisk>,
    ) -> Result<Jail, Error> {
        self.prepare_with_extras(lease_id, kernel, initrd, disk, &JailExtras::default())
    }

    /// Like [`JailConfig::prepare_with_disk`], with a golden snapshot to restore from or to
    /// write ([`JailExtras`]). The snapshot files a restore reads are bound read-only, so a
    /// jailed VMM can map but never change the snapshot every lease of the image shares.
    pub fn prepare_with_extras(
        &self,
        lease_id: &str,
        kernel: &Path,
        initrd: Option<&Path>,
        disk: Option<&RootDisk>,
        extras: &JailExtras,
    ) -> Result<Jail, Error> {
        let root = self.root_of(lease_id)?;
        let uid = self.uids.take()?;
        let mut binds = vec![
            (self.vmm_bin.clone(), PathBuf::from(VMM_PATH)),
            (kernel.to_path_buf(), PathBuf::from(KERNEL_PATH)),
        ];
        if let Some(initrd) = initrd {
            binds.push((initrd.to_path_buf(), PathBuf::from(INITRD_PATH)));
        }
        binds.extend(self.libraries.iter().map(|lib| (lib.clone(), lib.clone())));
        let mut writable = Vec::new();
        if let Some(disk) = disk {
            binds.push((disk.base.clone(), PathBuf::from(ROOTFS_PATH)));
            writable.push((disk.overlay.clone(), PathBuf::from(OVERLAY_PATH)));
        }
        if let Some(dir) = &extras.restore_from {
            for file in ["state", "memory"] {
                binds.push((dir.join(file), Path::new(SNAPSHOT_PATH).join(file)));
            }
        }
        let points: Vec<PathBuf> = binds
            .iter()
            .chain(&writable)
            .map(|(_, inside)| inside.clone())
            .collect();
        root_dir::build(&root, &points, uid.get(), uid.get())?;
        if let Some(dir) = &extras.snapshot_into {
            // The VMM, running as the jail's uid, creates the snapshot files in it.
            let owner = Some(nix::unistd::Uid::from_raw(uid.get()));
            let group = Some(nix::unistd::Gid::from_raw(uid.get()));
            nix::unistd::chown(dir, owner, group).map_err(|source| Error::SnapshotDir {
                path: dir.clone(),
                source,
            })?;
            // A directory mount point (the others are files), made after the root is built.
            root_dir::make_dir_point(&root, Path::new(SNAPSHOT_PATH))?;
            writable.push((dir.clone(), PathBuf::from(SNAPSHOT_PATH)));
        }
        Ok(Jail {
            root,
            uid,
            binds,
            writable,
            new_net_ns: self.new_net_ns,
            max_file_bytes: NO_FILE_SIZE_LIMIT,
        })
    }
}

impl JailConfig {
    fn root_of(&self, lease_id: &str) -> Result<PathBuf, Error> {
        let plain = !lease_id.is_empty()
            && lease_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain {
            return Err(Error::BadLeaseId(lease_id.to_string()));
        }
        Ok(self.base.join(lease_id))
    }

    /// The jail an earlier coinopd prepared for `lease_id` (a guest that outlived it), with
    /// its uid claimed back from the pool; `None` when there is no such root. The uid is the
    /// owner of the root's /dev/kvm. The result can be removed but not spawned again.
    pub fn reopen(&self, lease_id: &str) -> Result<Option<Jail>, Error> {
        use std::os::unix::fs::MetadataExt;
        let root = self.root_of(lease_id)?;
        let kvm = root.join("dev/kvm");
        let meta = match std::fs::symlink_metadata(&kvm) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !root.exists() => {
                return Ok(None)
            }
            Err(source) => return Err(Error::Reopen { path: kvm, source }),
        };
        let uid = self.uids.claim(meta.uid())?;
        Ok(Some(Jail {
            root,
            uid,
            binds: Vec::new(),
            writable: Vec::new(),
            new_net_ns: self.new_net_ns,
            max_file_bytes: NO_FILE_SIZE_LIMIT,
        }))
    }
}

/// A jail root with a child parked in it before exec ([`JailConfig::park`]).
#[derive(Debug)]
pub struct ParkedJail {
    jail: Jail,
    child: parked::Parked,
}

impl ParkedJail {
    /// The root directory on the host.
    pub fn root(&self) -> &Path {
        &self.jail.root
    }

    /// The uid (and gid) the VMM will run as.
    pub fn uid(&self) -> u32 {
        self.jail.uid.get()
    }

    /// As [`Jail::set_max_file_bytes`], for the VMM this child execs.
    pub fn set_max_file_bytes(&mut self, bytes: u64) {
        self.jail.max_file_bytes = bytes;
    }

    /// The parked child's pid, which the VMM keeps once launched.
    pub fn pid(&self) -> i32 {
        self.child.pid().as_raw()
    }

    /// Execs the VMM in the parked child, with `kernel` (and `initrd`, and `disk`'s base)
    /// bound read-only at [`KERNEL_PATH`] (and [`INITRD_PATH`], [`ROOTFS_PATH`]) and `disk`'s
    /// overlay (which must exist, owned by [`ParkedJail::uid`]) bound writable at
    /// [`OVERLAY_PATH`]; `args` and `fds` as for [`Jail::spawn`]. Blocks until the VMM has
    /// exec'd (well under a millisecond). On failure the child is reaped and the root
    /// removed.
    pub fn launch(
        self,
        kernel: &Path,
        initrd: Option<&Path>,
        disk: Option<&RootDisk>,
        args: Vec<OsString>,
        fds: Vec<OwnedFd>,
    ) -> Result<(JailedChild, Jail), Error> {
        self.launch_restoring(kernel, initrd, disk, None, args, fds)
    }

    /// Like [`ParkedJail::launch`], with a golden snapshot's `state` and `memory` files
    /// (from the host directory `snapshot`) bound read-only at [`SNAPSHOT_PATH`]`/state` and
    /// `/memory`, for a VMM started with `--restore`.
    pub fn launch_restoring(
        self,
        kernel: &Path,
        initrd: Option<&Path>,
        disk: Option<&RootDisk>,
        snapshot: Option<&Path>,
        args: Vec<OsString>,
        fds: Vec<OwnedFd>,
    ) -> Result<(JailedChild, Jail), Error> {
        let ParkedJail { jail, child } = self;
        let launched = child
            .launch(
                parked::LaunchImages {
                    kernel,
                    initrd,
                    disk,
                    snapshot,
                },
                jail.max_file_bytes,
                &args,
                fds,
            )
            .map_err(Error::from)
            .and_then(|pid| Ok(JailedChild::new(pid)?));
        match launched {
            Ok(child) => Ok((child, jail)),
            Err(e) => {
                let _ = jail.remove();
                Err(e)
            }
        }
    }

    /// Kills and reaps the parked child and removes the root.
    pub fn discard(self) -> Result<(), Error> {
        drop(self.child);
        self.jail.remove()
    }
}

/// One lease's prepared jail.
#[derive(Debug)]
pub struct Jail {
    root: PathBuf,
    uid: JailUid,
    binds: Vec<(PathBuf, PathBuf)>,
    /// Bound writable (the lease's overlay).
    writable: Vec<(PathBuf, PathBuf)>,
    new_net_ns: bool,
    /// The VMM's RLIMIT_FSIZE ([`Jail::set_max_file_bytes`]).
    max_file_bytes: u64,
}

impl Jail {
    /// The root directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The uid (and gid) the VMM runs as.
    pub fn uid(&self) -> u32 {
        self.uid.get()
    }

    /// Limits every file the VMM writes to `bytes` (RLIMIT_FSIZE, soft and hard, set before
    /// exec): a write or truncate beyond it fails and the kernel sends the VMM SIGXFSZ,
    /// which ends it. The caller's per-file checks bound each file more tightly after the
    /// fact; this bounds them all at once, as they are written. Unlimited until set.
    pub fn set_max_file_bytes(&mut self, bytes: u64) {
        self.max_file_bytes = bytes;
    }

    /// Starts the VMM in the jail with `args` (paths as seen inside: [`KERNEL_PATH`],
    /// [`INITRD_PATH`], `fd:N`). `fds[i]` becomes fd `i` of the VMM (0-2 are its stdio);
    /// `cgroup_procs` are the lease cgroup's open `cgroup.procs` files, joined before exec.
    /// Blocks until the VMM has exec'd (a few hundred µs) or failed.
    pub fn spawn(
        &self,
        args: Vec<OsString>,
        fds: Vec<OwnedFd>,
        cgroup_procs: Vec<OwnedFd>,
    ) -> Result<JailedChild, Error> {
        let plan = spawn::Plan {
            root: self.root.clone(),
            binds: self.binds.clone(),
            writable_binds: self.writable.clone(),
            program: PathBuf::from(VMM_PATH),
            args,
            fds,
            cgroup_procs,
            uid: self.uid.get(),
            new_net_ns: self.new_net_ns,
            max_file_bytes: self.max_file_bytes,
        };
        let pid = spawn::spawn(&plan)?;
        Ok(JailedChild::new(pid)?)
    }

    /// Deletes the root (after the VMM ended) and returns the uid to the pool.
    pub fn remove(self) -> Result<(), Error> {
        std::fs::remove_dir_all(&self.root).map_err(|source| Error::Remove {
            path: self.root.clone(),
            source,
        })
    }
}
