//! Unprivileged uids (uid = gid) handed out one per running lease, so no two guests' VMMs
//! share an identity the kernel would let them use against each other.
//!
//! A pool made [`UidPool::with_claims`] (coinopd's) also claims each uid it hands out on the
//! whole host: a removable [`PidLock`] on `DIR/jail-uid-UID.lock`, held as long as the
//! [`JailUid`]. Two coinopds on one host (another state dir, another network namespace)
//! whose uid ranges overlap, as they do when both keep the default, then never give two
//! guests the same uid: each skips the uids the other holds. A coinopd that crashes drops
//! its claims while its guests may still run; the restarted one claims their uids back as
//! it re-adopts them ([`UidPool::claim`]), and a uid another coinopd took meanwhile is an
//! error there, not a silent share. So that no other coinopd takes such a uid meanwhile,
//! [`UidPool::take`] also skips a uid some process on the host runs as (any of its real,
//! effective, saved or filesystem uids, from `/proc/PID/status`): a guest whose coinopd
//! is gone holds no claim, but its VMM still runs as its uid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::claim_dir::ClaimDirError;
use crate::pid_lock::{PidLock, PidLockError};

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A uid outside the pool, or one already in use.
    #[error("jail uid {0} is not free in the pool")]
    NotFree(u32),
    /// Every uid is in use, by this pool or (claimed on the host) by another coinopd.
    #[error(
        "all {count} jail uids are in use ({elsewhere} of them by another coinopd on this host)"
    )]
    Exhausted {
        /// The pool's size.
        count: u32,
        /// How many of the uids this pool had free were held by another process's claim.
        elsewhere: u32,
    },
    /// A range that would include root or wrap around.
    #[error("jail uid range {first}+{count}: must be non-empty, above 0 and below 2^32-1")]
    BadRange {
        /// First uid.
        first: u32,
        /// How many.
        count: u32,
    },
    /// The uid is claimed on this host by another process (another coinopd's guest).
    #[error("jail uid {uid} is held by another coinopd on this host (pid {}, claim {})",
            .pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()), .path.display())]
    HeldElsewhere {
        /// The uid.
        uid: u32,
        /// The claim file.
        path: PathBuf,
        /// Its holder's pid, as the holder wrote it.
        pid: Option<u32>,
    },
    /// The host's processes could not be listed (`/proc`), so a uid a running guest
    /// holds could not be told apart from a free one.
    #[error("listing the host's processes' uids in /proc: {0}")]
    Processes(std::io::Error),
    /// The claim directory is unusable.
    #[error("jail uid claims: {0}")]
    ClaimDir(#[from] ClaimDirError),
    /// A claim file could not be read or written.
    #[error("jail uid {uid}'s claim: {source}")]
    Claim {
        /// The uid.
        uid: u32,
        /// What failed.
        source: PidLockError,
    },
}

/// A range of uids `first..first+count`.
#[derive(Debug, Clone)]
pub struct UidPool {
    first: u32,
    count: u32,
    in_use: Arc<Mutex<BTreeSet<u32>>>,
    /// Uids outside `first..first+count` claimed back for re-adopted guests (started by a
    /// coinopd with another range): held like the pool's, never handed out by it.
    outside: Arc<Mutex<BTreeSet<u32>>>,
    /// Where each uid's host-wide claim is kept; `None`: this process alone.
    claims: Option<Arc<PathBuf>>,
}

/// A uid taken from the pool; returned (and its claim released) when dropped.
#[derive(Debug)]
pub struct JailUid {
    uid: u32,
    in_use: Arc<Mutex<BTreeSet<u32>>>,
    claim: Option<PidLock>,
}

impl JailUid {
    /// The uid, also used as the gid.
    pub fn get(&self) -> u32 {
        self.uid
    }
}

impl Drop for JailUid {
    fn drop(&mut self) {
        // The host-wide claim first: a taker in this process that finds the uid free in the
        // set then finds its claim free too.
        drop(self.claim.take());
        self.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
    }
}

/// A claim file's mode: root's alone. Opening the file is enough to take its lock (flock
/// needs no write access), so a user who could open it could hold a uid from every coinopd,
/// or take a crashed coinopd's uid while its guest still runs as it.
const CLAIM_MODE: u32 = 0o600;

impl UidPool {
    /// A pool of `count` uids starting at `first`, known to this process alone (tests and
    /// examples that pick a range no one else uses).
    pub fn new(first: u32, count: u32) -> Result<Self, Error> {
        let valid =
            first > 0 && count > 0 && first.checked_add(count).is_some_and(|end| end < u32::MAX);
        if !valid {
            return Err(Error::BadRange { first, count });
        }
        Ok(UidPool {
            first,
            count,
            in_use: Arc::default(),
            outside: Arc::default(),
            claims: None,
        })
    }

