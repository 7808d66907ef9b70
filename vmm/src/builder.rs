//! Assembling and starting a VM, in the order that keeps start-up fast: everything that
//! can fail on bad input first (memory, kernel, boot structures), then KVM (VM, memory
//! slots before the irqchip), devices, vCPU threads, and finally the control socket.

use crate::arch::x86_64::boot_params::{self, BootInputs};
use crate::arch::x86_64::mptable;
use crate::arch::x86_64::regs::EntryMode;
use crate::cli::{Config, EventsOut, SerialOut};
use crate::control;
use crate::devices::boot_timer::BootTimer;
use crate::devices::console_cap::CappedConsole;
use crate::devices::i8042::ResetController;
use crate::devices::serial::{Console, ConsoleOut, IrqLine};
use crate::devices::virtio::attach;
use crate::devices::{PioBus, COM1_IRQ};
use crate::error::StartError;
use crate::events::{Clock, EventSink};
use crate::exit::VmExit;
use crate::kernel::{self, Entry};
use crate::machine::Machine;
use crate::seccomp::{self, ThreadKind};
use crate::vstate::cpu_time::VcpuClocks;
use crate::vstate::run_state::{self, RunState};
use crate::vstate::vcpu::{self, VcpuContext, VcpuSetup};
use crate::vstate::{memory, vm};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use std::io::Read;
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
    _vm: VmFd,
    _kvm: Kvm,
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
        // SAFETY: _exit ends the process without running destructors, which is the point:
        // console output is written unbuffered and events were written above.
        unsafe { libc::_exit(code) }
    }
}

/// Builds the VM described by `cfg` and starts its vCPUs.
pub fn start(cfg: &Config, clock: Clock) -> Result<Running, StartError> {
    let events = Arc::new(open_events(cfg.events, clock));
    seccomp::configure(cfg.seccomp, &events);

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
        mem,
        entry,
    });
    let vcpu_fds = (0..cfg.vcpus)
        .map(|index| {
            vm_fd
                .create_vcpu(u64::from(index))
                .map_err(|source| StartError::CreateVcpu { index, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    run_state::install_kick_handler().map_err(StartError::KickHandler)?;

    let (exits_tx, exits) = mpsc::channel();
    let ctx = Arc::new(VcpuContext {
        pio: Arc::clone(&pio),
        mmio,
        run_state: Arc::new(RunState::default()),
        clocks: Arc::new(VcpuClocks::new(cfg.vcpus.into())),
        events: Arc::clone(&events),
        started: AtomicUsize::new(0),
        vcpu_count: cfg.vcpus.into(),
    });
    spawn_vcpus(vcpu_fds, &setup, &ctx, &exits_tx)?;

    if let Some(listener) = listener {
        let machine = Machine {
            run_state: Arc::clone(&ctx.run_state),
            pio: Arc::clone(&pio),
            clocks: Arc::clone(&ctx.clocks),
            clock,
            vcpus: cfg.vcpus.into(),
            mem_mib: cfg.mem_mib,
            exits: exits_tx.clone(),
        };
        control::spawn(listener, Arc::new(machine))?;
    }
    spawn_stdin_reader(pio);
    // Last: filters stack onto threads spawned later, and the BSP waits for this.
    seccomp::seal_main_thread().map_err(StartError::Seccomp)?;

    Ok(Running {
        exits,
        events,
        events_on_stderr: cfg.events == EventsOut::Stderr,
        _vm: vm_fd,
        _kvm: kvm,
    })
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
    fds: Vec<VcpuFd>,
    setup: &Arc<VcpuSetup>,
    ctx: &Arc<VcpuContext>,
    exits: &Sender<VmExit>,
) -> Result<(), StartError> {
    // The BSP must not run before every AP's LAPIC is set up, or its first IPIs can be lost.
    let barrier = Arc::new(Barrier::new(fds.len()));
    for (index, fd) in fds.into_iter().enumerate() {
        let (setup, ctx, exits, barrier) = (
            Arc::clone(setup),
            Arc::clone(ctx),
            exits.clone(),
            Arc::clone(&barrier),
        );
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .stack_size(VCPU_STACK_BYTES)
            .spawn(move || vcpu_thread(fd, index as u8, &setup, &ctx, &barrier, &exits))
            .map_err(|source| StartError::VcpuThread { index, source })?;
    }
    Ok(())
}

fn vcpu_thread(
    mut fd: VcpuFd,
    index: u8,
    setup: &VcpuSetup,
    ctx: &VcpuContext,
    barrier: &Barrier,
    exits: &Sender<VmExit>,
) {
    ctx.clocks.register_current_thread(index.into());
    ctx.run_state.register_current_thread();
    if let Err(e) = vcpu::configure(&fd, index, setup) {
        let _ = exits.send(VmExit::Vmm(e.to_string()));
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
