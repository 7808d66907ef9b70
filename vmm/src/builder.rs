//! Assembling and starting a VM, in the order that keeps start-up fast: everything that
//! can fail on bad input first (memory, kernel, boot structures), then KVM (VM, memory
//! slots before the irqchip), devices, vCPU threads, and finally the control socket.
//!
//! `--restore DIR` takes the same path with the snapshot in place of the kernel: the state
//! file is checked and the memory file mapped copy-on-write first, then the host is
//! compared with the snapshot's, the VM gets its interrupt controllers, PIT and clock back,
//! the vCPUs their saved state, then the devices theirs (a UART may re-raise a pending
//! interrupt, which needs the restored LAPICs); the vCPU threads then start where a cold
//! boot's would configure boot registers.

use crate::arch::x86_64::boot_params::{self, BootInputs};
use crate::arch::x86_64::mptable;
use crate::arch::x86_64::regs::EntryMode;
use crate::cli::{Config, EventsOut, SerialOut};
use crate::control;
use crate::devices::boot_timer::BootTimer;
use crate::devices::console_cap::CappedConsole;
use crate::devices::i8042::ResetController;
use crate::devices::personalisation::PersonalisationPort;
use crate::devices::serial::{Console, ConsoleOut, IrqLine};
use crate::devices::virtio::attach;
use crate::devices::{PioBus, COM1_IRQ, COM2_IRQ};
use crate::error::StartError;
use crate::events::{Clock, EventSink};
use crate::exit::VmExit;
use crate::kernel::{self, Entry};
use crate::machine::Machine;
use crate::seccomp::{self, ThreadKind};
use crate::snapshot::{self, take::Taker};
use crate::step_times::StepTimes;
use crate::vstate::cpu_time::VcpuClocks;
use crate::vstate::persist::{self, VcpuState};
use crate::vstate::run_state::{self, RunState};
use crate::vstate::vcpu::{self, SaveBoard, VcpuContext, VcpuSetup};
use crate::vstate::{memory, vm};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;
use vmm_protocol::Event;
use vmm_sys_util::eventfd::EventFd;

/// Stack for vCPU threads: the run loop is shallow.
const VCPU_STACK_BYTES: usize = 256 * 1024;

/// A started guest. Dropping it would tear the VM down slowly; [`Running::finish`] ends the
/// process instead.
pub struct Running {
    exits: Receiver<VmExit>,
    events: Arc<EventSink>,
    /// Whether the event stream is stderr itself (else the exit event is copied there).
    events_on_stderr: bool,
    _vm: Arc<VmFd>,
    _kvm: Arc<Kvm>,
    /// Guest RAM stays mapped for as long as the VM runs; nothing may unmap it (or close a
    /// restored guest's memory file) behind KVM's back.
    _mem: GuestMemoryMmap,
}

impl Running {
    /// Blocks until something ends the VM.
    pub fn wait(&self) -> VmExit {
        self.exits.recv().unwrap_or_else(|_| {
            VmExit::Vmm("every vCPU thread ended without an exit reason".into())
        })
    }

    /// Reports `exit` and ends the process at once, leaving the slow VM teardown to the
    /// kernel after the event is out.
    pub fn finish(self, exit: VmExit) -> ! {
        let code = exit.code();
        let mut line = None;
        self.events.emit(|t_us| {
            let event = Event::Exit {
                t_us,
                code,
                detail: exit.detail().map(str::to_owned),
                reason: exit.reason(),
                vcpu_state: exit.crash().and_then(|c| c.vcpu_state.clone()),
            };
            line = Some(event.to_line());
            event
        });
        // Also on stderr (the supervisor's log of this VMM): whoever lost the event stream
        // (a supervisor restarted while the guest ran) still learns why the VM ended.
        if let Some(line) = line.filter(|_| !self.events_on_stderr) {
            eprint!("{line}");
        }
        if let Some(detail) = exit.detail() {
            eprintln!("coinop-vmm: {}: {detail}", exit.reason());
        }
        if let Some(dump) = exit.crash().and_then(|c| c.vcpu_state.as_deref()) {
            eprintln!("coinop-vmm: {}: {dump}", exit.reason());
        }
        // SAFETY: _exit ends the process without running destructors, which is the point:
        // console output is written unbuffered and events were written above.
        unsafe { libc::_exit(code) }
    }
}

