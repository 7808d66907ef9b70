//! `coinop-bench`: coinop's boot-latency and throughput harness. Each scenario runs N times
//! after warm-up and prints min / median / p95 / max, with JSON and an SVG plot for the
//! record. Scenarios: `vmm` (exec → vcpus_started → guest_ready → exit, with QEMU and,
//! when given, Firecracker booting the same image run by run in turn), `lease` (request →
//! guest_ready through coinopd, credit and on-chain), `burst` (K concurrent leases),
//! `density` (guests until capacity: RSS, coinopd's CPU per tick), `overrun` (how far past
//! zero a spinning guest's balance goes before the pause) and `payment` (the payment
//! crate's rates).

mod child_run;
mod clock;
mod console_scan;
mod credit_wallet;
mod daemon_proc;
mod engines;
mod error;
mod firecracker_api;
mod lease_request;
mod proc_stats;
mod report;
mod sample_set;
mod scenario_burst;
mod scenario_density;
mod scenario_lease;
mod scenario_overrun;
mod scenario_payment;
mod scenario_restore;
mod scenario_soak;
mod scenario_vmm;
mod stats;
mod svg_plot;
mod vmm_events;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use daemon_proc::DaemonSpec;
use engines::{Engine, FcMode, GuestImage, VmShape, TESTGUEST_READY_LINE};
use error::BenchError;
use report::ScenarioReport;

#[derive(Parser)]
#[command(
    name = "coinop-bench",
    about = "coinop boot-latency and throughput harness"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Write every figure as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write a plot (SVG) here.
    #[arg(long, global = true)]
    svg: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Boot the guest image N times per shape and engine (coinop, QEMU, Firecracker).
    Vmm(VmmArgs),
    /// Lease requests through coinopd, paid with credit and on-chain: arrival → guest_ready.
    Lease(LeaseArgs),
    /// K concurrent lease requests (K = 1, 8, 32 by default): latency and throughput.
    Burst(BurstArgs),
    /// Guests until the daemon's capacity is full: RSS per VMM, total, and coinopd's.
    Density(DensityArgs),
    /// The payment crate in-process: proof verification, redemption, swap rates.
    Payment(PaymentArgs),
    /// Test guest on host KVM: spawn → guest_ready, cold boot vs restore from a snapshot.
    Restore(scenario_restore::RestoreArgs),
    /// A spinning guest with a small balance: how far past zero it runs before the pause.
    Overrun(OverrunArgs),
    /// coinopd SIGKILLed at random points while leases are created, topped up, minted for
    /// and stopped: checks no orphan VMM and no lost msat after every restart.
    Soak(SoakArgs),
}

/// The guest every engine boots: the test guest by default, or a Linux image.
#[derive(clap::Args, Clone)]
struct GuestArgs {
    /// The guest kernel (the test guest's PVH ELF, or a Linux vmlinux).
    #[arg(long, env = "COINOP_KERNEL")]
    kernel: PathBuf,
    /// An initrd for a Linux guest.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: mode=halt for `vmm`, mode=idle for `density`,
    /// mode=spin:600000 for `overrun`, mode=echo for the other daemon scenarios).
    #[arg(long)]
    cmdline: Option<String>,
    /// A serial line containing this marks the guest as up, on every engine.
    #[arg(long, default_value = TESTGUEST_READY_LINE)]
    ready_line: String,
    /// The guest does not write 123 to port 0x3f0 (coinop's guest_ready event); the ready
    /// line is then the only mark. The daemon scenarios need the boot timer.
    #[arg(long)]
    no_boot_timer: bool,
    /// The guest keeps running after its ready line (e.g. Linux): every engine is killed
    /// at the ready line instead of waiting for the guest to reset.
    #[arg(long)]
    kill_at_ready: bool,
}

