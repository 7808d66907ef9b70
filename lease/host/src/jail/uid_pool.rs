//! Unprivileged uids (uid = gid) handed out one per running lease, so no two guests' VMMs
//! share an identity the kernel would let them use against each other.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A uid outside the pool, or one already in use.
    #[error("jail uid {0} is not free in the pool")]
    NotFree(u32),
    /// Every uid is in use.
    #[error("all {0} jail uids are in use")]
    Exhausted(u32),
    /// A range that would include root or wrap around.
    #[error("jail uid range {first}+{count}: must be non-empty, above 0 and below 2^32-1")]
    BadRange {
        /// First uid.
        first: u32,
        /// How many.
        count: u32,
    },
}

/// A range of uids `first..first+count`.
#[derive(Debug, Clone)]
pub struct UidPool {
    first: u32,
    count: u32,
    in_use: Arc<Mutex<BTreeSet<u32>>>,
}

/// A uid taken from the pool; returned when dropped.
#[derive(Debug)]
pub struct JailUid {
    uid: u32,
    in_use: Arc<Mutex<BTreeSet<u32>>>,
}

impl JailUid {
    /// The uid, also used as the gid.
    pub fn get(&self) -> u32 {
        self.uid
    }
}

impl Drop for JailUid {
    fn drop(&mut self) {
        self.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
    }
}

impl UidPool {
    /// A pool of `count` uids starting at `first`.
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
        })
    }

    /// Takes the lowest free uid.
    pub fn take(&self) -> Result<JailUid, Error> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        let uid = (self.first..self.first + self.count)
            .find(|uid| !in_use.contains(uid))
            .ok_or(Error::Exhausted(self.count))?;
        in_use.insert(uid);
        Ok(JailUid {
            uid,
            in_use: Arc::clone(&self.in_use),
        })
    }
}

impl UidPool {
    /// How many uids are free.
    pub fn free(&self) -> u32 {
        let in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        self.count.saturating_sub(in_use.len() as u32)
    }

    /// Takes `uid` itself: a re-adopted guest keeps the uid it was started with.
    pub fn claim(&self, uid: u32) -> Result<JailUid, Error> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        let inside = uid >= self.first && uid - self.first < self.count;
        if !inside || !in_use.insert(uid) {
            return Err(Error::NotFree(uid));
        }
        Ok(JailUid {
            uid,
            in_use: Arc::clone(&self.in_use),
        })
    }
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
        assert!(matches!(pool.take(), Err(Error::Exhausted(2))));
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
        assert!(matches!(pool.claim(999), Err(Error::NotFree(999))));
        assert!(matches!(pool.claim(1003), Err(Error::NotFree(1003))));
        let first = pool.take().expect("first");
        assert_eq!(first.get(), 1000);
        assert_eq!(pool.take().expect("next free").get(), 1002);
        drop((kept, first));
    }

    #[test]
    fn root_and_wrapping_ranges_are_refused() {
        assert!(UidPool::new(0, 10).is_err());
        assert!(UidPool::new(5, 0).is_err());
        assert!(UidPool::new(u32::MAX - 1, 5).is_err());
    }
}
