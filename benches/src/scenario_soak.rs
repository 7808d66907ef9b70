//! Scenario `soak` (issue #13): a driver creates leases (credit-paid, with a recovery key),
//! tops them up, mints credit on-chain, swaps it and stops leases with refund outputs, while
//! coinopd is SIGKILLed at random moments: after a random delay, or by a random
//! `COINOPD_FAULT` crash point. After each kill the daemon is restarted on the same state
//! directory, the request whose reply was lost is sent again with the same body (the API
//! promises the same answer), and the harness checks:
//! - no orphan: every coinop-vmm of this state directory belongs to a lease the daemon
//!   shows live (a stopped lease's VMM is gone within a few ticks);
//! - no lost balance: per lease, what the driver paid = debited + balance + refunded +
//!   residual (`GET /v1/leases`), and every mint, swap and refund unblinds to exactly the
//!   sats paid in; at the end every note the driver holds is swapped once more, so a note
//!   the daemon does not honour counts as lost;
//! - every retried request got its 2xx (or the documented answer).
//!
//! Failures are findings, collected with the fault point, lease and the daemon's answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use coinop_cli::client::{Client, Reply};
use coinop_proto::lease_view::LeaseList;
use coinop_proto::replies::{BootFailedResponse, CreateResponse, RecoveredResponse, StopResponse};
use coinop_proto::requests::{CreditPayment, PaymentBody, StopRequest, TopupRequest};
use coinop_proto::LeaseState;
use payment::credit::nut_types::{
    KeysResponse, MintOnchainRequest, MintOnchainResponse, MintQuoteOnchainRequest,
    MintQuoteOnchainResponse, Proof, SwapRequest, SwapResponse,
};

use crate::credit_wallet::{blanks, unblind_all, Blank};
use crate::daemon_proc::{lease_body, DaemonSpec};
use crate::error::BenchError;
use crate::report::ScenarioReport;

pub struct SoakScenario {
    pub daemon: DaemonSpec,
    pub duration: Duration,
    /// Leases alive at once at most (the capacity holds two more).
    pub max_live: usize,
    /// coinopd's `--grace-s`: how long a lease out of funds stays paused.
    pub grace_s: u64,
    /// Kill delays are drawn from [min, max).
    pub kill_delay_ms: (u64, u64),
    /// One request in this many is sent with a kill 0-60 ms later (mid-request).
    pub request_kill_one_in: u64,
    pub notes: Vec<String>,
}

/// The crash points a restart may arm (lease/daemon/src/fault.rs).
const FAULT_POINTS: [&str; 10] = [
    "create_committed",
    "create_guest_ready",
    "create_refunded",
    "mint_committed",
    "swap_committed",
    "tick_read",
    "tick_committed",
    "tick_stop_committed",
    "stop_committed",
    "topup_committed",
];

/// How long a stopped lease's VMM may take to go, and the daemon to settle after a restart.
const SETTLE: Duration = Duration::from_secs(10);

fn err(detail: impl std::fmt::Display) -> BenchError {
    BenchError::Run {
        what: "soak".into(),
        detail: detail.to_string(),
    }
}

/// A small PRNG (xorshift64*), seeded from the OS; the seed is printed with the report.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }
}

/// The coinopd child and a generation number, so a kill timer armed for one daemon never
/// signals the next one (and `Child::kill` never signals a reaped pid).
struct Current {
    generation: u64,
    child: Child,
}

/// One lease as the driver knows it.
struct Lease {
    token: String,
    token_seq: u64,
    /// msat the driver paid into it (create and accepted top-ups).
    paid_msat: u64,
    /// The driver asked for its stop with outputs and got the refund.
    refunded: bool,
}

#[derive(Default)]
struct Figures {
    kill_cycles: u64,
    fault_kills: u64,
    timer_kills: u64,
    requests: u64,
    retried: u64,
    creates: u64,
    topups: u64,
    mints: u64,
    swaps: u64,
    stops: u64,
    orphans: u64,
    /// VMMs of live leases the checks found (summed over checks).
    vmms_seen: u64,
    /// Deaths at each `COINOPD_FAULT` point (`point:pass`).
    faults_hit: BTreeMap<String, u64>,
    /// Stop reasons of every lease at the last check.
    stop_reasons: BTreeMap<String, u64>,
    /// msat lost outside the leases' books (mints, swaps, refunds, creates).
    lost_msat: u64,
    /// Per lease: |paid - what the daemon accounts for| at the last check that saw a
    /// difference.
    books_lost: BTreeMap<String, u64>,
    checks: u64,
    findings: Vec<String>,
}

