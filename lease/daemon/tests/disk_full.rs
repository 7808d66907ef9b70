//! A full disk is an error, never a crash or a half-state (issue #13 item 3), with a real
//! `coinopd` process: its stderr on `/dev/full` (every log line refused) does not stop it;
//! its state directory on a small ext4 file system (a loop device the test mounts) filled
//! to ENOSPC makes creates answer 507 `insufficient_storage` with nothing claimed and no
//! lease left half made, and the same payment creates the lease once space returns,
//! without a restart; a restart on the full disk starts degraded and meters on.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coinop_proto::LeaseState;
use coinopd::ledger::Ledger;
use common::leases::{credit_payment, testguest_body};
use common::{kvm_or_skip, wait_for, Daemon};
use serde_json::Value;

/// A small ext4 file system on a loop device, mounted in a temporary directory the test
/// made, with the state directory on it (the log and the socket stay outside). Dropping it
/// kills the guests of its state directory and unmounts it.
struct LoopFs {
    home: tempfile::TempDir,
}

impl LoopFs {
    /// `None` after a SKIPPED line when the test cannot mount (not root).
    fn new(mib: u64) -> Option<LoopFs> {
        if !nix::unistd::geteuid().is_root() {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: mounting a loop file system needs root"
            );
            return None;
        }
        let home = tempfile::tempdir().expect("tempdir");
        let img = home.path().join("fs.img");
        let mnt = home.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        run("truncate", &["-s", &format!("{mib}M"), path_str(&img)]);
        // No blocks reserved for root: coinopd runs as root, and "full" must mean full.
        run("mkfs.ext4", &["-q", "-m", "0", path_str(&img)]);
        run("mount", &["-o", "loop", path_str(&img), path_str(&mnt)]);
        let fs = LoopFs { home };
        std::fs::create_dir(fs.state()).expect("state dir");
        Some(fs)
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn mnt(&self) -> PathBuf {
        self.home.path().join("mnt")
    }

    fn state(&self) -> PathBuf {
        self.mnt().join("state")
    }

    fn filler(&self) -> PathBuf {
        self.mnt().join("filler")
    }

