//! `coinopd`, the coinop host daemon. See `coinopd --help`.

use clap::Parser;
use coinopd::config::Settings;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Never fails (a line stderr refuses is dropped and counted), so the subscriber's
        // own report of a failed write, an eprintln! that panics on a full stderr, is off.
        .with_writer(coinopd::log_writer::Stderr)
        .log_internal_errors(false)
        .init();
    let config = match Settings::parse().with_file().and_then(Settings::resolve) {
        Ok(c) => c,
        Err(e) => {
            coinopd::log_writer::say(&format!("coinopd: {e}"));
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            coinopd::log_writer::say(&format!("coinopd: cannot start the runtime: {e}"));
            std::process::exit(1);
        }
    };
    let result = rt.block_on(coinopd::daemon::run(config, shutdown_signal()));
    if let Err(e) = result {
        coinopd::log_writer::say(&format!("coinopd: {e}"));
        std::process::exit(e.exit_code());
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down; guests keep running and are re-adopted on restart");
}
