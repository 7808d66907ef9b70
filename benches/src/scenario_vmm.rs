//! Scenario `vmm`: exec → vcpus_started → guest_ready → exit for the guest image, with each
//! peer booting the same image in alternating runs so drift hits every engine alike.
//!
//! Runs go round by round, each engine once per round, in a balanced order ([`run_order`]):
//! no engine runs twice in a row, each run's pair partner ran in the same round, and over
//! every E-1 rounds each engine runs right after each other engine exactly once, so what one
//! engine leaves behind for the next is spread over all of them. Every run starts from the
//! same quiet state: the previous child is reaped (its memory and KVM VM released by its
//! exit), its run directory removed, and then the harness sleeps `settle` before the next
//! spawn, so the kernel's deferred clean-up from one engine is not billed to the next.
//!
//! Peers boot [`VmmScenario::peer_guest`]: with the test guest, `mode=idle`, which stays up
//! after its ready line, so every peer is killed by the harness right after its peak RSS
//! was read. (Firecracker emulates the i8042, so a `mode=halt` guest's reset ends it by
//! itself, racing that read and the API's reply to InstanceStart; QEMU's microvm has no
//! i8042.) The guest runs the same code on every engine up to its ready line; the mode only
//! decides what it does after it.

use std::time::Duration;

use crate::child_run::{self, ChildRun, Driver, ReadyWatch, Watch};
use crate::engines::{Engine, GuestImage, VmShape};
use crate::error::BenchError;
use crate::firecracker_api;
use crate::report::{ratio_summary, ScenarioReport};
use crate::sample_set::SampleSet;
use crate::stats::Summary;
use crate::vmm_events;

/// The one figure every engine has, and the one ratios are taken on.
pub const READY_METRIC: &str = "spawn→ready line ms";
/// Peak RSS (VmHWM) when the guest was up: coinop's own figure in its `guest_ready`
/// event, the peers' read by the harness at the ready line.
pub const RSS_METRIC: &str = "peak RSS at ready MiB";
/// coinop's boot-timer event, the one figure that a run killed at the ready line may lack.
const GUEST_READY_METRIC: &str = "spawn→guest_ready ms";

pub struct VmmScenario {
    pub engines: Vec<Engine>,
    /// What coinop boots.
    pub guest: GuestImage,
    /// What the peers boot: the same image; with the test guest a command line whose guest
    /// stays up after its ready line (see the module doc).
    pub peer_guest: GuestImage,
    pub shapes: Vec<VmShape>,
    pub warmup: usize,
    pub runs: usize,
    pub timeout: Duration,
    /// Pause after each reaped run, before the next spawn.
    pub settle: Duration,
    /// Said in every report (e.g. that Firecracker was not run).
    pub notes: Vec<String>,
}

/// The engines' indices in the order they boot, `rounds` rounds of one run per engine: the
/// repetition of [`balanced_period`].
pub fn run_order(engines: usize, rounds: usize) -> impl Iterator<Item = usize> {
    balanced_period(engines)
        .into_iter()
        .cycle()
        .take(engines * rounds)
}

/// One period of the boot order: E-1 rounds (one with a single engine), each a permutation
/// of the engines, such that in the period repeated no engine follows itself and each
/// engine follows each other engine exactly once per period. (Rotating a fixed cycle's
/// start does not do that: within each round A still always follows the same engine.)
/// Found by a depth-first search, instant for the harness's at most four engines; should
/// none exist, the plain cycle 0..E.
fn balanced_period(engines: usize) -> Vec<usize> {
    if engines < 2 {
        return (0..engines).collect();
    }
    let mut seq = vec![0];
    let mut used = vec![false; engines * engines];
    if extend_period(engines, &mut seq, &mut used) {
        seq
    } else {
        (0..engines).collect()
    }
}

fn extend_period(engines: usize, seq: &mut Vec<usize>, used: &mut [bool]) -> bool {
    let (Some(&first), Some(&last)) = (seq.first(), seq.last()) else {
        return false;
    };
    if seq.len() == engines * (engines - 1) {
        // The period repeats: its last run is followed by its first.
        return last != first && !used[last * engines + first];
    }
    let round_start = seq.len() / engines * engines;
    for next in 0..engines {
        let pair = last * engines + next;
        if next == last || used[pair] || seq[round_start..].contains(&next) {
            continue;
        }
        used[pair] = true;
        seq.push(next);
        if extend_period(engines, seq, used) {
            return true;
        }
        seq.pop();
        used[pair] = false;
    }
    false
}