    /// A pool whose uids are also claimed on the host, in `dir` (created if missing, and
    /// written by its owner alone: [`crate::claim_dir::prepare`]), so that a uid is never
    /// used by two coinopds at once.
    pub fn with_claims(first: u32, count: u32, dir: &Path) -> Result<Self, Error> {
        let mut pool = Self::new(first, count)?;
        crate::claim_dir::prepare(dir)?;
        pool.claims = Some(Arc::new(dir.to_path_buf()));
        Ok(pool)
    }

    fn claim_path(dir: &Path, uid: u32) -> PathBuf {
        dir.join(format!("jail-uid-{uid}.lock"))
    }

    /// Takes the lowest uid free here and, for a pool with claims, not held by another
    /// process.
    /// For a pool with claims, also not the uid of any process running on the host.
    pub fn take(&self) -> Result<JailUid, Error> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        let mut elsewhere = 0;
        // Read once a take: a uid a process starts running as after this is one another
        // coinopd took with its claim, which the claim below finds held.
        let running = match &self.claims {
            Some(_) => uids_of_processes().map_err(Error::Processes)?,
            None => BTreeSet::new(),
        };
        for uid in self.first..self.first + self.count {
            if in_use.contains(&uid) {
                continue;
            }
            let claim = match &self.claims {
                None => None,
                Some(dir) => {
                    match PidLock::try_take_removable(&Self::claim_path(dir, uid), CLAIM_MODE) {
                        // Claimed by nobody, but a guest whose coinopd is gone runs as it
                        // (that coinopd's restart re-adopts it under this uid).
                        Ok(_) if running.contains(&uid) => {
                            elsewhere += 1;
                            continue;
                        }
                        Ok(lock) => Some(lock),
                        Err(PidLockError::Held { .. }) => {
                            elsewhere += 1;
                            continue;
                        }
                        Err(source) => return Err(Error::Claim { uid, source }),
                    }
                }
            };
            in_use.insert(uid);
            return Ok(JailUid {
                uid,
                in_use: Arc::clone(&self.in_use),
                claim,
            });
        }
        Err(Error::Exhausted {
            count: self.count,
            elsewhere,
        })
    }
}

impl UidPool {
    /// How many uids are free here (some may be held by another coinopd: [`UidPool::take`]
    /// skips those).
    pub fn free(&self) -> u32 {
        let in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        self.count.saturating_sub(in_use.len() as u32)
    }

    /// Takes `uid` itself: a re-adopted guest keeps the uid it was started with, also one
    /// outside the pool's range (a guest of a coinopd started with another range, such as
    /// the default before it moved), which the pool then holds but never hands out. Its
    /// claim is taken again (the coinopd that held it before is gone); one held by another
    /// process is [`Error::HeldElsewhere`]. Root and (uid_t)-1 are never a jail's.
    pub fn claim(&self, uid: u32) -> Result<JailUid, Error> {
        let inside = uid >= self.first && uid - self.first < self.count;
        let set = if inside { &self.in_use } else { &self.outside };
        let mut in_use = set.lock().unwrap_or_else(|p| p.into_inner());
        if uid == 0 || uid == u32::MAX || in_use.contains(&uid) {
            return Err(Error::NotFree(uid));
        }
        let claim = match &self.claims {
            None => None,
            Some(dir) => match PidLock::take_removable(&Self::claim_path(dir, uid), CLAIM_MODE) {
                Ok(lock) => Some(lock),
                Err(PidLockError::Held { path, pid }) => {
                    return Err(Error::HeldElsewhere { uid, path, pid })
                }
                Err(source) => return Err(Error::Claim { uid, source }),
            },
        };
        in_use.insert(uid);
        Ok(JailUid {
            uid,
            in_use: Arc::clone(set),
            claim,
        })
    }
}

