//! A running guest as the control socket sees it: state, usage, console input, pause,
//! resume and stop.

use crate::control::ControlTarget;
use crate::devices::PioBus;
use crate::events::Clock;
use crate::exit::VmExit;
use crate::vstate::cpu_time::VcpuClocks;
use crate::vstate::run_state::{Requested, RunState};
use serde_json::{json, Value};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// How long `pause` waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

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
}

impl ControlTarget for Machine {
    fn status(&self) -> Value {
        json!({
            "ok": true,
            "state": self.run_state.requested().name(),
            "vcpus": self.vcpus,
            "mem_mib": self.mem_mib,
            "uptime_us": self.clock.elapsed_us(),
        })
    }

    fn pause(&self) -> Value {
        match self.run_state.pause(self.vcpus, PAUSE_TIMEOUT) {
            Ok(()) => json!({"ok": true, "state": self.run_state.requested().name()}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }
    }

    fn resume(&self) -> Value {
        self.run_state.resume();
        json!({"ok": true, "state": self.run_state.requested().name()})
    }

    fn usage(&self) -> Value {
        let per_vcpu = self.clocks.usage_us();
        let total: u64 = per_vcpu.iter().sum();
        json!({
            "ok": true,
            "vcpu_us": per_vcpu,
            "vcpu_total_us": total,
            "mem_mib": self.mem_mib,
            "uptime_us": self.clock.elapsed_us(),
        })
    }

    fn console_input(&self, data: &str) -> Value {
        match self.pio.console().input(data.as_bytes()) {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        }
    }

    fn stop(&self) {
        if self.run_state.requested() != Requested::Stopping {
            self.run_state.stop();
        }
        let _ = self.exits.send(VmExit::Stopped);
    }
}
