//! The connection to the fleet's PostgreSQL: configuration, the pool, per-connection
//! settings, timeouts on every call, and counters of round trips and errors.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::{classify_pool, PgStoreError};
use crate::host_lock::HostLock;
use crate::migrations;

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

impl PgStoreOptions {
    /// Options with the defaults coinopd uses: 16 connections, 2 s to connect, 5 s per
    /// statement, 2 s for a free connection, 10 s per call.
    pub fn new(conninfo: impl Into<String>, host_id: impl Into<String>) -> Self {
        PgStoreOptions {
            conninfo: conninfo.into(),
            password: None,
            host_id: host_id.into(),
            pool_size: 16,
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
        if config.get_application_name().is_none() {
            config.application_name(format!("coinopd {}", options.host_id).as_str());
        }
        let description = describe(&config);
        // Start-up options apply to every connection the pool makes, without a round trip.
        config.options(format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            millis(options.statement_timeout),
            millis(options.statement_timeout)
        ));
        config.connect_timeout(options.connect_timeout);
        let host_id: Arc<str> = options.host_id.as_str().into();
        let host_lock = Arc::new(HostLock::new(
            config.clone(),
            Arc::clone(&host_id),
            options.operation_timeout,
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
                // The lock's session was lost (a server restart, a dropped connection):
                // taken again first, or this call is refused, so nothing is done under
                // the id while another process may hold it.
                self.host_lock.hold().await.map_err(|e| match e {
                    e @ PgStoreError::HostIdHeld { .. } => PgStoreError::Unavailable(e.to_string()),
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