/// Every uid some process on the host runs as: the real, effective, saved and filesystem
/// uids of each `/proc/PID/status` (a process that ends while this reads is skipped).
fn uids_of_processes() -> std::io::Result<BTreeSet<u32>> {
    let mut uids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(
                line["Uid:".len()..]
                    .split_whitespace()
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    }
    Ok(uids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_until_returned() {
        let pool = UidPool::new(1000, 2).expect("valid");
        let a = pool.take().expect("first");
        let b = pool.take().expect("second");
        assert_ne!(a.get(), b.get());
        assert!(matches!(
            pool.take(),
            Err(Error::Exhausted {
                count: 2,
                elsewhere: 0
            })
        ));
        assert_eq!(pool.free(), 0);
        let freed = a.get();
        drop(a);
        assert_eq!(pool.take().expect("reused").get(), freed);
    }

    #[test]
    fn claimed_uids_are_taken() {
        let pool = UidPool::new(1000, 3).expect("valid");
        let kept = pool.claim(1001).expect("free");
        assert!(matches!(pool.claim(1001), Err(Error::NotFree(1001))));
        let first = pool.take().expect("first");
        assert_eq!(first.get(), 1000);
        assert_eq!(pool.take().expect("next free").get(), 1002);
        drop((kept, first));
    }

    /// A guest started under another range (the old default) is re-adopted with its uid;
    /// the pool's own uids and count are untouched by it.
    #[test]
    fn uids_outside_the_range_are_claimed_back_but_never_handed_out() {
        let pool = UidPool::new(1000, 2).expect("valid");
        let old = pool.claim(900_000).expect("outside, claimed back");
        assert!(matches!(pool.claim(900_000), Err(Error::NotFree(900_000))));
        assert_eq!(pool.free(), 2);
        for never in [0, u32::MAX] {
            assert!(matches!(pool.claim(never), Err(Error::NotFree(_))));
        }
        let (a, b) = (pool.take().expect("a"), pool.take().expect("b"));
        assert_eq!((a.get(), b.get()), (1000, 1001));
        assert!(pool.take().is_err());
        drop(old);
        assert_eq!(
            pool.claim(900_000).expect("again once returned").get(),
            900_000
        );
    }

    /// A guest whose coinopd crashed runs on as its uid with no claim held: another
    /// coinopd's pool skips that uid rather than give a second guest the same one.
    #[test]
    fn a_uid_a_process_runs_as_is_not_taken() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED: running a process as another uid needs root");
            return;
        }
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // Far from the ranges other tests and the daemon's defaults use.
        let first = 3_999_000;
        let pool = UidPool::with_claims(first, 3, dir.path()).expect("pool");
        let mut orphan = std::process::Command::new("sleep")
            .arg("30")
            .uid(first)
            .gid(first)
            .spawn()
            .expect("a process as the pool's first uid");
        let taken = pool.take();
        let _ = orphan.kill();
        let _ = orphan.wait();
        assert_eq!(taken.expect("a uid").get(), first + 1);
        // Once it is gone, the uid is free again.
        assert_eq!(pool.take().expect("a uid").get(), first);
    }

    #[test]
    fn root_and_wrapping_ranges_are_refused() {
        assert!(UidPool::new(0, 10).is_err());
        assert!(UidPool::new(5, 0).is_err());
        assert!(UidPool::new(u32::MAX - 1, 5).is_err());
    }

    #[test]
    fn claim_files_are_roots_alone_even_when_an_older_coinopd_made_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = UidPool::with_claims(1000, 2, dir.path()).expect("pool");
        let mode = |uid: u32| {
            std::fs::metadata(UidPool::claim_path(dir.path(), uid))
                .expect("claim file")
                .permissions()
                .mode()
                & 0o7777
        };
        let first = pool.take().expect("first");
        assert_eq!(mode(first.get()), 0o600);
        // One an older coinopd left readable by all (it held uid 1001 when it crashed).
        let older = UidPool::claim_path(dir.path(), 1001);
        std::fs::write(&older, b"1\n").expect("older claim");
        std::fs::set_permissions(&older, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let second = pool.claim(1001).expect("claimed back");
        assert_eq!(mode(second.get()), 0o600);
        drop((first, second));
    }

    #[test]
    fn two_pools_claiming_on_one_host_never_share_a_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Two coinopds' pools over one range (both on the default): what one holds, the
        // other skips.
        let a = UidPool::with_claims(1000, 3, dir.path()).expect("pool a");
        let b = UidPool::with_claims(1000, 3, dir.path()).expect("pool b");
        let a1 = a.take().expect("a's first");
        let b1 = b.take().expect("b's first");
        let a2 = a.take().expect("a's second");
        assert_eq!((a1.get(), b1.get(), a2.get()), (1000, 1001, 1002));
        match b.take() {
            Err(
                e @ Error::Exhausted {
                    count: 3,
                    elsewhere: 2,
                },
            ) => {
                assert!(
                    e.to_string().contains("2 of them by another coinopd"),
                    "{e}"
                )
            }
            other => panic!("b with every other uid held by a: {other:?}"),
        }
        // A re-adoption of a uid the other pool holds is refused, naming the holder.
        match b.claim(1000) {
            Err(Error::HeldElsewhere { uid: 1000, pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("claim of a's uid: {other:?}"),
        }
        // Returned uids are free for the other pool, and their claim files are gone.
        drop(a1);
        assert!(!dir.path().join("jail-uid-1000.lock").exists());
        assert_eq!(b.take().expect("freed by a").get(), 1000);
        drop((b1, a2));
        assert_eq!(b.claim(1002).expect("free again").get(), 1002);
    }
}
