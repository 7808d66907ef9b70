//! `coinop-bench`: coinop's boot-latency and throughput harness. Each scenario boots the same
//! guest image on coinop and on the peers a user would pick instead, in alternating runs, and
//! prints min / median / p95 / max, with JSON and an SVG plot for the record.
//!
//! Scenarios so far: `vmm` (exec → vcpus_started → guest_ready → exit, peak RSS).

mod child_run;
mod clock;
mod engines;
mod error;
mod report;
mod scenario_vmm;
mod stats;
mod svg_plot;
mod vmm_events;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use engines::{Engine, GuestImage, VmShape};
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
    /// Boot the guest image N times per shape and engine.
    Vmm(VmmArgs),
}

#[derive(clap::Args)]
struct VmmArgs {
    /// The guest kernel every engine boots (the test guest's PVH ELF by default).
    #[arg(long, env = "COINOP_KERNEL")]
    kernel: PathBuf,
    #[arg(long, default_value = "mode=halt")]
    cmdline: String,
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
    #[arg(long, default_value_t = 50)]
    runs: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// QEMU binary for the microvm peer; `none` leaves QEMU out. Default: on PATH if present.
    #[arg(long)]
    qemu: Option<String>,
    /// A few runs of one shape: checks the harness works; its figures mean little.
    #[arg(long)]
    quick: bool,
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

fn run(cli: &Cli) -> Result<(), BenchError> {
    let reports = match &cli.scenario {
        Scenario::Vmm(args) => vmm_scenario(args)?.run()?,
    };
    report::print_table(&reports);
    write_outputs(cli, &reports)
}

fn vmm_scenario(a: &VmmArgs) -> Result<scenario_vmm::VmmScenario, BenchError> {
    let mut shapes = a
        .shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut runs, mut warmup) = (a.runs, a.warmup);
    if a.quick {
        shapes.truncate(1);
        (runs, warmup) = (3, 1);
    }
    if runs == 0 {
        return Err(BenchError::Usage("--runs must be at least 1".into()));
    }
    let mut engines = vec![Engine::Coinop {
        bin: a.vmm_bin.clone().unwrap_or_else(|| sibling("coinop-vmm")),
    }];
    if let Some(bin) = qemu_bin(a.qemu.as_deref()) {
        engines.push(Engine::Qemu { bin });
    } else {
        eprintln!("coinop-bench: QEMU not found (apt-get install qemu-system-x86): no QEMU peer in this run");
    }
    Ok(scenario_vmm::VmmScenario {
        engines,
        guest: GuestImage {
            kernel: a.kernel.clone(),
            cmdline: a.cmdline.clone(),
        },
        shapes,
        warmup,
        runs,
    })
}

fn parse_shape(s: &str) -> Result<VmShape, BenchError> {
    let bad = || BenchError::Usage(format!("shape '{s}' is not VCPUSxMIB, e.g. 2x128"));
    let (v, m) = s.split_once('x').ok_or_else(bad)?;
    Ok(VmShape {
        vcpus: v.trim().parse().map_err(|_| bad())?,
        mem_mib: m.trim().parse().map_err(|_| bad())?,
    })
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
