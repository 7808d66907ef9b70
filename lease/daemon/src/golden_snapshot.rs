//! Golden snapshots: for an image declared with `snapshot` (`--image NAME=KERNEL,snapshot`),
//! coinopd boots the image once in a VMM of its own, snapshots the ready guest, and starts
//! later leases of that image by `coinop-vmm --restore` instead of a cold boot.
//!
//! **When.** On first use: the first lease of an image (with the image's own command line,
//! and a given vCPU count, memory size and NIC or none) cold-boots as always, and a build
//! of the snapshot for that shape starts beside it; leases created once it is written start
//! by restore. Leases with a NIC have one only for `agent` images: any other image's guest
//! gets its address on the command line, so its leases never share one. Building at start-up would delay the daemon by a boot per image and shape, and
//! the shapes tenants buy are only known on use.
//!
//! **The build.** A VMM like a lease's (jailed under an id `golden-<key>-<nonce>`, one per
//! build, with its own uid and cgroup, through [`Supervisor::boot`]) but recorded nowhere in
//! the ledger: nobody pays for it and the scheduler ignores its end. Nothing re-adopts it
//! either, so its spawn is recorded in a marker beside the staging directory instead
//! ([`build_vmm_marker`]), and coinopd ends a build's VMM when it stops and, at start, any
//! that an earlier coinopd died with ([`end_builds`]). coinopd waits for the guest's ready
//! point and
//! sends `{"cmd":"snapshot","dir":...,"exit":true}`. The ready point is the guest's
//! `guest_ready` event, or for an `agent` image its `awaiting_personalisation`: the agent
//! (images/rootfs/PERSONALISE.md) asks for its lease's data after init and before any
//! per-lease state, so the snapshot holds nothing of any lease (its SSH server already
//! listens there, with a placeholder host key no session can use); every lease restored from
//! it gets its own entropy, address, keys and name through [`crate::personalisation`]. A
//! shape with a NIC is built with a NIC of its own (a tap and address claimed for the
//! build, released when its VMM exits), so the snapshot's devices match the leases'; the
//! guest brings no interface up before it is personalised. The VMM writes into a staging directory it owns (bound writable into its jail); once
//! it has exited, coinopd gives the files to root, read-only (0444, directory 0555), and
//! renames the staging directory into place: jailed VMMs of later leases get `state` and
//! `memory` bound read-only and map the memory copy-on-write, and none can change them (the
//! `overlay`, below, is only coinopd's to copy).
//!
//! **The root disk.** A snapshot holds no disk contents (the VMM flushes the disk before it
//! takes its state, and the restoring side attaches the disk the guest continues on), but
//! the guest's memory does depend on them: booting to its ready point, a guest writes to
//! its root disk (a read-write remount, directories, files; the filesystem's superblock
//! and journal), and its page cache and filesystem state assume those writes. So for an
//! image with a root filesystem the build keeps the golden VMM's overlay (the base image
//! stays shared and read-only): it is hard-linked into the staging directory (both are
//! under the state directory, one filesystem) before the snapshot command (the VMM's exit
//! removes the overlay's own name with the rest of its confinement), flushed by the
//! snapshot, and stored as `overlay` beside `state` and `memory`, read-only like them. A
//! lease restored from the snapshot starts on a copy of it (owned by the lease's jail uid,
//! 0600), made by data extents only ([`crate::sparse_copy`]): it costs what the golden
//! guest wrote, not the disk's size. A cold boot, including the fallback after a failed
//! restore, starts on an empty overlay.
//! A snapshot directory without an `overlay` (made before overlays were kept) is not
//! complete, so it is built again rather than restored onto an empty disk.
//!
//! **Validity.** The directory is `STATE/snapshots/IMAGE/<vcpus>c<mem>m-<key>`, where key
//! is a SHA-256 over everything the snapshot depends on: the kernel, initrd and rootfs
//! files' identity, the command line, vCPUs, memory, and the coinop-vmm binary's identity
//! (whose snapshot format and host checks refuse anything else anyway). A file's identity
//! is its (device, inode, size, mtime, ctime) rather than its content: hashing a root
//! filesystem of gigabytes on every lease create is too slow, and any replacement (a new
//! inode), write or touch (mtime and ctime, which nobody can set back) changes the tuple.
//! A changed input gives a new key; the build of the new snapshot removes the image's
//! snapshots of the same shape under other keys, and coinopd's start removes every
//! snapshot whose key is not its shape's now, and those of images gone from the catalogue
//! ([`GoldenSnapshots::sweep`]): no lease would restore from them again.
//!
//! **Bound.** Tenants choose the shape (any vCPU count and memory size within the limits),
//! and each new one is a snapshot on the state disk: at most `--max-golden-snapshots` are
//! kept, all images together, as a cache. A build that makes one too many removes the
//! least recently used, restored from or built (a directory's mtime, set at each use, so
//! the order outlives coinopd), except any that a restore may still be opening
//! ([`GoldenSnapshots::restoring_from`]); when all of those are, the new snapshot goes
//! instead. At most [`MAX_BUILDS_AT_ONCE`] builds run, so their staging directories are
//! bounded too. A shape is built on its first lease, not its second: waiting for a second
//! would cost every shape in real use one more cold boot, while a tenant set on churning
//! shapes pays for a second lease of each just as for the first, so it would not bound
//! anything the count does not.
//!
//! **Failure.** A restore that fails falls back to a cold boot of the same lease (the
//! lease is paid either way) with the reason logged. Whether the snapshot goes too depends
//! on what the failure says about it ([`GoldenSnapshots::restore_failed`]):
//! - the VMM refused it (exit 2: corrupt, truncated, foreign version or host, a device
//!   mismatch) or the restored guest crashed (exit 3) before any tenant's data reached
//!   it: the snapshot is bad, and is discarded at once;
//! - anything else (no `guest_ready` in time, a VMM that ended otherwise, a host error
//!   while setting up its files) may be the host's moment as much as the snapshot: a
//!   loaded host, a full disk. The snapshot is kept until [`RESTORE_STRIKES`] restores
//!   of it in a row fail so; a successful restore clears the count. One tenant's slow
//!   restore then costs the next leases nothing, and a snapshot that really cannot be
//!   used still goes after a few leases rather than costing every later one a restore
//!   before its cold boot.
//!
//! A discarded snapshot's directory is removed ([`GoldenSnapshots::discard`]) and the next
//! lease of the image builds it again.
//!
//! A build that fails (its guest crashed or was not ready in time, its VMM died, the
//! snapshot was not written) is started again by coinopd after a wait, 5 s after the first
//! failure and doubled at each one in a row up to 10 min, with no lease needed for up to
//! three failures in a row; a lease of the shape starts no build before the wait is over.
//! A guest that crashed once on a loaded host costs the shape's next leases nothing, and an
//! image that never builds costs a boot now and then, not one beside every lease.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bitcoin::hashes::{sha256, Hash, HashEngine};
use thiserror::Error;
use vmm_protocol::client;
use vmm_protocol::Request;

use crate::app::Shared;
use crate::image_catalogue::{ImageCatalogue, ImageSpec};
use crate::supervisor::{
    jailed_snapshot_dir, BootRequest, GuestPaths, Nic, ReadyPoint, SnapshotUse,
};
use crate::vmm_process::VmmProcess;