impl VmmScenario {
    pub fn run(&self) -> Result<Vec<ScenarioReport>, BenchError> {
        self.shapes.iter().map(|&s| self.run_shape(s)).collect()
    }

    fn run_shape(&self, shape: VmShape) -> Result<ScenarioReport, BenchError> {
        // Warm-up and measured runs are one sequence, so the order stays balanced across
        // the boundary too.
        let unmeasured = self.warmup * self.engines.len();
        let mut samples = SampleSet::default();
        for (n, i) in run_order(self.engines.len(), self.warmup + self.runs).enumerate() {
            let run = self.boot_once(&self.engines[i], shape)?;
            if n >= unmeasured {
                self.record(&self.engines[i], &run, &mut samples)?;
            }
        }
        self.check_guest_ready_runs(&samples)?;
        Ok(self.report(shape, samples))
    }

    fn guest_for(&self, engine: &Engine) -> &GuestImage {
        if engine.has_events() {
            &self.guest
        } else {
            &self.peer_guest
        }
    }

    /// Whether the harness kills `engine` at the ready line: peers always (their guest
    /// stays up, or they have no events to tell its end by), coinop when its guest does
    /// not end the VM by itself.
    fn kill_at_ready(&self, engine: &Engine) -> bool {
        !(engine.has_events() && self.guest.ends_itself)
    }

    /// A run killed at the ready line may lack `guest_ready` (the guest printed the line
    /// before its boot-timer write); if every one did, the figure is missing for a reason
    /// the user can fix, and the run fails saying so.
    fn check_guest_ready_runs(&self, samples: &SampleSet) -> Result<(), BenchError> {
        if !self.guest.boot_timer || self.runs == 0 {
            return Ok(());
        }
        for e in self.engines.iter().filter(|e| e.has_events()) {
            if samples.get(e.name(), GUEST_READY_METRIC).is_none() {
                return Err(BenchError::KilledBeforeGuestReady {
                    engine: e.name().into(),
                    runs: self.runs,
                    ready_line: self.guest.ready_line.clone(),
                });
            }
        }
        Ok(())
    }

