//! The connection to the fleet's PostgreSQL: configuration, the pool, per-connection
//! settings, timeouts on every call, and counters of round trips and errors.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::{classify_pool, PgStoreError};
use crate::host_lock::HostLock;
use crate::migrations;
use crate::stale_sessions::OwnSessions;

/// The longest `application_name` PostgreSQL keeps (NAMEDATALEN - 1 bytes); a longer one
/// is cut.
const APPLICATION_NAME_MAX: usize = 63;

/// The `application_name` of every connection of host `host_id`: `coinopd <host id>` when
/// the server keeps that as it is (printable ASCII, at most 63 bytes). Otherwise the server
/// would cut it or rewrite its other bytes, and two ids sharing a long prefix (or differing
/// only outside ASCII) would share one name, so that one host's start would end the other's
/// sessions (see the `stale_sessions` module); the name is then `coinopd `, as much of the
/// id as fits (`?` for what is not printable ASCII) and ` #` with 64 bits of the id's
/// SHA-256 in hex. (A host id spelled exactly like another id's long form would share its
/// name: host ids are the operator's, who does not make such pairs.)
pub fn application_name(host_id: &str) -> String {
    let plain = format!("coinopd {host_id}");
    let printable = |b: u8| (0x20..=0x7e).contains(&b);
    if plain.len() <= APPLICATION_NAME_MAX && plain.bytes().all(printable) {
        return plain;
    }
    use bitcoin::hashes::{sha256, Hash};
    let digest = sha256::Hash::hash(host_id.as_bytes()).to_byte_array();
    let suffix = format!(" #{}", hex::encode(&digest[..8]));
    let room = APPLICATION_NAME_MAX - "coinopd ".len() - suffix.len();
    let prefix: String = host_id
        .chars()
        .map(|c| {
            if c.is_ascii() && printable(c as u8) {
                c
            } else {
                '?'
            }
        })
        .take(room)
        .collect();
    format!("coinopd {prefix}{suffix}")
}

/// How to reach the store and how long to wait for it.
#[derive(Clone, Debug)]
pub struct PgStoreOptions {
    /// A libpq-style `key=value` string or a `postgres://` URL. A host starting with `/` is
    /// a Unix socket directory.
    pub conninfo: String,
    /// Used when `conninfo` carries no password (read from a file or PGPASSWORD by the
    /// caller; never put on a command line).
    pub password: Option<String>,
    /// This host's id in the fleet: every claim records it, and start-up reconciliation
    /// settles only this host's pending claims.
    pub host_id: String,
    /// Connections kept open at most.
    pub pool_size: usize,
    /// Longest wait for a new connection (TCP/Unix connect plus start-up).
    pub connect_timeout: Duration,
    /// Set per connection as `statement_timeout`: the server cancels a statement that runs
    /// longer (e.g. one waiting on a lock held by a stuck host).
    pub statement_timeout: Duration,
    /// Longest wait for a free connection from the pool.
    pub pool_wait_timeout: Duration,
    /// Upper bound on one whole call (getting a connection plus its statements) as seen
    /// by the caller, whatever the server or network does.
    pub operation_timeout: Duration,
}

/// The connections a store keeps open at most unless told otherwise
/// ([`PgStoreOptions::new`]).
pub const DEFAULT_POOL_SIZE: usize = 16;

impl PgStoreOptions {
    /// Options with the defaults coinopd uses: [`DEFAULT_POOL_SIZE`] (16) connections, 2 s
    /// to connect, 5 s per statement, 2 s for a free connection, 10 s per call.
    pub fn new(conninfo: impl Into<String>, host_id: impl Into<String>) -> Self {
        PgStoreOptions {
            conninfo: conninfo.into(),
            password: None,
            host_id: host_id.into(),
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            pool_wait_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of what the store did, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    round_trips: AtomicU64,
    errors: AtomicU64,
    unavailable: AtomicU64,
}

/// A copy of [`StoreCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Statements sent and answered (or failed) on a connection.
    pub round_trips: u64,
    /// Calls that ended in an error other than a normal answer (taken, not pending).
    pub errors: u64,
    /// Of `errors`, those that were outages.
    pub unavailable: u64,
}

/// A pooled connection to the fleet store, schema checked and migrated. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    host_id: Arc<str>,
    description: Arc<str>,
    operation_timeout: Duration,
    statement_timeout: Duration,
    counters: Arc<StoreCounters>,
    host_lock: Arc<HostLock>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "postgres host={} dbname={}",
        hosts.join(","),
        config.get_dbname().unwrap_or("(default)")
    )
}

