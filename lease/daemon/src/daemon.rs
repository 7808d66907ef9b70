//! `coinopd`'s main loop: open the state, bind the socket, re-adopt guests, run the
//! scheduler and serve the API until SIGINT/SIGTERM. Guests keep running across restarts;
//! stops that were accepted before the signal are finished first (bounded), so a stopped
//! lease never leaves its guest running.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;

use crate::app::{AppState, Shared, StartError};
use crate::config::Config;
use crate::http::limits::{ConnLimits, REFUSING_AT_ONCE};
use crate::http::server::ServerSettings;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("re-adopting guests: {0}")]
    Adopt(#[from] crate::ledger::LedgerError),
    /// The fleet store's schema is newer than this coinopd, or another coinopd holds this
    /// host's id in it.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetStartError),
    /// This host's mint seed or fee is not the fleet's.
    #[error(transparent)]
    FleetMint(#[from] crate::fleet_mint::FleetMintStartError),
}

impl DaemonError {
    /// `coinopd`'s exit status for this error: 2 when another coinopd holds the state dir,
    /// this namespace's guest networking or this host's id in the fleet store, or the
    /// store's role may not end a crashed run's sessions (as for a bad flag: starting again
    /// will not help), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Start(e) if e.is_held_by_another_coinopd() => 2,
            DaemonError::Fleet(
                crate::fleet::FleetStartError::HostIdHeld { .. }
                | crate::fleet::FleetStartError::StaleSessions(_),
            ) => 2,
            // Another mint seed or fee than the fleet's, or an unusable seed file.
            DaemonError::FleetMint(_) | DaemonError::Start(StartError::MintSeed(_)) => 2,
            _ => 1,
        }
    }
}

/// How long a graceful shutdown waits for accepted guest stops (a stop asks the VMM, waits
/// for it to end, and SIGKILLs it when it does not: a few seconds at worst).
const STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Beyond the boot timeout, how long a stopping coinopd waits for a warm restore or a
/// golden snapshot being built: the network set up before the VMM, the snapshot written
/// after it.
const BUILD_END_MARGIN: Duration = Duration::from_secs(5);

/// fds kept out of the connections' budget: the ledger, logs, the slot pool, helpers.
const FDS_FOR_COINOPD: u64 = 256;
/// fds one lease holds at most (event pipe, control connection, pidfd, tap, console).
const FDS_PER_LEASE: u64 = 8;

/// The API socket, bound; removed again at a graceful shutdown if it is still ours.
struct BoundSocket {
    path: PathBuf,
    /// (device, inode) of the socket file this coinopd created.
    id: (u64, u64),
}

impl BoundSocket {
    fn remove(&self) {
        // A socket file bound since by another coinopd (with another state dir) is left.
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove the socket");
            }
        }
    }
}

