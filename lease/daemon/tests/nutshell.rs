//! coinop credit in nutshell (PyPI `cashu`, the Python reference wallet, pinned and
//! installed by scripts/lib/cashu_wallets.sh), both ways with the `coinop` CLI's wallet:
//! nutshell loads the mint (`info`), receives a token `coinop wallet send` printed, sends
//! one back that `coinop wallet receive` takes, burns the spent one (its check-state), and
//! after coinop's notes went through it, restores from its seed phrase alone, without a
//! single collision, and goes on. nutshell speaks TCP only: the test forwards a loopback
//! port of its own to coinopd's Unix socket.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cli_process::coinop_async;
use common::Daemon;
use payment::credit::token::Token;
use tokio::net::{TcpListener, UnixStream};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// nutshell's install dir, installing it (cached) if needed; `None` (and a `SKIPPED:` line)
/// when this host cannot have it (no python3 venv, no registry).
fn nutshell_dir() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/lib/cashu_wallets.sh"))
        .arg("nutshell")
        .output()
        .expect("bash runs");
    if !out.status.success() {
        eprintln!(
            "SKIPPED: nutshell interop: cannot install nutshell: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(dir.join("bin/cashu").exists(), "installer said {dir:?}");
    Some(dir)
}

/// A loopback TCP port forwarded to `socket`, one Unix connection per TCP connection, for
/// as long as the test's runtime lives.
async fn forward_to(socket: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let socket = socket.to_path_buf();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// One nutshell wallet: its CLI, data dir and the mint URL.
struct Nutshell {
    bin: PathBuf,
    home: PathBuf,
    url: String,
}

impl Nutshell {
    fn data_dir(&self) -> PathBuf {
        self.home.join(".cashu")
    }

    /// `cashu -h URL -y ARGS` with `stdin`, on a blocking thread (the daemon and the
    /// forwarder serve on this runtime). Its own HOME and data dir: no user config is read.
    async fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut c = Command::new(&self.bin);
        c.arg("-h")
            .arg(&self.url)
            .arg("-y")
            .args(args)
            .current_dir(&self.home)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("CASHU_DIR", self.data_dir())
            .env("TOR", "false")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = stdin.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = c.spawn().expect("run nutshell");
            let mut pipe = child.stdin.take().expect("stdin piped");
            let _ = pipe.write_all(input.as_bytes());
            drop(pipe);
            child.wait_with_output().expect("nutshell exits")
        })
        .await
        .expect("the nutshell thread joins")
    }

    /// A command that must succeed: its stdout.
    async fn ok(&self, args: &[&str], stdin: &str) -> String {
        let o = self.run(args, stdin).await;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "cashu {args:?}: {out}\n{err}");
        // nutshell prints a failure as a line and still exits 0 in places.
        assert!(
            !out.contains("Error") && !err.contains("Traceback"),
            "cashu {args:?}: {out}\n{err}"
        );
        out
    }

    /// The balance nutshell reports, sat.
    async fn balance(&self) -> u64 {
        let out = self.ok(&["balance"], "").await;
        let line = out
            .lines()
            .find(|l| l.starts_with("Balance:"))
            .unwrap_or_else(|| panic!("no balance line: {out}"));
        line.trim_start_matches("Balance:")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("balance line {line:?}"))
    }

    /// `send AMOUNT`: the token it printed.
    async fn send(&self, amount: u64) -> String {
        let out = self.ok(&["send", &amount.to_string()], "").await;
        out.split_whitespace()
            .find(|w| w.starts_with("cashuB") || w.starts_with("cashuA"))
            .unwrap_or_else(|| panic!("no token in: {out}"))
            .to_string()
    }
}

async fn coinop_json(socket: &Path, wallet: &Path, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let o = coinop_async(socket, &full, &[("COINOP_WALLET", wallet)]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "coinop {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON")
}

