//! Scenario `lease`: request arrival → guest_ready through coinopd, paid with credit and
//! with an on-chain proof in alternating runs, with the stage breakdown from the reply.
//! Payments are prepared before the clock starts: the figure is what a tenant holding a
//! payment waits for.

use crate::credit_wallet;
use crate::daemon_proc::{lease_body, DaemonSpec};
use crate::error::BenchError;
use crate::lease_request;
use crate::report::{ratio_summary, ScenarioReport};
use crate::sample_set::SampleSet;

pub struct LeaseScenario {
    pub daemon: DaemonSpec,
    pub runs: usize,
    pub warmup: usize,
    pub notes: Vec<String>,
}

const KINDS: [&str; 2] = ["credit", "onchain"];

impl LeaseScenario {
    pub async fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        let mut d = self.daemon.start().await?;
        let mut s = SampleSet::default();
        for round in 0..self.warmup + self.runs {
            let mut kinds = KINDS;
            if round % 2 == 1 {
                kinds.reverse();
            }
            for kind in kinds {
                let payment = match kind {
                    "credit" => credit_wallet::credit_payments(&d, 1, 64).await?.remove(0),
                    _ => {
                        credit_wallet::onchain_payment(
                            &d,
                            self.daemon.vcpus,
                            self.daemon.mem_mib,
                            60,
                        )
                        .await?
                    }
                };
                let body = lease_body(
                    self.daemon.vcpus,
                    self.daemon.mem_mib,
                    &self.daemon.guest.cmdline,
                    payment,
                );
                let created = lease_request::create(&d.client, &body).await?;
                d.track(&created.reply);
                if round >= self.warmup {
                    lease_request::record(&mut s, kind, &created);
                }
                d.stop_all().await?;
            }
        }
        d.shutdown().await?;
        let metric = lease_request::REPLY_METRIC;
        let ratios = match (s.get("credit", metric), s.get("onchain", metric)) {
            (Some(c), Some(o)) => ratio_summary(c, o)
                .map(|r| vec![(format!("credit/onchain {metric}"), r)])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(vec![ScenarioReport {
            scenario: "lease".into(),
            config: format!(
                "{} vCPU {} MiB through coinopd, cmdline '{}'",
                self.daemon.vcpus, self.daemon.mem_mib, self.daemon.guest.cmdline
            ),
            runs: self.runs,
            warmup: self.warmup,
            rows: s.rows(),
            ratios,
            notes: self.notes.clone(),
        }])
    }
}