/// Builds the VM described by `cfg` (booting its kernel, or restoring its snapshot) and
/// starts its vCPUs.
pub fn start(cfg: &Config, clock: Clock) -> Result<Running, StartError> {
    let events = Arc::new(open_events(cfg.events, clock));
    seccomp::configure(cfg.seccomp, &events);
    if let Some(dir) = &cfg.restore {
        return restore(cfg, dir, events, clock);
    }

    let mem = memory::create(cfg.mem_mib)?;
    let entry = load_guest(cfg, &mem)?;
    let console_out = open_console(&cfg.serial, cfg.serial_max_bytes)?;
    let listener = cfg.control.as_ref().map(control::listen).transpose()?;
    let virtio_devices = attach::open(&cfg.disks, &cfg.nets)?;

    let kvm = vm::open_kvm()?;
    let vm_fd = vm::create(&kvm, &mem)?;
    vm::setup_irqchip(&vm_fd)?;
    events.emit(|t_us| Event::VmCreated { t_us });

    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(StartError::Com1Eventfd)?;
    vm_fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(StartError::Com1Irqfd)?;
    let pio = Arc::new(PioBus::new(
        Console::new(IrqLine(irq), console_out),
        PersonalisationPort::new(com2_irq(&vm_fd)?, Arc::clone(&events)),
        ResetController::default(),
        BootTimer::new(Arc::clone(&events)),
    ));

    let mmio = Arc::new(attach::register(virtio_devices, &vm_fd, &mem)?);

    let setup = Arc::new(VcpuSetup {
        supported_cpuid: kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(StartError::SupportedCpuid)?,
        vcpu_count: cfg.vcpus,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        mem: mem.clone(),
        entry,
    });
    let vcpus = (0..cfg.vcpus)
        .map(|index| {
            let fd = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(|source| StartError::CreateVcpu { index, source })?;
            Ok((fd, VcpuInit::Boot(Arc::clone(&setup))))
        })
        .collect::<Result<Vec<_>, StartError>>()?;
    let parts = Parts {
        kvm: Arc::new(kvm),
        vm: Arc::new(vm_fd),
        mem,
        mem_mib: cfg.mem_mib,
        pio,
        mmio,
        events,
        events_on_stderr: cfg.events == EventsOut::Stderr,
        listener,
        clock,
    };
    launch(parts, vcpus)
}

/// A VM with memory, irqchip and devices, ready for its vCPUs.
struct Parts {
    kvm: Arc<Kvm>,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    mem_mib: u64,
    pio: Arc<PioBus>,
    mmio: Arc<crate::devices::mmio_bus::MmioBus>,
    events: Arc<EventSink>,
    /// Whether the event stream is stderr itself (see [`Running`]).
    events_on_stderr: bool,
    listener: Option<std::os::unix::net::UnixListener>,
    clock: Clock,
}

/// How a vCPU gets its first state.
enum VcpuInit {
    /// Cold boot: CPUID, MSRs, LAPIC, and boot registers on the BSP.
    Boot(Arc<VcpuSetup>),
    /// Restore: everything the snapshot saved is already loaded ([`load_vcpus`]).
    Restored,
}

