//! Scenario `vmm`: exec → vcpus_started → guest_ready → exit for the guest image, with each
//! peer booting the same image in alternating runs so drift hits every engine alike.
//!
//! Runs go engine by engine in a fixed cycle (A B A B ..., or A B C D A B C D ... with
//! Firecracker's two modes), so no engine runs twice in a row and each run's pair partner
//! ran right next to it. Every run starts from the same quiet state: the previous child is
//! reaped (its memory and KVM VM released by its exit), its run directory removed, and then
//! the harness sleeps `settle` before the next spawn, so the kernel's deferred clean-up
//! from one engine is not billed to the next.

use std::time::Duration;

use crate::child_run::{self, ChildRun, Driver, ReadyWatch, Watch};
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
/// VmHWM read when the ready line reached the harness, the same way for every engine.
pub const RSS_METRIC: &str = "peak RSS at ready MiB";

pub struct VmmScenario {
    pub engines: Vec<Engine>,
    pub guest: GuestImage,
    pub shapes: Vec<VmShape>,
    pub warmup: usize,
    pub runs: usize,
    pub timeout: Duration,
    /// Pause after each reaped run, before the next spawn.
    pub settle: Duration,
    /// Said in every report (e.g. that Firecracker was not run).
    pub notes: Vec<String>,
}

/// The engines' indices in the order they boot: `rounds` times through the fixed cycle.
pub fn run_order(engines: usize, rounds: usize) -> impl Iterator<Item = usize> {
    (0..rounds).flat_map(move |_| 0..engines)
}

impl VmmScenario {
    pub fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        self.shapes.iter().map(|&s| self.run_shape(s)).collect()
    }

    fn run_shape(&self, shape: VmShape) -> Result<ScenarioReport, BenchError> {
        for i in run_order(self.engines.len(), self.warmup) {
            self.boot_once(&self.engines[i], shape)?;
        }
        let mut samples = SampleSet::default();
        for i in run_order(self.engines.len(), self.runs) {
            let run = self.boot_once(&self.engines[i], shape)?;
            self.record(&self.engines[i], &run, &mut samples)?;
        }
        Ok(self.report(shape, samples))
    }

    /// One boot, from a quiet state: returns once the child is reaped, its run directory
    /// removed and the settle pause over.
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
        let watch = Watch {
            timeout,
            ready: Some(ReadyWatch {
                marker: self.guest.ready_line.clone(),
                foreign_log: engine.console_foreign_log(),
                kill: kill_at_ready,
            }),
        };
        let run = child_run::run_driven(prepared.command, &watch, engine.name(), driver);
        let outcome = run.and_then(|run| {
            let log = prepared.log_file.as_deref().map(log_tail);
            self.check_outcome(engine, &run, kill_at_ready, log)?;
            Ok(run)
        });
        drop(run_dir);
        std::thread::sleep(self.settle);
        outcome
    }

    fn report(&self, shape: VmShape, samples: SampleSet) -> ScenarioReport {
        let rows = samples.rows();
        let ratios = self.ratios(&samples);
        let counts: Vec<String> = self
            .engines
            .iter()
            .map(|e| {
                let n = samples.get(e.name(), RSS_METRIC).map_or(0, <[f64]>::len);
                format!("{} {n}/{}", e.name(), self.runs)
            })
            .collect();
        let mut notes = self.notes.clone();
        notes.push(format!(
            "'{RSS_METRIC}' is the process's VmHWM (/proc/PID/status) read right after the \
             console read that completed the ready line, before any kill: peak RSS from spawn \
             to guest up, the same way for every engine; runs with a sample: {}",
            counts.join(", ")
        ));
        notes.push(format!(
            "engines ran in a fixed cycle ({}), each run after the previous one was reaped \
             and a {} ms settle pause",
            self.engines
                .iter()
                .map(Engine::name)
                .collect::<Vec<_>>()
                .join(" → "),
            self.settle.as_millis()
        ));
        ScenarioReport {
            scenario: "vmm".into(),
            config: format!("{shape}, cmdline '{}'", self.guest.cmdline),
            runs: self.runs,
            warmup: self.warmup,
            rows,
            ratios,
            notes,
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
        log_tail: Option<Vec<String>>,
    ) -> Result<(), BenchError> {
        let fail = |detail: String| BenchError::Run {
            what: engine.name().to_string(),
            detail,
        };
        let ready = &self.guest.ready_line;
        if run.ready_at_us.is_none() {
            let tail: Vec<_> = run.stderr.iter().rev().take(5).collect();
            let out: Vec<_> = run.stdout.iter().rev().take(5).collect();
            let log = log_tail
                .map(|l| format!(", its log's tail {l:?}"))
                .unwrap_or_default();
            return Err(fail(format!(
                "the guest never printed '{ready}' (pid {}, status {}, stdout tail {out:?}, stderr tail {tail:?}{log})",
                run.pid, run.status
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
        let serial = run.ready_us().map(ms);
        let rss = run.hwm_at_ready_kib.map(|k| k as f64 / 1024.0);
        if !engine.has_events() {
            push(READY_METRIC, serial);
            push(RSS_METRIC, rss);
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
        push(RSS_METRIC, rss);
        Ok(())
    }
}

/// The last lines of an engine's own log file, for a failed run's message.
fn log_tail(path: &std::path::Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(5);
            lines[from..].iter().map(|l| l.to_string()).collect()
        }
        Err(e) => vec![format!("({} unreadable: {e})", path.display())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_alternate_run_by_run() {
        let order: Vec<usize> = run_order(2, 4).collect();
        assert_eq!(order, [0, 1, 0, 1, 0, 1, 0, 1]);
        let four: Vec<usize> = run_order(4, 3).collect();
        assert!(
            four.windows(2).all(|w| w[0] != w[1]),
            "no engine twice in a row: {four:?}"
        );
        for e in 0..4 {
            assert_eq!(four.iter().filter(|&&i| i == e).count(), 3, "engine {e}");
        }
        assert_eq!(
            run_order(1, 3).count(),
            3,
            "one engine still runs every round"
        );
        assert_eq!(run_order(3, 0).count(), 0, "no warm-up");
    }

    #[test]
    fn a_missing_log_is_said_not_hidden() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("firecracker.log");
        let tail = log_tail(&log);
        assert!(tail[0].contains("unreadable"), "{tail:?}");
        std::fs::write(
            &log,
            (1..=8).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .expect("write");
        assert_eq!(
            log_tail(&log),
            ["line 4", "line 5", "line 6", "line 7", "line 8"]
        );
    }
}
