//! Taking a snapshot of the running guest, on the control thread: pause, collect every
//! vCPU's state from its own thread, read the VM and the devices, write the directory.

use super::{host, MachineState};
use crate::devices::mmio_bus::MmioBus;
use crate::devices::PioBus;
use crate::vstate::persist;
use crate::vstate::run_state::RunState;
use crate::vstate::vcpu::SaveBoard;
use kvm_ioctls::{Kvm, VmFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vm_memory::GuestMemoryMmap;

/// How long parked vCPUs may take to hand over their state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a snapshot was not taken; the text is the control reply's `error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vCPUs would not park.
    #[error(transparent)]
    Pause(#[from] crate::vstate::run_state::Error),
    /// A vCPU did not hand over its state in time.
    #[error("vCPUs did not hand over their state within {SAVE_TIMEOUT:?}")]
    SaveTimeout,
    /// A vCPU's state could not be read.
    #[error("saving {0}")]
    Vcpu(String),
    /// A virtio device could not give its state (a disk that would not flush the writes
    /// its guest saw complete).
    #[error("saving {0}")]
    DeviceState(String),
    /// The VM's state could not be read.
    #[error(transparent)]
    Vm(#[from] persist::Error),
    /// KVM would not describe the host.
    #[error(transparent)]
    Host(#[from] host::Error),
    /// Writing the directory failed.
    #[error(transparent)]
    Write(#[from] super::Error),
}

/// What taking a snapshot needs from the VMM.
pub struct Taker {
    /// /dev/kvm, for the MSR list and the host fingerprint.
    pub kvm: Arc<Kvm>,
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The vCPU threads' save exchange.
    pub saves: Arc<SaveBoard>,
    /// Port-I/O devices.
    pub pio: Arc<PioBus>,
    /// The virtio devices.
    pub mmio: Arc<MmioBus>,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
}

impl Taker {
    /// Pauses the guest (it stays paused: the caller resumes or stops it) and writes the
    /// snapshot into `dir`. The virtio device threads are stopped while memory is written
    /// (a NIC would otherwise keep receiving into it) and serve again afterwards, unless
    /// the VMM exits after this snapshot (`then_exit`): a device serving in those last
    /// moments would consume requests the snapshot records as not yet taken (a held-back
    /// disk write, a frame to send, one read from the tap), and every restore would serve
    /// them a second time.
    pub fn take(
        &self,
        run_state: &RunState,
        vcpus: usize,
        dir: &Path,
        then_exit: bool,
    ) -> Result<(), Error> {
        run_state.pause(vcpus, crate::machine::PAUSE_TIMEOUT)?;
        let taken = self.save_parked(run_state, dir);
        // Devices not stopped yet (a vCPU failed first) just go on serving.
        if !(then_exit && taken.is_ok()) {
            self.mmio.resume_all();
        }
        taken
    }

    /// With vCPUs parked: collects the vCPUs' state, then stops the virtio devices and
    /// collects theirs, then the port devices' and the VM's, and writes the directory. The
    /// vCPUs go first because saving one completes the I/O exit it was in (the second half
    /// of a split MMIO access, say), which may still change a device's registers: captured
    /// before, the snapshot would hold the device as it was before that access.
    fn save_parked(&self, run_state: &RunState, dir: &Path) -> Result<(), Error> {
        let fingerprint = host::fingerprint(&self.kvm)?;
        self.saves.prepare(host::msr_indices(&self.kvm)?);
        run_state.request_save();
        let saved = self
            .saves
            .collect(SAVE_TIMEOUT)
            .ok_or(Error::SaveTimeout)?
            .into_iter()
            .collect::<Result<Vec<_>, String>>()
            .map_err(Error::Vcpu)?;
        let virtio = self.mmio.save_all().map_err(Error::DeviceState)?;
        let state = MachineState {
            mem_mib: self.mem_mib,
            vcpus: saved,
            vm: persist::save_vm(&self.vm)?,
            devices: self.pio.state(),
            virtio,
        };
        super::write(dir, &state, &self.mem, fingerprint)?;
        Ok(())
    }
}
