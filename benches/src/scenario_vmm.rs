//! Scenario `vmm`: exec → vcpus_started → guest_ready → exit for the test guest, with each
//! peer booting the same image in alternating runs so drift hits every engine alike.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::child_run::{self, ChildRun, Deadline};
use crate::clock::monotonic_us;
use crate::engines::{Engine, GuestImage, VmShape, READY_LINE};
use crate::error::BenchError;
use crate::report::{ratio_summary, MetricRow, ScenarioReport};
use crate::stats::Summary;
use crate::vmm_events;

pub struct VmmScenario {
    pub engines: Vec<Engine>,
    pub guest: GuestImage,
    pub shapes: Vec<VmShape>,
    pub warmup: usize,
    pub runs: usize,
}

/// Samples of one engine on one shape, in ms (times) or MiB (memory), keyed by metric name.
type Samples = BTreeMap<&'static str, Vec<f64>>;

impl VmmScenario {
    pub fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        self.shapes.iter().map(|&s| self.run_shape(s)).collect()
    }

    fn run_shape(&self, shape: VmShape) -> Result<ScenarioReport, BenchError> {
        for _ in 0..self.warmup {
            for engine in &self.engines {
                self.boot_once(engine, shape)?;
            }
        }
        let mut samples: Vec<Samples> = vec![Samples::new(); self.engines.len()];
        for round in 0..self.runs {
            // Alternate who goes first so neither engine always runs on a warmer cache.
            let mut order: Vec<usize> = (0..self.engines.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let run = self.boot_once(&self.engines[i], shape)?;
                record(&self.engines[i], &run, &mut samples[i])?;
            }
        }
        Ok(self.report(shape, samples))
    }

    fn boot_once(&self, engine: &Engine, shape: VmShape) -> Result<ChildRun, BenchError> {
        let start = monotonic_us();
        let cmd = engine.command(&self.guest, shape, start);
        let deadline = Deadline {
            timeout: Duration::from_secs(30),
            kill_after: (!engine.guest_ends_process()).then(|| READY_LINE.to_string()),
        };
        let run = child_run::run(cmd, &deadline, engine.name())?;
        check_outcome(engine, &run)?;
        Ok(run)
    }

    fn report(&self, shape: VmShape, samples: Vec<Samples>) -> ScenarioReport {
        let mut rows = Vec::new();
        for (engine, s) in self.engines.iter().zip(&samples) {
            for (metric, values) in s {
                if let Some(summary) = Summary::of(values) {
                    rows.push(MetricRow::new(engine.name(), metric, summary));
                }
            }
        }
        let ratios = self.ratios(&samples);
        ScenarioReport {
            scenario: "vmm".into(),
            config: format!("{shape}, cmdline '{}'", self.guest.cmdline),
            runs: self.runs,
            warmup: self.warmup,
            rows,
            ratios,
        }
    }

    /// coinop/peer per run pair, on the one figure every engine has: the first serial line.
    fn ratios(&self, samples: &[Samples]) -> Vec<(String, Summary)> {
        let metric = "spawn→first serial line ms";
        let Some(ours) = samples.first().and_then(|s| s.get(metric)) else {
            return Vec::new();
        };
        self.engines
            .iter()
            .zip(samples)
            .skip(1)
            .filter_map(|(e, s)| {
                let theirs = s.get(metric)?;
                let r = ratio_summary(ours, theirs)?;
                Some((format!("coinop/{} {}", e.name(), metric), r))
            })
            .collect()
    }
}

fn check_outcome(engine: &Engine, run: &ChildRun) -> Result<(), BenchError> {
    let fail = |detail: String| BenchError::Run {
        what: engine.name().to_string(),
        detail,
    };
    if run.stdout_marker_us(READY_LINE).is_none() {
        let tail: Vec<_> = run.stderr.iter().rev().take(5).map(|l| &l.text).collect();
        return Err(fail(format!(
            "the guest never printed '{READY_LINE}' (status {}, stderr tail {tail:?})",
            run.status
        )));
    }
    if engine.guest_ends_process() && (run.killed || run.status.code() != Some(0)) {
        return Err(fail(format!(
            "expected exit 0 after the guest's reset, got {} (killed: {})",
            run.status, run.killed
        )));
    }
    Ok(())
}

fn record(engine: &Engine, run: &ChildRun, s: &mut Samples) -> Result<(), BenchError> {
    let ms = |us: u64| us as f64 / 1000.0;
    let serial = run.stdout_marker_us(READY_LINE).map(ms);
    push(s, "spawn→first serial line ms", serial);
    push(s, "peak RSS MiB", Some(run.max_rss_kib as f64 / 1024.0));
    if !engine.guest_ends_process() {
        return Ok(());
    }
    let t = vmm_events::parse(&run.stderr);
    if t.guest_ready.is_none() {
        return Err(BenchError::Run {
            what: engine.name().into(),
            detail: "no guest_ready event: is the boot-timer port wired?".into(),
        });
    }
    push(s, "spawn→vm_created ms", t.vm_created.map(ms));
    push(s, "spawn→vcpus_started ms", t.vcpus_started.map(ms));
    push(s, "spawn→guest_ready ms", t.guest_ready.map(ms));
    push(s, "spawn→exit event ms", t.exit.map(ms));
    push(
        s,
        "spawn→process reaped ms",
        Some(ms(run.reaped_at_us.saturating_sub(run.spawned_at_us))),
    );
    Ok(())
}

fn push(s: &mut Samples, metric: &'static str, v: Option<f64>) {
    if let Some(v) = v {
        s.entry(metric).or_default().push(v);
    }
}