fn millis(d: Duration) -> u128 {
    d.as_millis().max(1)
}

impl PgStore {
    /// Connects, applies pending schema migrations (refusing a newer schema) and keeps the
    /// pool. Fails with [`PgStoreError::Unavailable`] if the server cannot be reached now.
    pub async fn connect(options: &PgStoreOptions) -> Result<Self, PgStoreError> {
        let store = Self::new(options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// The store without touching the network: the pool connects on first use. A daemon
    /// that must run (its guests, its metering) while the database is down makes it so,
    /// then calls [`PgStore::migrate`] until that succeeds.
    pub fn new(options: &PgStoreOptions) -> Result<Self, PgStoreError> {
        if options.host_id.is_empty() {
            return Err(PgStoreError::Config("the host id is empty".into()));
        }
        let mut config = tokio_postgres::Config::from_str(&options.conninfo)
            .map_err(|e| PgStoreError::Config(format!("connection string: {e}")))?;
        if config.get_password().is_none() {
            if let Some(password) = &options.password {
                config.password(password.as_str());
            }
        }
        // Always this host id's own name, whatever the connection string says: it is how a
        // restarted process finds the sessions of its crashed predecessor, and a name
        // shared with other hosts would have it end theirs.
        let name = application_name(&options.host_id);
        if let Some(given) = config.get_application_name().filter(|given| *given != name) {
            tracing::warn!(given, used = %name,
                "the fleet store connection string's application_name is replaced: coinopd \
                 names its sessions after its host id");
        }
        config.application_name(name.as_str());
        let description = describe(&config);
        // Start-up options apply to every connection the pool makes, without a round trip.
        config.options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            millis(options.statement_timeout),
            millis(options.statement_timeout)
        ));
        config.connect_timeout(options.connect_timeout);
        let host_id: Arc<str> = options.host_id.as_str().into();
        let own = Arc::new(OwnSessions::new());
        let host_lock = Arc::new(HostLock::new(
            config.clone(),
            Arc::clone(&host_id),
            options.operation_timeout,
            Arc::clone(&own),
        ));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection whose socket closed is dropped on the way out of the pool,
                // so after a server restart the next call connects afresh.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.pool_wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            // Each connection made before the host id's lock is first taken tells its
            // backend's pid, so that the sweep of a dead process's sessions spares it.
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let own = Arc::clone(&own);
                Box::pin(async move {
                    if own.recording() {
                        let row = client
                            .query_one("SELECT pg_backend_pid()", &[])
                            .await
                            .map_err(HookError::Backend)?;
                        own.record(row.get(0));
                    }
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| PgStoreError::Config(format!("connection pool: {e}")))?;
        Ok(PgStore {
            pool,
            host_id,
            description: description.into(),
            operation_timeout: options.operation_timeout,
            statement_timeout: options.statement_timeout,
            counters: Arc::default(),
            host_lock,
        })
    }

    /// Takes this host id's lock in the store (see the `host_lock` module), or confirms
    /// it is still held: from the first call on, every call of this store first takes the
    /// lock again if its session was lost, and is refused as
    /// [`PgStoreError::Unavailable`] if it cannot. Another live session with it is
    /// [`PgStoreError::HostIdHeld`].
    ///
    /// The first time it is taken, every other session of this host id's
    /// [`application_name`] on the database (a dead earlier process's: the lock proves no
    /// live one exists) is terminated, and the lock counts as held once they are gone; see
    /// the `stale_sessions` module. Sessions of another role this store's role may not
    /// signal are [`PgStoreError::StaleSessionsNotEnded`]; sessions still there
    /// [`crate::STALE_SESSIONS_WAIT`] after being terminated are
    /// [`PgStoreError::StaleSessionsLinger`]. In both cases the lock is not held, and the
    /// next call tries again.
    pub async fn hold_host_lock(&self) -> Result<(), PgStoreError> {
        self.host_lock.hold().await
    }

    /// Whether this process holds its host id's lock now (see [`PgStore::hold_host_lock`]).
    pub fn holds_host_lock(&self) -> bool {
        self.host_lock.is_held()
    }

    /// Applies pending migrations, or refuses a newer schema; see [`migrations::migrate`].
    pub async fn migrate(&self) -> Result<Vec<i32>, PgStoreError> {
        let run = async {
            let mut client = self.pool.get().await.map_err(classify_pool)?;
            let client: &mut tokio_postgres::Client = &mut client;
            migrations::migrate(client).await
        };
        tokio::time::timeout(self.operation_timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(PgStoreError::Unavailable(
                    "no answer to the schema check in time".into(),
                ))
            })
    }

