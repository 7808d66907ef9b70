//! Running the `coinop` CLI binary against a test daemon's socket.

use std::path::Path;
use std::process::{Command, Output};

/// `coinop --socket <socket> <args>`, with no COINOP_TOKEN inherited from the environment.
fn command(socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coinop"));
    c.arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("COINOP_TOKEN");
    c
}

/// Runs `coinop` and waits for it; blocks the calling thread.
pub fn coinop(socket: &Path, args: &[&str]) -> Output {
    command(socket, args).output().expect("run coinop")
}

/// Runs `coinop` on a blocking thread, so an in-process daemon on the async runtime keeps
/// serving it; `env` adds variables such as `COINOP_WALLET`.
pub async fn coinop_async(socket: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = command(socket, args);
    for (k, v) in env {
        c.env(k, v);
    }
    tokio::task::spawn_blocking(move || c.output().expect("run coinop"))
        .await
        .expect("the coinop thread joins")
}

/// `coinop lease create` for a 1 vCPU, 64 MiB lease, followed by `extra` (payment flags).
pub fn lease_create_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["lease", "create", "--vcpus", "1", "--mem-mib", "64"];
    args.extend_from_slice(extra);
    args
}
