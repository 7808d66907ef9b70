//! Scenario `vmm`: exec → vcpus_started → guest_ready → exit for the guest image, with each
//! peer booting the same image in alternating runs so drift hits every engine alike.

use std::time::Duration;

use crate::child_run::{self, ChildRun, Deadline, Driver};
use crate::clock::monotonic_us;
use crate::engines::{Engine, GuestImage, VmShape};
use crate::error::BenchError;
use crate::firecracker_api;
use crate::report::{ratio_summary, ScenarioReport};
use crate::sample_set::SampleSet;
use crate::stats::Summary;
use crate::vmm_events;

/// The one figure every engine has, and the one ratios are taken on.
pub const READY_METRIC: &str = "spawn→ready line ms";

pub struct VmmScenario {
    pub engines: Vec<Engine>,
    pub guest: GuestImage,
    pub shapes: Vec<VmShape>,
    pub warmup: usize,
    pub runs: usize,
    pub timeout: Duration,
    /// Said in every report (e.g. that Firecracker was not run).
    pub notes: Vec<String>,
}

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
        let mut samples = SampleSet::default();
        for round in 0..self.runs {
            // Alternate who goes first so neither engine always runs on a warmer cache.
            let mut order: Vec<usize> = (0..self.engines.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let run = self.boot_once(&self.engines[i], shape)?;
                self.record(&self.engines[i], &run, &mut samples)?;
            }
        }
        Ok(self.report(shape, samples))
    }

    fn boot_once(&self, engine: &Engine, shape: VmShape) -> Result<ChildRun, BenchError> {
        let run_dir = tempfile::tempdir().map_err(|e| BenchError::Run {
            what: engine.name().into(),
            detail: format!("creating a per-run directory: {e}"),
        })?;
        let start = monotonic_us();
        let prepared = engine
            .prepare(&self.guest, shape, start, run_dir.path())
            .map_err(|e| BenchError::Run {
                what: engine.name().into(),
                detail: format!("writing its per-run files: {e}"),
            })?;
        let timeout = self.timeout;
        let driver = prepared.api.map(|(sock, vm)| -> Driver {
            Box::new(move || firecracker_api::drive(&sock, &vm, timeout).map_err(|e| e.to_string()))
        });
        let kill_at_ready = !(self.guest.ends_itself && engine.has_events());
        let deadline = Deadline {
            timeout,
            kill_after: kill_at_ready.then(|| self.guest.ready_line.clone()),
        };
        let run = child_run::run_driven(prepared.command, &deadline, engine.name(), driver)?;
        self.check_outcome(engine, &run, kill_at_ready)?;
        Ok(run)
    }

    fn report(&self, shape: VmShape, samples: SampleSet) -> ScenarioReport {
        let rows = samples.rows();
        let ratios = self.ratios(&samples);
        ScenarioReport {
            scenario: "vmm".into(),
            config: format!("{shape}, cmdline '{}'", self.guest.cmdline),
            runs: self.runs,
            warmup: self.warmup,
            rows,
            ratios,
            notes: self.notes.clone(),
        }
    }

    /// coinop/peer per run pair, on the one figure every engine has: the ready line.
    fn ratios(&self, samples: &SampleSet) -> Vec<(String, Summary)> {
        let Some(ours) = samples.get("coinop", READY_METRIC) else {
            return Vec::new();
        };
        self.engines
            .iter()
            .filter(|e| !e.has_events())
            .filter_map(|e| {
                let theirs = samples.get(e.name(), READY_METRIC)?;
                let r = ratio_summary(ours, theirs)?;
                Some((format!("coinop/{} {}", e.name(), READY_METRIC), r))
            })
            .collect()
    }

    fn check_outcome(
        &self,
        engine: &Engine,
        run: &ChildRun,
        killed_at_ready: bool,
    ) -> Result<(), BenchError> {
        let fail = |detail: String| BenchError::Run {
            what: engine.name().to_string(),
            detail,
        };
        let ready = &self.guest.ready_line;
        if run.stdout_marker_us(ready).is_none() {
            let tail: Vec<_> = run.stderr.iter().rev().take(5).map(|l| &l.text).collect();
            let out: Vec<_> = run.stdout.iter().rev().take(5).map(|l| &l.text).collect();
            return Err(fail(format!(
                "the guest never printed '{ready}' (status {}, stdout tail {out:?}, stderr tail {tail:?})",
                run.status
            )));
        }
        if !killed_at_ready && (run.killed || run.status.code() != Some(0)) {
            return Err(fail(format!(
                "expected exit 0 after the guest's reset, got {} (killed: {})",
                run.status, run.killed
            )));
        }
        Ok(())
    }

    fn record(&self, engine: &Engine, run: &ChildRun, s: &mut SampleSet) -> Result<(), BenchError> {
        let ms = |us: u64| us as f64 / 1000.0;
        let name = engine.name();
        let mut push = |metric: &str, v: Option<f64>| {
            if let Some(v) = v {
                s.push(name, metric, v);
            }
        };
        let serial = run.stdout_marker_us(&self.guest.ready_line).map(ms);
        if !engine.has_events() {
            push(READY_METRIC, serial);
            push("peak RSS MiB", run.max_rss_kib.map(|k| k as f64 / 1024.0));
            return Ok(());
        }
        let t = vmm_events::parse(&run.stderr);
        if self.guest.boot_timer && t.guest_ready.is_none() {
            return Err(BenchError::Run {
                what: engine.name().into(),
                detail: "no guest_ready event: does the guest write 123 to port 0x3f0? \
                         (--no-boot-timer for guests that don't)"
                    .into(),
            });
        }
        push("spawn→vm_created ms", t.vm_created.map(ms));
        push("spawn→vcpus_started ms", t.vcpus_started.map(ms));
        push("spawn→guest_ready ms", t.guest_ready.map(ms));
        push(READY_METRIC, serial);
        if self.guest.ends_itself {
            push("spawn→exit event ms", t.exit.map(ms));
            push(
                "spawn→process reaped ms",
                Some(ms(run.reaped_at_us.saturating_sub(run.spawned_at_us))),
            );
        }
        push("peak RSS MiB", run.max_rss_kib.map(|k| k as f64 / 1024.0));
        Ok(())
    }
}
