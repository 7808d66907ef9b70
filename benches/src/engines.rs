//! How each engine under test is started on the same guest image, and which of its output
//! marks a figure. coinop-vmm reports its own events; peers are timed by the guest's ready
//! line on the serial console, which coinop also prints, so the one figure every engine
//! shares is comparable.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::console_scan::ForeignLog;
use crate::firecracker_api::{self, FcVm};

/// The line the test guest prints on COM1 once it runs: the default "guest is up" mark.
pub const TESTGUEST_READY_LINE: &str = "coinop-testguest ready";

/// One VM shape to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VmShape {
    pub vcpus: u32,
    pub mem_mib: u32,
}

impl std::fmt::Display for VmShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} vCPU {} MiB", self.vcpus, self.mem_mib)
    }
}

/// The guest every engine boots: the test guest by default, or a Linux vmlinux + initrd.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// A serial line containing this marks the guest as up on every engine.
    pub ready_line: String,
    /// Whether the guest writes the boot-timer port (coinop's `guest_ready` event).
    pub boot_timer: bool,
    /// Whether the guest ends the VM by itself after its ready line (the test guest's
    /// `mode=halt` resets); when not, every engine is killed at the ready line.
    pub ends_itself: bool,
}

/// Firecracker can be driven two documented ways; both are measured when it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FcMode {
    /// `--api-sock`: PUT /boot-source, PUT /machine-config, PUT /actions InstanceStart.
    Api,
    /// `--no-api --config-file`: the same settings from one JSON file.
    ConfigFile,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Coinop { bin: PathBuf },
    Qemu { bin: PathBuf },
    Firecracker { bin: PathBuf, mode: FcMode },
}

/// A command ready to spawn, and what must happen once it runs (Firecracker's API calls).
pub struct Prepared {
    pub command: Command,
    pub api: Option<(PathBuf, FcVm)>,
    /// Where the engine writes its own log, when not to the console (for error messages).
    pub log_file: Option<PathBuf>,
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Coinop { .. } => "coinop",
            Engine::Qemu { .. } => "qemu-microvm",
            Engine::Firecracker {
                mode: FcMode::Api, ..
            } => "firecracker-api",
            Engine::Firecracker {
                mode: FcMode::ConfigFile,
                ..
            } => "firecracker-cfg",
        }
    }

    /// Whether this engine reports coinop-vmm's JSON events.
    pub fn has_events(&self) -> bool {
        matches!(self, Engine::Coinop { .. })
    }

    /// The flag that gives the engine the harness's spawn instant (CLOCK_MONOTONIC µs), so
    /// its own event times count from it; [`crate::child_run::run_driven`] appends it with
    /// the value it takes just before the spawn.
    pub fn start_time_arg(&self) -> Option<&'static str> {
        match self {
            Engine::Coinop { .. } => Some("--start-time-us"),
            Engine::Qemu { .. } | Engine::Firecracker { .. } => None,
        }
    }

    /// Log records of the engine's own that can land in the guest's console. Firecracker's
    /// log goes to a file (`--log-path`), but anything it logs before reading that flag
    /// still reaches stdout.
    pub fn console_foreign_log(&self) -> Option<ForeignLog> {
        match self {
            Engine::Firecracker { .. } => Some(ForeignLog::FIRECRACKER),
            Engine::Coinop { .. } | Engine::Qemu { .. } => None,
        }
    }

    /// Builds the command for one run; `run_dir` holds per-run files (API socket, config,
    /// Firecracker's log).
    pub fn prepare(
        &self,
        guest: &GuestImage,
        shape: VmShape,
        run_dir: &Path,
    ) -> Result<Prepared, std::io::Error> {
        let prepared = match self {
            Engine::Coinop { bin } => Prepared {
                command: coinop_command(bin, guest, shape),
                api: None,
                log_file: None,
            },
            Engine::Qemu { bin } => Prepared {
                command: qemu_command(bin, guest, shape),
                api: None,
                log_file: None,
            },
            Engine::Firecracker { bin, mode } => {
                let vm = FcVm::new(guest, shape);
                // Its logger writes to stdout unless told otherwise, where a record can land
                // in the middle of the guest's ready line; Firecracker creates the file.
                let log = run_dir.join("firecracker.log");
                let mut c = Command::new(bin);
                c.arg("--log-path").arg(&log);
                let api = match mode {
                    FcMode::Api => {
                        let sock = run_dir.join("firecracker.sock");
                        c.arg("--api-sock").arg(&sock);
                        Some((sock, vm))
                    }
                    FcMode::ConfigFile => {
                        let file = run_dir.join("firecracker.json");
                        std::fs::write(&file, firecracker_api::config_file_json(&vm))?;
                        c.arg("--no-api").arg("--config-file").arg(&file);
                        None
                    }
                };
                Prepared {
                    command: c,
                    api,
                    log_file: Some(log),
                }
            }
        };
        Ok(prepared)
    }
}

