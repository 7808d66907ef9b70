//! Snapshots: a running guest written to a directory, and a guest started from one.
//!
//! A snapshot directory holds two files:
//! - `state`: every vCPU's and the VM's KVM state and the devices' state, behind a
//!   versioned, checksummed header ([`format`]);
//! - `memory`: guest RAM, sparse ([`memory_file`]).
//!
//! Taking one (control command `snapshot`, [`take`]) parks every vCPU outside KVM_RUN, has
//! each vCPU thread read its own state, reads the VM and devices, writes `memory`, then
//! `state` last, each under a temporary name renamed into place: a directory with a `state`
//! always holds a complete snapshot, and guests restored from an older snapshot in the same
//! directory keep the memory file they map. Restoring (`--restore DIR`, in [`crate::builder`])
//! checks the header, the host and the memory file before building anything, and maps the
//! memory copy-on-write.
//!
//! virtio devices are saved as their transport registers, queue positions and device state
//! ([`crate::devices::virtio::persist`]); their backends are not: a restore attaches the
//! `--disk`/`--net` backends it is given (the new lease's tap and overlay) in the same
//! order and kinds as the snapshot's, and refuses any other set.

pub mod format;
pub mod host;
pub mod memory_file;
pub mod take;

use crate::devices::persist::PioState;
use crate::devices::virtio::persist::TransportState;
use crate::vstate::persist::{VcpuState, VmState};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The checksummed state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Where the state file is written before it is renamed into place.
const STATE_PARTIAL: &str = "state.partial";
/// Where the memory file is written before it is renamed into place.
const MEMORY_PARTIAL: &str = "memory.partial";

/// Everything but memory: what `state` holds after its header.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    /// Guest RAM in MiB (its layout follows from it).
    pub mem_mib: u64,
    /// Every vCPU, by index (APIC id).
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Port-I/O devices.
    pub devices: PioState,
    /// virtio devices, in window order.
    pub virtio: Vec<TransportState>,
}

/// Why a snapshot cannot be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state file is unusable.
    #[error("--restore {dir}: {source}")]
    Format {
        /// The snapshot directory.
        dir: String,
        /// What is wrong.
        source: format::Error,
    },
    /// The state passed its checksum but does not decode: written by a buggy VMM.
    #[error("--restore {dir}: snapshot state does not decode: {detail}")]
    Decode {
        /// The snapshot directory.
        dir: String,
        /// postcard's reason.
        detail: String,
    },
    /// The state names an impossible machine.
    #[error("--restore {dir}: snapshot describes {vcpus} vCPUs and {mem_mib} MiB, outside what coinop-vmm runs")]
    Machine {
        /// The snapshot directory.
        dir: String,
        /// Its vCPU count.
        vcpus: usize,
        /// Its memory.
        mem_mib: u64,
    },
    /// The state asks for more memory than this host has (as `--mem-mib` may not).
    #[error("--restore {dir}: snapshot describes {mem_mib} MiB of guest memory, more than this host's {host_mib} MiB")]
    TooMuchMemory {
        /// The snapshot directory.
        dir: String,
        /// Its memory.
        mem_mib: u64,
        /// The host's MemTotal.
        host_mib: u64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The memory file is unusable.
    #[error("--restore {dir}: {source}")]
    Memory {
        /// The snapshot directory.
        dir: String,
        /// What is wrong.
        source: memory_file::Error,
    },
    /// The `--disk`/`--net` given do not match the snapshot's virtio devices.
    #[error("--restore {dir}: {detail}")]
    Devices {
        /// The snapshot directory.
        dir: String,
        /// What differs.
        detail: String,
    },
    /// KVM would not describe this host.
    #[error(transparent)]
    Host(#[from] host::Error),
    /// Taken on a host whose KVM offers different CPUID, MSRs or capabilities.
    #[error("--restore {dir}: snapshot was taken on a host with different CPUID/KVM capabilities (fingerprint {saved:#010x}, this host {here:#010x})")]
    HostMismatch {
        /// The snapshot directory.
        dir: String,
        /// Recorded.
        saved: u32,
        /// Here.
        here: u32,
    },
}

impl Error {
    /// Everything about a snapshot that is unusable is bad input (exit 2); KVM failing to
    /// describe the host is the VMM's problem (1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Error::Host(_))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `state` and the guest memory `mem` into `dir` (created if missing).
pub fn write(
    dir: &Path,
    state: &MachineState,
    mem: &vm_memory::GuestMemoryMmap,
    host_fingerprint: u32,
) -> Result<(), Error> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(dir)(e)),
        _ => {}
    }
    let state_path = dir.join(STATE_FILE);
    // An older state must not pair with the memory written below if this fails halfway.
    match std::fs::remove_file(&state_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&state_path)(e)),
        _ => {}
    }
    // A new file renamed over the old one, never the old one rewritten: VMMs restored from
    // this directory (this one among them) map the old file, and truncating it under them
    // would turn their untouched pages into SIGBUS.
    let memory_path = dir.join(MEMORY_FILE);
    let memory_partial = dir.join(MEMORY_PARTIAL);
    let memory = std::fs::File::create(&memory_partial).map_err(io_err(&memory_partial))?;
    let memory_len = memory_file::write(mem, &memory).map_err(|source| Error::Memory {
        dir: dir.display().to_string(),
        source,
    })?;
    memory.sync_all().map_err(io_err(&memory_partial))?;
    drop(memory);
    std::fs::rename(&memory_partial, &memory_path).map_err(io_err(&memory_path))?;

    let body = postcard::to_stdvec(state).map_err(|e| Error::Decode {
        dir: dir.display().to_string(),
        detail: e.to_string(),
    })?;
    let bytes = format::encode(&body, host_fingerprint, memory_len);
    let partial = dir.join(STATE_PARTIAL);
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&partial).map_err(io_err(&partial))?;
        file.write_all(&bytes).map_err(io_err(&partial))?;
        file.sync_all().map_err(io_err(&partial))?;
    }
    std::fs::rename(&partial, &state_path).map_err(io_err(&state_path))
}

