//! One vCPU: its initial state (CPUID, MSRs, FPU, LAPIC, and for the BSP the boot registers)
//! and its run loop, which turns every KVM exit into device I/O or a [`VmExit`].

use super::cpu_time::VcpuClocks;
use super::crash_dump;
use super::persist::{self, VcpuState};
use super::run_state::{self, Checkpoint, Requested, RunState};
use crate::arch::x86_64::regs::{self, EntryMode};
use crate::arch::x86_64::{cpuid, lapic, msr};
use crate::devices::mmio_bus::MmioBus;
use crate::devices::PioBus;
use crate::events::EventSink;
use crate::exit::{Crash, VmExit};
use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use vm_memory::GuestMemoryMmap;
use vmm_protocol::Event;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vCPU ioctl failed.
    #[error("vCPU {index}: {call} failed: {source}")]
    Ioctl {
        /// vCPU index.
        index: u8,
        /// The ioctl.
        call: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// CPUID could not be built.
    #[error("vCPU {0}: {1}")]
    Cpuid(u8, cpuid::Error),
    /// MSRs could not be built or were partly refused.
    #[error("vCPU {0}: {1}")]
    Msr(u8, String),
    /// Boot registers could not be set.
    #[error("vCPU {0}: {1}")]
    Regs(u8, regs::Error),
}

/// What every vCPU needs to configure itself.
pub struct VcpuSetup {
    /// KVM_GET_SUPPORTED_CPUID, shared by all vCPUs.
    pub supported_cpuid: CpuId,
    /// Number of vCPUs.
    pub vcpu_count: u8,
    /// Whether KVM has the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// Guest memory (for the BSP's GDT and page tables).
    pub mem: GuestMemoryMmap,
    /// Entry for the BSP.
    pub entry: EntryMode,
}

/// Loads vCPU `index`'s initial state. Only the BSP (index 0) gets boot registers; the
/// APs wait in KVM's wait-for-SIPI state for the guest to start them.
pub fn configure(vcpu: &VcpuFd, index: u8, setup: &VcpuSetup) -> Result<(), Error> {
    let ioctl = |call| {
        move |source| Error::Ioctl {
            index,
            call,
            source,
        }
    };
    let tsc_khz = vcpu.get_tsc_khz().unwrap_or(0);
    let mut cpuid = setup.supported_cpuid.clone();
    let ctx = cpuid::Context {
        apic_id: index,
        vcpu_count: setup.vcpu_count,
        tsc_khz,
        tsc_deadline: setup.tsc_deadline,
    };
    cpuid::filter(&mut cpuid, &ctx).map_err(|e| Error::Cpuid(index, e))?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;

    let msrs = msr::boot_msrs().map_err(|e| Error::Msr(index, e.to_string()))?;
    let written = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if written != msrs.as_slice().len() {
        let refused = msrs.as_slice()[written].index;
        return Err(Error::Msr(
            index,
            format!("KVM refused boot MSR {refused:#x}"),
        ));
    }
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(ioctl("KVM_SET_FPU"))?;

    let mut lapic_state = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    lapic::wire_lint_pins(&mut lapic_state);
    vcpu.set_lapic(&lapic_state)
        .map_err(ioctl("KVM_SET_LAPIC"))?;

    if index == 0 {
        regs::setup_bsp(vcpu, &setup.mem, setup.entry).map_err(|e| Error::Regs(index, e))?;
    }
    Ok(())
}

/// What a vCPU thread shares with the rest of the VMM.
pub struct VcpuContext {
    /// Port I/O devices.
    pub pio: Arc<PioBus>,
    /// MMIO devices (the virtio transports).
    pub mmio: Arc<MmioBus>,
    /// Pause/stop requests.
    pub run_state: Arc<RunState>,
    /// CPU-time accounting.
    pub clocks: Arc<VcpuClocks>,
    /// Event stream.
    pub events: Arc<EventSink>,
    /// vCPUs that issued their first KVM_RUN.
    pub started: AtomicUsize,
    /// Total vCPUs.
    pub vcpu_count: usize,
    /// Where parked vCPUs leave their state for a snapshot.
    pub saves: Arc<SaveBoard>,
}

/// What one vCPU's save produced: its state, or why it could not be read.
pub type SaveResult = Result<VcpuState, String>;