impl GuestArgs {
    fn image(&self, default_cmdline: &str) -> GuestImage {
        GuestImage {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self
                .cmdline
                .clone()
                .unwrap_or_else(|| default_cmdline.to_string()),
            ready_line: self.ready_line.clone(),
            boot_timer: !self.no_boot_timer,
            ends_itself: !self.kill_at_ready,
        }
    }
}

#[derive(clap::Args, Clone, Copy)]
struct RunArgs {
    #[arg(long)]
    runs: Option<usize>,
    #[arg(long)]
    warmup: Option<usize>,
    /// A few runs of a small configuration: checks the scenario works; figures mean little.
    #[arg(long)]
    quick: bool,
}

impl RunArgs {
    /// (runs, warmup): the user's, else the scenario's full or quick defaults.
    fn resolve(
        self,
        full: (usize, usize),
        quick: (usize, usize),
    ) -> Result<(usize, usize), BenchError> {
        let d = if self.quick { quick } else { full };
        let runs = self.runs.unwrap_or(d.0);
        if runs == 0 {
            return Err(BenchError::Usage("--runs must be at least 1".into()));
        }
        Ok((runs, self.warmup.unwrap_or(d.1)))
    }
}

#[derive(clap::Args, Clone)]
struct DaemonArgs {
    /// coinopd binary (default: next to this executable).
    #[arg(long)]
    coinopd_bin: Option<PathBuf>,
    /// coinop-vmm binary (default: next to this executable).
    #[arg(long)]
    vmm_bin: Option<PathBuf>,
    /// vCPUs of each lease.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// MiB of each lease.
    #[arg(long, default_value_t = 64)]
    mem_mib: u64,
    /// coinopd's metering tick, ms (its own default).
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
}

#[derive(clap::Args)]
struct VmmArgs {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    run: RunArgs,
    /// coinop-vmm binary (default: next to this executable).
    #[arg(long)]
    vmm_bin: Option<PathBuf>,
    /// Shapes as VCPUSxMIB, comma-separated.
    #[arg(
        long,
        default_value = "1x128,2x128,1x1024,2x1024",
        value_delimiter = ','
    )]
    shapes: Vec<String>,
    /// QEMU binary for the microvm peer; `none` leaves QEMU out. Default: on PATH if present.
    #[arg(long)]
    qemu: Option<String>,
    /// A Firecracker binary: booted through its API socket and with --no-api --config-file.
    /// Never built or downloaded by the harness.
    #[arg(long)]
    firecracker: Option<PathBuf>,
    /// Longest one boot may take, seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Pause after each boot's process is reaped, before the next engine's spawn, ms: lets
    /// the kernel finish tearing the last VM down so every run starts equally quiet.
    #[arg(long, default_value_t = 100)]
    settle_ms: u64,
}

#[derive(clap::Args)]
struct LeaseArgs {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(clap::Args)]
struct BurstArgs {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Burst sizes K, comma-separated.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    sizes: Vec<usize>,
}

#[derive(clap::Args)]
struct DensityArgs {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Guests the daemon's capacity is sized for.
    #[arg(long, default_value_t = 16)]
    guests: usize,
}

#[derive(clap::Args)]
struct OverrunArgs {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// The lease's payment, sat (a power of two).
    #[arg(long, default_value_t = 2)]
    balance_sat: u64,
}

#[derive(clap::Args)]
struct SoakArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Only `--quick` is used: a short soak of a few kill cycles.
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// How long the driver runs, seconds (--quick: 40).
    #[arg(long, default_value_t = 600)]
    duration_s: u64,
    /// Leases alive at once at most.
    #[arg(long, default_value_t = 3)]
    max_live: usize,
    /// coinopd's --grace-s.
    #[arg(long, default_value_t = 2)]
    grace_s: u64,
    /// Shortest delay from a daemon's start to its SIGKILL, ms.
    #[arg(long, default_value_t = 300)]
    kill_min_ms: u64,
    /// Longest delay from a daemon's start to its SIGKILL, ms.
    #[arg(long, default_value_t = 6000)]
    kill_max_ms: u64,
    /// One request in this many also arms a kill 0-60 ms after it is sent.
    #[arg(long, default_value_t = 25)]
    request_kill_one_in: u64,
}