/// The golden guest's root-disk overlay in a snapshot directory, for an image with a root
/// filesystem (see the module doc).
const OVERLAY_FILE: &str = "overlay";

/// Where the root-disk overlay of the snapshot in `dir` is (a restored lease's own overlay
/// starts as a copy of it).
pub fn overlay_in(dir: &Path) -> PathBuf {
    dir.join(OVERLAY_FILE)
}

/// Bumped when what the key covers changes.
const KEY_DOMAIN: &[u8] = b"coinopd golden snapshot v1";
/// How long the VMM may take to write the snapshot and reply: it writes all of guest
/// memory first (seconds for a large guest on a loaded host; 2 s was seen to run out in the
/// nested lab under load, which lost the snapshot).
const SNAPSHOT_REPLY_WAIT: Duration = Duration::from_secs(120);
/// How long the snapshotting VMM may take to exit after its reply.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// Golden snapshot builds running at once, at most: each is a VMM of its own and a staging
/// directory beside the kept snapshots, so a burst of leases of new shapes cannot start
/// any number of them. A first lease of a shape that finds them all busy boots cold as
/// always; a later one of the shape builds.
const MAX_BUILDS_AT_ONCE: usize = 2;
/// What a restore does between its snapshot's lookup and its boot's deadline: the copy of
/// the snapshot's overlay for the lease, the jail's binds (or the VMM's own opening of the
/// files), a warm restore's network routing. Generous: a snapshot held a little longer
/// only waits for a later eviction.
const RESTORE_START_MARGIN: Duration = Duration::from_secs(30);

