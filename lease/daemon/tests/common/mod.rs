//! Test harness: a coinopd served in-process on a temp socket, a tiny Cashu wallet, and
//! helpers to find coinop-vmm and the test guest.
#![allow(dead_code)]

pub mod bcoin;
// One copy for both crates' tests: see that file.
#[path = "../../../../payment/bitcoin-net/tests/common/bcoin_install.rs"]
pub mod bcoin_install;
pub mod cli_process;
pub mod guest_reaper;
pub mod lease_pid;
pub mod leases;
pub mod personalisation_line;
pub mod warm_restore;

pub use guest_reaper::StateDir;

use std::path::{Path, PathBuf};

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use clap::Parser;
use coinop_cli::client::{Client, Reply};
use coinopd::app::AppState;
use coinopd::config::Settings;
use payment::credit::bdhke::{blind_message, unblind};
use payment::credit::nut_types::{BlindSignature, BlindedMessage, Proof};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Set when the daemon is a real `coinopd` process (crash tests).
    child: Option<std::process::Child>,
}

/// Where cargo put coinop-vmm and the test guest, if they were built.
pub fn vmm_and_guest() -> Option<(PathBuf, PathBuf)> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_coinopd"))
        .parent()?
        .to_path_buf();
    let vmm = bin_dir.join("coinop-vmm");
    if !vmm.exists() {
        return None;
    }
    let build = bin_dir.join("build");
    // The newest: a target dir keeps the guests of earlier builds of the vmm crate too,
    // which lack the modes added since.
    let guest = std::fs::read_dir(&build)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("out/testguest/testguest-pvh.elf"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()?
        .1;
    Some((vmm, guest))
}

/// Says why a test did not run, straight to stderr: the harness captures `println!` of a
/// passing test, and a skip must show in the suite's summary, never pass silently.
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// Whether guests can boot here; prints the SKIPPED line when not.
pub fn kvm_or_skip() -> bool {
    if !Path::new("/dev/kvm").exists() {
        skipped("/dev/kvm not available");
        return false;
    }
    if vmm_and_guest().is_none() {
        skipped("coinop-vmm or the test guest not built (cargo build -p vmm)");
        return false;
    }
    true
}