struct Soak<'a> {
    sc: &'a SoakScenario,
    state: tempfile::TempDir,
    socket: PathBuf,
    client: Client,
    current: Arc<Mutex<Option<Current>>>,
    generation: u64,
    /// The fault armed in the running daemon, for the findings.
    fault: Option<String>,
    restarted: bool,
    /// The final phase: no more kills or faults, so the end state is checked once, still.
    calm: bool,
    /// How the last daemon died, for the findings.
    last_death: String,
    rng: Rng,
    wallet: Vec<Proof>,
    keys: Option<KeysResponse>,
    leases: BTreeMap<String, Lease>,
    f: Figures,
}

fn lock(m: &Mutex<Option<Current>>) -> std::sync::MutexGuard<'_, Option<Current>> {
    // A poisoned lock only means a kill timer panicked; the child handle is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SoakScenario {
    pub async fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        let state = tempfile::tempdir().map_err(|e| err(format!("state dir: {e}")))?;
        let socket = state.path().join("coinop.sock");
        let seed = OsRng.next_u64() | 1;
        // Now, not only in the report: a failing soak prints no report, and its seed and
        // state dir are what a rerun or a post-mortem needs.
        eprintln!(
            "coinop-bench soak: seed {seed:#x}, state dir {}",
            state.path().display()
        );
        let mut s = Soak {
            sc: self,
            client: Client::new(&socket),
            socket,
            state,
            current: Arc::new(Mutex::new(None)),
            generation: 0,
            fault: None,
            restarted: false,
            calm: false,
            last_death: "none yet".into(),
            rng: Rng(seed),
            wallet: Vec::new(),
            keys: None,
            leases: BTreeMap::new(),
            f: Figures::default(),
        };
        let outcome = s.drive().await;
        let ended = s.finish().await;
        let state_dir = s.state.path().display().to_string();
        let f = &s.f;
        let lost_msat = f.lost_msat + f.books_lost.values().sum::<u64>();
        let mut notes = self.notes.clone();
        notes.push(format!(
            "seed {seed:#x}; state dir {state_dir}; {} kill cycles ({} at a fault point, {} by timer), \
             {} requests, {} retried after a lost reply, {} checks; orphans {}, msat lost {}",
            f.kill_cycles, f.fault_kills, f.timer_kills, f.requests, f.retried, f.checks,
            f.orphans, lost_msat
        ));
        notes.push(format!(
            "leases at the end by state/stop reason: {:?}; VMMs of live leases seen by the checks: {}",
            f.stop_reasons, f.vmms_seen
        ));
        notes.push(format!("deaths at fault points: {:?}", f.faults_hit));
        for finding in &f.findings {
            eprintln!("coinop-bench soak FINDING: {finding}");
            notes.push(format!("FINDING: {finding}"));
        }
        println!(
            "soak: {} kill cycles survived ({} fault points, {} timers), orphans found {}, \
             msat lost {}, requests {} ({} retried), creates {}, top-ups {}, mints {}, swaps {}, stops {}",
            f.kill_cycles,
            f.fault_kills,
            f.timer_kills,
            f.orphans,
            lost_msat,
            f.requests,
            f.retried,
            f.creates,
            f.topups,
            f.mints,
            f.swaps,
            f.stops
        );
        let failed = outcome.is_err() || ended.is_err() || !f.findings.is_empty();
        if failed {
            // The daemon's ledger and logs are the evidence: keep them.
            s.state.disable_cleanup(true);
            eprintln!("coinop-bench soak: failed; state dir kept at {state_dir} (seed {seed:#x})");
        }
        let f = &s.f;
        outcome?;
        ended?;
        if !f.findings.is_empty() {
            return Err(err(format!(
                "{} finding(s), first: {}",
                f.findings.len(),
                f.findings[0]
            )));
        }
        let mut set = crate::sample_set::SampleSet::default();
        for (name, v) in [
            ("kill cycles survived", f.kill_cycles),
            ("orphans found", f.orphans),
            ("msat lost", lost_msat),
            ("requests retried", f.retried),
            ("requests", f.requests),
        ] {
            set.push("soak", name, v as f64);
        }
        let rows = set.rows();
        Ok(vec![ScenarioReport {
            scenario: "soak".into(),
            config: format!(
                "{} s, tick {} ms, grace {} s, up to {} leases, kills every {}-{} ms or at a fault point",
                self.duration.as_secs(),
                self.daemon.tick_ms,
                self.grace_s,
                self.max_live,
                self.kill_delay_ms.0,
                self.kill_delay_ms.1
            ),
            runs: 1,
            warmup: 0,
            rows,
            ratios: Vec::new(),
            notes,
        }])
    }
}