    /// One boot, from a quiet state: returns once the child is reaped, its run directory
    /// removed and the settle pause over.
    fn boot_once(&self, engine: &Engine, shape: VmShape) -> Result<ChildRun, BenchError> {
        let run_dir = tempfile::tempdir().map_err(|e| BenchError::Run {
            what: engine.name().into(),
            detail: format!("creating a per-run directory: {e}"),
        })?;
        let guest = self.guest_for(engine);
        let prepared =
            engine
                .prepare(guest, shape, run_dir.path())
                .map_err(|e| BenchError::Run {
                    what: engine.name().into(),
                    detail: format!("writing its per-run files: {e}"),
                })?;
        let timeout = self.timeout;
        let driver = prepared.api.map(|(sock, vm)| -> Driver {
            Box::new(move |exited| {
                firecracker_api::drive(&sock, &vm, timeout, exited).map_err(|e| e.to_string())
            })
        });
        let kill_at_ready = self.kill_at_ready(engine);
        let watch = Watch {
            timeout,
            ready: Some(ReadyWatch {
                marker: guest.ready_line.clone(),
                foreign_log: engine.console_foreign_log(),
                kill: kill_at_ready,
            }),
        };
        let run = child_run::run_driven(
            prepared.command,
            &watch,
            engine.name(),
            engine.start_time_arg(),
            driver,
        );
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
        let count = |e: &Engine, metric: &str| {
            let n = samples.get(e.name(), metric).map_or(0, <[f64]>::len);
            format!("{} {n}/{}", e.name(), self.runs)
        };
        let counts: Vec<String> = self.engines.iter().map(|e| count(e, RSS_METRIC)).collect();
        let mut notes = self.notes.clone();
        notes.push(format!(
            "'{RSS_METRIC}' is the process's VmHWM (peak RSS from spawn to guest up): coinop's \
             is the VMM's own, read as it wrote guest_ready (its vmhwm_kib; a run killed at \
             the ready line before guest_ready: the peers' way); the peers' is read from \
             /proc/PID/status right after the console read that completed the ready line, \
             before the kill; runs with a sample: {}",
            counts.join(", ")
        ));
        if self.guest.boot_timer && !self.guest.ends_itself {
            let with: Vec<String> = self
                .engines
                .iter()
                .filter(|e| e.has_events())
                .map(|e| count(e, GUEST_READY_METRIC))
                .collect();
            notes.push(format!(
                "coinop was killed at the ready line; runs with a guest_ready event (the rest \
                 were killed before the guest's boot-timer write): {}",
                with.join(", ")
            ));
        }
        notes.push(format!(
            "engines ran in a balanced order over {} (each round every engine once, none twice \
             in a row, each right after each other one equally often), each run after the \
             previous one was reaped and a {} ms settle pause",
            self.engines
                .iter()
                .map(Engine::name)
                .collect::<Vec<_>>()
                .join(", "),
            self.settle.as_millis()
        ));
        let peers = if self.peer_guest.cmdline == self.guest.cmdline {
            String::new()
        } else {
            format!(
                ", peers' cmdline '{}' (killed at the ready line)",
                self.peer_guest.cmdline
            )
        };
        ScenarioReport {
            scenario: "vmm".into(),
            config: format!("{shape}, cmdline '{}'{peers}", self.guest.cmdline),
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
        let engine_name = engine.name().to_string();
        let diagnostics = || describe(run, log_tail.as_deref());
        if let Some(error) = &run.drive_error {
            // Firecracker ends by itself when its guest resets (it emulates the i8042): a
            // guest that printed its line and reset before the API thread wrote the reply
            // to InstanceStart closes the connection under the driver. The line and exit 0
            // prove the boot happened; anything else is the driver's failure.
            let ended_after_ready = run.ready_at_us.is_some() && run.exited_cleanly();
            if !ended_after_ready {
                return Err(BenchError::Driver {
                    engine: engine_name,
                    error: error.clone(),
                    run: diagnostics(),
                });
            }
        }
        if run.ready_at_us.is_none() {
            return Err(BenchError::NeverReady {
                engine: engine_name,
                ready_line: self.guest_for(engine).ready_line.clone(),
                run: diagnostics(),
            });
        }
        if !killed_at_ready && (run.killed || !run.exited_cleanly()) {
            return Err(BenchError::UnexpectedExit {
                engine: engine_name,
                status: run.status,
                killed: run.killed,
                run: diagnostics(),
            });
        }
        Ok(())
    }

    fn record(&self, engine: &Engine, run: &ChildRun, s: &mut SampleSet) -> Result<(), BenchError> {
        let ms = |us: u64| us as f64 / 1000.0;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let name = engine.name();
        let mut push = |metric: &str, v: Option<f64>| {
            if let Some(v) = v {
                s.push(name, metric, v);
            }
        };
        let serial = run.ready_us().map(ms);
        if !engine.has_events() {
            push(READY_METRIC, serial);
            push(RSS_METRIC, run.hwm_at_ready_kib.map(mib));
            return Ok(());
        }
        let t = vmm_events::parse(&run.stderr);
        if self.guest.boot_timer && t.guest_ready.is_none() && !run.killed {
            // Not killed by us, so the VM ran until the guest ended it: the guest never
            // wrote the boot timer. (A run killed at the ready line may simply have been
            // killed first; those are counted, see check_guest_ready_runs.)
            return Err(BenchError::NoBootTimer {
                engine: name.into(),
                run: describe(run, None),
            });
        }
        push("spawn→vm_created ms", t.vm_created.map(ms));
        push("spawn→vcpus_started ms", t.vcpus_started.map(ms));
        push(GUEST_READY_METRIC, t.guest_ready.map(ms));
        push(READY_METRIC, serial);
        if self.guest.ends_itself {
            push("spawn→exit event ms", t.exit.map(ms));
            push(
                "spawn→process reaped ms",
                Some(ms(run.reaped_at_us.saturating_sub(run.spawned_at_us))),
            );
        }
        // The VMM's own figure does not race its exit; a run killed before guest_ready has
        // the harness's read at the ready line instead (the kill came after it).
        let rss = t.guest_ready_vmhwm_kib.or(run.hwm_at_ready_kib);
        push(RSS_METRIC, rss.map(mib));
        Ok(())
    }
}

/// A run's particulars for an error message: how it ended and the last of what it said.
fn describe(run: &ChildRun, log_tail: Option<&[String]>) -> String {
    let tail = |lines: &[String]| {
        let from = lines.len().saturating_sub(5);
        lines[from..].to_vec()
    };
    let log = log_tail
        .map(|l| format!(", its log's tail {l:?}"))
        .unwrap_or_default();
    format!(
        "pid {}, {}{}, stdout tail {:?}, stderr tail {:?}{log}",
        run.pid,
        run.status,
        if run.killed {
            " (killed by the harness)"
        } else {
            ""
        },
        tail(&run.stdout),
        tail(&run.stderr),
    )
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
        for engines in 2..=5 {
            let period = engines - 1;
            let rounds = 3 * period;
            let order: Vec<usize> = run_order(engines, rounds).collect();
            assert!(
                order.windows(2).all(|w| w[0] != w[1]),
                "no engine twice in a row: {order:?}"
            );
            for round in order.chunks(engines) {
                let mut r = round.to_vec();
                r.sort_unstable();
                assert_eq!(r, (0..engines).collect::<Vec<_>>(), "each round once each");
            }
            // Over every period (E-1 rounds), each engine runs right after each other
            // engine exactly once, also across the rounds' boundaries.
            for p in 0..3 {
                let from = p * period * engines;
                let window = &order[from..=(from + period * engines).min(order.len() - 1)];
                let mut seen = vec![0; engines * engines];
                for w in window.windows(2) {
                    seen[w[0] * engines + w[1]] += 1;
                }
                if from + period * engines == order.len() {
                    // The last period: its successor is the next period's first run.
                    seen[order[order.len() - 1] * engines + order[0]] += 1;
                }
                for a in 0..engines {
                    for b in 0..engines {
                        let want = usize::from(a != b);
                        assert_eq!(
                            seen[a * engines + b],
                            want,
                            "{engines} engines: {b} after {a} in {order:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(
            run_order(1, 3).count(),
            3,
            "one engine still runs every round"
        );
        assert_eq!(run_order(3, 0).count(), 0, "no warm-up");
    }

    /// A stand-in coinop-vmm or peer: a shell script that ignores its arguments.
    fn fake_engine(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn scenario(engines: Vec<Engine>, ends_itself: bool, runs: usize) -> VmmScenario {
        let guest = GuestImage {
            kernel: "/nonexistent/kernel".into(),
            initrd: None,
            cmdline: "mode=halt".into(),
            ready_line: crate::engines::TESTGUEST_READY_LINE.into(),
            boot_timer: true,
            ends_itself,
        };
        VmmScenario {
            engines,
            peer_guest: GuestImage {
                cmdline: "mode=idle".into(),
                ends_itself: false,
                ..guest.clone()
            },
            guest,
            shapes: vec![VmShape {
                vcpus: 1,
                mem_mib: 128,
            }],
            warmup: 0,
            runs,
            timeout: Duration::from_secs(10),
            settle: Duration::ZERO,
            notes: Vec::new(),
        }
    }

    const EVENTS_TO_READY: &str = r#"echo '{"event":"vm_created","t_us":10}' >&2
echo '{"event":"vcpus_started","t_us":20,"vcpus":1}' >&2"#;

    #[test]
    fn every_coinop_run_has_the_vmms_own_peak_rss() {
        // The VMM exits right after its line and event, as coinop-vmm does after the test
        // guest's reset: the harness's own /proc read races that exit, the event does not.
        let dir = tempfile::tempdir().expect("tempdir");
        let vmm = fake_engine(
            dir.path(),
            "coinop-vmm",
            &format!(
                "{EVENTS_TO_READY}\necho 'coinop-testguest ready'\n\
                 echo '{{\"event\":\"guest_ready\",\"t_us\":30,\"vmhwm_kib\":2048}}' >&2\n\
                 echo '{{\"event\":\"exit\",\"t_us\":40,\"reason\":\"guest_reset\",\"code\":0}}' >&2"
            ),
        );
        let s = scenario(vec![Engine::Coinop { bin: vmm }], true, 5);
        let reports = s.run().expect("runs");
        let row = |metric: &str| {
            reports[0]
                .rows
                .iter()
                .find(|r| r.engine == "coinop" && r.metric == metric)
                .map(|r| r.summary)
                .unwrap_or_else(|| panic!("no {metric} row: {:?}", reports[0].rows))
        };
        let rss = row(RSS_METRIC);
        assert_eq!(rss.n, 5, "one sample per run");
        assert_eq!((rss.min, rss.max), (2.0, 2.0), "the VMM's own 2048 KiB");
        assert_eq!(row("spawn→exit event ms").n, 5);
    }

    #[test]
    fn a_coinop_run_killed_at_the_ready_line_before_guest_ready_is_recorded() {
        // --kill-at-ready with a guest that prints its line before the boot-timer write.
        let dir = tempfile::tempdir().expect("tempdir");
        let vmm = fake_engine(
            dir.path(),
            "coinop-vmm",
            &format!("{EVENTS_TO_READY}\necho 'coinop-testguest ready'\nexec sleep 20"),
        );
        let s = scenario(vec![Engine::Coinop { bin: vmm.clone() }], false, 1);
        let run = s
            .boot_once(&s.engines[0], s.shapes[0])
            .expect("a kill at the ready line is a good run");
        assert!(run.killed && run.ready_at_us.is_some());
        let mut samples = SampleSet::default();
        s.record(&s.engines[0], &run, &mut samples)
            .expect("no guest_ready is not an error in a killed run");
        assert_eq!(
            samples.get("coinop", READY_METRIC).map(<[f64]>::len),
            Some(1)
        );
        assert_eq!(samples.get("coinop", GUEST_READY_METRIC), None);
        assert_eq!(
            samples.get("coinop", RSS_METRIC).map(<[f64]>::len),
            Some(1),
            "the harness's read at the ready line, before the kill"
        );
        // Every run like that: the whole scenario says why guest_ready is missing.
        let err = s.run().expect_err("no run had guest_ready");
        assert!(
            matches!(err, BenchError::KilledBeforeGuestReady { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("killed at the ready line"),
            "{err}"
        );
    }

    #[test]
    fn a_coinop_run_that_ended_by_itself_without_guest_ready_lacks_the_boot_timer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vmm = fake_engine(
            dir.path(),
            "coinop-vmm",
            &format!("{EVENTS_TO_READY}\necho 'coinop-testguest ready'\nexit 0"),
        );
        let s = scenario(vec![Engine::Coinop { bin: vmm }], true, 1);
        let err = s.run().expect_err("no guest_ready though not killed");
        assert!(matches!(err, BenchError::NoBootTimer { .. }), "{err}");
        assert!(err.to_string().contains("port 0x3f0"), "{err}");
    }

    #[test]
    fn peers_boot_the_guest_that_stays_up_and_are_killed_after_the_rss_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A peer booted with mode=halt would end by itself (as Firecracker does).
        let qemu = fake_engine(
            dir.path(),
            "qemu",
            "case \"$*\" in *'-append mode=idle'*) echo 'coinop-testguest ready'; exec sleep 20;; \
             *) echo \"wrong cmdline: $*\"; exit 0;; esac",
        );
        let s = scenario(vec![Engine::Qemu { bin: qemu }], true, 1);
        let run = s.boot_once(&s.engines[0], s.shapes[0]).expect("boots");
        assert!(run.killed, "killed at the line: {:?}", run.stdout);
        assert!(run.hwm_at_ready_kib.is_some_and(|k| k > 0));
    }

    fn child_run(status: i32, drive_error: Option<&str>, ready: bool) -> ChildRun {
        use std::os::unix::process::ExitStatusExt;
        ChildRun {
            pid: 1234,
            spawned_at_us: 0,
            stdout: vec!["boot".into()],
            stderr: vec!["firecracker: bad flag".into()],
            ready_at_us: ready.then_some(5_000),
            hwm_at_ready_kib: None,
            reaped_at_us: 9_000,
            status: std::process::ExitStatus::from_raw(status),
            killed: false,
            drive_error: drive_error.map(str::to_string),
        }
    }

    #[test]
    fn a_driver_error_after_the_guest_ended_the_vm_is_not_a_failure() {
        let s = scenario(Vec::new(), true, 1);
        let fc = Engine::Firecracker {
            bin: "fc".into(),
            mode: crate::engines::FcMode::Api,
        };
        let closed = Some("connection closed before message completed");
        // Exit 0 after the ready line: the guest reset before the reply was written.
        s.check_outcome(&fc, &child_run(0, closed, true), true, None)
            .expect("the boot happened");
        // Exit 3 (raw wait status 3 << 8) before any line: the message says all of it.
        let err = s
            .check_outcome(
                &fc,
                &child_run(
                    3 << 8,
                    Some("Firecracker exited before its API socket"),
                    false,
                ),
                true,
                Some(vec!["log: bad kernel".into()]),
            )
            .expect_err("a failed start");
        let text = err.to_string();
        for part in [
            "exited before its API socket",
            "exit status: 3",
            "firecracker: bad flag",
            "log: bad kernel",
        ] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
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