/// Starts the vCPU threads, the control socket and the stdin reader, and
/// seals the main thread.
fn launch(parts: Parts, vcpus: Vec<(VcpuFd, VcpuInit)>) -> Result<Running, StartError> {
    let vcpu_count = vcpus.len();
    run_state::install_kick_handler().map_err(StartError::KickHandler)?;

    let (exits_tx, exits) = mpsc::channel();
    let saves = Arc::new(SaveBoard::new(vcpu_count));
    let ctx = Arc::new(VcpuContext {
        pio: Arc::clone(&parts.pio),
        mmio: Arc::clone(&parts.mmio),
        run_state: Arc::new(RunState::default()),
        clocks: Arc::new(VcpuClocks::new(vcpu_count)),
        events: Arc::clone(&parts.events),
        started: AtomicUsize::new(0),
        vcpu_count,
        saves: Arc::clone(&saves),
    });
    spawn_vcpus(vcpus, &ctx, &exits_tx)?;

    if let Some(listener) = parts.listener {
        let machine = Machine {
            run_state: Arc::clone(&ctx.run_state),
            pio: Arc::clone(&parts.pio),
            clocks: Arc::clone(&ctx.clocks),
            clock: parts.clock,
            vcpus: vcpu_count,
            mem_mib: parts.mem_mib,
            exits: exits_tx.clone(),
            snapshots: Taker {
                kvm: Arc::clone(&parts.kvm),
                vm: Arc::clone(&parts.vm),
                mem: parts.mem.clone(),
                saves,
                pio: Arc::clone(&parts.pio),
                mmio: parts.mmio,
                mem_mib: parts.mem_mib,
            },
        };
        control::spawn(listener, Arc::new(machine))?;
    }
    spawn_stdin_reader(parts.pio);
    // Last: filters stack onto threads spawned later, and the BSP waits for this.
    seccomp::seal_main_thread().map_err(StartError::Seccomp)?;

    Ok(Running {
        exits,
        events: parts.events,
        events_on_stderr: parts.events_on_stderr,
        _vm: parts.vm,
        _kvm: parts.kvm,
        _mem: parts.mem,
    })
}

/// `--restore DIR`: the VM of a snapshot, its vCPUs started where they were saved.
fn restore(
    cfg: &Config,
    dir: &Path,
    events: Arc<EventSink>,
    clock: Clock,
) -> Result<Running, StartError> {
    let mut steps = StepTimes::start(clock, "restore");
    let loaded = snapshot::load(dir)?;
    steps.mark("state");
    // Every check before anything is made: a refused snapshot leaves no console file,
    // control socket or tap behind.
    let kvm = vm::open_kvm()?;
    loaded.check_host(&kvm)?;
    loaded.check_memory(crate::cli::host_memory_mib())?;
    loaded.check_device_count(cfg.disks.len() + cfg.nets.len())?;
    steps.mark("host_check");
    let mem = loaded.map_memory()?;
    steps.mark("memory");
    let (console_out, listener, virtio_devices) = open_restore_io(cfg)?;
    steps.mark("files");
    let vm_fd = vm::create(&kvm, &mem)?;
    steps.mark("vm");
    vm::setup_irqchip(&vm_fd)?;
    steps.mark("irqchip");
    events.emit(|t_us| Event::VmCreated { t_us });
    let state = loaded.state;
    persist::restore_vm(&vm_fd, &state.vm).map_err(StartError::RestoreState)?;
    steps.mark("vm_state");
    let vcpus = load_vcpus(&vm_fd, &state.vcpus)?
        .into_iter()
        .map(|fd| (fd, VcpuInit::Restored))
        .collect();
    steps.mark("vcpus");
    let mmio = Arc::new(attach::register(virtio_devices, &vm_fd, &mem)?);
    steps.mark("virtio");
    // The devices' saved state goes in last, once every LAPIC is restored: a UART brought
    // back with a transmit or receive interrupt pending raises it again at once, and with
    // no vCPU (or a LAPIC still in its reset state) to take it, the IOAPIC would drop that
    // edge and leave the guest's driver waiting for an interrupt that never comes.
    let pio = restore_pio_devices(&vm_fd, &events, &state, console_out)?;
    mmio.restore_all(&state.virtio)
        .map_err(|e| snapshot::Error::Devices {
            dir: dir.display().to_string(),
            detail: e.to_string(),
        })?;
    steps.mark("devices");
    steps.report();
    let parts = Parts {
        kvm: Arc::new(kvm),
        vm: Arc::new(vm_fd),
        mem,
        mem_mib: state.mem_mib,
        pio,
        mmio,
        events,
        events_on_stderr: cfg.events == EventsOut::Stderr,
        listener,
        clock,
    };
    launch(parts, vcpus)
}