#[derive(clap::Args)]
struct PaymentArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Regtest headers in the chain that SPV proofs are checked against.
    #[arg(long, default_value_t = 100_000)]
    headers: usize,
    /// Operations of each kind per run.
    #[arg(long, default_value_t = 200)]
    batch: usize,
}

fn main() {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("coinop-bench: {e}");
            std::process::exit(1);
        }
    }
}

/// Files a run needs, checked before anything starts: a typo should not surface as a failed
/// boot after minutes of other scenarios, nor an unwritable output after the whole run.
fn check_inputs(cli: &Cli) -> Result<(), BenchError> {
    let (guest, daemon) = match &cli.scenario {
        Scenario::Vmm(a) => (Some(&a.guest), None),
        Scenario::Lease(a) => (Some(&a.guest), Some(&a.daemon)),
        Scenario::Burst(a) => (Some(&a.guest), Some(&a.daemon)),
        Scenario::Density(a) => (Some(&a.guest), Some(&a.daemon)),
        Scenario::Overrun(a) => (Some(&a.guest), Some(&a.daemon)),
        Scenario::Soak(a) => (Some(&a.guest), Some(&a.daemon)),
        Scenario::Payment(_) | Scenario::Restore(_) => (None, None),
    };
    if let Scenario::Restore(a) = &cli.scenario {
        must_be_file("--kernel", &a.kernel)?;
        must_be_file("--vmm-bin", &binary(&a.vmm_bin, "coinop-vmm"))?;
    }
    if let Some(g) = guest {
        if g.ready_line.is_empty() {
            return Err(BenchError::Usage(
                "--ready-line must not be empty: it is what marks the guest as up".into(),
            ));
        }
        must_be_file("--kernel", &g.kernel)?;
        if let Some(initrd) = &g.initrd {
            must_be_file("--initrd", initrd)?;
        }
    }
    if let Some(d) = daemon {
        if d.vcpus == 0 || d.mem_mib == 0 || d.tick_ms == 0 {
            return Err(BenchError::Usage(
                "--vcpus, --mem-mib and --tick-ms must be at least 1".into(),
            ));
        }
        must_be_file("--coinopd-bin", &binary(&d.coinopd_bin, "coinopd"))?;
        must_be_file("--vmm-bin", &binary(&d.vmm_bin, "coinop-vmm"))?;
    }
    if let Scenario::Vmm(a) = &cli.scenario {
        must_be_file("--vmm-bin", &binary(&a.vmm_bin, "coinop-vmm"))?;
        if let Some(fc) = &a.firecracker {
            must_be_file("--firecracker", fc)?;
        }
        if let Some(q) = a.qemu.as_deref().filter(|q| *q != "none") {
            must_be_file("--qemu", std::path::Path::new(q))?;
        }
    }
    for (flag, out) in [("--json", &cli.json), ("--svg", &cli.svg)] {
        let Some(out) = out else { continue };
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            return Err(BenchError::Usage(format!(
                "{flag} {}: directory {} does not exist",
                out.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

fn must_be_file(flag: &str, path: &std::path::Path) -> Result<(), BenchError> {
    if path.is_file() {
        return Ok(());
    }
    Err(BenchError::Usage(format!(
        "{flag} {}: no such file{}",
        path.display(),
        if path.exists() { " (a directory?)" } else { "" }
    )))
}

/// The binary given with its flag, else the one built next to this executable.
fn binary(given: &Option<PathBuf>, name: &str) -> PathBuf {
    given.clone().unwrap_or_else(|| sibling(name))
}

fn run(cli: &Cli) -> Result<(), BenchError> {
    check_inputs(cli)?;
    let load_before = load_average();
    let mut reports = match &cli.scenario {
        Scenario::Vmm(a) => vmm_scenario(a)?.run()?,
        Scenario::Restore(a) => scenario_restore::run(a, sibling("coinop-vmm"))?,
        Scenario::Lease(a) => {
            let (runs, warmup) = a.run.resolve((20, 2), (2, 0))?;
            let s = scenario_lease::LeaseScenario {
                daemon: daemon_spec(&a.guest, &a.daemon, 1, "mode=echo")?,
                runs,
                warmup,
                notes: Vec::new(),
            };
            block_on(s.run())?
        }
        Scenario::Burst(a) => {
            let (runs, warmup) = a.run.resolve((5, 1), (1, 0))?;
            let mut sizes = a.sizes.clone();
            if a.run.quick {
                sizes = vec![1, 2];
            }
            if sizes.is_empty() || sizes.contains(&0) {
                return Err(BenchError::Usage("--sizes must be positive numbers".into()));
            }
            let max = sizes.iter().copied().max().unwrap_or(1);
            let s = scenario_burst::BurstScenario {
                daemon: daemon_spec(&a.guest, &a.daemon, max, "mode=echo")?,
                sizes,
                runs,
                warmup,
                notes: Vec::new(),
            };
            block_on(s.run())?
        }
        Scenario::Density(a) => {
            let (runs, warmup) = a.run.resolve((3, 1), (1, 0))?;
            let guests = if a.run.quick { 2 } else { a.guests };
            if guests == 0 {
                return Err(BenchError::Usage("--guests must be at least 1".into()));
            }
            let s = scenario_density::DensityScenario {
                daemon: daemon_spec(&a.guest, &a.daemon, guests, "mode=idle")?,
                guests,
                runs,
                warmup,
                cpu_window: std::time::Duration::from_secs(if a.run.quick { 1 } else { 10 }),
                notes: Vec::new(),
            };
            block_on(s.run())?
        }
        Scenario::Overrun(a) => {
            let (runs, warmup) = a.run.resolve((10, 1), (2, 0))?;
            if !a.balance_sat.is_power_of_two() {
                return Err(BenchError::Usage(
                    "--balance-sat must be a power of two (one credit proof)".into(),
                ));
            }
            let s = scenario_overrun::OverrunScenario {
                daemon: daemon_spec(&a.guest, &a.daemon, 1, "mode=spin:600000")?,
                balance_sat: a.balance_sat,
                runs,
                warmup,
                notes: Vec::new(),
            };
            block_on(s.run())?
        }
        Scenario::Soak(a) => {
            let duration_s = if a.run.quick { 40 } else { a.duration_s };
            if a.max_live == 0 || a.kill_min_ms >= a.kill_max_ms {
                return Err(BenchError::Usage(
                    "--max-live must be at least 1 and --kill-min-ms below --kill-max-ms".into(),
                ));
            }
            let s = scenario_soak::SoakScenario {
                daemon: daemon_spec(&a.guest, &a.daemon, a.max_live + 2, "mode=echo")?,
                duration: Duration::from_secs(duration_s),
                max_live: a.max_live,
                grace_s: a.grace_s,
                kill_delay_ms: (a.kill_min_ms, a.kill_max_ms),
                request_kill_one_in: a.request_kill_one_in.max(1),
                notes: Vec::new(),
            };
            block_on(s.run())?
        }
        Scenario::Payment(a) => {
            let (runs, warmup) = a.run.resolve((10, 1), (2, 0))?;
            let (headers, batch) = if a.run.quick {
                (500, 10)
            } else {
                (a.headers, a.batch.max(1))
            };
            scenario_payment::PaymentScenario {
                headers,
                batch,
                runs,
                warmup,
                notes: Vec::new(),
            }
            .run()?
        }
    };
    let note = format!(
        "host load average (1/5/15 min) at start {load_before}, at end {}; {} CPUs",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in &mut reports {
        if r.rows.iter().any(|row| stats::is_rate(&row.metric)) {
            r.notes.push(
                "for the rates (/s) higher is better, so their p95 (nearest rank, as for every \
                 metric) is the fast tail: at most 5% of runs were faster"
                    .into(),
            );
        }
        r.notes.push(note.clone());
    }
    report::print_table(&reports);
    write_outputs(cli, &reports)
}

fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BenchError::Usage(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A daemon whose capacity fits `guests` leases of the requested shape exactly.
fn daemon_spec(
    g: &GuestArgs,
    d: &DaemonArgs,
    guests: usize,
    default_cmdline: &str,
) -> Result<DaemonSpec, BenchError> {
    if g.no_boot_timer {
        return Err(BenchError::Usage(
            "coinopd counts a guest as booted at its guest_ready event: the daemon scenarios \
             need a guest that writes 123 to port 0x3f0 (drop --no-boot-timer)"
                .into(),
        ));
    }
    let guests = u32::try_from(guests)
        .map_err(|_| BenchError::Usage(format!("{guests} guests is too many")))?;
    Ok(DaemonSpec {
        coinopd: binary(&d.coinopd_bin, "coinopd"),
        vmm: binary(&d.vmm_bin, "coinop-vmm"),
        guest: g.image(default_cmdline),
        vcpus: d.vcpus,
        mem_mib: d.mem_mib,
        capacity_vcpus: d.vcpus.saturating_mul(guests),
        capacity_mib: d.mem_mib.saturating_mul(u64::from(guests)),
        tick_ms: d.tick_ms,
    })
}

fn vmm_scenario(a: &VmmArgs) -> Result<scenario_vmm::VmmScenario, BenchError> {
    let mut shapes = a
        .shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<Result<Vec<_>, _>>()?;
    let (runs, warmup) = a.run.resolve((50, 5), (3, 1))?;
    if a.run.quick {
        shapes.truncate(1);
    }
    let mut engines = vec![Engine::Coinop {
        bin: binary(&a.vmm_bin, "coinop-vmm"),
    }];
    let mut notes = Vec::new();
    if let Some(bin) = qemu_bin(a.qemu.as_deref()) {
        engines.push(Engine::Qemu { bin });
    } else {
        let n = "QEMU was not run (--qemu none, or qemu-system-x86_64 not on PATH: apt-get install qemu-system-x86)";
        eprintln!("coinop-bench: {n}");
        notes.push(n.to_string());
    }
    if !child_run::prompt_wakeups_available() {
        let n = "the console reader could not get SCHED_FIFO priority (not root?): on a loaded \
                 host its wake-ups come later, which delays every engine's ready time and can \
                 cost coinop runs their RSS sample";
        eprintln!("coinop-bench: {n}");
        notes.push(n.to_string());
    }
    match &a.firecracker {
        Some(bin) => {
            for mode in [FcMode::Api, FcMode::ConfigFile] {
                engines.push(Engine::Firecracker {
                    bin: bin.clone(),
                    mode,
                });
            }
        }
        None => {
            let n = "Firecracker was not run (pass --firecracker PATH to a firecracker binary)";
            eprintln!("coinop-bench: {n}");
            notes.push(n.to_string());
        }
    }
    let guest = a.guest.image("mode=halt");
    // The test guest's mode=idle stays up after its ready line, so every peer is killed
    // by the harness after its RSS read instead of ending itself (Firecracker resets with
    // the guest); a command line the user gave goes to every engine unchanged.
    let peer_guest = match &a.guest.cmdline {
        Some(_) => guest.clone(),
        None => GuestImage {
            cmdline: "mode=idle".into(),
            ends_itself: false,
            ..guest.clone()
        },
    };
    Ok(scenario_vmm::VmmScenario {
        engines,
        guest,
        peer_guest,
        shapes,
        warmup,
        runs,
        timeout: Duration::from_secs(a.timeout_s.max(1)),
        settle: Duration::from_millis(a.settle_ms),
        notes,
    })
}

fn parse_shape(s: &str) -> Result<VmShape, BenchError> {
    let bad = || {
        BenchError::Usage(format!(
            "shape '{s}' is not VCPUSxMIB with both at least 1, e.g. 2x128"
        ))
    };
    let (v, m) = s.split_once('x').ok_or_else(bad)?;
    let shape = VmShape {
        vcpus: v.trim().parse().map_err(|_| bad())?,
        mem_mib: m.trim().parse().map_err(|_| bad())?,
    };
    if shape.vcpus == 0 || shape.mem_mib == 0 {
        return Err(bad());
    }
    Ok(shape)
}

fn qemu_bin(arg: Option<&str>) -> Option<PathBuf> {
    match arg {
        Some("none") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => engines::which("qemu-system-x86_64"),
    }
}

/// A binary built alongside this one (cargo puts workspace binaries in one directory).
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn write_outputs(cli: &Cli, reports: &[ScenarioReport]) -> Result<(), BenchError> {
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| BenchError::Write {
            path: path.display().to_string(),
            source: e,
        })
    };
    if let Some(p) = &cli.json {
        let text = serde_json::to_string_pretty(reports)
            .map_err(|e| BenchError::Usage(format!("JSON encoding failed: {e}")))?;
        write(p, text)?;
    }
    if let Some(p) = &cli.svg {
        write(p, svg_plot::render(reports))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_guest_flags_parse_for_every_boot_scenario() {
        for sc in ["vmm", "lease", "burst", "density", "overrun", "soak"] {
            let cli = Cli::try_parse_from([
                "coinop-bench",
                sc,
                "--kernel",
                "vmlinux",
                "--initrd",
                "initrd.cpio",
                "--cmdline",
                "console=ttyS0 reboot=k",
                "--ready-line",
                "Run /init",
                "--kill-at-ready",
                "--quick",
            ])
            .unwrap_or_else(|e| panic!("{sc}: {e}"));
            let g = match &cli.scenario {
                Scenario::Vmm(a) => &a.guest,
                Scenario::Lease(a) => &a.guest,
                Scenario::Burst(a) => &a.guest,
                Scenario::Density(a) => &a.guest,
                Scenario::Overrun(a) => &a.guest,
                Scenario::Soak(a) => &a.guest,
                Scenario::Payment(_) | Scenario::Restore(_) => unreachable!("not in the list"),
            };
            let img = g.image("mode=halt");
            assert_eq!(img.initrd, Some(PathBuf::from("initrd.cpio")));
            assert_eq!(img.cmdline, "console=ttyS0 reboot=k");
            assert_eq!(img.ready_line, "Run /init");
            assert!(!img.ends_itself && img.boot_timer);
        }
    }

    #[test]
    fn daemon_scenarios_refuse_guests_without_the_boot_timer() {
        let cli =
            Cli::try_parse_from(["coinop-bench", "lease", "--kernel", "k", "--no-boot-timer"])
                .expect("parses");
        let Scenario::Lease(a) = &cli.scenario else {
            unreachable!("parsed as lease")
        };
        let e = daemon_spec(&a.guest, &a.daemon, 1, "mode=echo").expect_err("refused");
        assert!(e.to_string().contains("0x3f0"), "{e}");
    }

    #[test]
    fn capacity_fits_the_guests_exactly() {
        let cli = Cli::try_parse_from([
            "coinop-bench",
            "density",
            "--kernel",
            "k",
            "--vcpus",
            "2",
            "--mem-mib",
            "96",
        ])
        .expect("parses");
        let Scenario::Density(a) = &cli.scenario else {
            unreachable!("parsed as density")
        };
        let d = daemon_spec(&a.guest, &a.daemon, 5, "mode=echo").expect("spec");
        assert_eq!((d.capacity_vcpus, d.capacity_mib), (10, 480));
        assert_eq!(d.guest.cmdline, "mode=echo");
    }

    #[test]
    fn missing_files_are_named_before_anything_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("kernel.elf");
        let kernel_s = kernel.display().to_string();
        let parse = |extra: &[&str]| {
            let mut args = vec!["coinop-bench"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).expect("parses")
        };
        let e = check_inputs(&parse(&["vmm", "--kernel", &kernel_s])).expect_err("no kernel");
        assert!(e.to_string().contains("--kernel") && e.to_string().contains("kernel.elf"));
        std::fs::write(&kernel, b"elf").expect("write");
        let fake_vmm = dir.path().join("vmm");
        std::fs::write(&fake_vmm, b"").expect("write");
        let vmm_s = fake_vmm.display().to_string();
        let e = check_inputs(&parse(&[
            "vmm",
            "--kernel",
            &kernel_s,
            "--vmm-bin",
            &vmm_s,
            "--initrd",
            "/nonexistent.cpio",
        ]))
        .expect_err("no initrd");
        assert!(e.to_string().contains("--initrd /nonexistent.cpio"), "{e}");
        let e = check_inputs(&parse(&[
            "vmm",
            "--kernel",
            &kernel_s,
            "--vmm-bin",
            &vmm_s,
            "--qemu",
            "none",
            "--firecracker",
            &dir.path().display().to_string(),
        ]))
        .expect_err("a directory is no firecracker");
        assert!(e.to_string().contains("a directory?"), "{e}");
        let e = check_inputs(&parse(&[
            "--json",
            "/nonexistent/dir/out.json",
            "vmm",
            "--kernel",
            &kernel_s,
            "--vmm-bin",
            &vmm_s,
            "--qemu",
            "none",
        ]))
        .expect_err("output dir missing");
        assert!(
            e.to_string().contains("/nonexistent/dir does not exist"),
            "{e}"
        );
        check_inputs(&parse(&[
            "--json",
            "out.json",
            "vmm",
            "--kernel",
            &kernel_s,
            "--vmm-bin",
            &vmm_s,
            "--qemu",
            "none",
        ]))
        .expect("a bare file name goes to the current directory");
        let e = check_inputs(&parse(&[
            "lease",
            "--kernel",
            &kernel_s,
            "--vmm-bin",
            &vmm_s,
            "--coinopd-bin",
            "/no/coinopd",
        ]))
        .expect_err("no coinopd");
        assert!(e.to_string().contains("--coinopd-bin /no/coinopd"), "{e}");
        check_inputs(&parse(&["payment", "--quick"])).expect("payment needs no files");
        let e = check_inputs(&parse(&["vmm", "--kernel", &kernel_s, "--ready-line="]))
            .expect_err("empty marker");
        assert!(e.to_string().contains("--ready-line"), "{e}");
        let e = check_inputs(&parse(&["density", "--kernel", &kernel_s, "--vcpus", "0"]))
            .expect_err("zero vCPUs");
        assert!(e.to_string().contains("--vcpus"), "{e}");
    }

    #[test]
    fn bad_shapes_and_zero_runs_are_usage_errors() {
        for bad in ["2x", "x128", "0x128", "2x0", "2*128", "-1x128", ""] {
            let e = parse_shape(bad).expect_err(bad);
            assert!(e.to_string().contains("VCPUSxMIB"), "{e}");
        }
        assert_eq!(
            parse_shape("2x128").expect("valid"),
            VmShape {
                vcpus: 2,
                mem_mib: 128
            }
        );
        let r = RunArgs {
            runs: Some(0),
            warmup: None,
            quick: false,
        };
        assert!(r.resolve((5, 1), (1, 0)).is_err());
        let q = RunArgs {
            runs: None,
            warmup: None,
            quick: true,
        };
        assert_eq!(q.resolve((5, 1), (1, 0)).expect("quick"), (1, 0));
    }
}
