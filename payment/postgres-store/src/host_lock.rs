//! One live coinopd per host id: a session-level advisory lock on the host id, held on a
//! connection of its own (not the pool's, which recycles connections) for as long as the
//! process runs.
//!
//! Why: start-up reconciliation settles every pending claim and reservation in the store
//! under this host's id by this host's local ledger. A second process with the same id
//! (cloned images, a copied state path) would read its own ledger, find nothing, and
//! release the first one's in-flight fences: one payment could then buy twice.
//!
//! Once [`HostLock::hold`] has been called, every pooled call of the store first takes the
//! lock again if it is not held (its session lost, noticed when its connection ends), and
//! is refused as [`PgStoreError::Unavailable`] if it cannot: nothing is claimed, reserved
//! or settled unless this process is the host id's one holder. Taken again, nothing is
//! reconciled anew: this process's fences in flight are its own, not a crash's leftovers.
//!
//! The first time a process takes the lock, and before the lock counts as held, it ends
//! the sessions a dead earlier process of the same id left on the server (see the
//! `stale_sessions` module): their statements could otherwise still commit claims after
//! this process's start-up reconciliation. Taken again later (its session lost), nothing
//! is swept: the other sessions with the id's name are then this process's own.
//!
//! A session whose client died without closing it (the machine lost power, a network
//! partition) keeps the lock until the server notices. The lock's session asks the server
//! for short TCP keepalives ([`SERVER_KEEPALIVE`]) so that it notices within
//! [`SESSION_NOTICED_WITHIN`]; a process that crashed on a live machine closes its socket
//! and frees the lock at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::error::{classify, PgStoreError};
use crate::stale_sessions::{end_stale_sessions, OwnSessions, STALE_SESSIONS_WAIT};

/// `tcp_keepalives_idle`, `_interval` (s) and `_count` set on the lock's session: the
/// server's side of the socket, so that the server drops the session (and the lock) of a
/// client that vanished.
const SERVER_KEEPALIVE: (u64, u64, u64) = (10, 5, 3);

/// The longest a dead client's session keeps the lock on a server that honours
/// [`SERVER_KEEPALIVE`]: idle, then every probe unanswered.
pub const SESSION_NOTICED_WITHIN: Duration =
    Duration::from_secs(SERVER_KEEPALIVE.0 + SERVER_KEEPALIVE.1 * SERVER_KEEPALIVE.2);

pub(crate) struct HostLock {
    config: tokio_postgres::Config,
    host_id: Arc<str>,
    timeout: Duration,
    /// [`HostLock::hold`] was called: pooled calls need the lock from now on.
    required: AtomicBool,
    held: AtomicBool,
    /// Which connection is the current one: the end of an older one (given up, or one
    /// that did not get the lock) must not clear `held`.
    generation: AtomicU64,
    /// The session holding the lock (its connection runs in a task of its own).
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// The pool's own sessions, spared by the sweep; done once the sweep succeeded.
    own: Arc<OwnSessions>,
}

impl HostLock {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        host_id: Arc<str>,
        timeout: Duration,
        own: Arc<OwnSessions>,
    ) -> Self {
        HostLock {
            config,
            host_id,
            timeout,
            required: AtomicBool::new(false),
            held: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            client: tokio::sync::Mutex::new(None),
            own,
        }
    }

    /// Whether pooled calls may run: no lock asked for, or the lock held.
    pub(crate) fn admits(&self) -> bool {
        !self.required.load(Ordering::Acquire) || self.held.load(Ordering::Acquire)
    }

    /// Whether this process holds its host id's lock now.
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Takes the host id's lock, or confirms it is still held. Another live session
    /// holding it is [`PgStoreError::HostIdHeld`]; the server unreachable is
    /// [`PgStoreError::Unavailable`]. Taken for the first time, a dead earlier process's
    /// sessions are ended first ([`end_stale_sessions`]); if they cannot be
    /// ([`PgStoreError::StaleSessionsNotEnded`], [`PgStoreError::StaleSessionsLinger`]),
    /// the lock is let go again and not held.
    pub(crate) async fn hold(self: &Arc<Self>) -> Result<(), PgStoreError> {
        self.required.store(true, Ordering::Release);
        let mut slot = self.client.lock().await;
        if self.is_held() {
            return Ok(());
        }
        // The session of a lost lock, if any, is gone with its connection.
        *slot = None;
        let taken = tokio::time::timeout(self.timeout, self.take()).await;
        let client = match taken {
            Ok(Ok(Some(client))) => client,
            Ok(Ok(None)) => {
                return Err(PgStoreError::HostIdHeld {
                    host_id: self.host_id.to_string(),
                })
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(PgStoreError::Unavailable(format!(
                    "no answer to taking the host id's lock within {} ms",
                    self.timeout.as_millis()
                )))
            }
        };
        if self.own.recording() {
            // Before the lock counts as held, so before any call under the id. On an error
            // the lock is let go (the next call sweeps again): unlocked first, since a
            // dropped session frees it only once the server has seen the socket close, and
            // the next call would meanwhile find it held.
            let swept =
                end_stale_sessions(&client, &self.host_id, &self.own, STALE_SESSIONS_WAIT).await;
            let ended = match swept {
                Ok(ended) => ended,
                Err(e) => {
                    let unlocked = client
                        .query_one(
                            "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                            &[&self.lock_key()],
                        )
                        .await;
                    if let Err(u) = unlocked {
                        tracing::warn!(error = %u, "letting the host id's lock go");
                    }
                    return Err(e);
                }
            };
            self.own.done();
            if ended > 0 {
                tracing::warn!(host_id = %self.host_id, sessions = ended,
                    "ended the fleet store sessions an earlier, crashed coinopd of this host \
                     left (statements of theirs could have committed after reconciliation)");
            }
        }
        *slot = Some(client);
        self.held.store(true, Ordering::Release);
        Ok(())
    }

    /// The text whose 64-bit hash is the lock's key.
    fn lock_key(&self) -> String {
        format!("coinopd host id {}", self.host_id)
    }

    /// A new session that asks for the lock: the session if it got it, `None` if another
    /// session holds it (this one is then closed, dropped).
    async fn take(self: &Arc<Self>) -> Result<Option<tokio_postgres::Client>, PgStoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(classify)?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        // Weak: the task must not keep the lock (and with it the client, whose drop ends
        // the connection) alive.
        let lock: Weak<HostLock> = Arc::downgrade(self);
        tokio::spawn(async move {
            let ended = connection.await;
            let Some(lock) = lock.upgrade() else { return };
            if lock.generation.load(Ordering::Acquire) == generation
                && lock.held.swap(false, Ordering::AcqRel)
            {
                tracing::error!(host_id = %lock.host_id, outcome = ?ended,
                    "the fleet store session holding this host's id ended: money requests \
                     are refused until the lock is taken again");
            }
        });
        let (idle, interval, count) = SERVER_KEEPALIVE;
        client
            .batch_execute(&format!(
                "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; \
                 SET tcp_keepalives_count = {count}"
            ))
            .await
            .map_err(classify)?;
        // hashtextextended: a 64-bit key, so two host ids share a lock only by a hash
        // collision (about 2^-64 per pair); prefixed so it means nothing else.
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&self.lock_key()],
            )
            .await
            .map_err(classify)?
            .get(0);
        Ok(got.then_some(client))
    }
}