/// Without `--start-time-us`: [`Engine::start_time_arg`].
fn coinop_command(bin: &Path, guest: &GuestImage, shape: VmShape) -> Command {
    let mut c = Command::new(bin);
    c.arg("--kernel").arg(&guest.kernel);
    if let Some(initrd) = &guest.initrd {
        c.arg("--initrd").arg(initrd);
    }
    c.args(["--cmdline", &guest.cmdline])
        .args(["--vcpus", &shape.vcpus.to_string()])
        .args(["--mem-mib", &shape.mem_mib.to_string()])
        .args(["--serial", "stdout", "--events", "stderr"]);
    c
}

/// QEMU's microvm machine, configured as its documentation suggests for fast boots: no
/// default devices, no option ROMs, no RTC, the PVH entry of the same ELF. The host CPU model
/// minus `arch-capabilities`: QEMU aborts setting MSR 0x10a on this nested KVM otherwise.
fn qemu_command(bin: &Path, guest: &GuestImage, shape: VmShape) -> Command {
    let mut c = Command::new(bin);
    c.args(["-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on"])
        .args(["-enable-kvm", "-cpu", "host,-arch-capabilities"])
        .args(["-m", &shape.mem_mib.to_string()])
        .args(["-smp", &shape.vcpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&guest.kernel)
        .args(["-append", &guest.cmdline]);
    if let Some(initrd) = &guest.initrd {
        c.arg("-initrd").arg(initrd);
    }
    c
}

/// Finds a program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(initrd: Option<&str>) -> GuestImage {
        GuestImage {
            kernel: "/k/vmlinux".into(),
            initrd: initrd.map(PathBuf::from),
            cmdline: "console=ttyS0 quiet".into(),
            ready_line: "READY".into(),
            boot_timer: false,
            ends_itself: false,
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn linux_images_pass_their_initrd_to_every_engine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shape = VmShape {
            vcpus: 2,
            mem_mib: 256,
        };
        let g = guest(Some("/k/initrd.cpio"));
        let coinop = Engine::Coinop { bin: "vmm".into() }
            .prepare(&g, shape, dir.path())
            .expect("prepare");
        assert!(coinop.log_file.is_none(), "coinop logs to stderr");
        let a = args(&coinop.command);
        assert!(
            a.windows(2).any(|w| w == ["--initrd", "/k/initrd.cpio"]),
            "{a:?}"
        );
        let qemu = Engine::Qemu { bin: "qemu".into() }
            .prepare(&g, shape, dir.path())
            .expect("prepare");
        let a = args(&qemu.command);
        assert!(
            a.windows(2).any(|w| w == ["-initrd", "/k/initrd.cpio"]),
            "{a:?}"
        );
        assert!(
            a.windows(2)
                .any(|w| w == ["-append", "console=ttyS0 quiet"]),
            "{a:?}"
        );
    }

    #[test]
    fn firecracker_modes_get_a_socket_or_a_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shape = VmShape {
            vcpus: 1,
            mem_mib: 128,
        };
        let api = Engine::Firecracker {
            bin: "fc".into(),
            mode: FcMode::Api,
        }
        .prepare(&guest(None), shape, dir.path())
        .expect("prepare");
        let (sock, vm) = api.api.expect("API mode drives the socket");
        let log = api.log_file.expect("Firecracker logs to a file");
        assert_eq!(
            args(&api.command),
            [
                "--log-path",
                &log.display().to_string(),
                "--api-sock",
                &sock.display().to_string()
            ]
        );
        assert!(log.starts_with(dir.path()), "the log stays in the run dir");
        assert_eq!(vm.machine.mem_size_mib, 128);

        let cfg = Engine::Firecracker {
            bin: "fc".into(),
            mode: FcMode::ConfigFile,
        }
        .prepare(&guest(None), shape, dir.path())
        .expect("prepare");
        assert!(cfg.api.is_none());
        let fc = Engine::Firecracker {
            bin: "fc".into(),
            mode: FcMode::ConfigFile,
        };
        assert_eq!(fc.console_foreign_log(), Some(ForeignLog::FIRECRACKER));
        assert_eq!(Engine::Qemu { bin: "q".into() }.console_foreign_log(), None);
        let a = args(&cfg.command);
        assert_eq!(a[..4], ["--log-path", &a[1], "--no-api", "--config-file"]);
        assert!(a[1].ends_with("firecracker.log"), "{a:?}");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&a[4]).expect("config file written"))
                .expect("config file is JSON");
        assert_eq!(written["boot-source"]["kernel_image_path"], "/k/vmlinux");
    }
}