/// Why a golden snapshot could not be built.
#[derive(Debug, Error)]
pub enum GoldenError {
    /// A file the snapshot depends on (or the snapshot directory) is unusable.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The image's VMM did not boot.
    #[error("booting the image: {0}")]
    Boot(#[from] crate::supervisor::BootError),
    /// The VMM refused or failed the snapshot.
    #[error("snapshot command: {0}")]
    Snapshot(#[from] client::ControlError),
    /// The VMM did not exit after writing it.
    #[error("the snapshotting VMM did not exit within {EXIT_WAIT:?}")]
    NoExit,
    /// The build's NIC could not be set up.
    #[error("a NIC for the build: {0}")]
    Network(String),
    /// A file the build wrote is not a regular file (a symlink, say): the VMM that wrote
    /// it ran as an unprivileged jail uid, and root must not chown or publish what it
    /// points at.
    #[error("{0}: not a regular file")]
    NotAFile(PathBuf),
    /// The snapshot was written, but `--max-golden-snapshots` are kept and restores may be
    /// opening every other one: it was removed again.
    #[error("{max} golden snapshots are kept and every other one may be in use")]
    NoRoom { max: usize },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> GoldenError + '_ {
    move |source| GoldenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a golden snapshot is of: an image booted with its own command line in one shape.
#[derive(Debug, Clone)]
pub struct Shape {
    pub image: ImageSpec,
    pub vcpus: u32,
    pub mem_mib: u64,
    /// The guest has a NIC (a restore must attach the same devices).
    pub nic: bool,
}

impl Shape {
    /// The directory-name prefix of this shape's snapshots (all keys).
    fn prefix(&self) -> String {
        let nic = if self.nic { "n" } else { "" };
        format!("{}c{}m{nic}-", self.vcpus, self.mem_mib)
    }
}

/// What a snapshot directory's name (`<vcpus>c<mem>m[n]-<key>`, see [`Shape::prefix`])
/// says: (vcpus, mem_mib, nic, key).
fn parse_dir_name(name: &str) -> Option<(u32, u64, bool, &str)> {
    let (shape, key) = name.split_once('-')?;
    let (shape, nic) = match shape.strip_suffix("mn") {
        Some(rest) => (rest, true),
        None => (shape.strip_suffix('m')?, false),
    };
    let (vcpus, mem_mib) = shape.split_once('c')?;
    Some((vcpus.parse().ok()?, mem_mib.parse().ok()?, nic, key))
}

/// How a golden build's id (its jail's, cgroup's and control socket's name) starts; no
/// lease id does (those start with `l`).
const BUILD_ID_PREFIX: &str = "golden-";

/// The name a build's room is held under in the host's capacity: one per key, as at most
/// one build of a key runs; never a lease's id (those have no `golden-` prefix).
fn build_room_id(key: &str) -> String {
    format!("{BUILD_ID_PREFIX}room-{key}")
}

/// The golden snapshots under `STATE/snapshots`, and the builds running.
#[derive(Debug)]
pub struct GoldenSnapshots {
    root: PathBuf,
    vmm_bin: PathBuf,
    /// The builds running, and whether more may start.
    building: Mutex<Builds>,
    /// Restores failed in a row, per snapshot directory, for failures that do not show the
    /// snapshot itself to be bad.
    strikes: Mutex<HashMap<PathBuf, u32>>,
    /// Snapshot directories kept at most (`--max-golden-snapshots`).
    max: usize,
    /// How long after its lookup a restore may still be opening a snapshot's files.
    hold_for: Duration,
    /// When each snapshot was last looked up for a restore: one looked up less than
    /// `hold_for` ago is not evicted. The lock also makes evictions one at a time.
    held: Mutex<HashMap<PathBuf, Instant>>,
}

/// Failed restores in a row, none of them the snapshot's own fault as far as the VMM can
/// tell, after which a snapshot is discarded anyway.
pub const RESTORE_STRIKES: u32 = 3;

/// What a failed restore says about its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreFault {
    /// The VMM refused the snapshot, or the guest crashed in it.
    Snapshot,
    /// A timeout or a host error: the snapshot may be sound.
    Unknown,
}

#[derive(Debug, Default)]
struct Builds {
    /// Keys being built (a second lease of the shape does not start another build).
    keys: HashSet<String>,
    /// coinopd stops: no build starts.
    stopping: bool,
    /// Keys whose last build failed: how many in a row, and when the next may start.
    failed: HashMap<String, FailedBuilds>,
}

/// A key's builds that failed in a row.
#[derive(Debug, Clone, Copy)]
struct FailedBuilds {
    in_a_row: u32,
    /// No build of the key starts before this, whoever asks.
    next_at: Instant,
}

/// The wait after a key's first failed build before the next; doubled at each failure in
/// a row, up to [`BUILD_RETRY_MAX`]. A failure may be the moment's (a guest that crashed
/// or hung on a loaded host, a VMM killed for memory) or the image's own (a kernel that
/// cannot boot): the first kind is soon mended by a second build, the second must not cost
/// a whole boot beside every lease of the shape.
const BUILD_RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two builds of a key that keep failing.
const BUILD_RETRY_MAX: Duration = Duration::from_secs(600);
/// Failed builds in a row after which coinopd starts the next on its own (at the end of
/// its wait); after more, only a lease of the shape starts one, still no sooner.
const BUILD_AUTO_RETRIES: u32 = 3;
/// Keys whose failed builds are remembered, at most.
const MAX_FAILED_KEYS: usize = 256;

/// The wait before the next build of a key whose builds failed `in_a_row` times.
fn build_retry_wait(in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    BUILD_RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(BUILD_RETRY_MAX)
}

impl GoldenSnapshots {
    /// Snapshots under `root`, valid for the VMM binary `vmm_bin`, at most `max` of them;
    /// restores from them have `boot_timeout` to reach their ready point.
    pub fn new(root: PathBuf, vmm_bin: PathBuf, max: usize, boot_timeout: Duration) -> Self {
        GoldenSnapshots {
            root,
            vmm_bin,
            building: Mutex::default(),
            strikes: Mutex::default(),
            max,
            hold_for: boot_timeout + RESTORE_START_MARGIN,
            held: Mutex::default(),
        }
    }

    /// The key of `shape`'s snapshot as things are now.
    pub fn key(&self, shape: &Shape) -> Result<String, GoldenError> {
        let mut engine = sha256::Hash::engine();
        let mut field = |bytes: &[u8]| {
            // Length-prefixed, so no two different inputs run together the same way.
            engine.input(&(bytes.len() as u64).to_le_bytes());
            engine.input(bytes);
        };
        field(KEY_DOMAIN);
        let image = &shape.image;
        let files = [
            Some(image.kernel.as_path()),
            image.initrd.as_deref(),
            image.rootfs.as_deref(),
            Some(self.vmm_bin.as_path()),
        ];
        for file in files {
            match file {
                Some(path) => field(&file_identity(path)?),
                None => field(b"none"),
            }
        }
        field(image.cmdline.as_bytes());
        field(&shape.vcpus.to_le_bytes());
        field(&shape.mem_mib.to_le_bytes());
        field(&[u8::from(shape.nic), u8::from(image.agent)]);
        let hash = sha256::Hash::from_engine(engine);
        Ok(hex::encode(&hash.to_byte_array()[..16]))
    }

    fn image_dir(&self, shape: &Shape) -> PathBuf {
        self.root.join(&shape.image.name)
    }

    /// Where `shape`'s snapshot with `key` lives.
    pub fn dir_of(&self, shape: &Shape, key: &str) -> PathBuf {
        self.image_dir(shape)
            .join(format!("{}{key}", shape.prefix()))
    }

    /// `shape`'s snapshot directory if a complete one is there for the current key, and the
    /// key (for a build when there is none). A snapshot found counts as used from here
    /// ([`Self::restoring_from`]).
    pub fn lookup(&self, shape: &Shape) -> Result<(Option<PathBuf>, String), GoldenError> {
        let key = self.key(shape)?;
        let dir = self.dir_of(shape, &key);
        // Held before its files are checked: an eviction between the check and the hold
        // would take them from under the restore (an eviction holds `held` throughout, so
        // one under way finishes first, and the check then finds nothing).
        lock(&self.held).insert(dir.clone(), Instant::now());
        if !complete(shape, &dir) {
            lock(&self.held).remove(&dir);
            return Ok((None, key));
        }
        // Every restore, and every take of a warm one, starts with this lookup.
        self.restoring_from(&dir);
        Ok((Some(dir), key))
    }

    /// `shape`'s complete snapshot directory for the current key, as [`Self::lookup`] finds
    /// it, without counting as a use: whether what was restored from a snapshot could still
    /// be taken for `shape` ([`crate::warm_restores`]) says nothing of the next restore.
    pub fn current(&self, shape: &Shape) -> Result<Option<PathBuf>, GoldenError> {
        let dir = self.dir_of(shape, &self.key(shape)?);
        Ok(complete(shape, &dir).then_some(dir))
    }

    /// The snapshot in `dir` is about to be restored from: it is the most recently used
    /// (its directory's mtime, so the order outlives coinopd), and it is not evicted for
    /// the next boot timeout and [`RESTORE_START_MARGIN`].
    ///
    /// Why a time and not a count of restores running: what must not be removed under a
    /// restore is only its first steps. The lease's overlay is copied from the snapshot's
    /// before the VMM starts, a jail binds `state` and `memory` into its root (a bind holds
    /// the file, removed or not) and a VMM without a jail opens them itself; once the VMM
    /// has read `state` and mapped `memory` (private, copy-on-write), removing the
    /// directory takes nothing from it. A restore that has not got that far within its
    /// boot timeout has failed, its VMM killed. So a snapshot not looked up for that long
    /// plus the margin is used by no restore, and nothing needs to report a restore's end.
    pub fn restoring_from(&self, dir: &Path) {
        lock(&self.held).insert(dir.to_path_buf(), Instant::now());
        touch(dir);
    }

    /// Records a failed restore of the snapshot in `dir` and discards the snapshot when
    /// `fault` says it is bad or when it is the [`RESTORE_STRIKES`]th failure in a row.
    /// Returns whether it was discarded.
    pub fn restore_failed(&self, dir: &Path, fault: RestoreFault) -> bool {
        let discard = {
            let mut strikes = lock(&self.strikes);
            let count = strikes.entry(dir.to_path_buf()).or_default();
            *count += 1;
            let discard = fault == RestoreFault::Snapshot || *count >= RESTORE_STRIKES;
            if discard {
                strikes.remove(dir);
            }
            discard
        };
        if discard {
            self.discard(dir);
        }
        discard
    }

    /// A restore of the snapshot in `dir` reached `guest_ready`: its failures so far were
    /// the host's moments.
    pub fn restore_succeeded(&self, dir: &Path) {
        lock(&self.strikes).remove(dir);
    }

    /// Removes a snapshot a restore failed on; the next lease of its shape builds it again.
    pub fn discard(&self, dir: &Path) {
        lock(&self.held).remove(dir);
        match std::fs::remove_dir_all(dir) {
            Ok(()) => tracing::warn!(dir = %dir.display(), "golden snapshot discarded"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(dir = %dir.display(), error = %e,
                "cannot remove a bad golden snapshot"),
        }
    }

    /// Starts building `shape`'s snapshot for `key` in the background unless a build of it
    /// runs already, [`MAX_BUILDS_AT_ONCE`] run, none may be kept, coinopd stops, the host
    /// has no room for its guest, or the key's last build failed less than its wait ago
    /// ([`build_retry_wait`]). The build's guest counts against the host's capacity while
    /// it runs, like a lease's: a shape no tenant booted before (up to the largest a create
    /// may ask) must not put an unaccounted VMM on a host sold out. A build that fails is
    /// started again by coinopd itself once its wait is over, up to [`BUILD_AUTO_RETRIES`]
    /// failures in a row: the shape is in demand, and its next lease should find the
    /// snapshot rather than boot cold and start the build only then.
    pub fn build_in_background(s: &Shared, shape: Shape, key: String) {
        if s.golden.max == 0 {
            return;
        }
        {
            let mut builds = lock(&s.golden.building);
            let waiting = builds
                .failed
                .get(&key)
                .is_some_and(|f| Instant::now() < f.next_at);
            if builds.stopping
                || waiting
                || builds.keys.len() >= MAX_BUILDS_AT_ONCE
                || !builds.keys.insert(key.clone())
            {
                return;
            }
        }
        let room = build_room_id(&key);
        let want = crate::capacity::Totals {
            vcpus: shape.vcpus,
            mib: shape.mem_mib,
        };
        if let Err(full) = s.capacity().reserve(&room, want) {
            tracing::info!(image = %shape.image.name, vcpus = shape.vcpus, mem_mib = shape.mem_mib,
                free_vcpus = full.free.vcpus, free_mib = full.free.mib,
                "no room for a golden snapshot build now; leases of the image boot cold");
            lock(&s.golden.building).keys.remove(&key);
            return;
        }
        let s = s.clone();
        tokio::spawn(async move {
            let built = s.golden.build(&s, &shape, &key).await;
            let retry = match built {
                Ok(dir) => {
                    tracing::info!(image = %shape.image.name, dir = %dir.display(),
                        "golden snapshot written");
                    lock(&s.golden.building).failed.remove(&key);
                    None
                }
                Err(e) => {
                    let (in_a_row, wait) = s.golden.build_failed(&key);
                    tracing::warn!(image = %shape.image.name, error = %e,
                        failed_in_a_row = in_a_row, next_build_in_s = wait.as_secs(),
                        "golden snapshot not built; leases of the image boot cold");
                    (in_a_row <= BUILD_AUTO_RETRIES).then_some(wait)
                }
            };
            s.capacity().release(&room);
            lock(&s.golden.building).keys.remove(&key);
            if let Some(wait) = retry {
                tokio::time::sleep(wait).await;
                // Unless the shape's inputs changed meanwhile (another key), or a lease's
                // build got there first (asked without counting as a use of a snapshot).
                let wanted = matches!(s.golden.key(&shape), Ok(now) if now == key)
                    && matches!(s.golden.current(&shape), Ok(None));
                if wanted {
                    GoldenSnapshots::build_in_background(&s, shape, key);
                }
            }
        });
    }

    /// Counts a failed build of `key`: its failures in a row now, and the wait before the
    /// next build of it.
    fn build_failed(&self, key: &str) -> (u32, Duration) {
        let mut builds = lock(&self.building);
        if builds.failed.len() >= MAX_FAILED_KEYS && !builds.failed.contains_key(key) {
            // Tenants choose shapes: the record stays bounded, and what it forgets first
            // is the key whose wait ends soonest.
            let soonest = builds
                .failed
                .iter()
                .min_by_key(|(_, f)| f.next_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = soonest {
                builds.failed.remove(&k);
            }
        }
        let failed = builds
            .failed
            .entry(key.to_string())
            .or_insert(FailedBuilds {
                in_a_row: 0,
                next_at: Instant::now(),
            });
        failed.in_a_row = failed.in_a_row.saturating_add(1);
        let wait = build_retry_wait(failed.in_a_row);
        failed.next_at = Instant::now() + wait;
        (failed.in_a_row, wait)
    }

    /// coinopd stops: no build starts from here, and the running ones are waited for up to
    /// `limit` (each ends its VMM, done or failed). A build's task dropped with the runtime
    /// before its VMM was named in its marker would leave that VMM running; the caller
    /// ends those still named after this ([`end_builds`]).
    pub async fn shutdown(&self, limit: Duration) {
        lock(&self.building).stopping = true;
        if !crate::clock::poll_until(limit, || lock(&self.building).keys.is_empty()).await {
            tracing::warn!("golden snapshot builds still running {limit:?} into the shutdown");
        }
    }

    /// Boots the image, snapshots it once ready, and puts the snapshot in place.
    async fn build(&self, s: &Shared, shape: &Shape, key: &str) -> Result<PathBuf, GoldenError> {
        let image_dir = self.image_dir(shape);
        std::fs::create_dir_all(&image_dir).map_err(io_at(&image_dir))?;
        let staging = image_dir.join(format!(".build-{key}"));
        remove_if_there(&staging)?;
        std::fs::create_dir(&staging).map_err(io_at(&staging))?;
        let taken = self.take(s, shape, key, &staging).await;
        // The VMM has exited (or, on some failures, may not have: it goes now).
        end_build_vmm(&build_vmm_marker(&staging));
        let placed = taken.and_then(|()| self.put_in_place(shape, key, &staging));
        if placed.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        placed
    }

    /// Runs the snapshotting VMM into `staging`.
    async fn take(
        &self,
        s: &Shared,
        shape: &Shape,
        key: &str,
        staging: &Path,
    ) -> Result<(), GoldenError> {
        // Unique per build, not per key: coinopd processes on one host (tests run many)
        // building the same image would otherwise share one cgroup, whose limits (memory,
        // tasks, CPU) are one guest's, with two VMMs in it.
        let id = format!(
            "{BUILD_ID_PREFIX}{}-{}",
            &key[..12],
            &crate::token::new_lease_id()[1..9]
        );
        let paths = GuestPaths::for_lease(&s.config.run_dir(), &id);
        let taken = self.run_vmm(s, shape, &id, &paths, staging).await;
        // Done or failed, the build's VMM is gone (or killed) by here, and its files are no
        // lease's: nothing else would remove them before the next start.
        for file in [&paths.console, &paths.log, &paths.control] {
            let _ = std::fs::remove_file(file);
        }
        taken
    }

    /// [`Self::take`]'s VMM, under the build's `id`.
    async fn run_vmm(
        &self,
        s: &Shared,
        shape: &Shape,
        id: &str,
        paths: &GuestPaths,
        staging: &Path,
    ) -> Result<(), GoldenError> {
        let supervisor = &s.supervisor;
        let nic = if shape.nic {
            let isolation = std::sync::Arc::clone(supervisor.isolation());
            let owner = id.to_string();
            let attached = tokio::task::spawn_blocking(move || isolation.attach_network(&owner))
                .await
                .map_err(|e| GoldenError::Network(format!("worker: {e}")))?
                .map_err(|e| GoldenError::Network(e.to_string()))?;
            let (tap, info) = attached.ok_or_else(|| {
                GoldenError::Network("guest networking is off on this host".into())
            })?;
            Some(Nic { tap, mac: info.mac })
        } else {
            None
        };
        let ready_at = if shape.image.agent {
            ReadyPoint::AwaitingPersonalisation
        } else {
            ReadyPoint::GuestReady
        };
        let booted = supervisor
            .boot(BootRequest {
                lease_id: id,
                image: &shape.image,
                cmdline: &shape.image.cmdline,
                vcpus: shape.vcpus,
                mem_mib: shape.mem_mib,
                paths,
                arrival_us: crate::clock::monotonic_us(),
                // No lease, no payment: nothing happened before the spawn.
                figures: coinop_proto::BootFigures::default(),
                timeout_ms: s.config.boot_timeout_ms,
                personalise_timeout_ms: s.config.personalise_timeout_ms,
                slot: None,
                nic,
                snapshot: SnapshotUse::WriteInto(staging.to_path_buf()),
                // Nothing of any lease goes into a golden snapshot.
                personalise: None,
                ready_at,
            })
            .await?;
        if shape.image.rootfs.is_some() {
            // Kept under a second name: the VMM's exit removes the overlay's own with its
            // confinement. The snapshot command flushes the disk before the state is taken.
            let overlay = supervisor.isolation().overlay_path(id);
            let kept = overlay_in(staging);
            if let Err(e) = std::fs::hard_link(&overlay, &kept) {
                if let Some(vmm) = booted.pid.and_then(VmmProcess::of) {
                    let _ = vmm.kill();
                }
                return Err(io_at(&kept)(e));
            }
        }
        let dir = if supervisor.isolation().jail.is_some() {
            jailed_snapshot_dir().to_path_buf()
        } else {
            staging.to_path_buf()
        };
        let request = Request::Snapshot {
            dir: dir.display().to_string(),
            exit: true,
        };
        let replied = client::request_within(&paths.control, &request, SNAPSHOT_REPLY_WAIT).await;
        let vmm = booted.pid.and_then(VmmProcess::of);
        if replied.is_err() {
            if let Some(vmm) = vmm {
                let _ = vmm.kill();
            }
        }
        replied?;
        // The files are complete once the reply is out; the VMM's exit also drops its hold
        // on the writable bind before the directory is renamed.
        let deadline = tokio::time::Instant::now() + EXIT_WAIT;
        while vmm.is_some_and(|v| v.is_running()) {
            if tokio::time::Instant::now() > deadline {
                return Err(GoldenError::NoExit);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Gives the written snapshot (and the golden guest's overlay) to root, read-only,
    /// renames it into place and removes the shape's snapshots under other keys.
    fn put_in_place(
        &self,
        shape: &Shape,
        key: &str,
        staging: &Path,
    ) -> Result<PathBuf, GoldenError> {
        // The staging directory was the jail uid's: root's first, so nothing in it changes
        // while its files are looked at.
        std::os::unix::fs::chown(staging, Some(0), Some(0))
            .or_else(|e| not_root_is_fine(e, staging))?;
        std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o755))
            .map_err(io_at(staging))?;
        for file in ["state", "memory", OVERLAY_FILE] {
            let path = staging.join(file);
            if file == OVERLAY_FILE && shape.image.rootfs.is_none() {
                continue;
            }
            // Through the file itself, never a link the jailed VMM may have left in its
            // place (root would otherwise chown and publish what it points at).
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path);
            let f = match opened {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(GoldenError::NotAFile(path))
                }
                Err(e) => return Err(io_at(&path)(e)),
            };
            if !f.metadata().map_err(io_at(&path))?.is_file() {
                return Err(GoldenError::NotAFile(path));
            }
            std::os::unix::fs::fchown(&f, Some(0), Some(0))
                .or_else(|e| not_root_is_fine(e, &path))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o444))
                .map_err(io_at(&path))?;
        }
        std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o555))
            .map_err(io_at(staging))?;
        let dir = self.dir_of(shape, key);
        remove_if_there(&dir)?;
        std::fs::rename(staging, &dir).map_err(io_at(&dir))?;
        // Built is used: the newest snapshot is the last to go.
        touch(&dir);
        self.remove_other_keys(shape, &dir);
        if !self.make_room(Some(&dir)) {
            return Err(GoldenError::NoRoom { max: self.max });
        }
        Ok(dir)
    }