/// The exchange between the snapshot taker and the parked vCPU threads: it posts the MSR
/// list to read and starts a save round; each vCPU thread fills its slot.
pub struct SaveBoard {
    msr_indices: Mutex<Vec<u32>>,
    slots: Mutex<Vec<Option<SaveResult>>>,
    filled: Condvar,
}

impl SaveBoard {
    /// A board for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        SaveBoard {
            msr_indices: Mutex::new(Vec::new()),
            slots: Mutex::new((0..vcpus).map(|_| None).collect()),
            filled: Condvar::new(),
        }
    }

    /// Taker side: empties the slots and sets the MSRs to read, before a save round.
    pub fn prepare(&self, msr_indices: Vec<u32>) {
        *self.msr_indices.lock().unwrap_or_else(|p| p.into_inner()) = msr_indices;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter_mut().for_each(|slot| *slot = None);
    }

    /// Taker side: waits until every vCPU has posted, or the deadline passes (None).
    pub fn collect(&self, timeout: std::time::Duration) -> Option<Vec<SaveResult>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        while slots.iter().any(Option::is_none) {
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            slots = self
                .filled
                .wait_timeout(slots, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(slots.iter_mut().filter_map(Option::take).collect())
    }

    /// vCPU side: saves this parked vCPU and posts the result. Exits taken while its last
    /// instruction completes go to the devices like any other.
    fn save(&self, vcpu: &mut VcpuFd, index: u8, pio: &PioBus, mmio: &MmioBus) {
        let indices = self
            .msr_indices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let serve = |exit: VcpuExit<'_>| match handle_exit(exit, index, pio, mmio) {
            Action::Continue => Ok(()),
            Action::Exit(exit) => Err(format!("the guest ended the VM: {exit:?}")),
            Action::InternalError => Err("KVM internal error".into()),
        };
        let result = persist::complete_pending_io(vcpu, index, serve)
            .and_then(|()| persist::save_vcpu(vcpu, index, &indices))
            .map_err(|e| e.to_string());
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(usize::from(index)) {
            *slot = Some(result);
        }
        self.filled.notify_all();
    }
}

impl VcpuContext {
    /// Called just before a vCPU's first KVM_RUN. The APs count themselves; the BSP waits
    /// for them so `vcpus_started` really follows every vCPU's start and precedes anything
    /// the guest does (an AP thread may be scheduled late on a busy host).
    fn note_first_run(&self, index: u8) {
        if index != 0 {
            self.started.fetch_add(1, Ordering::AcqRel);
            return;
        }
        while self.started.load(Ordering::Acquire) + 1 < self.vcpu_count
            && self.run_state.requested() == Requested::Running
        {
            std::thread::yield_now();
        }
        // At most 32 vCPUs (checked on the command line), so the count fits.
        let vcpus = self.vcpu_count as u32;
        self.events.emit(|t_us| Event::VcpusStarted { t_us, vcpus });
        self.pio.vcpus_started();
    }
}

enum Action {
    Continue,
    Exit(VmExit),
    InternalError,
}

/// Runs the guest on this thread until it ends the VM; returns why. Returns `None` if the
/// VMM is stopping for another reason.
pub fn run(vcpu: &mut VcpuFd, index: u8, ctx: &VcpuContext) -> Option<VmExit> {
    run_state::register_kvm_run(vcpu.get_kvm_run());
    let mut first = true;
    let mut save_round = 0;
    loop {
        match ctx.run_state.checkpoint(&mut save_round) {
            Checkpoint::Stop => return None,
            Checkpoint::Save => {
                ctx.saves.save(vcpu, index, &ctx.pio, &ctx.mmio);
                continue;
            }
            Checkpoint::Run => {}
        }
        if first {
            first = false;
            ctx.note_first_run(index);
        }
        let action = match vcpu.run() {
            Ok(exit) => handle_exit(exit, index, &ctx.pio, &ctx.mmio),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::Continue,
            Err(e) => Action::Exit(VmExit::Vmm(format!("vCPU {index}: KVM_RUN failed: {e}"))),
        };
        vcpu.set_kvm_immediate_exit(0);
        let exit = match action {
            Action::Continue => continue,
            Action::Exit(exit) => exit,
            Action::InternalError => {
                let suberror = internal_suberror(vcpu);
                if suberror == KVM_INTERNAL_ERROR_EMULATION {
                    VmExit::EmulationFailure(Crash::new(format!(
                        "vCPU {index}: KVM could not emulate an instruction"
                    )))
                } else {
                    VmExit::GuestError(Crash::new(format!(
                        "vCPU {index}: KVM internal error (suberror {suberror})"
                    )))
                }
            }
        };
        // A guest crash: what the vCPU held goes into the exit event (crash_dump).
        return Some(exit.with_vcpu_state(|| crash_dump::read(vcpu, index)));
    }
}

