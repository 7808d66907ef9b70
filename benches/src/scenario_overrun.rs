//! Scenario `overrun`: how far past zero a lease's balance goes before its guest is paused
//! (issue #6: "overrun past zero ≤ one tick of usage"). A spinning guest is paid a small
//! balance; the harness polls its VMM's cumulative usage on the control socket (as the
//! scheduler reads it) every few ms until coinopd has paused it, then finds the instant
//! the usage's cost reached the payment (interpolated between two polls) and the instant
//! the vCPU time stopped growing (the pause). Past zero: the guest's usage after the
//! first instant (vCPU µs and msat at coinopd's prices) and the time between the two.
//! Next to it, what the ledger recorded as used but could not debit (the exhausting
//! tick's uncovered part) and one tick of full-rate usage, the contract's bound.

use std::path::Path;
use std::time::{Duration, Instant};

use coinop_proto::replies::{CreateResponse, HostView};
use coinop_proto::{LeaseState, LeaseView};
use payment::metering::{self, Prices, UsageDelta};
use vmm_protocol::client as vmm_control;

use crate::credit_wallet;
use crate::daemon_proc::{lease_body, read_ok, Daemon, DaemonSpec};
use crate::error::BenchError;
use crate::report::ScenarioReport;
use crate::sample_set::SampleSet;

pub struct OverrunScenario {
    pub daemon: DaemonSpec,
    /// The lease's payment, sat (a power of two: one credit proof).
    pub balance_sat: u64,
    pub runs: usize,
    pub warmup: usize,
    pub notes: Vec<String>,
}

const COL: &str = "coinop";
/// How often the harness reads the VMM's usage.
const POLL: Duration = Duration::from_millis(5);
/// A guest not paused within this long after its payment ran out is a failure.
const PAUSE_LIMIT: Duration = Duration::from_secs(60);

fn err(detail: impl std::fmt::Display) -> BenchError {
    BenchError::Run {
        what: "overrun".into(),
        detail: detail.to_string(),
    }
}

/// One reading of the VMM's counters.
#[derive(Clone, Copy, Debug)]
struct Reading {
    uptime_us: u64,
    vcpu_us: u64,
}

/// What one run measured.
#[derive(Debug)]
struct Overrun {
    vcpu_us: u64,
    msat: u64,
    zero_to_pause_us: u64,
    ledger_unpaid_msat: u64,
}

/// Exact cost of a guest's whole usage so far, whole msat (what the ledger debits).
fn cost_msat(prices: Prices, mem_mib: u64, r: Reading) -> u64 {
    let usage = UsageDelta {
        vcpu_us: r.vcpu_us,
        mem_mib,
        wall_us: r.uptime_us,
    };
    metering::debit(prices, usage, 0, u64::MAX).msat
}