/// Binds the API socket, replacing a stale socket file from an earlier run (the state dir's
/// lock says no other coinopd of this state dir is running). The socket is bound, listening
/// and given its mode under a temporary name in the same directory, then renamed into
/// place: a client that finds the path can connect at once, never meeting a socket that is
/// bound but not yet listening (ECONNREFUSED) or not yet chmodded (EACCES). (`ss -xl` shows
/// the name it was bound under.)
fn bind_socket(config: &Config) -> Result<(UnixListener, BoundSocket), DaemonError> {
    let path = &config.socket;
    let err = |source| DaemonError::Socket {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let name = path.file_name().map_or_else(
        || "coinop.sock".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temporary = path.with_file_name(format!(".{name}.{}", std::process::id()));
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(&temporary).map_err(err)?;
    let placed = std::fs::set_permissions(
        &temporary,
        std::fs::Permissions::from_mode(config.socket_mode),
    )
    .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(err(e));
    }
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let bound = BoundSocket {
        path: path.clone(),
        id: (meta.dev(), meta.ino()),
    };
    Ok((listener, bound))
}

/// Raises the soft open-file limit to the hard one and returns it: every connection holds
/// an fd, and running out of them is what stops `accept`.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The server's limits from the configuration, `--max-connections` lowered (with a
/// warning) when the open-file limit cannot hold it next to the leases' own fds.
fn server_settings(state: &AppState) -> ServerSettings {
    let c = &state.config;
    let nofile = raise_nofile();
    let kept = FDS_FOR_COINOPD + FDS_PER_LEASE * u64::from(c.jail_uid_count);
    let room = nofile
        .saturating_sub(kept)
        .saturating_sub((c.operator_connections + REFUSING_AT_ONCE) as u64);
    let max = if (c.max_connections as u64) > room {
        let lowered = room.max(16) as usize;
        tracing::warn!(
            nofile,
            configured = c.max_connections,
            lowered,
            "the open-file limit cannot hold --max-connections; lowered (raise LimitNOFILE)"
        );
        lowered
    } else {
        c.max_connections
    };
    ServerSettings {
        limits: ConnLimits::new(max, c.max_connections_per_uid, c.operator_connections),
        operator: state.operator,
        header_timeout: Duration::from_millis(c.header_timeout_ms),
        idle_timeout: Duration::from_millis(c.idle_timeout_ms),
    }
}

/// Warns when the socket is inside the state dir: the state dir is private (0700), so
/// only root could reach it there.
fn warn_if_socket_unreachable(config: &Config) {
    let inside = |dir: &Path| config.socket.starts_with(dir);
    if inside(&config.state_dir) && config.socket_mode & 0o007 != 0 {
        tracing::warn!(
            socket = %config.socket.display(),
            state_dir = %config.state_dir.display(),
            "the socket is inside the state dir, which is 0700: only root can reach it \
             (put it elsewhere, e.g. /run/coinop/coinop.sock, for tenants)"
        );
    }
}

/// Opens everything and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let (state, exits) = AppState::open(config)?;
    serve(state, exits, shutdown).await
}