/// Creates the snapshot's vCPUs and loads each one's saved state, on this thread: a
/// handful of ioctls each, cheaper than handing them to a thread on a loaded host.
fn load_vcpus(vm_fd: &VmFd, states: &[VcpuState]) -> Result<Vec<VcpuFd>, StartError> {
    states
        .iter()
        .enumerate()
        .map(|(index, state)| {
            // At most 32 vCPUs (checked when the snapshot is loaded), so the index fits.
            let index = index as u8;
            let fd = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(|source| StartError::CreateVcpu { index, source })?;
            persist::restore_vcpu(&fd, index, state).map_err(StartError::RestoreState)?;
            Ok(fd)
        })
        .collect()
}

/// The port-I/O devices of a snapshot with their saved state, their interrupt lines on
/// `vm_fd`.
fn restore_pio_devices(
    vm_fd: &VmFd,
    events: &Arc<EventSink>,
    state: &snapshot::MachineState,
    console_out: ConsoleOut,
) -> Result<Arc<PioBus>, StartError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(StartError::Com1Eventfd)?;
    vm_fd
        .register_irqfd(&irq, COM1_IRQ)
        .map_err(StartError::Com1Irqfd)?;
    let console = Console::restore(IrqLine(irq), console_out, &state.devices.console)?;
    let personalisation = PersonalisationPort::restore(
        com2_irq(vm_fd)?,
        Arc::clone(events),
        &state.devices.personalisation,
        state.devices.guest_was_ready,
    )?;
    Ok(Arc::new(PioBus::new(
        console,
        personalisation,
        ResetController::default(),
        BootTimer::restored(Arc::clone(events), state.devices.guest_was_ready),
    )))
}

/// What a restore opens on the host besides KVM: the console sink, the control socket and
/// the virtio backends.
type RestoreIo = (
    ConsoleOut,
    Option<std::os::unix::net::UnixListener>,
    Vec<attach::Opened>,
);

fn open_restore_io(cfg: &Config) -> Result<RestoreIo, StartError> {
    let console_out = open_console(&cfg.serial, cfg.serial_max_bytes)?;
    let listener = cfg.control.as_ref().map(control::listen).transpose()?;
    let virtio_devices = attach::open(&cfg.disks, &cfg.nets)?;
    Ok((console_out, listener, virtio_devices))
}

/// The personalisation port's interrupt line: an eventfd KVM turns into GSI 3.
fn com2_irq(vm_fd: &VmFd) -> Result<IrqLine, StartError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(StartError::Com2Eventfd)?;
    vm_fd
        .register_irqfd(&irq, COM2_IRQ)
        .map_err(StartError::Com2Irqfd)?;
    Ok(IrqLine(irq))
}

/// Loads kernel, initrd and command line and writes the boot structures; returns the
/// BSP's entry.
fn load_guest(cfg: &Config, mem: &GuestMemoryMmap) -> Result<EntryMode, StartError> {
    let kernel = kernel::load_kernel(mem, &cfg.kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|path| kernel::load_initrd(mem, path, kernel.end))
        .transpose()?;
    let cmdline = cfg.cmdline.clone() + &attach::cmdline_words(cfg.disks.len() + cfg.nets.len());
    let cmdline_size = kernel::load_command_line(mem, cmdline.trim_start())?;
    let ram = memory::ram_regions(cfg.mem_mib << 20);
    let inputs = BootInputs {
        ram: &ram,
        cmdline_size,
        initrd,
        setup_header: kernel.setup_header,
    };
    let entry = match kernel.entry {
        Entry::Pvh(entry) => EntryMode::Pvh {
            entry,
            start_info: boot_params::write_pvh_start_info(mem, &inputs)?,
        },
        Entry::Linux64(entry) => EntryMode::Linux64 {
            entry,
            zero_page: boot_params::write_linux_zero_page(mem, &inputs)?,
        },
    };
    mptable::write(mem, cfg.vcpus)?;
    Ok(entry)
}