/// The reading at which the cost reached `paid`, interpolated between the last reading
/// below it and the first at or above it (usage grows about linearly over 5 ms).
fn zero_crossing(
    readings: &[Reading],
    paid: u64,
    cost: impl Fn(Reading) -> u64,
) -> Option<Reading> {
    let i = readings.iter().position(|r| cost(*r) >= paid)?;
    let Some(before) = i.checked_sub(1).map(|j| readings[j]) else {
        return Some(readings[i]);
    };
    let after = readings[i];
    let (c0, c1) = (cost(before) as f64, cost(after) as f64);
    let f = if c1 > c0 {
        ((paid as f64 - c0) / (c1 - c0)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let lerp = |a: u64, b: u64| a + ((b.saturating_sub(a)) as f64 * f) as u64;
    Some(Reading {
        uptime_us: lerp(before.uptime_us, after.uptime_us),
        vcpu_us: lerp(before.vcpu_us, after.vcpu_us),
    })
}

/// The first reading whose vCPU time had reached its final value: the pause (to one poll).
fn pause_reading(readings: &[Reading]) -> Option<Reading> {
    let last = readings.last()?.vcpu_us;
    readings.iter().copied().find(|r| r.vcpu_us >= last)
}

impl OverrunScenario {
    pub async fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        let mut d = self.daemon.start().await?;
        let prices = host_prices(&d).await?;
        let mut s = SampleSet::default();
        for round in 0..self.warmup + self.runs {
            let o = self.one(&mut d, prices).await?;
            if round >= self.warmup {
                s.push(COL, "overrun past zero vCPU µs", o.vcpu_us as f64);
                s.push(COL, "overrun past zero msat", o.msat as f64);
                s.push(
                    COL,
                    "balance zero → guest paused ms",
                    o.zero_to_pause_us as f64 / 1e3,
                );
                s.push(
                    COL,
                    "ledger: used but not debited msat",
                    o.ledger_unpaid_msat as f64,
                );
            }
            d.stop_all().await?;
        }
        d.shutdown().await?;
        let tick_msat =
            metering::full_rate_msat(prices, u64::from(self.daemon.vcpus), self.daemon.mem_mib, 1)
                as f64
                * self.daemon.tick_ms as f64
                / 1e3;
        s.push(COL, "one tick of full-rate usage msat", tick_msat);
        Ok(vec![ScenarioReport {
            scenario: "overrun".into(),
            config: format!(
                "{} sat on {} vCPU {} MiB, cmdline '{}', tick {} ms, prices {} msat/vCPU·s {} \
                 msat/GiB·s",
                self.balance_sat,
                self.daemon.vcpus,
                self.daemon.mem_mib,
                self.daemon.guest.cmdline,
                self.daemon.tick_ms,
                prices.vcpu_msat_per_s,
                prices.gib_msat_per_s
            ),
            runs: self.runs,
            warmup: self.warmup,
            rows: s.rows(),
            ratios: Vec::new(),
            notes: self.notes.clone(),
        }])
    }

    /// One lease from payment to pause.
    async fn one(&self, d: &mut Daemon, prices: Prices) -> Result<Overrun, BenchError> {
        let payment = credit_wallet::credit_payments(d, 1, self.balance_sat)
            .await?
            .remove(0);
        let body = lease_body(
            self.daemon.vcpus,
            self.daemon.mem_mib,
            &self.daemon.guest.cmdline,
            payment,
        );
        let r = d.post("/v1/leases", None, &body).await?;
        if r.status != 201 {
            return Err(err(format!(
                "create answered HTTP {}: {}",
                r.status,
                r.text()
            )));
        }
        let created: CreateResponse = read_ok(&r, "POST /v1/leases")?;
        d.track(&created);
        let (id, token) = (created.lease_id.as_str(), created.token.as_str());
        let paid = created.balance_msat.msat();
        let control = d.state_dir().join("run").join(format!("{id}.sock"));
        let readings = poll_until_paused(d, id, token, &control).await?;
        let cost = |r: Reading| cost_msat(prices, self.daemon.mem_mib, r);
        let zero = zero_crossing(&readings, paid, cost)
            .ok_or_else(|| err("paused before its usage cost the payment"))?;
        let pause = pause_reading(&readings).ok_or_else(|| err("no readings"))?;
        let shown = show_lease(d, id, token).await?;
        // The ledger's totals: vCPU µs and MiB·µs (priced as 1 MiB for that many µs).
        let ledger_used = UsageDelta {
            vcpu_us: shown.used.vcpu_us,
            mem_mib: 1,
            wall_us: shown.used.mem_mib_us,
        };
        let billed = metering::debit(prices, ledger_used, 0, u64::MAX).msat;
        let debited = shown.debited_msat.msat();
        Ok(Overrun {
            vcpu_us: pause.vcpu_us.saturating_sub(zero.vcpu_us),
            msat: cost(pause).saturating_sub(paid),
            zero_to_pause_us: pause.uptime_us.saturating_sub(zero.uptime_us),
            ledger_unpaid_msat: billed.saturating_sub(debited),
        })
    }
}

/// Reads the VMM's usage every [`POLL`] until coinopd reports the lease paused and two
/// readings after that agree on the vCPU time (the pause has taken effect).
async fn poll_until_paused(
    d: &Daemon,
    id: &str,
    token: &str,
    control: &Path,
) -> Result<Vec<Reading>, BenchError> {
    let start = Instant::now();
    let mut readings = Vec::new();
    let mut paused_seen = false;
    let mut last_state_check = Instant::now();
    loop {
        match vmm_control::usage(control).await {
            Ok(u) => readings.push(Reading {
                uptime_us: u.uptime_us,
                vcpu_us: u.vcpu_total_us,
            }),
            // Paused, then stopped at the end of its grace (which is never longer than
            // the lease ran, so a short lease's is short) before a third reading: its VMM
            // is gone, and the readings so far are all there are.
            Err(_) if paused_seen && !readings.is_empty() => return Ok(readings),
            Err(e) => return Err(err(format!("usage of lease {id}: {e}"))),
        }
        if paused_seen {
            let n = readings.len();
            if n >= 3 && readings[n - 1].vcpu_us == readings[n - 3].vcpu_us {
                return Ok(readings);
            }
        } else if last_state_check.elapsed() >= Duration::from_millis(20) {
            last_state_check = Instant::now();
            // Stopped counts too: pause and grace may both fall between two looks.
            paused_seen = matches!(
                show_lease(d, id, token).await?.state,
                LeaseState::PausedUnfunded | LeaseState::Stopped
            );
        }
        if start.elapsed() > PAUSE_LIMIT {
            return Err(err(format!("lease {id} not paused within {PAUSE_LIMIT:?}")));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /v1/leases/{id}`.
async fn show_lease(d: &Daemon, id: &str, token: &str) -> Result<LeaseView, BenchError> {
    let r = d.get(&format!("/v1/leases/{id}"), Some(token)).await?;
    read_ok(&r, "GET /v1/leases/{id}")
}

async fn host_prices(d: &Daemon) -> Result<Prices, BenchError> {
    let h: HostView = read_ok(&d.get("/v1/host", None).await?, "GET /v1/host")?;
    Ok(Prices {
        vcpu_msat_per_s: h.prices.vcpu_msat_per_s,
        gib_msat_per_s: h.prices.gib_msat_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(uptime_us: u64, vcpu_us: u64) -> Reading {
        Reading { uptime_us, vcpu_us }
    }

    #[test]
    fn the_zero_crossing_is_interpolated_between_two_readings() {
        // Cost = vCPU µs here: the payment of 150 is reached halfway from 100 to 200.
        let rs = [r(1000, 100), r(2000, 200), r(3000, 300)];
        let z = zero_crossing(&rs, 150, |x| x.vcpu_us).expect("crossed");
        assert_eq!((z.uptime_us, z.vcpu_us), (1500, 150));
        assert!(zero_crossing(&rs, 1000, |x| x.vcpu_us).is_none());
        let first = zero_crossing(&rs, 50, |x| x.vcpu_us).expect("at once");
        assert_eq!(first.vcpu_us, 100);
    }

    #[test]
    fn the_pause_is_the_first_reading_at_the_final_vcpu_time() {
        let rs = [r(1, 10), r(2, 20), r(3, 25), r(4, 25), r(5, 25)];
        assert_eq!(pause_reading(&rs).expect("some").uptime_us, 3);
        assert!(pause_reading(&[]).is_none());
    }

    #[test]
    fn cost_matches_the_daemon_prices() {
        let p = Prices {
            vcpu_msat_per_s: 1000,
            gib_msat_per_s: 2000,
        };
        // 1 s of one vCPU and 512 MiB for 1 s: 1000 + 1000 msat.
        assert_eq!(cost_msat(p, 512, r(1_000_000, 1_000_000)), 2000);
    }
}
