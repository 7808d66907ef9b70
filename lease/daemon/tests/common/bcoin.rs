//! bcoin (a Bitcoin full node in JavaScript, npm `bcoin@1.0.2`, written by people outside
//! this project) as the tests' real Bitcoin peer: regtest, loopback only, started and killed
//! by the test that owns it. Installed (cached) by scripts/lib/bcoin.sh, which the test
//! runs itself when `COINOP_BCOIN_DIR` is not set; started by scripts/lib/bcoin-regtest.js.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bitcoin::hashes::Hash;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::bcoin_install::repo_root;
// Re-exported where the tests have always found them; a test file that uses neither
// would warn (unused_imports, which the module's allow(dead_code) does not cover).
#[allow(unused_imports)]
pub use super::bcoin_install::{bcoin_dir, free_port};

/// A running bcoin regtest node, killed when dropped.
pub struct Bcoin {
    child: Option<Child>,
    /// Held open: bcoin exits when it closes (the test died).
    _stdin: Option<ChildStdin>,
    dir: PathBuf,
    prefix: Option<PathBuf>,
    wallet: bool,
    pub p2p_port: u16,
    pub rpc_port: u16,
    api_key: String,
}

impl Bcoin {
    /// Starts bcoin on fresh ports; `prefix` keeps its chain on disk (to restart it).
    pub fn start(dir: &Path, prefix: Option<&Path>) -> Bcoin {
        Self::start_with(dir, prefix, false)
    }

    /// Starts bcoin with its wallet (HTTP API on `rpc_port + 1`).
    pub fn start_with_wallet(dir: &Path) -> Bcoin {
        Self::start_with(dir, None, true)
    }

    fn start_with(dir: &Path, prefix: Option<&Path>, wallet: bool) -> Bcoin {
        let rpc_port = loop {
            // The wallet takes the port after the node's: both must be free.
            let p = free_port();
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let mut b = Bcoin {
            child: None,
            _stdin: None,
            dir: dir.to_path_buf(),
            prefix: prefix.map(Path::to_path_buf),
            wallet,
            p2p_port: free_port(),
            rpc_port,
            api_key: format!("coinop-test-{}", std::process::id()),
        };
        b.launch();
        b
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("node");
        cmd.arg(repo_root().join("scripts/lib/bcoin-regtest.js"))
            .args(["--p2p-port", &self.p2p_port.to_string()])
            .args(["--rpc-port", &self.rpc_port.to_string()])
            .args(["--api-key", &self.api_key])
            .env("NODE_PATH", self.dir.join("node_modules"))
            .env("NODE_BACKEND", "js")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(p) = &self.prefix {
            cmd.args(["--prefix", &p.display().to_string()]);
        }
        if self.wallet {
            cmd.arg("--wallet");
        }
        let mut child = cmd.spawn().expect("start node for bcoin");
        let stdout = child.stdout.take().expect("piped stdout");
        self._stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("bcoin's stdout");
        assert!(line.starts_with("READY"), "bcoin did not start: {line:?}");
        self.child = Some(child);
    }

    /// Stops bcoin (SIGTERM, then waits for it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            for _ in 0..200 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self._stdin = None;
    }

    /// Starts it again on the same ports (and the same chain, with a prefix).
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn p2p_addr(&self) -> String {
        format!("127.0.0.1:{}", self.p2p_port)
    }