/// A checked snapshot, ready to build a VM from.
pub struct Loaded {
    /// The machine state.
    pub state: MachineState,
    /// The header (fingerprint, memory length).
    pub header: format::Header,
    /// The snapshot directory.
    pub dir: PathBuf,
}

/// Reads and checks `dir/state` (magic, format, version, length, checksum, decoding).
pub fn load(dir: &Path) -> Result<Loaded, Error> {
    let shown = dir.display().to_string();
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let (header, body) = format::decode(&bytes).map_err(|source| Error::Format {
        dir: shown.clone(),
        source,
    })?;
    let state: MachineState = postcard::from_bytes(body).map_err(|e| Error::Decode {
        dir: shown.clone(),
        detail: e.to_string(),
    })?;
    let vcpus = state.vcpus.len();
    if vcpus == 0 || vcpus > crate::cli::MAX_VCPUS as usize || state.mem_mib == 0 {
        return Err(Error::Machine {
            dir: shown,
            vcpus,
            mem_mib: state.mem_mib,
        });
    }
    Ok(Loaded {
        state,
        header,
        dir: dir.to_path_buf(),
    })
}

impl Loaded {
    /// Refuses a snapshot from a host whose KVM differs from `kvm`'s.
    pub fn check_host(&self, kvm: &kvm_ioctls::Kvm) -> Result<(), Error> {
        let here = host::fingerprint(kvm)?;
        if here != self.header.host_fingerprint {
            return Err(Error::HostMismatch {
                dir: self.dir.display().to_string(),
                saved: self.header.host_fingerprint,
                here,
            });
        }
        Ok(())
    }

    /// Refuses a snapshot whose guest is bigger than `host_mib` (the host's RAM, when
    /// known), as a cold boot refuses such a `--mem-mib`: its memory is mapped lazily, so
    /// nothing else would stop it before the guest touched it.
    pub fn check_memory(&self, host_mib: Option<u64>) -> Result<(), Error> {
        match host_mib {
            Some(host_mib) if self.state.mem_mib > host_mib => Err(Error::TooMuchMemory {
                dir: self.dir.display().to_string(),
                mem_mib: self.state.mem_mib,
                host_mib,
            }),
            _ => Ok(()),
        }
    }

    /// Refuses `attached` virtio devices (from `--disk`/`--net`) that are not as many as the
    /// snapshot's.
    pub fn check_device_count(&self, attached: usize) -> Result<(), Error> {
        let saved = self.state.virtio.len();
        if saved != attached {
            return Err(Error::Devices {
                dir: self.dir.display().to_string(),
                detail: format!(
                    "the snapshot has {saved} virtio devices; the command line attaches {attached} (--disk/--net, in the snapshot's order)"
                ),
            });
        }
        Ok(())
    }

    /// Maps the memory file copy-on-write.
    pub fn map_memory(&self) -> Result<vm_memory::GuestMemoryMmap, Error> {
        memory_file::map(
            &self.dir.join(MEMORY_FILE),
            self.state.mem_mib,
            self.header.memory_len,
        )
        .map_err(|source| Error::Memory {
            dir: self.dir.display().to_string(),
            source,
        })
    }
}
