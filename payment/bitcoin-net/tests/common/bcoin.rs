//! bcoin (a Bitcoin full node in JavaScript, npm `bcoin@1.0.2`, written by people outside
//! this project) as a real peer: regtest, loopback only, started by the test that owns it
//! and stopped when dropped. Installed (cached) by scripts/lib/bcoin.sh, which is run here
//! when `COINOP_BCOIN_DIR` is not set; started by scripts/lib/bcoin-regtest.js. Only its P2P
//! port is used: these tests need a node that finishes the handshake, not its RPC.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use super::bcoin_install::repo_root;
// Re-exported where the tests have always found them; a test file that uses neither
// would warn (unused_imports, which the module's allow(dead_code) does not cover).
#[allow(unused_imports)]
pub use super::bcoin_install::{bcoin_dir, free_port};

/// A running bcoin regtest node on 127.0.0.1, at genesis, stopped when dropped.
pub struct Bcoin {
    child: Child,
    /// Held open: bcoin exits when it closes, so it cannot outlive a test that died.
    stdin: Option<ChildStdin>,
    pub p2p_port: u16,
}

impl Bcoin {
    /// Starts bcoin with its P2P port at `p2p_port`; returns once it accepts peers.
    pub fn start(dir: &Path, p2p_port: u16) -> Bcoin {
        let rpc_port = free_port();
        let mut child = Command::new("node")
            .arg(repo_root().join("scripts/lib/bcoin-regtest.js"))
            .args(["--p2p-port", &p2p_port.to_string()])
            .args(["--rpc-port", &rpc_port.to_string()])
            .args(["--api-key", &format!("coinop-test-{}", std::process::id())])
            .env("NODE_PATH", dir.join("node_modules"))
            .env("NODE_BACKEND", "js")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node for bcoin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("bcoin's stdout");
        assert!(line.starts_with("READY"), "bcoin did not start: {line:?}");
        Bcoin {
            child,
            stdin,
            p2p_port,
        }
    }
}

impl Drop for Bcoin {
    fn drop(&mut self) {
        // Its chain is in memory: killing it loses nothing.
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
