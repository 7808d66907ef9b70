//! A running guest as the control socket sees it: state, usage, console input, pause,
//! resume, snapshot, personalise and stop.

use crate::control::ControlTarget;
use crate::devices::PioBus;
use crate::events::Clock;
use crate::exit::VmExit;
use crate::snapshot::take::Taker;
use crate::vstate::cpu_time::VcpuClocks;
use crate::vstate::run_state::{Requested, RunState};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;
use vmm_protocol::{Status, Usage, VmState};

/// How long `pause` waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Handles on a running guest.
pub struct Machine {
    /// vCPU run requests.
    pub run_state: Arc<RunState>,
    /// Devices (for console input).
    pub pio: Arc<PioBus>,
    /// Per-vCPU CPU time.
    pub clocks: Arc<VcpuClocks>,
    /// Time base for uptime.
    pub clock: Clock,
    /// vCPU count.
    pub vcpus: usize,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Where the end of the VM is reported.
    pub exits: Sender<VmExit>,
    /// Takes snapshots.
    pub snapshots: Taker,
}

impl Machine {
    /// The state the vCPUs are asked to be in.
    fn state(&self) -> VmState {
        self.run_state.requested().into()
    }
}

impl ControlTarget for Machine {
    fn status(&self) -> Status {
        let port = self.pio.personalisation();
        Status {
            state: self.state(),
            // At most 32 vCPUs (checked on the command line), so the count fits.
            vcpus: self.vcpus as u32,
            mem_mib: self.mem_mib,
            uptime_us: self.clock.elapsed_us(),
            line_crc32: port.line_crc32(),
            ring_unheeded_us: port.ring_unheeded_us(),
        }
    }

    fn pause(&self) -> Result<VmState, String> {
        self.run_state
            .pause(self.vcpus, PAUSE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        Ok(self.state())
    }

    fn resume(&self) -> VmState {
        self.run_state.resume();
        self.state()
    }

    fn usage(&self) -> Usage {
        let vcpu_us = self.clocks.usage_us();
        Usage {
            vcpu_total_us: vcpu_us.iter().sum(),
            vcpu_us,
            mem_mib: self.mem_mib,
            uptime_us: self.clock.elapsed_us(),
            state: Some(self.state()),
        }
    }

    fn console_input(&self, data: &str) -> Result<(), String> {
        self.pio
            .console()
            .input(data.as_bytes())
            .map_err(|e| e.to_string())
    }

    fn snapshot(&self, dir: &str, exit: bool) -> Result<VmState, String> {
        let was_paused = self.run_state.requested() == Requested::Paused;
        let taken =
            self.snapshots
                .take(&self.run_state, self.vcpus, std::path::Path::new(dir), exit);
        if exit && taken.is_ok() {
            // The caller stops the VM once the reply is out; the vCPUs stay parked.
            return Ok(VmState::Stopping);
        }
        if !was_paused {
            self.run_state.resume();
        }
        taken.map_err(|e| format!("snapshot {dir}: {e}"))?;
        Ok(self.state())
    }

    fn personalise(&self, line: &str) -> Result<(), String> {
        self.pio
            .personalisation()
            .personalise(line)
            .map_err(|e| e.to_string())
    }

    fn ring(&self) -> Result<(), String> {
        self.pio.personalisation().ring().map_err(|e| e.to_string())
    }

    fn stop(&self) {
        if self.run_state.requested() != Requested::Stopping {
            self.run_state.stop();
        }
        let _ = self.exits.send(VmExit::Stopped);
    }
}