pub fn daemon_args(dir: &Path, socket: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "coinopd".into(),
        "--state-dir".into(),
        dir.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
    ];
    // The tests' default room, unless the test picks its own.
    if !extra.contains(&"--capacity-vcpus") {
        args.extend(["--capacity-vcpus".into(), "8".into()]);
    }
    if !extra.contains(&"--capacity-mib") {
        args.extend(["--capacity-mib".into(), "2048".into()]);
    }
    // The tests' default tick, unless the test picks its own.
    if !extra.contains(&"--tick-ms") {
        args.extend(["--tick-ms".into(), "50".into()]);
    }
    if let Some((vmm, guest)) = vmm_and_guest() {
        args.extend([
            "--vmm-bin".into(),
            vmm.display().to_string(),
            "--testguest".into(),
            guest.display().to_string(),
        ]);
    }
    // Jailing needs root; elsewhere the daemon refuses to start without --no-jail.
    if !nix::unistd::geteuid().is_root() {
        args.push("--no-jail".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn wait_for_socket(socket: &Path) {
    for _ in 0..500 {
        if socket.exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("coinopd did not bind {}", socket.display());
}

impl Daemon {
    /// Waits until `GET /v1/host` says the fleet store is ready (schema checked, this
    /// host's pending fences reconciled): before that, money requests are 503.
    pub async fn wait_store_ready(&self) {
        wait_for(
            async || {
                self.call("GET", "/v1/host", None, None).await.json()["store"]["ready"] == true
            },
            "the host's start-up check against the fleet store",
        )
        .await;
    }

    /// Asserts through NUT-07 `/v1/checkstate` that every one of `proofs` is unspent here.
    pub async fn assert_unspent(&self, proofs: &[Proof]) {
        let states = self.proof_states(proofs).await;
        assert!(states.iter().all(|s| s == "UNSPENT"), "{states:?}");
    }

    /// `POST /v1/checkstate` (NUT-07) for `proofs`.
    pub async fn checkstate(&self, proofs: &[Proof]) -> Reply {
        let ys: Vec<String> = proofs
            .iter()
            .map(|p| {
                payment::credit::hash_to_curve::secret_to_curve(&p.secret)
                    .expect("a minted secret")
                    .to_string()
            })
            .collect();
        self.call("POST", "/v1/checkstate", None, Some(json!({"Ys": ys})))
            .await
    }

    /// The NUT-07 `/v1/checkstate` state of each of `proofs`, in order.
    pub async fn proof_states(&self, proofs: &[Proof]) -> Vec<String> {
        let states = self.checkstate(proofs).await.json();
        let all = states["states"].as_array().expect("states");
        assert_eq!(all.len(), proofs.len(), "{states}");
        all.iter()
            .map(|s| s["state"].as_str().unwrap_or("(none)").to_string())
            .collect()
    }

    /// A real `coinopd` process on `dir`; `env` adds variables such as `COINOPD_FAULT`.
    pub async fn spawn(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("coinopd.log"))
            .expect("daemon log");
        Self::spawn_with(dir, dir, extra, env, log.into()).await
    }

    /// A real `coinopd` process whose state directory is `state` and whose socket is in
    /// `home`, its stderr going to `stderr` (e.g. `/dev/full`, or a log outside a state
    /// directory on a full disk).
    pub async fn spawn_with(
        home: &Path,
        state: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> Daemon {
        let socket = home.join("coinop.sock");
        let _ = std::fs::remove_file(&socket);
        let args = daemon_args(state, &socket, extra);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_coinopd"))
            .args(&args[1..])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start coinopd");
        wait_for_socket(&socket).await;
        Daemon {
            dir: home.to_path_buf(),
            client: Client::new(&socket),
            socket,
            stop: None,
            task: None,
            child: Some(child),
        }
    }

    /// The coinopd process's pid (process daemons only).
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.child
            .as_ref()
            .map(|c| nix::unistd::Pid::from_raw(c.id() as i32))
    }

    /// Whether the coinopd process is still running (process daemons only).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9` the coinopd process and reap it.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("kill9 needs a coinopd process");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for the coinopd process to die on its own (an injected fault) and returns how.
    pub async fn wait_crash(mut self) -> std::process::ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("wait_crash needs a coinopd process");
        for _ in 0..1000 {
            if let Some(status) = child.try_wait().expect("wait coinopd") {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        panic!("coinopd did not crash at the injected fault");
    }

    /// SIGTERM to the coinopd process (a graceful shutdown) and waits up to `limit` for it
    /// to exit.
    pub async fn terminate(mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("terminate needs a coinopd process");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait coinopd") {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("coinopd did not exit within {limit:?} of SIGTERM");
    }

    /// The daemon's log so far (process daemons only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("coinopd.log")).unwrap_or_default()
    }

    pub async fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let socket = dir.join("coinop.sock");
        let args = daemon_args(dir, &socket, extra);
        let config = Settings::parse_from(args)
            .resolve()
            .expect("test config resolves");
        // A stale socket from an earlier run must not look like a ready daemon.
        let _ = std::fs::remove_file(&socket);
        let (state, exits) = AppState::open(config).expect("daemon state opens");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            coinopd::daemon::serve(state, exits, async {
                let _ = rx.await;
            })
            .await
            .expect("daemon serves");
        });
        wait_for_socket(&socket).await;
        Daemon {
            dir: dir.to_path_buf(),
            client: Client::new(&socket),
            socket,
            stop: Some(tx),
            task: Some(task),
            child: None,
        }
    }

    /// Stops serving (guests keep running, as with a coinopd restart).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.client
            .call(
                method,
                path,
                token,
                body.map(|b| serde_json::to_vec(&b).expect("json")),
            )
            .await
            .expect("daemon answers")
    }

    pub async fn quote(&self, vcpus: u32, mem_mib: u64, seconds: u64) -> Value {
        let r = self
            .call(
                "POST",
                "/v1/quotes",
                None,
                Some(json!({"vcpus": vcpus, "mem_mib": mem_mib, "seconds": seconds})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// An on-chain payment for a fresh quote, mined on the daemon's regtest chain.
    pub async fn onchain_payment(&self, seconds: u64) -> Value {
        let q = self.quote(1, 64, seconds).await;
        coinop_cli::regtest_pay::pay_quote(&self.client, q["quote_id"].as_str().expect("quote_id"))
            .await
            .expect("regtest payment")
    }

    /// An on-chain payment for a mint quote of `amount_sat`, and blank outputs for it: the
    /// body of `POST /v1/mint/onchain`, and what unblinds its answer.
    pub async fn mint_request(&self, amount_sat: u64) -> (Value, Wallet, Vec<Blank>) {
        let r = self
            .call(
                "POST",
                "/v1/mint/quote/onchain",
                None,
                Some(json!({"amount": amount_sat, "unit": "sat"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let quote = r.json()["quote"].as_str().expect("quote").to_string();
        let pay = coinop_cli::regtest_pay::pay_quote(&self.client, &quote)
            .await
            .expect("pay");
        let wallet = Wallet::new(self).await;
        let blanks = wallet.outputs(&payment::credit::amount::split(amount_sat));
        let outputs: Vec<&BlindedMessage> = blanks.iter().map(|b| &b.msg).collect();
        let body = json!({"payment": pay["onchain"], "outputs": outputs});
        (body, wallet, blanks)
    }

    /// Mints `amount_sat` of credit against an on-chain payment; returns the proofs.
    pub async fn mint_credit(&self, amount_sat: u64) -> Vec<Proof> {
        let (body, wallet, blanks) = self.mint_request(amount_sat).await;
        let r = self
            .call("POST", "/v1/mint/onchain", None, Some(body))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let sigs: Vec<BlindSignature> =
            serde_json::from_value(r.json()["signatures"].clone()).expect("sigs");
        wallet.unblind(&blanks, &sigs)
    }
}

pub struct Blank {
    pub secret: String,
    pub r: SecretKey,
    pub msg: BlindedMessage,
}

/// The wallet side of Cashu, enough to mint, spend and receive change.
pub struct Wallet {
    pub keyset_id: String,
    pub keys: Value,
}

impl Wallet {
    pub async fn new(d: &Daemon) -> Wallet {
        let r = d.call("GET", "/v1/keys", None, None).await;
        assert_eq!(r.status, 200);
        let ks = r.json()["keysets"][0].clone();
        Wallet {
            keyset_id: ks["id"].as_str().expect("keyset id").to_string(),
            keys: ks["keys"].clone(),
        }
    }

    pub fn outputs(&self, amounts: &[u64]) -> Vec<Blank> {
        amounts
            .iter()
            .map(|&amount| {
                let mut bytes = [0u8; 32];
                OsRng.fill_bytes(&mut bytes);
                let secret = hex::encode(bytes);
                let r = SecretKey::new(&mut OsRng);
                let b_ = blind_message(secret.as_bytes(), &r).expect("blind");
                Blank {
                    secret,
                    r,
                    msg: BlindedMessage {
                        amount,
                        id: self.keyset_id.clone(),
                        b_: b_.to_string(),
                    },
                }
            })
            .collect()
    }

    pub fn unblind(&self, blanks: &[Blank], sigs: &[BlindSignature]) -> Vec<Proof> {
        sigs.iter()
            .zip(blanks)
            .map(|(s, b)| {
                let k: PublicKey = self.keys[s.amount.to_string()]
                    .as_str()
                    .expect("key for amount")
                    .parse()
                    .expect("point");
                let c_: PublicKey = s.c_.parse().expect("C_");
                let c = unblind(&c_, &b.r, &k).expect("unblind");
                Proof {
                    amount: s.amount,
                    id: s.id.clone(),
                    secret: b.secret.clone(),
                    c: c.to_string(),
                    witness: None,
                    dleq: None,
                }
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `text` without its ANSI colour sequences (`ESC [ ... letter`): coinopd's log colours its
/// field names, so a field reads `name=value` only once they are gone.
pub fn plain_text(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Up to and including the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Polls `f` until it holds. The limit is only there to end a broken test: a loaded 2-core
/// machine can give a metered guest a small share of a CPU, so its balance drains several
/// times slower than on an idle one.
pub async fn wait_for(mut f: impl AsyncFnMut() -> bool, what: &str) {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(90);
    let start = std::time::Instant::now();
    while start.elapsed() < LIMIT {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("timed out after {LIMIT:?} waiting for {what}");
}

/// Pays `sat` to `address` on the daemon's regtest chain: the transaction mined into a
/// block on the daemon's tip, confirmed as the daemon requires, and the headers pushed to
/// it. Returns the transaction and its SPV proof, hex.
pub async fn pay_address(d: &Daemon, address: &str, sat: u64) -> (String, String) {
    pay_address_on(&[d], address, sat).await
}

/// [`pay_address`] on several hosts that follow one chain (as a fleet's hosts follow one
/// Bitcoin network): they must share a tip, and every host gets the headers.
pub async fn pay_address_on(hosts: &[&Daemon], address: &str, sat: u64) -> (String, String) {
    use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
    use payment::onchain::regtest_fixtures::{
        header_bytes, mine_block, payment_tx, tx_hex, txout_proof_hex,
    };
    let host = hosts[0].call("GET", "/v1/host", None, None).await.json();
    for h in &hosts[1..] {
        let other = h.call("GET", "/v1/host", None, None).await.json();
        assert_eq!(other["chain"]["hash"], host["chain"]["hash"], "one chain");
    }
    let script = address
        .parse::<bitcoin::Address<_>>()
        .expect("address")
        .assume_checked()
        .script_pubkey();
    let tip: bitcoin::BlockHash = host["chain"]["hash"]
        .as_str()
        .expect("tip")
        .parse()
        .expect("hash");
    let height = host["chain"]["height"].as_u64().expect("height") as u32;
    let mut time = host["chain"]["time"].as_u64().unwrap_or(0) as u32 + 1;
    let min_conf = host["min_conf"].as_u64().expect("min_conf").max(1) as u32;
    let tx = payment_tx(
        &[(script, bitcoin::Amount::from_sat(sat))],
        OsRng.next_u32(),
    );
    let mut tag = [0u8; 8];
    OsRng.fill_bytes(&mut tag);
    let block = mine_block(tip, height + 1, time, &tag, vec![tx.clone()]);
    let proof = txout_proof_hex(&block, &[tx.compute_txid()]);
    let mut headers = vec![hex::encode(header_bytes(&block.header))];
    let mut prev = block.block_hash();
    for i in 1..min_conf {
        time += 1;
        let b = mine_block(prev, height + 1 + i, time, &tag, vec![]);
        headers.push(hex::encode(header_bytes(&b.header)));
        prev = b.block_hash();
    }
    for d in hosts {
        operator_posts_headers(d, &headers).await;
    }
    (tx_hex(&tx), proof)
}

/// `POST /v1/chain/headers` of `headers` (hex) as the operator, which must be taken.
pub async fn operator_posts_headers(d: &Daemon, headers: &[String]) {
    let r = d
        .call(
            "POST",
            "/v1/chain/headers",
            None,
            Some(json!({ "headers": headers })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A fleet mint seed file (`--mint-seed-file`) of `byte` repeated, with `mode`, in `dir`.
pub fn mint_seed_file(dir: &Path, byte: u8, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("mint-seed-{byte:02x}-{mode:o}"));
    std::fs::write(&path, format!("{}\n", hex::encode([byte; 32]))).expect("seed file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}