/// `coinop wallet send` (`--v3` for a cashuA token): the token.
async fn coinop_send(socket: &Path, wallet: &Path, amount: u64, url: &str, v3: bool) -> String {
    let amount = amount.to_string();
    let mut args = vec!["wallet", "send", "--amount", &amount, "--mint-url", url];
    if v3 {
        args.push("--v3");
    }
    let o = coinop_async(socket, &args, &[("COINOP_WALLET", wallet)]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nutshell_and_coinop_exchange_tokens_and_nutshell_restores_without_collision() {
    let Some(dir) = nutshell_dir() else { return };
    let state = common::StateDir::new();
    let d = Daemon::start(state.path(), &[]).await;
    let s = d.socket.clone();
    let url = forward_to(&s).await;
    let home = state.path().join("nutshell-home");
    std::fs::create_dir_all(&home).expect("home");
    let nut = Nutshell {
        bin: dir.join("bin/cashu"),
        home,
        url: url.clone(),
    };

    // nutshell loads the mint: keysets (active), info.
    let info = nut.ok(&["info", "--mint"], "").await;
    assert!(info.contains(&url), "{info}");

    // A token from `coinop wallet send` into nutshell.
    let w = state.path().join("coinop-wallet.json");
    coinop_json(&s, &w, &["wallet", "mint", "--amount", "500"]).await;
    let token = coinop_send(&s, &w, 300, &url, false).await;
    assert_eq!(Token::decode(&token).expect("token").mint, url);
    nut.ok(&["receive", &token], "").await;
    assert_eq!(nut.balance().await, 300);

    // One back: nutshell's token into `coinop wallet receive`.
    let back = nut.send(120).await;
    let got = coinop_json(&s, &w, &["wallet", "receive", &back]).await;
    assert_eq!(got["received_sat"], 120);
    assert_eq!(got["balance_sat"], 200 + 120);

    // nutshell's pending token is spent now: burn (its NUT-07 check) clears it.
    nut.ok(&["burn", "--all"], "").await;
    let pending = nut.ok(&["pending"], "").await;
    assert!(!pending.contains("cashu"), "{pending}");
    assert_eq!(nut.balance().await, 180);

    // More coinop notes through nutshell (a V3 token this time), then the wallet is lost and restored from its
    // seed phrase: exactly its unspent notes come back, none collides or was spent.
    let token2 = coinop_send(&s, &w, 77, &url, true).await;
    assert!(token2.starts_with("cashuA"), "{token2}");
    nut.ok(&["receive", &token2], "").await;
    let back2 = nut.send(50).await;
    coinop_json(&s, &w, &["wallet", "receive", &back2]).await;
    nut.ok(&["burn", "--all"], "").await;
    assert_eq!(nut.balance().await, 180 + 77 - 50);
    let shown = nut.ok(&["info", "--mnemonic"], "").await;
    // Printed as "Mnemonic:" and, on the next line, " - word word ...".
    let mnemonic = shown
        .lines()
        .skip_while(|l| !l.starts_with("Mnemonic:"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("- "))
        .unwrap_or_else(|| panic!("no mnemonic in: {shown}"))
        .to_string();
    assert_eq!(mnemonic.split(' ').count(), 12, "{mnemonic}");
    std::fs::remove_dir_all(nut.data_dir()).expect("the wallet is lost");
    let restored = nut
        .ok(
            &["restore", "--to", "2", "--batch", "50"],
            &format!("{mnemonic}\n"),
        )
        .await;
    assert_eq!(nut.balance().await, 207, "{restored}");

    // The restored wallet goes on: new notes from coinop, and everything it holds goes back
    // to coinop, which the mint accepts in full (no note spent twice, none lost).
    let token3 = coinop_send(&s, &w, 33, &url, false).await;
    nut.ok(&["receive", &token3], "").await;
    assert_eq!(nut.balance().await, 240);
    let all = nut.send(240).await;
    let got = coinop_json(&s, &w, &["wallet", "receive", &all]).await;
    assert_eq!(got["received_sat"], 240);
    assert_eq!(got["balance_sat"], 500);
    d.shutdown().await;
}