    /// Removes the least recently used snapshot directories (by mtime, see
    /// [`Self::restoring_from`]) until at most `max` are left, passing over those a restore
    /// may be opening and `keep` (a snapshot just built). When only `keep` could go, it
    /// goes: the snapshots in use were all restored from more recently than it was ever
    /// asked for, and the bound holds. Returns whether `keep` is still there.
    fn make_room(&self, keep: Option<&Path>) -> bool {
        let mut held = lock(&self.held);
        let now = Instant::now();
        held.retain(|_, at| now.duration_since(*at) < self.hold_for);
        let mut dirs = self.snapshot_dirs();
        let Some(mut over) = dirs.len().checked_sub(self.max).filter(|&n| n > 0) else {
            return true;
        };
        dirs.sort_by_key(|(_, used)| *used);
        for (dir, _) in &dirs {
            if over == 0 {
                break;
            }
            if Some(dir.as_path()) == keep || held.contains_key(dir) {
                continue;
            }
            if self.evict(dir) {
                over -= 1;
            }
        }
        match keep {
            // Looked up since its build put it in place: a restore may be opening it, and
            // the bound waits for the next build's eviction.
            Some(keep) if over > 0 && held.contains_key(keep) => true,
            Some(keep) if over > 0 => {
                tracing::warn!(dir = %keep.display(), max = self.max,
                    "no golden snapshot can go for a new one: every other one may be in use");
                !self.evict(keep)
            }
            _ => true,
        }
    }

