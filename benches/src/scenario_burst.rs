//! Scenario `burst`: K lease requests sent at once (each on its own connection), paid with
//! credit minted beforehand; per-request latency and the burst's throughput. The daemon's
//! capacity is the largest K times the lease shape, so no request is turned away.

use std::time::Instant;

use coinop_cli::client::Client;

use crate::credit_wallet;
use crate::daemon_proc::{lease_body, Daemon, DaemonSpec};
use crate::error::BenchError;
use crate::lease_request::{self, Created};
use crate::report::ScenarioReport;
use crate::sample_set::SampleSet;

pub struct BurstScenario {
    pub daemon: DaemonSpec,
    pub sizes: Vec<usize>,
    pub runs: usize,
    pub warmup: usize,
    pub notes: Vec<String>,
}

impl BurstScenario {
    pub async fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        let mut d = self.daemon.start().await?;
        let mut reports = Vec::new();
        for &k in &self.sizes {
            let column = format!("K={k}");
            let mut s = SampleSet::default();
            for round in 0..self.warmup + self.runs {
                let (wall_ms, created) = self.burst(&d, k).await?;
                for c in &created {
                    d.track(&c.reply);
                }
                if round >= self.warmup {
                    for c in &created {
                        lease_request::record(&mut s, &column, c);
                    }
                    s.push(&column, "burst wall (first sent→last reply) ms", wall_ms);
                    s.push(&column, "leases/s", k as f64 / (wall_ms / 1e3));
                }
                d.stop_all().await?;
            }
            reports.push(ScenarioReport {
                scenario: "burst".into(),
                config: format!(
                    "K={k} concurrent leases of {} vCPU {} MiB, cmdline '{}'",
                    self.daemon.vcpus, self.daemon.mem_mib, self.daemon.guest.cmdline
                ),
                runs: self.runs,
                warmup: self.warmup,
                rows: s.rows(),
                ratios: Vec::new(),
                notes: self.notes.clone(),
            });
        }
        d.shutdown().await?;
        Ok(reports)
    }

    async fn burst(&self, d: &Daemon, k: usize) -> Result<(f64, Vec<Created>), BenchError> {
        let payments = credit_wallet::credit_payments(d, k, 64).await?;
        let cmdline = &self.daemon.guest.cmdline;
        let bodies: Vec<_> = payments
            .into_iter()
            .map(|p| lease_body(self.daemon.vcpus, self.daemon.mem_mib, cmdline, p))
            .collect();
        let mut set = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for body in bodies {
            let client = Client::new(&d.socket);
            set.spawn(async move { lease_request::create(&client, &body).await });
        }
        let mut created = Vec::with_capacity(k);
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(c)) => created.push(c),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => {
                    first_err = first_err.or(Some(BenchError::Run {
                        what: "burst request task".into(),
                        detail: e.to_string(),
                    }))
                }
            }
        }
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
        if let Some(e) = first_err {
            // Stop what did start before reporting the failure.
            for c in &created {
                // Best effort: the burst's own error is the one to report.
                let _ = d.stop(&c.reply.lease_id, &c.reply.token).await;
            }
            return Err(e);
        }
        Ok((wall_ms, created))
    }
}