    /// One JSON-RPC call over loopback HTTP with basic auth.
    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        let v = self
            .http(
                self.rpc_port,
                "POST",
                "/",
                json!({"method": method, "params": params}),
            )
            .await;
        assert!(v["error"].is_null(), "bcoin {method}: {}", v["error"]);
        v["result"].clone()
    }

    /// A call to bcoin's wallet HTTP API (`/wallet/...`).
    pub async fn wallet(&self, method: &str, path: &str, body: Value) -> Value {
        self.http(self.rpc_port + 1, method, path, body).await
    }

    async fn http(&self, port: u16, method: &str, path: &str, body: Value) -> Value {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to bcoin's HTTP API");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake with bcoin");
        tokio::spawn(conn);
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("x:{}", self.api_key));
        let body = body.to_string();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::AUTHORIZATION, format!("Basic {auth}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("bcoin answers");
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("bcoin's reply body")
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "bcoin {method} {path}: {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// Mines `n` blocks to a throwaway address; returns their hashes.
    pub async fn generate(&self, n: u32) -> Vec<String> {
        let r = self
            .rpc("generatetoaddress", json!([n, regtest_address()]))
            .await;
        r.as_array()
            .expect("generatetoaddress returns hashes")
            .iter()
            .map(|h| h.as_str().expect("hash").to_string())
            .collect()
    }

    /// Mines `n` blocks whose coinbases pay `address` (bcoin's spelling); returns their hashes.
    pub async fn generate_to(&self, n: u32, address: &str) -> Vec<String> {
        let r = self.rpc("generatetoaddress", json!([n, address])).await;
        r.as_array()
            .expect("generatetoaddress returns hashes")
            .iter()
            .map(|h| h.as_str().expect("hash").to_string())
            .collect()
    }

    /// A receive address of bcoin's own wallet (started with [`Bcoin::start_with_wallet`]).
    pub async fn wallet_address(&self) -> String {
        self.wallet(
            "POST",
            "/wallet/primary/address",
            json!({"account": "default"}),
        )
        .await["address"]
            .as_str()
            .expect("a wallet address")
            .to_string()
    }

    /// A wallet that can spend: 101 blocks to one of its addresses, so the first coinbase is
    /// mature. Returns that address (for later blocks).
    pub async fn fund_wallet(&self) -> String {
        let funds = self.wallet_address().await;
        self.generate_to(101, &funds).await;
        funds
    }

    /// bcoin's wallet asks to pay `sat` to `address` (coinop's spelling, bare or BIP21): its
    /// raw reply (the sent tx, or bcoin's refusal).
    pub async fn wallet_send(&self, address: &str, sat: u64) -> Value {
        self.wallet(
            "POST",
            "/wallet/primary/send",
            json!({
                "outputs": [{"address": to_bcoin_address(bare_address(address)), "value": sat}],
                "rate": 1000,
            }),
        )
        .await
    }

    /// bcoin's wallet pays `sat` to `address`; returns the tx (id, raw hex).
    pub async fn wallet_pays(&self, address: &str, sat: u64) -> (String, String) {
        let sent = self.wallet_send(address, sat).await;
        let txid = sent["hash"]
            .as_str()
            .unwrap_or_else(|| panic!("bcoin's wallet did not send: {sent}"))
            .to_string();
        let raw = sent["tx"]
            .as_str()
            .expect("raw tx in the send reply")
            .to_string();
        (txid, raw)
    }

    /// Block `hash` as bcoin serves it (`getblock HASH false`: the raw block).
    pub async fn block(&self, hash: &str) -> bitcoin::Block {
        let raw = self.rpc("getblock", json!([hash, false])).await;
        let bytes = hex::decode(raw.as_str().expect("raw block hex")).expect("hex block");
        bitcoin::consensus::deserialize(&bytes).expect("bcoin serves a valid block")
    }

    /// Every header of bcoin's best chain above genesis, raw hex, in order.
    pub async fn best_chain_headers(&self) -> Vec<String> {
        let tip_height = self
            .rpc("getblockcount", json!([]))
            .await
            .as_u64()
            .expect("height");
        let mut headers = Vec::new();
        for height in 1..=tip_height {
            let hash = self.rpc("getblockhash", json!([height])).await;
            let raw = self.rpc("getblockheader", json!([hash, false])).await;
            headers.push(raw.as_str().expect("raw header").to_string());
        }
        headers
    }

    pub async fn best_hash(&self) -> String {
        self.rpc("getbestblockhash", json!([]))
            .await
            .as_str()
            .expect("hash")
            .to_string()
    }
}

impl Drop for Bcoin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `address` (a regtest segwit address as coinop writes it, `bcrt1...`) as bcoin 1.0.2
/// writes it (`rb1...`): the same witness program under bcoin's prefix.
pub fn to_bcoin_address(address: &str) -> String {
    use bitcoin::bech32::{segwit, Hrp};
    let (_, version, program) = segwit::decode(address).expect("a segwit address");
    segwit::encode(Hrp::parse("rb").expect("valid hrp"), version, &program)
        .expect("the same program encodes")
}

/// A P2WPKH address on regtest in bcoin 1.0.2's spelling (`rb`, where Bitcoin Core now
/// writes `bcrt`; same witness program).
pub fn regtest_address() -> String {
    use bitcoin::bech32::{segwit, Fe32, Hrp};
    let program = bitcoin::hashes::hash160::Hash::hash(b"coinop test coinbase");
    segwit::encode(
        Hrp::parse("rb").expect("valid hrp"),
        Fe32::Q,
        program.as_byte_array(),
    )
    .expect("a 20-byte v0 program encodes")
}

/// The address part of a quote's `request` / address (a bare address or a BIP21 URI).
pub fn bare_address(text: &str) -> &str {
    let text = text.strip_prefix("bitcoin:").unwrap_or(text);
    text.split('?').next().unwrap_or(text)
}

/// Waits until coinopd's tip is `hash` (synced from bcoin); returns how long it took.
pub async fn wait_for_tip(d: &super::Daemon, hash: &str, limit: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let r = d.call("GET", "/v1/host", None, None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let h = r.json();
        if h["chain"]["hash"] == hash {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "tip is still {} (height {}), not {hash} after {limit:?}; sync: {}",
            h["chain"]["hash"],
            h["chain"]["height"],
            h["chain"]["sync"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /v1/quotes/{id}`: where coinopd says the quote's payment stands.
pub async fn quote_view(d: &super::Daemon, id: &str) -> Value {
    let r = d.call("GET", &format!("/v1/quotes/{id}"), None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until the quote's status is `status` (coinopd fetches a block after its header
/// arrives, so a payment shows a little after the tip moves); returns the quote's view.
pub async fn wait_for_quote(d: &super::Daemon, id: &str, status: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let v = quote_view(d, id).await;
        if v["status"] == status {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "quote never became {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