    /// Removes the snapshot in `dir` to keep the count bounded; whether it is gone.
    fn evict(&self, dir: &Path) -> bool {
        lock(&self.strikes).remove(dir);
        match remove_if_there(dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), max = self.max,
                    "removed the least recently used golden snapshot");
                true
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e,
                    "cannot remove a golden snapshot");
                false
            }
        }
    }

    /// Every snapshot directory under the root (complete or not; not a build's staging
    /// directory), with when it was last used: its mtime.
    fn snapshot_dirs(&self) -> Vec<(PathBuf, SystemTime)> {
        let images = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten();
        images
            .filter(|image| image.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|image| std::fs::read_dir(image.path()).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let meta = e.metadata().ok().filter(std::fs::Metadata::is_dir)?;
                Some((e.path(), meta.modified().ok()?))
            })
            .collect()
    }

    /// At start-up, once no build runs ([`end_builds`]) and before any restore: removes
    /// what no lease will restore from again, which nothing else would ever remove. That is
    /// the snapshots of images no longer in `images` or no longer declared `snapshot`, those
    /// whose key is not their shape's key now (made for a kernel, initrd, rootfs, command
    /// line or coinop-vmm binary that changed since, which the next build of the shape
    /// would remove only if that shape were ever asked for again), anything else in there
    /// (a staging directory without its marker, a name this coinopd did not make), and then
    /// the least recently used beyond `--max-golden-snapshots` (lowered since, or from
    /// before the bound).
    pub fn sweep(&self, images: &ImageCatalogue) {
        for image in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = image.path();
            let name = image.file_name().to_string_lossy().into_owned();
            let spec = images.get(&name).filter(|spec| spec.snapshot);
            let entries = std::fs::read_dir(&path).into_iter().flatten().flatten();
            for entry in entries {
                let entry_name = entry.file_name().to_string_lossy().into_owned();
                let why = match spec {
                    None => Some("its image is not in the catalogue as a snapshot image"),
                    Some(spec) => self.stale(spec, &entry_name),
                };
                if let Some(why) = why {
                    tracing::info!(dir = %entry.path().display(), why,
                        "removing a golden snapshot no lease will restore from");
                    remove_entry(&entry.path());
                }
            }
            if spec.is_none() {
                remove_entry(&path);
            }
        }
        self.make_room(None);
    }

    /// Why the entry `name` of `image`'s snapshot directory is of no use, if it is not.
    fn stale(&self, image: &ImageSpec, name: &str) -> Option<&'static str> {
        let Some((vcpus, mem_mib, nic, key)) = parse_dir_name(name) else {
            return Some("not a snapshot directory");
        };
        let shape = Shape {
            image: image.clone(),
            vcpus,
            mem_mib,
            nic,
        };
        match self.key(&shape) {
            Ok(now) if now == key => None,
            Ok(_) => Some("made for files, a command line or a VMM binary that changed"),
            Err(e) => {
                // An image file missing at start may come back (a late mount): kept, and
                // counted against the bound meanwhile.
                tracing::warn!(image = %image.name, error = %e,
                    "cannot tell whether a golden snapshot is current; keeping it");
                None
            }
        }
    }

    /// Removes `shape`'s snapshots other than `keep` (made for a kernel, rootfs, command line
    /// or VMM that changed since).
    fn remove_other_keys(&self, shape: &Shape, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(self.image_dir(shape)) else {
            return;
        };
        let prefix = shape.prefix();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path != keep && name.to_string_lossy().starts_with(&prefix) {
                tracing::info!(dir = %path.display(), "removing an outdated golden snapshot");
                let _ = remove_if_there(&path);
            }
        }
    }
}