fn handle_exit(exit: VcpuExit<'_>, index: u8, pio: &PioBus, mmio: &MmioBus) -> Action {
    match exit {
        VcpuExit::IoIn(port, data) => {
            pio.read(port, data);
            Action::Continue
        }
        VcpuExit::IoOut(port, data) => pio.write(port, data).map_or(Action::Continue, Action::Exit),
        VcpuExit::MmioRead(addr, data) => {
            mmio.read(addr, data);
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
            Action::Continue
        }
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IoapicEoi(_) => Action::Continue,
        VcpuExit::Shutdown => Action::Exit(VmExit::TripleFault(Crash::new(format!(
            "vCPU {index}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)"
        )))),
        VcpuExit::FailEntry(reason, cpu) => Action::Exit(VmExit::FailEntry(Crash::new(format!(
            "vCPU {index}: VM entry failed on host CPU {cpu}, hardware reason {reason:#x}"
        )))),
        VcpuExit::InternalError => Action::InternalError,
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Action::Exit(VmExit::GuestPoweroff),
            KVM_SYSTEM_EVENT_RESET => Action::Exit(VmExit::GuestReset),
            KVM_SYSTEM_EVENT_CRASH => Action::Exit(VmExit::GuestError(Crash::new(format!(
                "vCPU {index}: the guest reported a crash (KVM system event)"
            )))),
            other => Action::Exit(VmExit::GuestError(Crash::new(format!(
                "vCPU {index}: unhandled KVM system event type {other}"
            )))),
        },
        other => Action::Exit(VmExit::GuestError(Crash::new(format!(
            "vCPU {index}: unhandled KVM exit {}",
            exit_name(&other)
        )))),
    }
}

fn exit_name(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::Unsupported(code) => format!("with exit_reason {code}"),
        other => {
            let text = format!("{other:?}");
            text.split(['(', ' ', '{'])
                .next()
                .unwrap_or("?")
                .to_string()
        }
    }
}

fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: called only right after KVM_EXIT_INTERNAL_ERROR, which selects the `internal`
    // member of the exit union.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::cpuid::{LAPIC_BUS_KHZ, TIMING_LEAF};
    use crate::vstate::{memory, vm};
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::Cap;

    #[test]
    fn kvm_accepts_the_boot_state_of_bsp_and_ap() {
        if !std::path::Path::new("/dev/kvm").exists() {
            // Straight to stderr: the harness would swallow println! of a passing test.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: /dev/kvm not available");
            return;
        }
        let kvm = vm::open_kvm().expect("/dev/kvm opens");
        let mem = memory::create(16).expect("16 MiB");
        let vm_fd = vm::create(&kvm, &mem).expect("VM");
        vm::setup_irqchip(&vm_fd).expect("irqchip");
        let setup = VcpuSetup {
            supported_cpuid: kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .expect("cpuid"),
            vcpu_count: 2,
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            mem,
            entry: EntryMode::Linux64 {
                entry: 0x10_0000,
                zero_page: 0x7000,
            },
        };
        for index in 0..2u8 {
            let fd = vm_fd.create_vcpu(index.into()).expect("vCPU");
            configure(&fd, index, &setup).expect("KVM takes the boot state");
            let cpuid = fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .expect("read back CPUID");
            let leaf1 = cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == 1)
                .expect("leaf 1");
            assert_eq!(leaf1.ebx >> 24, u32::from(index));
            let timing = cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == TIMING_LEAF)
                .expect("timing leaf");
            assert_eq!(timing.ebx, LAPIC_BUS_KHZ);
            assert_eq!(timing.eax, fd.get_tsc_khz().unwrap_or(0));
            let regs = fd.get_regs().expect("regs");
            assert_eq!(
                regs.rip == 0x10_0000,
                index == 0,
                "only the BSP gets boot registers"
            );
        }
    }
}