    /// This host's id in the fleet.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Where the store is, for operators: hosts and database, never the password.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// How long the server lets one statement run (`statement_timeout`, set on every
    /// connection): a statement whose answer was lost, sent before the loss, has ended on
    /// the server this long after it at the latest, committed or not.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// The counters so far.
    pub fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            round_trips: self.counters.round_trips.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            unavailable: self.counters.unavailable.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` with a pooled connection under the operation timeout, counting it.
    /// `round_trips` is how many statements `f` sends.
    pub(crate) async fn with_client<T, F, Fut>(
        &self,
        round_trips: u64,
        f: F,
    ) -> Result<T, PgStoreError>
    where
        F: FnOnce(deadpool_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, PgStoreError>>,
    {
        let run = async {
            if !self.host_lock.admits() {
                // The lock's session was lost (a server restart, a dropped connection), or
                // was never taken: taken now first, or this call is refused, so nothing is
                // done under the id while another process may hold it, or while a dead
                // one's statements may still run.
                self.host_lock.hold().await.map_err(|e| match e {
                    e @ (PgStoreError::HostIdHeld { .. }
                    | PgStoreError::StaleSessionsNotEnded { .. }
                    | PgStoreError::StaleSessionsLinger { .. }) => {
                        PgStoreError::Unavailable(e.to_string())
                    }
                    other => other,
                })?;
            }
            let client = self.pool.get().await.map_err(classify_pool)?;
            self.counters
                .round_trips
                .fetch_add(round_trips, Ordering::Relaxed);
            f(client).await
        };
        let out = match tokio::time::timeout(self.operation_timeout, run).await {
            Ok(out) => out,
            Err(_) => Err(PgStoreError::Unavailable(format!(
                "no answer within {} ms",
                self.operation_timeout.as_millis()
            ))),
        };
        if let Err(e) = &out {
            let answer = matches!(
                e,
                PgStoreError::AlreadyClaimed { .. }
                    | PgStoreError::NotPending { .. }
                    | PgStoreError::HeldElsewhere(_)
                    | PgStoreError::OutputAlreadySigned { .. }
                    | PgStoreError::KeysetsChanged(_)
            );
            if !answer {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            if e.is_unavailable() {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }
}

impl PgStore {
    /// Counts statements sent beyond those announced to `with_client` (a conflict's
    /// follow-up read).
    pub(crate) fn add_round_trips(&self, n: u64) {
        self.counters.round_trips.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{application_name, APPLICATION_NAME_MAX};

    #[test]
    fn a_short_printable_host_id_is_named_as_it_is() {
        assert_eq!(application_name("host-1"), "coinopd host-1");
        assert_eq!(
            application_name("web-01:/var/lib/coinop"),
            "coinopd web-01:/var/lib/coinop"
        );
    }

    #[test]
    fn names_the_server_would_cut_or_rewrite_stay_apart_and_fit() {
        // Two ids sharing their first 60 bytes: cut at 63 bytes they would be one name.
        let long = "a".repeat(60);
        let (a, b) = (format!("{long}-x"), format!("{long}-y"));
        // Differing only outside ASCII: rewritten by the server they would be one name.
        let (c, d) = ("hôst", "hëst");
        let names: Vec<String> = [a.as_str(), b.as_str(), c, d]
            .iter()
            .map(|id| application_name(id))
            .collect();
        for (i, name) in names.iter().enumerate() {
            assert!(name.len() <= APPLICATION_NAME_MAX, "{name}");
            assert!(name.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{name}");
            assert!(name.starts_with("coinopd "), "{name}");
            for other in &names[i + 1..] {
                assert_ne!(name, other);
            }
        }
        assert!(names[2].starts_with("coinopd h?st #"), "{}", names[2]);
        // The same id, the same name: a restarted process finds its predecessor's.
        assert_eq!(application_name(&a), names[0]);
    }
}
