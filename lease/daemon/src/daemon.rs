//! `coinopd`'s main loop: open the state, bind the socket, re-adopt guests, run the
//! scheduler and serve the API until SIGINT/SIGTERM. Guests keep running across restarts;
//! stops that were accepted before the signal are finished first (bounded), so a stopped
//! lease never leaves its guest running.

use std::os::unix::fs::PermissionsExt;

use tokio::net::UnixListener;

use crate::app::{AppState, Shared, StartError};
use crate::config::Config;
use crate::http::peer::PeerCred;

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
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

/// How long a graceful shutdown waits for accepted guest stops (a stop asks the VMM, waits
/// for it to end, and SIGKILLs it when it does not: a few seconds at worst).
const STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the API socket, replacing a stale socket file from an earlier run.
pub fn bind(config: &Config) -> Result<UnixListener, DaemonError> {
    let path = &config.socket;
    let err = |source| DaemonError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
        .map_err(err)?;
    Ok(listener)
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
    let (adopted, dead) = crate::scheduler::adopt(&state).await?;
    tracing::info!(adopted, dead, "guests from earlier runs");
    // Only now is it known which leases are live: the rest of any network or overlay is a
    // crashed coinopd's left-over.
    let isolation = std::sync::Arc::clone(state.supervisor.isolation());
    let _ = tokio::task::spawn_blocking(move || isolation.sweep_left_overs()).await;
    state.supervisor.isolation().start_pool();
    let listener = bind(&state.config)?;
    tracing::info!(socket = %state.config.socket.display(), network = %state.chain_network.name(), "coinopd listening");
    let scheduler = tokio::spawn(crate::scheduler::run(state.clone(), exits));
    let app = crate::http::router(state.clone());
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<PeerCred>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(DaemonError::Serve);
    // No new stops from the tick loop, then finish the accepted ones before the runtime
    // goes: a dropped stop task would leave its guest running with nobody metering it.
    scheduler.abort();
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
    let isolation = std::sync::Arc::clone(state.supervisor.isolation());
    let _ = tokio::task::spawn_blocking(move || isolation.shutdown_pool()).await;
    result
}