/// A file's identity: (device, inode, size, mtime, ctime), see the module doc.
fn file_identity(path: &Path) -> Result<Vec<u8>, GoldenError> {
    let m = std::fs::metadata(path).map_err(io_at(path))?;
    let mut out = Vec::with_capacity(56);
    for v in [m.dev(), m.ino(), m.size()] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// The marker naming a build's VMM (`PID START_TICKS`, written with the spawn's record by
/// [`crate::supervisor`]): `.build-KEY.vmm` beside the staging directory `.build-KEY`, so
/// coinopd's alone (only the staging directory is bound into the VMM's jail).
pub fn build_vmm_marker(staging: &Path) -> PathBuf {
    let mut name = staging.file_name().unwrap_or_default().to_os_string();
    name.push(".vmm");
    staging.with_file_name(name)
}

/// The markers of the golden snapshot builds under `snapshot_dir` (one directory per image),
/// each with its build's staging directory.
pub fn build_markers(snapshot_dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut found = Vec::new();
    let Ok(images) = std::fs::read_dir(snapshot_dir) else {
        return found;
    };
    for image in images.flatten() {
        let Ok(entries) = std::fs::read_dir(image.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(staging) = name
                .to_str()
                .filter(|n| n.starts_with(".build-"))
                .and_then(|n| n.strip_suffix(".vmm"))
            {
                found.push((entry.path(), image.path().join(staging)));
            }
        }
    }
    found
}

/// Ends the VMM of every golden snapshot build under `snapshot_dir` that its marker names
/// and that still runs, and removes the marker and the build's staging directory. A build's
/// VMM belongs to no lease, so nothing re-adopts it: coinopd calls this when it stops (the
/// build's task goes with the runtime) and when it starts (an earlier coinopd died
/// mid-build). Returns how many VMMs it killed; the jail, cgroup and network of a build left
/// by an earlier coinopd go with the start's other left-overs.
pub fn end_builds(snapshot_dir: &Path) -> usize {
    let mut killed = 0;
    for (marker, staging) in build_markers(snapshot_dir) {
        killed += usize::from(end_build_vmm(&marker));
        let _ = std::fs::remove_dir_all(staging);
    }
    killed
}

/// After [`end_builds`], at start or at the end of a stop: what golden builds (an earlier
/// coinopd died in, or this one gave up waiting for) left under their ids (`golden-...`,
/// found by their jail roots and, for builds without a jail, by their files in the run
/// directory): the VMM still in the build's cgroup (a coinopd that died between the spawn
/// and the marker's write named none), then its jail root, cgroup, control socket,
/// network and overlay. Returns how many VMMs it ended.
pub fn remove_left_over_builds(s: &Shared) -> usize {
    let isolation = s.supervisor.isolation();
    let mut killed = 0;
    for id in left_over_build_ids(&[s.config.jail_dir(), s.config.run_dir()]) {
        let paths = GuestPaths::for_lease(&s.config.run_dir(), &id);
        // A build this coinopd gave up waiting for has its confinement registered.
        killed += isolation.end_left_over(&id, paths.control.clone());
        // Its files here name it until they go (without a jail nothing else removes them).
        for file in [&paths.control, &paths.console, &paths.log] {
            let _ = std::fs::remove_file(file);
        }
        tracing::info!(build = %id, "removed a golden snapshot build an earlier coinopd left");
    }
    killed
}

/// The build ids named in `dirs`: a jail root is named by its id, a run directory's files
/// by their id and a suffix (`ID.sock`, `ID.console`, `ID.vmm.log`; ids hold no dot).
fn left_over_build_ids(dirs: &[PathBuf]) -> std::collections::BTreeSet<String> {
    dirs.iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            let id = name.split('.').next()?;
            id.starts_with(BUILD_ID_PREFIX).then(|| id.to_string())
        })
        .collect()
}

/// Kills the VMM a build's marker names if it still runs (pid and start time), and removes
/// the marker; whether it killed one.
fn end_build_vmm(marker: &Path) -> bool {
    let killed = std::fs::read_to_string(marker)
        .ok()
        .and_then(|text| VmmProcess::from_marker(&text))
        .is_some_and(|v| v.kill_and_wait());
    let _ = std::fs::remove_file(marker);
    killed
}

/// Whether `dir` holds a whole snapshot of `shape`: an image with a root filesystem
/// continues on the golden guest's disk writes, so its overlay is part of it.
fn complete(shape: &Shape, dir: &Path) -> bool {
    dir.join("state").is_file()
        && dir.join("memory").is_file()
        && (shape.image.rootfs.is_none() || overlay_in(dir).is_file())
}

/// Sets `dir`'s mtime to now: the snapshot in it was just used. Best effort: a snapshot
/// removed meanwhile needs none, and one whose time cannot be set is only evicted as if
/// used when it was last touched.
fn touch(dir: &Path) {
    let touched = std::fs::File::open(dir).and_then(|f| f.set_modified(SystemTime::now()));
    match touched {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e,
            "cannot mark a golden snapshot as used"),
    }
}

/// Removes whatever is at `path` in the snapshot directory: a file, or a directory tree
/// whose directories may be read-only (0555, as a snapshot's), each made writable first.
fn remove_entry(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let removed = if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_entry(&entry.path());
            }
        }
        remove_if_there(path).map_err(|e| e.to_string())
    } else {
        std::fs::remove_file(path).map_err(|e| e.to_string())
    };
    if let Err(e) = removed {
        tracing::error!(path = %path.display(), error = %e, "cannot remove from the snapshots");
    }
}

/// Removes a directory tree that may be read-only (0555): made writable first.
fn remove_if_there(dir: &Path) -> Result<(), GoldenError> {
    if !dir.exists() {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io_at(dir))?;
    std::fs::remove_dir_all(dir).map_err(io_at(dir))
}