impl Soak<'_> {
    fn finding(&mut self, what: String) {
        let armed = match &self.fault {
            Some(p) => format!("; the daemon now runs with COINOPD_FAULT={p}"),
            None => String::new(),
        };
        self.f.findings.push(format!(
            "{what} [after kill cycle {}: {}{armed}]",
            self.f.kill_cycles, self.last_death
        ));
    }

    /// Starts coinopd on the state directory, with `fault` armed, and a kill timer.
    fn spawn(&mut self, fault: Option<String>) -> Result<(), BenchError> {
        let sc = self.sc;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("coinopd.log"))
            .map_err(|e| err(format!("log file: {e}")))?;
        let log2 = log.try_clone().map_err(|e| err(format!("log file: {e}")))?;
        let mut cmd = Command::new(&sc.daemon.coinopd);
        cmd.args(sc.daemon.args(self.state.path(), &self.socket))
            .args(["--grace-s", &sc.grace_s.to_string()])
            .env("RUST_LOG", "warn")
            .env_remove("COINOPD_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if let Some(p) = &fault {
            cmd.env("COINOPD_FAULT", p);
        }
        let child = cmd.spawn().map_err(|source| BenchError::Spawn {
            what: format!("coinopd ({})", sc.daemon.coinopd.display()),
            source,
        })?;
        self.generation += 1;
        *lock(&self.current) = Some(Current {
            generation: self.generation,
            child,
        });
        self.fault = fault;
        if !self.calm {
            let delay =
                Duration::from_millis(self.rng.range(sc.kill_delay_ms.0, sc.kill_delay_ms.1));
            self.kill_after(delay);
        }
        Ok(())
    }

    /// SIGKILLs the running daemon after `delay`, unless it was replaced meanwhile.
    fn kill_after(&self, delay: Duration) {
        let current = Arc::clone(&self.current);
        let generation = self.generation;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(c) = lock(&current).as_mut() {
                if c.generation == generation {
                    // SIGKILL by the handle of our own child: never a reaped or reused pid.
                    let _ = c.child.kill();
                }
            }
        });
    }

    /// Whether the daemon has exited (reaped here); with its status for the figures.
    fn dead(&self) -> Option<std::process::ExitStatus> {
        lock(&self.current)
            .as_mut()
            .and_then(|c| c.child.try_wait().ok().flatten())
    }

    /// Restarts after a death: a random fault point armed half of the time (none after
    /// three deaths in a row at start-up, so the run always moves on).
    async fn restart(&mut self) -> Result<(), BenchError> {
        let mut attempts = 0;
        loop {
            let status = self.dead();
            match (&self.fault, status) {
                (Some(p), Some(st)) if !is_sigkill(st) => {
                    self.f.fault_kills += 1;
                    *self.f.faults_hit.entry(p.clone()).or_default() += 1;
                    self.last_death = format!("coinopd aborted at COINOPD_FAULT={p}");
                }
                _ => {
                    self.f.timer_kills += 1;
                    self.last_death = "coinopd SIGKILLed by the harness".into();
                }
            }
            self.f.kill_cycles += 1;
            let fault = if !self.calm && attempts < 3 && self.rng.below(2) == 0 {
                let p = FAULT_POINTS[self.rng.below(FAULT_POINTS.len() as u64) as usize];
                Some(format!("{p}:{}", self.rng.range(1, 4)))
            } else {
                None
            };
            attempts += 1;
            self.spawn(fault)?;
            if self.wait_ready().await? {
                self.restarted = true;
                return Ok(());
            }
        }
    }

    /// `true` once the daemon answers; `false` if it died first (a fault at start-up).
    async fn wait_ready(&mut self) -> Result<bool, BenchError> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.dead().is_some() {
                return Ok(false);
            }
            if let Ok(r) = self.client.call("GET", "/v1/host", None, None).await {
                if r.status == 200 {
                    return Ok(true);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(err(format!(
            "coinopd gave no answer within 30 s of its start: {}",
            self.log_tail()
        )))
    }

    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.state.path().join("coinopd.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Sends one request until it gets an answer: a transport failure with the daemon dead
    /// restarts it and sends the very same bytes again (a retry after a lost reply).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(Reply, bool), BenchError> {
        self.f.requests += 1;
        let mut retried = false;
        loop {
            if self.dead().is_some() {
                self.restart().await?;
            }
            // Now and then the kill lands while this very request is being handled.
            if !self.calm && self.rng.below(self.sc.request_kill_one_in) == 0 {
                let ms = self.rng.below(60);
                self.kill_after(Duration::from_millis(ms));
            }
            match self.client.call(method, path, token, body.clone()).await {
                Ok(r) => return Ok((r, retried)),
                Err(e) => {
                    if !self.died_within(Duration::from_secs(5)).await {
                        return Err(err(format!(
                            "{method} {path}: {e}, and coinopd is still running"
                        )));
                    }
                    self.restart().await?;
                    if !retried {
                        self.f.retried += 1;
                    }
                    retried = true;
                }
            }
        }
    }

    /// Whether the daemon dies within `limit` (a transport error shortly before it exits).
    async fn died_within(&self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while self.dead().is_none() && t0.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.dead().is_some()
    }

    async fn post<T: serde::Serialize>(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &T,
    ) -> Result<(Reply, bool), BenchError> {
        let bytes = serde_json::to_vec(body).map_err(|e| err(format!("encoding: {e}")))?;
        self.send("POST", path, token, Some(bytes)).await
    }

    async fn keys(&mut self) -> Result<KeysResponse, BenchError> {
        if let Some(k) = &self.keys {
            return Ok(k.clone());
        }
        let (r, _) = self.send("GET", "/v1/keys", None, None).await?;
        let k: KeysResponse = parse(&r, "GET /v1/keys")?;
        self.keys = Some(k.clone());
        Ok(k)
    }

    async fn fresh_blanks(&mut self, amounts: &[u64]) -> Result<Vec<Blank>, BenchError> {
        let keys = self.keys().await?;
        let ks = keys.keysets.first().ok_or_else(|| err("no keyset"))?;
        blanks(&ks.id, amounts)
    }

    /// Mints `sat` on-chain: quote, regtest payment, `POST /v1/mint/onchain`.
    async fn mint(&mut self, sat: u64) -> Result<(), BenchError> {
        let ask = MintQuoteOnchainRequest {
            amount: sat,
            unit: "sat".into(),
        };
        let (r, _) = self.post("/v1/mint/quote/onchain", None, &ask).await?;
        let q: MintQuoteOnchainResponse = parse(&r, "POST /v1/mint/quote/onchain")?;
        // The regtest payment only feeds the daemon's chain: a kill during it costs the
        // driver nothing, so it is simply done again on a fresh quote next time.
        let pay = match coinop_cli::regtest_pay::pay_quote_onchain(&self.client, &q.quote).await {
            Ok(p) => p,
            Err(e) => {
                if self.died_within(Duration::from_secs(5)).await {
                    self.restart().await?;
                    return Ok(());
                }
                return Err(err(format!("regtest payment: {e}")));
            }
        };
        let amounts = payment::credit::amount::split(sat);
        let blank = self.fresh_blanks(&amounts).await?;
        let body = MintOnchainRequest {
            payment: pay,
            outputs: blank.iter().map(|b| b.msg.clone()).collect(),
        };
        let (r, retried) = self.post("/v1/mint/onchain", None, &body).await?;
        if !(200..300).contains(&r.status) {
            self.finding(format!(
                "POST /v1/mint/onchain of {sat} sat (retried: {retried}) answered HTTP {}: {}",
                r.status,
                r.text()
            ));
            self.f.lost_msat += sat * 1000;
            return Ok(());
        }
        let m: MintOnchainResponse = parse(&r, "POST /v1/mint/onchain")?;
        let keys = self.keys().await?;
        let proofs = unblind_all(&keys, &m.signatures, &blank)?;
        let got: u64 = proofs.iter().map(|p| p.amount).sum();
        if got != sat {
            self.finding(format!(
                "mint of {sat} sat (retried: {retried}) signed {got} sat"
            ));
            self.f.lost_msat += sat.saturating_sub(got) * 1000;
        }
        self.wallet.extend(proofs);
        self.f.mints += 1;
        Ok(())
    }

    /// Swaps up to four of the wallet's notes for new ones of the same total.
    async fn swap(&mut self) -> Result<(), BenchError> {
        let n = self.wallet.len().min(4);
        if n == 0 {
            return Ok(());
        }
        let inputs: Vec<Proof> = self.wallet.drain(..n).collect();
        self.swap_inputs(inputs).await
    }

    async fn swap_inputs(&mut self, inputs: Vec<Proof>) -> Result<(), BenchError> {
        let total: u64 = inputs.iter().map(|p| p.amount).sum();
        // Broken down into small notes (1, 1, 2, 4, ...): the wallet then holds the 1 and 2
        // sat notes that small leases are paid with.
        let mut amounts = payment::credit::amount::split(total.saturating_sub(1));
        if total > 0 {
            amounts.push(1);
        }
        let blank = self.fresh_blanks(&amounts).await?;
        let body = SwapRequest {
            inputs,
            outputs: blank.iter().map(|b| b.msg.clone()).collect(),
        };
        let (r, retried) = self.post("/v1/swap", None, &body).await?;
        if !(200..300).contains(&r.status) {
            self.finding(format!(
                "POST /v1/swap of {total} sat (retried: {retried}) answered HTTP {}: {}",
                r.status,
                r.text()
            ));
            self.f.lost_msat += total * 1000;
            return Ok(());
        }
        let s: SwapResponse = parse(&r, "POST /v1/swap")?;
        let keys = self.keys().await?;
        let proofs = unblind_all(&keys, &s.signatures, &blank)?;
        let got: u64 = proofs.iter().map(|p| p.amount).sum();
        if got != total {
            self.finding(format!(
                "swap of {total} sat (retried: {retried}) signed {got} sat"
            ));
            self.f.lost_msat += total.saturating_sub(got) * 1000;
        }
        self.wallet.extend(proofs);
        self.f.swaps += 1;
        Ok(())
    }

    /// Takes notes worth at least `sat` from the wallet (minting when short).
    async fn take(&mut self, sat: u64) -> Result<Option<Vec<Proof>>, BenchError> {
        let have: u64 = self.wallet.iter().map(|p| p.amount).sum();
        if have < sat {
            self.mint(sat.max(256)).await?;
        }
        self.wallet.sort_by_key(|p| std::cmp::Reverse(p.amount));
        let mut picked = Vec::new();
        let mut sum = 0;
        let mut i = 0;
        while sum < sat && i < self.wallet.len() {
            if self.wallet[i].amount <= sat - sum || picked.is_empty() {
                sum += self.wallet[i].amount;
                picked.push(self.wallet.remove(i));
            } else {
                i += 1;
            }
        }
        if sum < sat {
            self.wallet.extend(picked);
            return Ok(None);
        }
        Ok(Some(picked))
    }

    async fn create(&mut self) -> Result<(), BenchError> {
        // Some leases get 1 or 2 sat, which the guest's memory eats in seconds: they pause,
        // and stop at the end of their grace unless a top-up comes first.
        let sat = [1, 2, 32, 64, 128][self.rng.below(5) as usize];
        let Some(proofs) = self.take(sat).await? else {
            return Ok(());
        };
        let paid_msat = proofs.iter().map(|p| p.amount).sum::<u64>() * 1000;
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let sc = self.sc;
        let mut body = lease_body(
            sc.daemon.vcpus,
            sc.daemon.mem_mib,
            &sc.daemon.guest.cmdline,
            PaymentBody::Credit(CreditPayment {
                proofs: proofs.clone(),
            }),
        );
        body.recovery_key = Some(hex::encode(key));
        loop {
            let (r, retried) = self.post("/v1/leases", None, &body).await?;
            let (id, token, seq) = match r.status {
                201 => {
                    let c: CreateResponse = parse(&r, "create 201")?;
                    (c.lease_id, c.token, c.token_seq)
                }
                200 => {
                    let c: RecoveredResponse = parse(&r, "create 200 (recovered)")?;
                    (c.lease.lease_id, c.token, c.token_seq)
                }
                503 if r.json().get("lease_id").is_some() => {
                    if r.json()["error"]["code"] == "host_full" {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    let c: BootFailedResponse = parse(&r, "create 503 boot_failed")?;
                    (c.lease_id, c.token, c.token_seq)
                }
                503 => {
                    // Full and nothing committed: the notes are still ours.
                    self.wallet.extend(proofs);
                    return Ok(());
                }
                s => {
                    self.finding(format!(
                        "create paid {paid_msat} msat (retried: {retried}) answered HTTP {s}: {}",
                        r.text()
                    ));
                    self.f.lost_msat += paid_msat;
                    return Ok(());
                }
            };
            let l = self.leases.entry(id).or_insert(Lease {
                token: token.clone(),
                token_seq: seq,
                paid_msat,
                refunded: false,
            });
            if seq >= l.token_seq {
                l.token = token;
                l.token_seq = seq;
            }
            self.f.creates += 1;
            return Ok(());
        }
    }

    fn live_ids(&self) -> Vec<String> {
        self.leases
            .iter()
            .filter(|(_, l)| !l.refunded)
            .map(|(id, _)| id.clone())
            .collect()
    }

    async fn topup(&mut self, id: String) -> Result<(), BenchError> {
        let sat = 1 << self.rng.range(0, 6);
        let Some(proofs) = self.take(sat).await? else {
            return Ok(());
        };
        let msat = proofs.iter().map(|p| p.amount).sum::<u64>() * 1000;
        let token = self.leases[&id].token.clone();
        let body = TopupRequest {
            payment: PaymentBody::Credit(CreditPayment {
                proofs: proofs.clone(),
            }),
        };
        let path = format!("/v1/leases/{id}/topup");
        let (r, retried) = self.post(&path, Some(&token), &body).await?;
        match r.status {
            200 => {
                if let Some(l) = self.leases.get_mut(&id) {
                    l.paid_msat += msat;
                }
                self.f.topups += 1;
            }
            // The lease stopped meanwhile (its grace ran out): refused, nothing taken. The
            // notes go back to the wallet, whose final swap proves they were not spent.
            409 if r.json()["error"]["code"] == "state_conflict" && !retried => {
                self.wallet.extend(proofs);
            }
            s => {
                self.finding(format!(
                    "top-up of lease {id} with {msat} msat (retried: {retried}) answered HTTP {s}: {}",
                    r.text()
                ));
                self.wallet.extend(proofs);
            }
        }
        Ok(())
    }

    async fn stop(&mut self, id: String) -> Result<(), BenchError> {
        let token = self.leases[&id].token.clone();
        let blank = self.fresh_blanks(&[1; 16]).await?;
        let body = StopRequest {
            outputs: Some(blank.iter().map(|b| b.msg.clone()).collect()),
        };
        let path = format!("/v1/leases/{id}/stop");
        let (r, retried) = self.post(&path, Some(&token), &body).await?;
        if r.status != 200 {
            self.finding(format!(
                "stop of lease {id} with outputs (retried: {retried}) answered HTTP {}: {}",
                r.status,
                r.text()
            ));
            return Ok(());
        }
        let s: StopResponse = parse(&r, "stop")?;
        let keys = self.keys().await?;
        let proofs = unblind_all(&keys, s.signatures.as_deref().unwrap_or(&[]), &blank)?;
        let got: u64 = proofs.iter().map(|p| p.amount).sum();
        if got * 1000 != s.refund_msat.msat() {
            self.finding(format!(
                "stop of lease {id} (retried: {retried}) refunds {} msat but signed {got} sat",
                s.refund_msat.msat()
            ));
        }
        self.wallet.extend(proofs);
        if let Some(l) = self.leases.get_mut(&id) {
            l.refunded = true;
        }
        self.f.stops += 1;
        Ok(())
    }

    /// One random step of the driver. Pauses between steps let leases live for seconds
    /// (run out, pause, be stopped at the end of their grace) rather than milliseconds.
    async fn step(&mut self) -> Result<(), BenchError> {
        let live = self.live_ids();
        let roll = self.rng.below(100);
        if live.len() < self.sc.max_live && roll < 25 {
            return self.create().await;
        }
        if !live.is_empty() && (25..35).contains(&roll) {
            let id = live[self.rng.below(live.len() as u64) as usize].clone();
            return self.topup(id).await;
        }
        if !live.is_empty() && (35..38).contains(&roll) {
            let id = live[self.rng.below(live.len() as u64) as usize].clone();
            return self.stop(id).await;
        }
        if (45..57).contains(&roll) {
            let sat = 1 << self.rng.range(6, 10);
            return self.mint(sat).await;
        }
        if (57..67).contains(&roll) {
            return self.swap().await;
        }
        let ms = self.rng.range(20, 300);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    async fn drive(&mut self) -> Result<(), BenchError> {
        self.spawn(None)?;
        if !self.wait_ready().await? {
            self.restart().await?;
        }
        let start = Instant::now();
        while start.elapsed() < self.sc.duration {
            if self.dead().is_some() {
                self.restart().await?;
            }
            self.step().await?;
            while self.restarted {
                self.restarted = false;
                self.check().await?;
            }
        }
        Ok(())
    }

    /// The operator's list of every lease.
    async fn list(&mut self) -> Result<LeaseList, BenchError> {
        let (r, _) = self.send("GET", "/v1/leases", None, None).await?;
        parse(&r, "GET /v1/leases")
    }

    /// The checks after a restart (and at the end): orphans and the books of every lease.
    async fn check(&mut self) -> Result<(), BenchError> {
        self.f.checks += 1;
        // Orphans: wait up to SETTLE for every VMM of the state dir to belong to a live
        // lease (the restarted daemon adopts or stops them within a few ticks).
        // A lease the daemon shows running or paused must have its VMM (this also shows
        // the orphan scan finds the VMMs it is looking for).
        let start = Instant::now();
        let mut bad;
        let mut missing;
        loop {
            let list = self.list().await?;
            bad = Vec::new();
            let ids: Vec<String> = list.leases.iter().map(|l| l.lease_id.clone()).collect();
            let vmms = vmms_of(self.state.path(), &ids);
            missing = list
                .leases
                .iter()
                .filter(|l| matches!(l.state, LeaseState::Running | LeaseState::PausedUnfunded))
                .filter(|l| !vmms.iter().any(|(_, id)| id.as_ref() == Some(&l.lease_id)))
                .map(|l| {
                    format!(
                        "lease {} is {:?} but has no coinop-vmm",
                        l.lease_id, l.state
                    )
                })
                .collect::<Vec<_>>();
            self.f.vmms_seen += vmms.len() as u64;
            for (pid, lease) in vmms {
                let state = lease
                    .as_ref()
                    .and_then(|id| list.leases.iter().find(|l| &l.lease_id == id))
                    .map(|l| l.state);
                if !matches!(
                    state,
                    Some(LeaseState::Running | LeaseState::PausedUnfunded | LeaseState::Booting)
                ) {
                    bad.push(format!(
                        "coinop-vmm pid {pid} of lease {lease:?} whose state is {state:?}"
                    ));
                }
            }
            if (bad.is_empty() && missing.is_empty()) || start.elapsed() > SETTLE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for b in bad {
            self.f.orphans += 1;
            self.finding(format!("orphan {SETTLE:?} after a restart: {b}"));
        }
        for m in missing {
            self.finding(format!("{SETTLE:?} after a restart: {m}"));
        }
        // Books: paid = debited + balance + refunded + residual, per lease.
        let list = self.list().await?;
        self.f.stop_reasons.clear();
        for v in &list.leases {
            let key = match v.stop_reason {
                Some(r) => format!("stopped {r:?}"),
                None => format!("{:?}", v.state),
            };
            *self.f.stop_reasons.entry(key).or_default() += 1;
        }
        let mut lost = Vec::new();
        for (id, l) in &self.leases {
            let Some(v) = list.leases.iter().find(|v| &v.lease_id == id) else {
                lost.push((
                    id.clone(),
                    l.paid_msat,
                    format!(
                        "lease {id} (paid {} msat) is not in GET /v1/leases",
                        l.paid_msat
                    ),
                ));
                continue;
            };
            let books = v.debited_msat.msat()
                + v.balance_msat.msat()
                + v.refunded_msat.map_or(0, |m| m.msat())
                + v.residual_msat.map_or(0, |m| m.msat());
            if books != l.paid_msat {
                lost.push((
                    id.clone(),
                    l.paid_msat.abs_diff(books),
                    format!(
                        "lease {id} ({:?}): driver paid {} msat, the daemon accounts for {books} \
                         (debited {}, balance {}, refunded {:?}, residual {:?})",
                        v.state,
                        l.paid_msat,
                        v.debited_msat.msat(),
                        v.balance_msat.msat(),
                        v.refunded_msat.map(|m| m.msat()),
                        v.residual_msat.map(|m| m.msat())
                    ),
                ));
            }
        }
        // A lease's difference is its latest one (it is checked again at every restart),
        // reported the first time it shows.
        for (id, msat, what) in lost {
            if !self.f.books_lost.contains_key(&id) {
                self.finding(what);
            }
            self.f.books_lost.insert(id, msat);
        }
        Ok(())
    }

    /// Stops every lease with outputs, proves every note held is still good (one swap of
    /// the whole wallet), checks once more, then ends the daemon and any VMM left.
    async fn finish(&mut self) -> Result<(), BenchError> {
        // No more kills from here on: the pending timer's generation is retired, and a
        // daemon still armed with a fault point is replaced by one without.
        self.calm = true;
        let result = async {
            if self.fault.is_some() {
                if let Some(c) = lock(&self.current).as_mut() {
                    let _ = c.child.kill();
                    let _ = c.child.wait();
                }
            }
            if self.dead().is_some() {
                self.restart().await?;
            }
            self.generation += 1;
            if let Some(c) = lock(&self.current).as_mut() {
                c.generation = self.generation;
            }
            for id in self.live_ids() {
                self.stop(id).await?;
            }
            let notes: Vec<Proof> = std::mem::take(&mut self.wallet);
            for chunk in notes.chunks(32) {
                self.swap_inputs(chunk.to_vec()).await?;
            }
            self.check().await
        }
        .await;
        if let Some(mut c) = lock(&self.current).take() {
            // SAFETY: plain syscall on our own unreaped child: SIGTERM for a clean exit.
            unsafe { libc::kill(c.child.id() as libc::pid_t, libc::SIGTERM) };
            let t0 = Instant::now();
            while c.child.try_wait().ok().flatten().is_none() && t0.elapsed() < SETTLE {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        let ids: Vec<String> = self.leases.keys().cloned().collect();
        let left = vmms_of(self.state.path(), &ids);
        for (pid, lease) in &left {
            self.f.orphans += 1;
            self.f.findings.push(format!(
                "coinop-vmm pid {pid} (lease {lease:?}) still running after every lease was stopped; killed"
            ));
            // SAFETY: plain syscall; the pid was just read from /proc as a VMM of our state dir.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        result
    }
}

fn is_sigkill(st: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    st.signal() == Some(libc::SIGKILL)
}

fn parse<T: serde::de::DeserializeOwned>(r: &Reply, what: &str) -> Result<T, BenchError> {
    r.parse().map_err(|e| BenchError::Run {
        what: what.to_string(),
        detail: format!("HTTP {}, reading the reply ({e}): {}", r.status, r.text()),
    })
}

/// The live coinop-vmm processes of `state_dir` with their lease when known: a VMM whose
/// command line or open files name a path in the directory (an unjailed VMM), or that sits
/// in the cgroup of one of `list`'s leases (a jailed one). Lease ids are random, so another
/// daemon's VMMs never match.
fn vmms_of(state_dir: &Path, ids: &[String]) -> Vec<(u32, Option<String>)> {
    let dir = format!("{}/", state_dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in procs.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "coinop-vmm" {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
        if zombie {
            continue;
        }
        let mut texts = vec![String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        )
        .replace('\0', " ")];
        for link in ["root", "cwd"] {
            if let Ok(t) = std::fs::read_link(format!("/proc/{pid}/{link}")) {
                texts.push(t.display().to_string());
            }
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.filter_map(Result::ok) {
                if let Ok(t) = std::fs::read_link(fd.path()) {
                    texts.push(t.display().to_string());
                }
            }
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let by_cgroup = ids
            .iter()
            .find(|id| {
                cgroup
                    .lines()
                    .any(|line| line.ends_with(&format!("/coinop/{id}")))
            })
            .cloned();
        let in_dir = texts.iter().any(|t| t.contains(&dir));
        if by_cgroup.is_none() && !in_dir {
            continue;
        }
        let lease = by_cgroup.or_else(|| {
            ids.iter()
                .find(|id| texts.iter().any(|t| t.contains(id.as_str())))
                .cloned()
        });
        out.push((pid, lease));
    }
    out
}
