//! Where the tests' bcoin is installed, and a free loopback port for it: shared by this
//! crate's tests and coinopd's (lease/daemon/tests/common/mod.rs includes this file by
//! path), so that both find bcoin, or say why they skip, the same way. Both crates sit two
//! directories below the repository's root, which `repo_root` relies on.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root (both crates' manifests are two directories below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// The bcoin install, installing it if needed; `None` (after a `SKIPPED:` line) when it
/// cannot be had here (no node/npm, no registry).
pub fn bcoin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("COINOP_BCOIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/lib/bcoin.sh"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let dir = text.lines().last().unwrap_or_default().trim().to_string();
            Some(PathBuf::from(dir))
        }
        Ok(o) => {
            skipped(&format!(
                "bcoin could not be installed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            None
        }
        Err(e) => {
            skipped(&format!("bcoin installer did not run: {e}"));
            None
        }
    }
}

/// A free loopback TCP port (bound and released: a race only with other binds right now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