fn open_events(out: EventsOut, clock: Clock) -> EventSink {
    let fd = match out {
        EventsOut::Stderr => libc::STDERR_FILENO,
        EventsOut::Fd(fd) => fd,
    };
    // SAFETY: stderr, or an fd validated as open during argument checking; the VMM never
    // closes it.
    unsafe { EventSink::from_fd(fd, clock) }
}

fn open_console(out: &SerialOut, max_bytes: Option<u64>) -> Result<ConsoleOut, StartError> {
    let sink: ConsoleOut = match out {
        SerialOut::Stdout => Box::new(std::io::stdout()),
        SerialOut::None => return Ok(Box::new(std::io::sink())),
        SerialOut::File(path) => {
            Box::new(
                std::fs::File::create(path).map_err(|source| StartError::SerialFile {
                    path: path.display().to_string(),
                    source,
                })?,
            )
        }
    };
    Ok(match max_bytes {
        Some(max) => Box::new(CappedConsole::new(sink, max)),
        None => sink,
    })
}

fn spawn_vcpus(
    vcpus: Vec<(VcpuFd, VcpuInit)>,
    ctx: &Arc<VcpuContext>,
    exits: &Sender<VmExit>,
) -> Result<(), StartError> {
    // The BSP must not run before every AP's LAPIC is set up, or its first IPIs can be lost.
    let barrier = Arc::new(Barrier::new(vcpus.len()));
    for (index, (fd, init)) in vcpus.into_iter().enumerate() {
        let (ctx, exits, barrier) = (Arc::clone(ctx), exits.clone(), Arc::clone(&barrier));
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(VCPU_STACK_BYTES)
            .spawn(move || vcpu_thread(fd, index as u8, &init, &ctx, &barrier, &exits))
            .map_err(|source| StartError::VcpuThread { index, source })?;
    }
    Ok(())
}

fn vcpu_thread(
    mut fd: VcpuFd,
    index: u8,
    init: &VcpuInit,
    ctx: &VcpuContext,
    barrier: &Barrier,
    exits: &Sender<VmExit>,
) {
    ctx.clocks.register_current_thread(index.into());
    ctx.run_state.register_current_thread();
    let loaded = match init {
        VcpuInit::Boot(setup) => vcpu::configure(&fd, index, setup).map_err(|e| e.to_string()),
        VcpuInit::Restored => Ok(()),
    };
    if let Err(e) = loaded {
        let _ = exits.send(VmExit::Vmm(e));
        park_forever();
    }
    if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
        let _ = exits.send(VmExit::Vmm(e.to_string()));
        park_forever();
    }
    if index == 0 {
        // No guest instruction before every VMM thread is filtered.
        seccomp::wait_until_sealed();
    }
    barrier.wait();
    if index == 0 && matches!(init, VcpuInit::Restored) {
        // Past the barrier every vCPU holds its saved state.
        ctx.events.emit(|t_us| Event::Restored { t_us });
    }
    if let Some(exit) = vcpu::run(&mut fd, index, ctx) {
        let _ = exits.send(exit);
    }
    // Keep the vCPU fd open: the process is about to exit and closing it would only add
    // teardown work on this thread.
    park_forever();
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Feeds the VMM's stdin to COM1 until EOF.
fn spawn_stdin_reader(pio: Arc<PioBus>) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            seccomp::install_or_exit(ThreadKind::Main);
            let mut buf = [0u8; 4096];
            let stdin = std::io::stdin();
            loop {
                let n = match stdin.lock().read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                while pio.console().input(&buf[..n]).is_err() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
    // Without the reader the guest just gets no stdin input; not worth failing the boot.
    drop(spawned);
}