/// A daemon not running as root (tests, `--no-jail`) owns the files already.
fn not_root_is_fine(e: std::io::Error, path: &Path) -> Result<(), GoldenError> {
    if e.raw_os_error() == Some(libc::EPERM) && !nix::unistd::Uid::effective().is_root() {
        return Ok(());
    }
    Err(io_at(path)(e))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kernel: PathBuf, cmdline: &str) -> Shape {
        Shape {
            image: ImageSpec {
                name: "tg".into(),
                kernel,
                initrd: None,
                rootfs: None,
                cmdline: cmdline.into(),
                snapshot: true,
                agent: false,
            },
            vcpus: 1,
            mem_mib: 64,
            nic: false,
        }
    }

    /// A scratch directory with a kernel and a VMM file, and snapshots kept under it.
    fn scratch_snapshots() -> (tempfile::TempDir, PathBuf, GoldenSnapshots) {
        let dir = tempfile::tempdir().expect("temp dir");
        let kernel = dir.path().join("k");
        let vmm = dir.path().join("vmm");
        std::fs::write(&kernel, b"kernel").expect("write");
        std::fs::write(&vmm, b"vmm").expect("write");
        let g = GoldenSnapshots::new(dir.path().join("snapshots"), vmm, 16, Duration::ZERO);
        (dir, kernel, g)
    }

    #[test]
    fn the_key_follows_the_kernel_file_the_cmdline_and_the_shape() {
        let (dir, kernel, g) = scratch_snapshots();
        let a = shape(kernel.clone(), "mode=echo");
        let k1 = g.key(&a).expect("key");
        assert_eq!(k1, g.key(&a).expect("key"), "stable while nothing changes");
        assert_ne!(
            k1,
            g.key(&shape(kernel.clone(), "mode=count")).expect("key")
        );
        let wider = Shape {
            vcpus: 2,
            ..a.clone()
        };
        assert_ne!(k1, g.key(&wider).expect("key"));
        let networked = Shape {
            nic: true,
            ..a.clone()
        };
        assert_ne!(k1, g.key(&networked).expect("key"));
        // A replaced kernel (new inode) is another kernel even with the same bytes.
        let new = dir.path().join("k.new");
        std::fs::write(&new, b"kernel").expect("write");
        std::fs::rename(&new, &kernel).expect("rename");
        assert_ne!(k1, g.key(&a).expect("key"));
        std::fs::remove_file(&kernel).expect("rm");
        assert!(matches!(g.key(&a), Err(GoldenError::Io { .. })));
    }

    #[test]
    fn a_link_in_place_of_a_snapshot_file_is_refused_and_its_target_left_alone() {
        let (dir, kernel, g) = scratch_snapshots();
        let a = shape(kernel, "mode=idle");
        let key = g.key(&a).expect("key");
        // A host file only its owner may read, which a jailed VMM pointed `state` at.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"host secret").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let parent = g
            .dir_of(&a, &key)
            .parent()
            .expect("a shape directory")
            .to_path_buf();
        std::fs::create_dir_all(&parent).expect("mkdir");
        let staging = parent.join("staging");
        std::fs::create_dir(&staging).expect("mkdir");
        std::os::unix::fs::symlink(&secret, staging.join("state")).expect("symlink");
        std::fs::write(staging.join("memory"), b"m").expect("write");
        let err = g
            .put_in_place(&a, &key, &staging)
            .expect_err("a link was published");
        assert!(
            matches!(err, GoldenError::NotAFile(ref p) if p.ends_with("state")),
            "{err}"
        );
        let mode = std::fs::metadata(&secret)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the link's target was chmodded");
        assert!(!g.dir_of(&a, &key).exists(), "nothing put in place");

        // The same with real files goes in place, read-only.
        std::fs::remove_file(staging.join("state")).expect("rm");
        std::fs::write(staging.join("state"), b"s").expect("write");
        let placed = g.put_in_place(&a, &key, &staging).expect("in place");
        let mode = std::fs::metadata(placed.join("state"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
    }

    #[test]
    fn a_snapshot_of_a_rootfs_image_without_its_overlay_is_not_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kernel = dir.path().join("k");
        let rootfs = dir.path().join("root.img");
        let vmm = dir.path().join("vmm");
        for file in [&kernel, &rootfs, &vmm] {
            std::fs::write(file, b"bytes").expect("write");
        }
        let g = GoldenSnapshots::new(dir.path().join("snapshots"), vmm, 16, Duration::ZERO);
        let mut with_disk = shape(kernel.clone(), "mode=idle");
        with_disk.image.rootfs = Some(rootfs);
        let without_disk = shape(kernel, "mode=idle");
        for shape in [&with_disk, &without_disk] {
            let (none, key) = g.lookup(shape).expect("lookup");
            assert_eq!(none, None, "nothing built yet");
            let snap = g.dir_of(shape, &key);
            std::fs::create_dir_all(&snap).expect("mkdir");
            std::fs::write(snap.join("state"), b"s").expect("write");
            std::fs::write(snap.join("memory"), b"m").expect("write");
        }
        // As a snapshot from before overlays were kept: rebuilt, never restored onto an
        // empty disk.
        assert_eq!(g.lookup(&with_disk).expect("lookup").0, None);
        let (found, key) = g.lookup(&without_disk).expect("lookup");
        assert_eq!(
            found,
            Some(g.dir_of(&without_disk, &key)),
            "no disk, no overlay"
        );
        let (_, key) = g.lookup(&with_disk).expect("lookup");
        let snap = g.dir_of(&with_disk, &key);
        std::fs::write(overlay_in(&snap), b"o").expect("write");
        assert_eq!(g.lookup(&with_disk).expect("lookup").0, Some(snap));
    }

    #[test]
    fn a_snapshot_goes_at_its_first_refusal_or_its_third_unexplained_failure_in_a_row() {
        let root = tempfile::tempdir().expect("tempdir");
        let golden =
            GoldenSnapshots::new(root.path().into(), "/bin/true".into(), 16, Duration::ZERO);
        let dir = root.path().join("tg").join("1c64m-key");
        std::fs::create_dir_all(&dir).expect("snapshot dir");

        // Two timeouts, a success, two more: the count started again, so it stays.
        assert!(!golden.restore_failed(&dir, RestoreFault::Unknown));
        assert!(!golden.restore_failed(&dir, RestoreFault::Unknown));
        golden.restore_succeeded(&dir);
        assert!(!golden.restore_failed(&dir, RestoreFault::Unknown));
        assert!(!golden.restore_failed(&dir, RestoreFault::Unknown));
        assert!(dir.is_dir(), "kept through two failures in a row");
        // The third in a row discards it.
        assert!(golden.restore_failed(&dir, RestoreFault::Unknown));
        assert!(!dir.exists(), "discarded at the third");

        // Rebuilt: a refusal discards it at once, whatever came before.
        std::fs::create_dir_all(&dir).expect("snapshot dir");
        assert!(golden.restore_failed(&dir, RestoreFault::Snapshot));
        assert!(!dir.exists(), "discarded at the refusal");
        // And the rebuilt one starts with no strikes.
        std::fs::create_dir_all(&dir).expect("snapshot dir");
        assert!(!golden.restore_failed(&dir, RestoreFault::Unknown));
        assert!(dir.is_dir());
    }

    /// A snapshot directory `name` of image `image` under `root`, last used `age_s` ago.
    fn snapshot_at(root: &Path, image: &str, name: &str, age_s: u64) -> PathBuf {
        let dir = root.join(image).join(name);
        std::fs::create_dir_all(&dir).expect("snapshot dir");
        std::fs::write(dir.join("state"), b"s").expect("write");
        let used = SystemTime::now() - Duration::from_secs(age_s);
        std::fs::File::open(&dir)
            .and_then(|f| f.set_modified(used))
            .expect("set its mtime");
        dir
    }

    #[test]
    fn a_failed_builds_wait_doubles_up_to_its_bound() {
        assert_eq!(build_retry_wait(1), Duration::from_secs(5));
        assert_eq!(build_retry_wait(2), Duration::from_secs(10));
        assert_eq!(build_retry_wait(3), Duration::from_secs(20));
        assert_eq!(build_retry_wait(8), Duration::from_secs(600));
        assert_eq!(build_retry_wait(u32::MAX), BUILD_RETRY_MAX);
    }

    #[test]
    fn failed_builds_of_a_key_are_counted_in_a_row_and_set_its_next_start() {
        let (_dir, _root, g) = scratch_snapshots();
        let before = Instant::now();
        assert_eq!(g.build_failed("k"), (1, Duration::from_secs(5)));
        assert_eq!(g.build_failed("k"), (2, Duration::from_secs(10)));
        assert_eq!(g.build_failed("other"), (1, Duration::from_secs(5)));
        let next = lock(&g.building).failed["k"].next_at;
        assert!(next >= before + Duration::from_secs(10), "{next:?}");
        // Bounded: a new key past the bound forgets the one whose wait ends soonest.
        for i in 0..MAX_FAILED_KEYS {
            g.build_failed(&format!("many-{i}"));
        }
        let kept = lock(&g.building).failed.len();
        assert_eq!(kept, MAX_FAILED_KEYS);
        assert!(
            lock(&g.building).failed.contains_key("k"),
            "the longest wait kept"
        );
    }

    #[test]
    fn a_directory_name_gives_its_shape_and_key() {
        assert_eq!(parse_dir_name("1c64m-ab12"), Some((1, 64, false, "ab12")));
        assert_eq!(
            parse_dir_name("32c4096mn-ab12"),
            Some((32, 4096, true, "ab12"))
        );
        for not in [".build-ab12", "1c64-ab12", "c64m-ab12", "1c64m", "xc64m-ab"] {
            assert_eq!(parse_dir_name(not), None, "{not}");
        }
    }

    #[test]
    fn a_build_beyond_the_bound_removes_the_least_recently_used_not_in_use() {
        let root = tempfile::tempdir().expect("tempdir");
        let golden =
            GoldenSnapshots::new(root.path().into(), "/bin/true".into(), 2, Duration::ZERO);
        let old = snapshot_at(root.path(), "a", "1c64m-k", 300);
        let older_in_use = snapshot_at(root.path(), "b", "1c72m-k", 400);
        let oldest = snapshot_at(root.path(), "a", "1c80m-k", 500);
        // A restore may be opening it: its lookup was just now (it stays least recent).
        lock(&golden.held).insert(older_in_use.clone(), Instant::now());
        let new = snapshot_at(root.path(), "b", "2c64m-k", 0);

        assert!(golden.make_room(Some(&new)));
        assert!(!oldest.exists(), "the least recently used goes");
        assert!(older_in_use.exists(), "in use: passed over");
        assert!(!old.exists(), "the next one goes in its place");
        assert!(new.exists());

        // Every other one in use: the new one goes, and the bound holds.
        lock(&golden.held).insert(new.clone(), Instant::now());
        let newer = snapshot_at(root.path(), "a", "4c64m-k", 0);
        assert!(!golden.make_room(Some(&newer)));
        assert!(!newer.exists());
        assert!(older_in_use.exists() && new.exists());
        assert_eq!(golden.snapshot_dirs().len(), 2);

        // One looked up already (between its build's rename and this): a restore may be
        // opening it, so it stays, over the bound until a later build's eviction.
        let newest = snapshot_at(root.path(), "a", "8c64m-k", 0);
        lock(&golden.held).insert(newest.clone(), Instant::now());
        assert!(golden.make_room(Some(&newest)));
        assert!(newest.exists());
    }

    #[test]
    fn a_lookup_makes_a_snapshot_the_most_recently_used_and_holds_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kernel = dir.path().join("k");
        let vmm = dir.path().join("vmm");
        std::fs::write(&kernel, b"kernel").expect("write");
        std::fs::write(&vmm, b"vmm").expect("write");
        let root = dir.path().join("snapshots");
        let golden = GoldenSnapshots::new(root.clone(), vmm, 1, Duration::ZERO);
        let looked_up = shape(kernel, "mode=echo");
        let key = golden.key(&looked_up).expect("key");
        let name = format!("{}{key}", looked_up.prefix());
        let snap = snapshot_at(&root, "tg", &name, 600);
        std::fs::write(snap.join("memory"), b"m").expect("write");
        assert_eq!(
            golden.lookup(&looked_up).expect("lookup").0,
            Some(snap.clone())
        );
        let used = std::fs::metadata(&snap)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert!(
            used > SystemTime::now() - Duration::from_secs(60),
            "touched"
        );

        let other = snapshot_at(&root, "tg", "2c64m-k", 0);
        assert!(!golden.make_room(Some(&other)), "held: the new one goes");
        assert!(snap.exists());
    }

    #[test]
    fn the_start_sweep_keeps_only_current_snapshots_of_catalogued_images_within_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kernel = dir.path().join("k");
        let vmm = dir.path().join("vmm");
        std::fs::write(&kernel, b"kernel").expect("write");
        std::fs::write(&vmm, b"vmm").expect("write");
        let root = dir.path().join("snapshots");
        let golden = GoldenSnapshots::new(root.clone(), vmm, 2, Duration::ZERO);
        let tg = shape(kernel.clone(), "mode=echo");
        let mut images = ImageCatalogue::default();
        images.insert(tg.image.clone());
        let mut plain = tg.image.clone();
        plain.name = "plain".into();
        plain.snapshot = false;
        images.insert(plain);
        let current = |vcpus, age| {
            let s = Shape {
                vcpus,
                ..tg.clone()
            };
            let key = golden.key(&s).expect("key");
            snapshot_at(&root, "tg", &format!("{}{key}", s.prefix()), age)
        };
        let kept = [current(1, 10), current(2, 20)];
        let beyond_the_bound = current(3, 30);
        let other_binary = snapshot_at(&root, "tg", "1c64m-0123456789abcdef", 0);
        let staging = snapshot_at(&root, "tg", ".build-0123456789abcdef", 0);
        let unknown_image = snapshot_at(&root, "gone", "1c64m-0123456789abcdef", 0);
        let not_a_snapshot_image = snapshot_at(&root, "plain", "1c64m-0123456789abcdef", 0);
        // Read-only as a built one: the sweep still removes it.
        std::fs::set_permissions(&unknown_image, std::fs::Permissions::from_mode(0o555))
            .expect("chmod");

        golden.sweep(&images);
        for dir in &kept {
            assert!(dir.exists(), "{}", dir.display());
        }
        for dir in [&beyond_the_bound, &other_binary, &staging, &unknown_image] {
            assert!(!dir.exists(), "{}", dir.display());
        }
        assert!(!not_a_snapshot_image.exists());
        assert!(!root.join("gone").exists() && !root.join("plain").exists());
    }
}
