//! `coinop`, the operator and provisioning CLI: a thin client of coinopd's API over its Unix
//! socket. Human-readable output by default, the daemon's JSON untouched with `--json`.
//! Exit codes (also in `coinop --help`): 0 ok, 1 HTTP error from the daemon (its error code
//! printed), 2 usage, 3 cannot reach the daemon, 4 the answer could not be written out.

use coinop_cli::exit::{Exit, USAGE};

fn finish(e: Exit) -> ! {
    if !e.message.is_empty() {
        coinop_cli::exit::note(&e.message);
    }
    std::process::exit(i32::from(e.code));
}

fn main() {
    let cli = coinop_cli::args::parse().unwrap_or_else(|e| finish(e));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            finish(Exit {
                code: USAGE,
                message: format!("cannot start the runtime: {e}"),
            })
        });
    if let Err(e) = rt.block_on(coinop_cli::run(cli)) {
        finish(e);
    }
}
