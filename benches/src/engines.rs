//! How each engine under test is started on the same guest image, and which of its output
//! marks a figure. coinop-vmm reports its own events; peers are timed by their first serial
//! line, which coinop also prints, so the one figure every engine shares is comparable.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The line the test guest prints on COM1 once it runs: the common "guest is up" mark.
pub const READY_LINE: &str = "coinop-testguest ready";

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

/// The guest every engine boots.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub cmdline: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Coinop { bin: PathBuf },
    Qemu { bin: PathBuf },
}

impl Engine {
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Coinop { .. } => "coinop",
            Engine::Qemu { .. } => "qemu-microvm",
        }
    }

    /// Whether the guest's own reset ends the process (so the exit time means something).
    pub fn guest_ends_process(&self) -> bool {
        matches!(self, Engine::Coinop { .. })
    }

    pub fn command(&self, guest: &GuestImage, shape: VmShape, start_us: u64) -> Command {
        match self {
            Engine::Coinop { bin } => coinop_command(bin, guest, shape, start_us),
            Engine::Qemu { bin } => qemu_command(bin, guest, shape),
        }
    }
}

fn coinop_command(bin: &Path, guest: &GuestImage, shape: VmShape, start_us: u64) -> Command {
    let mut c = Command::new(bin);
    c.arg("--kernel")
        .arg(&guest.kernel)
        .args(["--cmdline", &guest.cmdline])
        .args(["--vcpus", &shape.vcpus.to_string()])
        .args(["--mem-mib", &shape.mem_mib.to_string()])
        .args(["--serial", "stdout", "--events", "stderr"])
        .args(["--start-time-us", &start_us.to_string()]);
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
    c
}

/// Finds a program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
