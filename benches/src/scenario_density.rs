//! Scenario `density`: start guests one after another until coinopd answers 503 (host
//! full), then read the resident memory of every VMM process and of the daemon, and the
//! daemon's CPU time per metering tick with every guest live.

use crate::credit_wallet;
use crate::daemon_proc::{lease_body, read_ok, DaemonSpec};
use crate::error::BenchError;
use crate::lease_request;
use crate::proc_stats;
use crate::report::ScenarioReport;
use crate::sample_set::SampleSet;

pub struct DensityScenario {
    pub daemon: DaemonSpec,
    /// Guests the capacity is sized for.
    pub guests: usize,
    pub runs: usize,
    pub warmup: usize,
    /// How long coinopd's CPU time is counted at capacity (its tick loop reading and
    /// debiting every guest).
    pub cpu_window: std::time::Duration,
    pub notes: Vec<String>,
}

const COL: &str = "coinop";

impl DensityScenario {
    /// coinopd's CPU time over the window divided by the ticks in it (API idle: the tick
    /// loop is all it does).
    async fn cpu_per_tick_ms(&self, d: &crate::daemon_proc::Daemon) -> Option<f64> {
        let t0 = std::time::Instant::now();
        let c0 = proc_stats::cpu_ms(d.pid())?;
        tokio::time::sleep(self.cpu_window).await;
        let c1 = proc_stats::cpu_ms(d.pid())?;
        let ticks = t0.elapsed().as_secs_f64() * 1e3 / self.daemon.tick_ms as f64;
        (ticks >= 1.0).then(|| (c1 - c0) / ticks)
    }

    pub async fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        let mut d = self.daemon.start().await?;
        let mut s = SampleSet::default();
        for round in 0..self.warmup + self.runs {
            let keep = round >= self.warmup;
            // None if coinopd's status could not be read: no sample, rather than a fake 0.
            let idle = proc_stats::rss_kib(d.pid());
            // One more payment than fits: the extra request must be refused.
            let mut payments = credit_wallet::credit_payments(&d, self.guests + 1, 64).await?;
            let mut started = 0usize;
            let refused = loop {
                let Some(p) = payments.pop() else {
                    break None;
                };
                let body = lease_body(
                    self.daemon.vcpus,
                    self.daemon.mem_mib,
                    &self.daemon.guest.cmdline,
                    p,
                );
                let t0 = std::time::Instant::now();
                let r = d.post("/v1/leases", None, &body).await?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                match r.status {
                    201 => {
                        d.track(&read_ok(&r, "POST /v1/leases")?);
                        if keep {
                            s.push(COL, lease_request::REPLY_METRIC, ms);
                        }
                        started += 1;
                    }
                    503 => break Some(started),
                    other => {
                        return Err(BenchError::Run {
                            what: "density".into(),
                            detail: format!(
                                "lease {} answered HTTP {other}: {}",
                                started + 1,
                                r.text()
                            ),
                        })
                    }
                }
            };
            if refused != Some(self.guests) {
                return Err(BenchError::Run {
                    what: "density".into(),
                    detail: format!(
                        "capacity for {} guests, but {started} started before {}",
                        self.guests,
                        if refused.is_some() {
                            "a 503"
                        } else {
                            "the payments ran out"
                        }
                    ),
                });
            }
            let vmms = proc_stats::children_named(d.pid(), "coinop-vmm");
            let rss: Vec<u64> = vmms
                .iter()
                .filter_map(|&p| proc_stats::rss_kib(p))
                .collect();
            if keep {
                let mib = |k: u64| k as f64 / 1024.0;
                s.push(COL, "guests running at capacity", started as f64);
                s.push(COL, "VMM processes found", vmms.len() as f64);
                for &k in &rss {
                    s.push(COL, "RSS per VMM MiB", mib(k));
                }
                s.push(COL, "RSS all VMMs MiB", mib(rss.iter().sum()));
                if let Some(idle) = idle {
                    s.push(COL, "coinopd RSS idle MiB", mib(idle));
                }
                if let Some(full) = proc_stats::rss_kib(d.pid()) {
                    s.push(COL, "coinopd RSS at capacity MiB", mib(full));
                }
                if let Some(ms) = self.cpu_per_tick_ms(&d).await {
                    s.push(COL, "coinopd CPU per tick at capacity ms", ms);
                }
            }
            d.stop_all().await?;
        }
        d.shutdown().await?;
        Ok(vec![ScenarioReport {
            scenario: "density".into(),
            config: format!(
                "capacity {} guests of {} vCPU {} MiB, cmdline '{}', tick {} ms, CPU counted over {:?}",
                self.guests,
                self.daemon.vcpus,
                self.daemon.mem_mib,
                self.daemon.guest.cmdline,
                self.daemon.tick_ms,
                self.cpu_window
            ),
            runs: self.runs,
            warmup: self.warmup,
            rows: s.rows(),
            ratios: Vec::new(),
            notes: self.notes.clone(),
        }])
    }
}
