//! Running the `coinop` CLI binary against a test daemon's socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `coinop` binary. It belongs to another package (`coinop-cli`), so cargo does not
/// hand it to these tests as it does `coinopd`; it is built into the same target directory.
/// `cargo test --workspace` has built it already; a lone `cargo test -p coinopd` builds it
/// here once, so a test never runs a stale or missing CLI.
pub fn coinop_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let daemon = Path::new(env!("CARGO_BIN_EXE_coinopd"));
        let bin = daemon.with_file_name("coinop");
        let profile_dir = daemon
            .parent()
            .expect("coinopd lives in a profile directory");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let target_dir = profile_dir
            .parent()
            .expect("a profile directory has a parent");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "coinop-cli", "--bin", "coinop"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo to build the coinop CLI");
        assert!(
            status.success() && bin.exists(),
            "cannot build {}",
            bin.display()
        );
        bin
    })
}

/// `coinop --socket <socket> <args>`, with no COINOP_TOKEN inherited from the environment.
fn command(socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(coinop_bin());
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

/// Runs `coinop` with its stdout sent to `stdout` (e.g. /dev/full) and waits for it; the
/// `Output` holds stderr only.
pub fn coinop_with_stdout(socket: &Path, args: &[&str], stdout: std::fs::File) -> Output {
    command(socket, args)
        .stdout(stdout)
        .output()
        .expect("run coinop")
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