pub async fn serve(
    state: Shared,
    exits: tokio::sync::mpsc::UnboundedReceiver<crate::supervisor::GuestExit>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    // Before any request: the fleet store's schema is checked and this host's fences left
    // by a crash are settled against the ledger (or, store unreachable, retried meanwhile).
    if let Some(fleet) = &state.fleet {
        fleet.start(std::sync::Arc::clone(&state.ledger)).await?;
    }
    if let Some(fleet_mint) = &state.fleet_mint {
        fleet_mint.start(&state).await?;
    }
    // Payments an earlier version settled shallower than --settle-conf (which may then
    // have been below the refund's depth) are followed again until they are deep enough.
    let shallow = {
        let chain = state.chain_read();
        let settle = state.config.settle_conf.max(1);
        // Only a block the chain has on its best branch, short of the depth: one it does
        // not know (its headers not synced yet, or the chain store started again) says
        // nothing, and following its payment again would freeze a paid lease for it.
        state.ledger.unsettle_shallow(|hash| {
            hash.parse::<bitcoin::BlockHash>().is_ok_and(|h| {
                chain
                    .block(&h)
                    .is_some_and(|b| b.on_best_chain && b.confirmations < settle)
            })
        })
    };
    match shallow {
        Ok(0) => {}
        Ok(n) => tracing::warn!(payments = n, "settled payments followed again"),
        Err(e) => tracing::error!(error = %e, "checking settled payments' depth"),
    }
    let (adopted, dead) = crate::scheduler::adopt(&state).await?;
    tracing::info!(adopted, dead, "guests from earlier runs");
    // Only now is it known which leases are live: the rest of any network or overlay is a
    // crashed coinopd's left-over.
    // Warm restores an earlier coinopd left are no lease's: gone before the sweep and the
    // slot pool remove their networks, jails and cgroups.
    let s2 = state.clone();
    let _ = tokio::task::spawn_blocking(move || crate::warm_restores::remove_left_overs(&s2)).await;
    // So are golden snapshot builds an earlier coinopd died in.
    end_golden_builds(&state, "started").await;
    // Then, no build running and no restore yet, the snapshots no lease will restore from
    // go, and those beyond the bound.
    let s2 = state.clone();
    let _ = tokio::task::spawn_blocking(move || s2.golden.sweep(&s2.config.images)).await;
    let isolation = std::sync::Arc::clone(state.supervisor.isolation());
    let _ = tokio::task::spawn_blocking(move || isolation.sweep_left_overs()).await;
    state.supervisor.isolation().start_pool();
    let settings = server_settings(&state);
    let (listener, socket) = bind_socket(&state.config)?;
    warn_if_socket_unreachable(&state.config);
    for image in state.config.images.iter() {
        if image.snapshot && !image.agent {
            tracing::warn!(
                image = %image.name,
                "image has snapshot without agent: every lease restored from its snapshot \
                 starts with the same memory, kernel RNG state and any keys the guest made \
                 before it was ready, and nothing reseeds them; declare it agent if its \
                 guest runs the guest agent (images/rootfs/PERSONALISE.md)"
            );
        }
    }
    tracing::info!(socket = %state.config.socket.display(), network = %state.chain_network.name(), "coinopd listening");
    let scheduler = tokio::spawn(abort_on_panic(crate::scheduler::run(state.clone(), exits)));
    // Warm restores no create can take any more are given up, and the pool refilled,
    // without waiting for a create.
    let warm_watch = tokio::spawn(crate::warm_restores::WarmRestores::watch(state.clone()));
    // Headers from Bitcoin peers while the API serves.
    let chain_sync = crate::chain_sync::start(&state);
    let app = crate::http::router(state.clone());
    crate::http::server::serve(listener, app, settings, shutdown).await;
    // Nobody can connect any more: a client finds no socket rather than a dead one.
    socket.remove();
    // No new stops from the tick loop, then finish the accepted ones before the runtime
    // goes: a dropped stop task would leave its guest running with nobody metering it.
    scheduler.abort();
    // It starts no filler once the stop below has begun, and owns nothing: ended here, with
    // its hold on the state.
    warm_watch.abort();
    let _ = warm_watch.await;
    if let Some(sync) = chain_sync {
        sync.abort();
        let _ = sync.await;
    }
    // Wait for the cancelled loop to be dropped, with its hold on the state (and so on the
    // state dir's lock): a daemon started again in this process must find it free.
    let _ = scheduler.await;
    let pending = state.stops.pending();
    if pending > 0 {
        tracing::info!(pending, "waiting for accepted guest stops before exiting");
        if !state.stops.wait_idle(STOP_DRAIN).await {
            tracing::error!(
                pending = state.stops.pending(),
                "guest stops still unfinished after {STOP_DRAIN:?}; exiting anyway"
            );
        }
    }
    // Builds run to their end (each bounded by the boot timeout), then what is left of
    // them goes: a build's task goes with the runtime, and its VMM, no lease's, must not
    // outlive coinopd.
    let builds_limit = Duration::from_millis(state.config.boot_timeout_ms) + BUILD_END_MARGIN;
    crate::warm_restores::WarmRestores::shutdown(&state, builds_limit).await;
    state.golden.shutdown(builds_limit).await;
    end_golden_builds(&state, "stopping").await;
    let isolation = std::sync::Arc::clone(state.supervisor.isolation());
    let _ = tokio::task::spawn_blocking(move || isolation.shutdown_pool()).await;
    Ok(())
}

/// Ends the golden snapshot builds' VMMs, those their markers name
/// ([`crate::golden_snapshot::end_builds`]) and then any other left under a build's id,
/// whose confinement goes too ([`crate::golden_snapshot::remove_left_over_builds`]),
/// saying so when there were any; `when` is for the log. Only when no build runs: at
/// start, and at a stop once the builds were waited for.
async fn end_golden_builds(state: &Shared, when: &'static str) {
    let s = state.clone();
    let killed = tokio::task::spawn_blocking(move || {
        crate::golden_snapshot::end_builds(&s.config.snapshot_dir())
            + crate::golden_snapshot::remove_left_over_builds(&s)
    })
    .await
    .unwrap_or(0);
    if killed > 0 {
        tracing::info!(killed, "coinopd {when}: ended golden snapshot builds' VMMs");
    }
}

/// Runs `task` (the metering scheduler), ending the daemon if it panics: a panicking
/// request only loses its connection, but a dead scheduler would leave every guest
/// unmetered with nobody noticing, while a restart re-adopts the guests and meters on from
/// the ledger.
async fn abort_on_panic(task: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut task = Box::pin(task);
    std::future::poll_fn(move |cx| {
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(cx)));
        polled.unwrap_or_else(|_| {
            tracing::error!("the metering scheduler panicked; aborting coinopd");
            std::process::abort()
        })
    })
    .await
}
