//! Scenario `density`: start guests one after another until coinopd answers 503 (host
//! full), then read the resident memory of every VMM process and of the daemon.

use crate::credit_wallet;
use crate::daemon_proc::{lease_body, DaemonSpec};
use crate::error::BenchError;
use crate::lease_request;
use crate::proc_stats;
use crate::report::ScenarioReport;
use crate::sample_set::SampleSet;

pub struct DensityScenario {
    pub daemon: DaemonSpec,
    /// Guests the capacity is sized for.
    pub guests: usize,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub runs: usize,
    pub warmup: usize,
    pub notes: Vec<String>,
}

const COL: &str = "coinop";

impl DensityScenario {
    pub async fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        let mut d = self.daemon.start().await?;
        let mut s = SampleSet::default();
        for round in 0..self.warmup + self.runs {
            let keep = round >= self.warmup;
            let idle = proc_stats::rss_kib(d.pid()).unwrap_or(0);
            // One more payment than fits: the extra request must be refused.
            let mut payments = credit_wallet::credit_payments(&d, self.guests + 1, 64).await?;
            let mut started = 0usize;
            let refused = loop {
                let Some(p) = payments.pop() else {
                    break None;
                };
                let body = lease_body(self.vcpus, self.mem_mib, &self.daemon.guest.cmdline, p);
                let t0 = std::time::Instant::now();
                let r = d.call("POST", "/v1/leases", None, Some(body)).await?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                match r.status {
                    201 => {
                        d.track(&r.json());
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
                s.push(COL, "coinopd RSS idle MiB", mib(idle));
                if let Some(full) = proc_stats::rss_kib(d.pid()) {
                    s.push(COL, "coinopd RSS at capacity MiB", mib(full));
                }
            }
            d.stop_all().await?;
        }
        d.shutdown().await?;
        Ok(vec![ScenarioReport {
            scenario: "density".into(),
            config: format!(
                "capacity {} guests of {} vCPU {} MiB, cmdline '{}'",
                self.guests, self.vcpus, self.mem_mib, self.daemon.guest.cmdline
            ),
            runs: self.runs,
            warmup: self.warmup,
            rows: s.rows(),
            ratios: Vec::new(),
            notes: self.notes.clone(),
        }])
    }
}