    /// Writes a file until the file system has not one byte left.
    fn fill(&self) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("filler");
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0xa5u8; chunk];
            loop {
                match f.write_all(&buf) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling: {e}"),
                }
            }
        }
        let _ = f.sync_all();
        let st = nix::sys::statvfs::statvfs(&self.mnt()).expect("statvfs");
        assert_eq!(st.blocks_available(), 0, "the file system is full");
    }

    /// Deletes the filler.
    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove filler");
        nix::unistd::sync();
    }

    /// A real coinopd on this state directory, logging to `home/coinopd.log`.
    async fn coinopd(&self, extra: &[&str]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home().join("coinopd.log"))
            .expect("daemon log");
        Daemon::spawn_with(self.home(), &self.state(), extra, &[], log.into()).await
    }

    fn ledger(&self) -> Ledger {
        Ledger::open(&self.state().join("ledger.db")).expect("open ledger")
    }

    /// No half-state: every lease's books balance, none is stuck in `booting`; returns
    /// the leases.
    fn assert_whole(&self) -> Vec<coinopd::ledger::LeaseRow> {
        let l = self.ledger();
        let rows = l.list().expect("leases");
        for row in &rows {
            let b = l.books(&row.id).expect("books");
            assert!(b.balanced(), "books of {} do not balance: {b:?}", row.id);
            assert_ne!(row.state, LeaseState::Booting, "{row:?}");
        }
        rows
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.home().join("coinopd.log")).unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "coinopd's log:\n{log}");
        }
        // Room first: the reaper reads the ledger, which a full disk may not let it open.
        let _ = std::fs::remove_file(self.filler());
        common::guest_reaper::reap_guests(&self.state());
        let mnt = self.mnt();
        for _ in 0..50 {
            let unmounted = std::process::Command::new("umount")
                .arg(&mnt)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if unmounted {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = writeln!(
            std::io::stderr(),
            "teardown: lazy unmount of {}",
            mnt.display()
        );
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .status();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
}

/// A metric's value from `/metrics` (0 when absent).
async fn metric(d: &Daemon, name: &str) -> u64 {
    let text = d.call("GET", "/metrics", None, None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

async fn create(d: &Daemon, body: &Value) -> coinop_cli::client::Reply {
    d.call("POST", "/v1/leases", None, Some(body.clone())).await
}

/// A Cashu route's 507: NUT-00's body (no NUT code names a full disk: 0).
fn assert_cashu_insufficient_storage(r: &coinop_cli::client::Reply) {
    assert_eq!(r.status, 507, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], 0, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A 507 in the shape of `path`'s route: the Cashu routes answer NUT-00's body.
fn assert_full_on(path: &str, r: &coinop_cli::client::Reply) {
    if path.starts_with("/v1/swap") || path.starts_with("/v1/mint") {
        assert_cashu_insufficient_storage(r);
    } else {
        assert_insufficient_storage(r);
    }
}

/// A Cashu route's refusal: 400 with the NUT code.
fn assert_cashu_code(r: &coinop_cli::client::Reply, code: u64) {
    assert_eq!(
        (r.status, &r.json()["code"]),
        (400, &serde_json::json!(code)),
        "{}",
        r.text()
    );
}

fn assert_insufficient_storage(r: &coinop_cli::client::Reply) {
    assert_eq!(r.status, 507, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn debited(d: &Daemon, id: &str, token: &str) -> u64 {
    let r = d
        .call("GET", &format!("/v1/leases/{id}"), Some(token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["debited_msat"].as_u64().expect("debited_msat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stderr_drops_log_lines_and_coinopd_serves_on() {
    let dir = common::StateDir::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut d = Daemon::spawn_with(dir.path(), dir.path(), &[], &[], full.into()).await;
    let h = d.call("GET", "/v1/host", None, None).await;
    assert_eq!(h.status, 200, "{}", h.text());
    // Minting logs (the regtest chain, the quote, the payment), and a guest's life logs
    // its boot and its stop.
    let proofs = serde_json::to_value(d.mint_credit(20).await).expect("proofs");
    if kvm_or_skip() {
        let l = d
            .create_lease(testguest_body("mode=echo", credit_payment(&proofs)))
            .await;
        d.stop_lease(&l.id, &l.token).await;
    }
    assert!(d.running(), "coinopd died of its log");
    let dropped = metric(&d, "coinop_log_lines_dropped_total").await;
    assert!(dropped > 0, "no dropped log line counted");
    let status = d.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_creates_with_507_and_takes_them_once_space_returns() {
    if !kvm_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new(96) else { return };
    // No tick after the first: the create below is the first write on the full disk, so
    // it meets ENOSPC at its own commit.
    let mut d = fs.coinopd(&["--tick-ms", "3600000"]).await;
    let proofs = serde_json::to_value(d.mint_credit(20).await).expect("proofs");
    let body = testguest_body("mode=echo", credit_payment(&proofs));
    fs.fill();

    // The first create fails at its commit, the next ones are refused up front (the
    // reserve is released): all the same answer, and nothing is claimed.
    for _ in 0..3 {
        assert_insufficient_storage(&create(&d, &body).await);
    }
    assert!(d.running(), "coinopd died of the full disk");
    assert_eq!(metric(&d, "coinop_storage_degraded").await, 1);
    assert_eq!(metric(&d, "coinop_storage_reserve_released_total").await, 1);
    let log = d.log();
    assert!(
        log.contains("refused by the disk; rolled back"),
        "the first create met the full disk at its commit:\n{log}"
    );
    assert!(
        fs.assert_whole().is_empty(),
        "a refused create left a lease"
    );

    // Space returns: the same payment (never claimed) creates the lease, no restart.
    fs.free();
    let l = d.create_lease(body.clone()).await;
    assert_eq!(metric(&d, "coinop_storage_degraded").await, 0);
    let rows = fs.assert_whole();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].state, LeaseState::Running);
    d.stop_lease(&l.id, &l.token).await;
    let again = create(&d, &body).await;
    assert_eq!(again.status, 409, "paid once: {}", again.text());
    fs.assert_whole();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_full_disk_starts_degraded_and_meters_on() {
    if !kvm_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new(96) else { return };
    let d = fs.coinopd(&[]).await;
    let proofs = serde_json::to_value(d.mint_credit(60).await).expect("proofs");
    let lease = d
        .create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await;
    let more = serde_json::to_value(d.mint_credit(20).await).expect("proofs");
    let body = testguest_body("mode=echo", credit_payment(&more));
    // A clean shutdown: SQLite removes its WAL and WAL index, which a restart must make
    // again on the full disk.
    let status = d.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    fs.fill();

    let d = fs.coinopd(&[]).await;
    assert_eq!(metric(&d, "coinop_storage_degraded").await, 1);
    let before = debited(&d, &lease.id, &lease.token).await;
    wait_for(
        async || debited(&d, &lease.id, &lease.token).await > before,
        "metering on the full disk",
    )
    .await;
    assert_insufficient_storage(&create(&d, &body).await);
    // A payment spent before is told so, degraded or not: 409, not "retry later".
    let spent = create(&d, &testguest_body("mode=echo", credit_payment(&proofs))).await;
    assert_eq!(spent.status, 409, "{}", spent.text());
    assert_eq!(spent.json()["error"]["code"], "already_spent");
    let rows = fs.assert_whole();
    assert_eq!(rows.len(), 1, "{rows:?}");

    fs.free();
    let second = d.create_lease(body).await;
    assert_eq!(metric(&d, "coinop_storage_degraded").await, 0);
    d.stop_lease(&second.id, &second.token).await;
    d.stop_lease(&lease.id, &lease.token).await;
    let rows = fs.assert_whole();
    assert_eq!(rows.len(), 2, "{rows:?}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_goes_on_when_the_disk_fills_under_coinopd() {
    if !kvm_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new(96) else { return };
    let mut d = fs.coinopd(&[]).await;
    let proofs = serde_json::to_value(d.mint_credit(60).await).expect("proofs");
    let lease = d
        .create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await;
    let more = serde_json::to_value(d.mint_credit(20).await).expect("proofs");
    let body = testguest_body("mode=echo", credit_payment(&more));
    // The disk fills between two of coinopd's writes (stopped meanwhile, so that the room
    // its reserve frees is not taken by the filler too); the next tick meets ENOSPC.
    let pid = d.pid().expect("a coinopd process");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    fs.fill();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    wait_for(
        async || metric(&d, "coinop_storage_reserve_released_total").await == 1,
        "the reserve released by a tick on the full disk",
    )
    .await;
    let before = debited(&d, &lease.id, &lease.token).await;
    wait_for(
        async || debited(&d, &lease.id, &lease.token).await > before,
        "metering on the full disk",
    )
    .await;
    assert_insufficient_storage(&create(&d, &body).await);
    assert!(d.running(), "coinopd died of the full disk");
    assert_eq!(fs.assert_whole().len(), 1);

    // Space returns: coinopd notices by itself, and takes creates again.
    fs.free();
    wait_for(
        async || metric(&d, "coinop_storage_degraded").await == 0,
        "the reserve put back",
    )
    .await;
    let second = d.create_lease(body).await;
    d.stop_lease(&second.id, &second.token).await;
    d.stop_lease(&lease.id, &lease.token).await;
    assert_eq!(fs.assert_whole().len(), 2);
    d.shutdown().await;
}

/// A start-up error is said on stderr and ends coinopd with its own exit code, also when
/// stderr is full: the message is dropped, never turned into a panic (exit 101).
#[test]
fn a_start_up_error_on_a_full_stderr_exits_with_its_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    // Mainnet without an operator xpub is refused when the state is opened.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_coinopd"))
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--socket")
        .arg(dir.path().join("coinop.sock"))
        .args(["--network", "mainnet"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(full)
        .status()
        .expect("run coinopd");
    assert_eq!(status.code(), Some(1), "{status}");
}

/// `POST` `body` to `path`; the answer.
async fn post(d: &Daemon, path: &str, body: &Value) -> coinop_cli::client::Reply {
    d.call("POST", path, None, Some(body.clone())).await
}

/// The signatures of a mint or swap answer.
fn signatures(r: &coinop_cli::client::Reply) -> Vec<payment::credit::nut_types::BlindSignature> {
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_value(r.json()["signatures"].clone()).expect("signatures")
}

/// The NUT-07 states of `proofs` ("UNSPENT", "SPENT", ...).
async fn states(d: &Daemon, proofs: &[payment::credit::nut_types::Proof]) -> Vec<String> {
    let ys: Vec<String> = proofs
        .iter()
        .map(|p| {
            let y = payment::credit::hash_to_curve::hash_to_curve(p.secret.as_bytes())
                .expect("hash_to_curve");
            hex::encode(y.serialize())
        })
        .collect();
    let r = post(d, "/v1/checkstate", &serde_json::json!({ "Ys": ys })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| s["state"].as_str().expect("state").to_string())
        .collect()
}

/// The money routes of the mint and the quote book (their writes go to the payment crate's
/// spent set and quote book, not only the ledger) answer a full disk like the lease routes:
/// 507 `insufficient_storage`, nothing spent, the disk reserve freed; once space returns,
/// the same mint and swap succeed, and only once (the same request again gets the same
/// signatures, any other use of the payment or inputs 409). Each route meets ENOSPC at its
/// own commit (the disk is freed until coinopd put its reserve back, then filled again).
/// While degraded, new swaps, mints and quotes are refused before they write, but a
/// retried swap is answered again and a spent input is still 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_swap_and_quotes_answer_507_on_a_full_disk_and_pay_once_when_space_returns() {
    let Some(fs) = LoopFs::new(96) else { return };
    let d = fs.coinopd(&["--tick-ms", "3600000"]).await;
    // Made while there is room: the regtest payment writes headers, the swap's inputs are
    // minted.
    let (mint_body, wallet, mint_blanks) = d.mint_request(12).await;
    let inputs = d.mint_credit(8).await;
    let swap_blanks = wallet.outputs(&[4, 2, 1, 1]);
    let swap_outputs: Vec<_> = swap_blanks.iter().map(|b| b.msg.clone()).collect();
    let swap_body = serde_json::json!({"inputs": inputs, "outputs": swap_outputs});
    let quote_body = serde_json::json!({"vcpus": 1, "mem_mib": 64, "seconds": 60});
    let mint_quote_body = serde_json::json!({"amount": 10, "unit": "sat"});
    // A NUT-30 quote paid while there is room, its payment proved only once degraded.
    // The secp256k1 generator: a valid compressed key.
    let pubkey = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    let nut30 = post(
        &d,
        "/v1/mint/quote/onchain",
        &serde_json::json!({"unit": "sat", "pubkey": pubkey}),
    )
    .await;
    assert_eq!(nut30.status, 200, "{}", nut30.text());
    let nut30 = nut30.json();
    let address = nut30["request"].as_str().expect("address");
    let (tx_hex, proof_hex) = common::pay_address(&d, address, 5).await;
    let nut30_payment = format!(
        "/v1/mint/quote/onchain/{}/payment",
        nut30["quote"].as_str().expect("quote")
    );
    let nut30_proof = serde_json::json!({"tx_hex": tx_hex, "proof_hex": proof_hex});

    let routes = [
        ("/v1/swap", &swap_body),
        ("/v1/mint/onchain", &mint_body),
        ("/v1/quotes", &quote_body),
        ("/v1/mint/quote/onchain", &mint_quote_body),
    ];
    for (released, (path, body)) in routes.into_iter().enumerate() {
        if released > 0 {
            fs.free();
            wait_for(
                async || metric(&d, "coinop_storage_degraded").await == 0,
                "the reserve put back",
            )
            .await;
        }
        fs.fill();
        let r = post(&d, path, body).await;
        assert_full_on(path, &r);
        assert!(r.text().contains("nothing changed"), "{path}: {}", r.text());
        assert_eq!(
            metric(&d, "coinop_storage_reserve_released_total").await,
            released as u64 + 1,
            "{path}: its refusal freed the disk reserve: {}",
            r.text()
        );
    }
    let log = d.log();
    assert!(
        log.contains("payment storage refused the step"),
        "the swap and the quotes met the full disk in the payment crate's stores:\n{log}"
    );
    assert_eq!(
        states(&d, &inputs).await,
        vec!["UNSPENT"; inputs.len()],
        "a refused swap spent nothing"
    );
    // Degraded on the full disk: refused up front, whatever the route; a NUT-30 quote's
    // payment too (its claim would write), with the 507 its operation documents.
    for (path, body) in routes {
        assert_full_on(path, &post(&d, path, body).await);
    }
    let proved = post(&d, &nut30_payment, &nut30_proof).await;
    assert_full_on(&nut30_payment, &proved);
    let spec: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
            .expect("openapi.yaml"),
    )
    .expect("YAML");
    let listed = &spec["paths"]["/v1/mint/quote/onchain/{quote}/payment"]["post"]["responses"];
    assert!(
        listed.get("507").is_some(),
        "the spec lists the payment proof's 507: {}",
        proved.text()
    );

    fs.free();
    // The refused swap again: it goes through now, and again gives the same signatures.
    let swapped = signatures(&post(&d, "/v1/swap", &swap_body).await);
    let again = signatures(&post(&d, "/v1/swap", &swap_body).await);
    assert_eq!(swapped, again, "a retried swap is answered the same");
    assert_eq!(states(&d, &inputs).await, vec!["SPENT"; inputs.len()]);
    let other = wallet.outputs(&[8]);
    let other_outputs: Vec<_> = other.iter().map(|b| b.msg.clone()).collect();
    let twice = post(
        &d,
        "/v1/swap",
        &serde_json::json!({"inputs": inputs, "outputs": other_outputs.clone()}),
    )
    .await;
    assert_cashu_code(&twice, 11001); // inputs spent once
    let change = wallet.unblind(&swap_blanks, &swapped);
    assert_eq!(change.iter().map(|p| p.amount).sum::<u64>(), 8);
    // Full and degraded again: the swap's retry is still answered (a read), and a spent
    // input is still 409, not "retry later"; a new quote is refused.
    fs.fill();
    assert_insufficient_storage(&post(&d, "/v1/quotes", &quote_body).await);
    assert_eq!(metric(&d, "coinop_storage_degraded").await, 1);
    assert_eq!(signatures(&post(&d, "/v1/swap", &swap_body).await), swapped);
    let spent_again = post(
        &d,
        "/v1/swap",
        &serde_json::json!({"inputs": inputs, "outputs": other_outputs}),
    )
    .await;
    assert_cashu_code(&spent_again, 11001);
    fs.free();

    // The refused mint again: paid once, 12 sat of notes that the mint takes as real.
    let minted = signatures(&post(&d, "/v1/mint/onchain", &mint_body).await);
    assert_eq!(
        signatures(&post(&d, "/v1/mint/onchain", &mint_body).await),
        minted
    );
    let mut reused = mint_body.clone();
    reused["outputs"] = serde_json::to_value(
        wallet
            .outputs(&[8, 4])
            .iter()
            .map(|b| b.msg.clone())
            .collect::<Vec<_>>(),
    )
    .expect("outputs");
    let r = post(&d, "/v1/mint/onchain", &reused).await;
    assert_cashu_code(&r, 20002); // the payment minted once
    let notes = wallet.unblind(&mint_blanks, &minted);
    assert_eq!(notes.iter().map(|p| p.amount).sum::<u64>(), 12);
    // Both the minted notes and the swapped ones are good money: one swap takes them all.
    let all: Vec<_> = notes.iter().chain(&change).cloned().collect();
    let last = wallet.outputs(&[16, 4]);
    let last_outputs: Vec<_> = last.iter().map(|b| b.msg.clone()).collect();
    signatures(
        &post(
            &d,
            "/v1/swap",
            &serde_json::json!({"inputs": all, "outputs": last_outputs}),
        )
        .await,
    );
    for (path, body) in [
        ("/v1/quotes", &quote_body),
        ("/v1/mint/quote/onchain", &mint_quote_body),
    ] {
        let r = post(&d, path, body).await;
        assert_eq!(r.status, 200, "{path} once space returned: {}", r.text());
    }
    d.shutdown().await;
}
