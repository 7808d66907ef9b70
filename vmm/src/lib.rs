//! `coinop-vmm`: a KVM microVM monitor, one process per guest.
//!
//! The binary boots one guest on `/dev/kvm` and lives exactly as long as it. Everything a
//! caller (coinopd, a script, the benchmark harness) needs is on three channels: the command
//! line, a JSON-lines control socket, and a JSON-lines event stream. There is no HTTP and no
//! async runtime: the process must start in a few milliseconds and stay small.
//!
//! # Command line
//! ```text
//! coinop-vmm --kernel PATH [--initrd PATH] [--cmdline STR | --cmdline-fd N] [--vcpus N] [--mem-mib M]
//!            [--serial stdout|file:PATH|none] [--control PATH|fd:N] [--events stderr|fd:N]
//!            [--start-time-us T] [--no-seccomp]
//!            [--disk path=FILE[,ro][,cow=OVERLAY][,bw=BYTES_PER_S][,iops=N]]...
//!            [--net tap=NAME|fd=N,mac=AA:BB:CC:DD:EE:FF[,bw=BYTES_PER_S]]...
//! coinop-vmm --restore DIR [--disk ...]... [--net ...]... [--serial ...] [--control ...]
//!            [--events ...] [--start-time-us T] [--no-seccomp]
//! ```
//! `--restore DIR` starts the guest from a snapshot the control command `snapshot` wrote
//! (see [`snapshot`]): vCPUs, memory and devices are the snapshot's, so the kernel and
//! machine flags are refused beside it; `--disk`/`--net` then give the backends of the
//! snapshot's virtio devices (same number, kinds and order). Its memory is mapped copy-on-write from
//! `DIR/memory`. A snapshot from another coinop-vmm version, from a host whose CPUID/KVM
//! capabilities differ, or that is corrupt or truncated ends the VMM with code 2 and one
//! line naming the problem.
//! `--cmdline-fd N` reads the command line from an inherited fd (a memfd or pipe, to its end)
//! instead of an argument, which every local user can read in `/proc/PID/cmdline`: coinopd
//! passes a tenant's command line this way.
//! `--net tap=NAME` opens (or, with CAP_NET_ADMIN, creates) the tap itself; `--net fd=N`
//! takes a tap the parent opened and attached (TUNSETIFF with IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR) and left open as fd N, which is how coinopd hands a host tap to a VMM
//! jailed in its own network namespace. Either way the VMM sets the vnet header size and
//! turns offloads off itself, before seccomp is on (no extra syscall in the filters).
//! Each `--disk`/`--net` (disks first, at most 9 in all) becomes a virtio-mmio device at
//! 0xd0000000 + 4 KiB × n, announced by appending `virtio_mmio.device=4K@ADDR:IRQ` to the
//! kernel command line (see [`devices::virtio`]).
//! Every thread runs under a seccomp allow-list (see [`seccomp`]); `--no-seccomp` is for
//! debugging only and announces itself with a `warning` event.
//! `--vcpus` is 1..=32 (default 1), `--mem-mib` defaults to 128. `--start-time-us` is the
//! caller's `CLOCK_MONOTONIC` reading (µs) taken just before it spawned the VMM, so event times
//! include the spawn cost; without it, times count from the VMM's own start.
//!
//! # Exit codes
//! | code | meaning |
//! |---|---|
//! | 0 | the guest powered off or rebooted (i8042 reset), or it was stopped on request |
//! | 1 | an internal error of the VMM (a bug); the message says where |
//! | 2 | bad arguments or unusable input: missing/corrupt kernel, 0 or >32 vCPUs, 0 MiB or more memory than the host has, /dev/kvm missing or denied, an unusable `--restore` snapshot. One line on stderr. |
//! | 3 | the guest crashed: triple fault, emulation failure, failed entry. The reason is on stderr and in the `exit` event. |
//!
//! # Events
//! One JSON object per line on stderr (default) or on the inherited fd given by
//! `--events fd:N`. Every event has `event` and `t_us` (µs since `--start-time-us`, or since
//! the VMM started):
//! ```text
//! {"event":"vm_created","t_us":812}
//! {"event":"restored","t_us":1010}                     --restore only: saved state loaded
//! {"event":"vcpus_started","t_us":1290,"vcpus":2}      first KVM_RUN issued on every vCPU
//! {"event":"awaiting_personalisation","t_us":1700}     the guest wrote 124 to port 0x3f0
//!                                                      (restored while waiting: right
//!                                                      after vcpus_started)
//! {"event":"personalised","t_us":2300,"data_reads":1}  the guest read the whole
//!                                                      `personalise` line from COM2, in
//!                                                      this many data-register reads
//!                                                      (VM exits; a `rep insb` is one)
//! {"event":"guest_ready","t_us":2480,"vmhwm_kib":2028} the guest wrote 123 to port 0x3f0
//!                                                      (restored: see devices::boot_timer);
//!                                                      vmhwm_kib: the VMM's peak RSS
//!                                                      (VmHWM) then, absent without /proc
//! {"event":"exit","t_us":9120,"reason":"guest_reset","code":0}
//! ```
//! Exit reasons: `guest_reset` (i8042 0xFE on port 0x64), `guest_poweroff` (KVM system event),
//! `stopped` (control `stop`), `triple_fault`, `emulation_failure`, `fail_entry`,
//! `internal_error`. `code` is the process exit code.
//! Failed exits also carry `detail`, a human explanation naming the vCPU and the KVM exit.
//! A guest crash a vCPU reported (code 3: `triple_fault`, `emulation_failure`, `fail_entry`,
//! `internal_error` from KVM) also carries `vcpu_state`, that vCPU's registers read right
//! after the exit (registers as hex strings; see `vmm_protocol::VcpuDump`), and the same on
//! one stderr line `coinop-vmm: REASON: vCPU N state: rip ... `:
//! ```text
//! {"event":"exit","t_us":16743,"code":3,"detail":"vCPU 0: the guest triple-faulted (KVM_EXIT_SHUTDOWN)",
//!  "reason":"triple_fault","vcpu_state":{"cr0":"0x80000011","cr2":"0x0","cr3":"0x102000",
//!  "cr4":"0x20","cs":{"base":"0x0","dpl":0,"selector":8},"efer":"0x500",
//!  "gdt":{"base":"0x500","limit":31},"idt":{"base":"0x0","limit":0},
//!  "nmi":{"injected":false,"masked":false,"pending":false},"reset_state":false,
//!  "rflags":"0x10046","rip":"0x100dd8","rsp":"0x10d758","ss":{"base":"0x0","dpl":0,"selector":16},"vcpu":0}}
//! ```
//! (one line on the wire). `exception` (vector, error code, injected/pending) and
//! `interrupt` appear when KVM holds one for the vCPU. `reset_state: true` means KVM had
//! re-initialised the vCPU before the VMM could read it (AMD does after a shutdown the
//! CPU detected itself): the registers are then the INIT state, not the guest's.
//! `internal_error` has code 3 when KVM reports an internal error, a guest crash event or
//! an exit the VMM does not handle, and code 1 when the VMM itself failed.
//!
//! `awaiting_personalisation` and `personalised` come only from guests that use the
//! personalisation port (below); each at most once.
//!
//! With `--events fd:N`, the boot-timing events (`vm_created`, `restored`, `vcpus_started`,
//! `awaiting_personalisation`, `personalised`, `guest_ready`) and `exit` are also copied to
//! stderr, each after it went to fd N, so that a
//! supervisor that lost fd N (restarted while the guest ran) can read them from its log.
//!
//! # Control protocol
//! A Unix stream socket (`--control PATH` creates and listens on PATH; `--control fd:N`
//! uses an inherited listening socket). Any number of clients in turn; each request is one
//! JSON object on one line, each reply one JSON object on one line:
//! ```text
//! → {"cmd":"status"}
//! ← {"ok":true,"state":"running","vcpus":2,"mem_mib":128,"uptime_us":53122}
//!   (+ "line_crc32":N once a `personalise` line was accepted: its CRC-32, newline excluded;
//!    + "ring_unheeded_us":N while a `ring` waits for a doorbell guest to heed it: how long)
//! → {"cmd":"pause"}
//! ← {"ok":true,"state":"paused"}
//! → {"cmd":"resume"}
//! ← {"ok":true,"state":"running"}
//! → {"cmd":"usage"}
//! ← {"ok":true,"vcpu_us":[1520,980],"vcpu_total_us":2500,"mem_mib":128,"uptime_us":60210,
//!    "state":"running"}                               (the state as `status` says it)
//! → {"cmd":"console_input","data":"hello\n"}          UTF-8 text for the guest's COM1
//! ← {"ok":true}
//! → {"cmd":"snapshot","dir":"/srv/snap","exit":false}  pause, write DIR/state + DIR/memory
//! ← {"ok":true,"state":"running"}                      (`exit`: true → "stopping", then exit)
//! → {"cmd":"personalise","line":"coinop-personalise/1 entropy=..."}   see below
//! ← {"ok":true}
//! → {"cmd":"ring"}                                     RI in COM2's MSR until a line comes
//! ← {"ok":true}
//! → {"cmd":"stop"}
//! ← {"ok":true,"state":"stopping"}
//! → {"cmd":"bogus"}
//! ← {"ok":false,"error":"unknown command 'bogus'"}
//! ```
//! `personalise` hands the guest its per-lease line (printable ASCII 0x20-0x7e, at most 4096
//! bytes, no newline): the VMM queues it plus `\n` for the personalisation port and delivers
//! it once the guest has written 124 (at once if it already has, also in a guest restored
//! from a snapshot taken after the 124). It is accepted once per guest: a second line, a
//! longer one or one with any other byte gets `{"ok":false,"error":...}` and nothing is
//! delivered. `ring`, before the line, tells a waiting guest it has time to spare (coinopd
//! rings guests restored ahead of their lease); refused once the line was accepted. A guest
//! that turned the port's doorbell on is woken by an interrupt for each (a line it can
//! read, a ring) instead of polling. See [`devices::personalisation`].
//!
//! `vcpu_us` is the CPU time each vCPU thread really consumed (the kernel's per-thread
//! accounting), so metering bills what the guest burned, not wall time. A paused guest's
//! `vcpu_us` stays flat.
//!
//! # Guest-facing contract
//! - Memory: RAM from 0, with the 32-bit MMIO gap below 4 GiB; the e820 map in boot_params
//!   (and in the PVH start info) says which ranges are RAM.
//! - Entry: an ELF with a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) is entered at that 32-bit
//!   entry with EBX = `hvm_start_info`; other ELFs at `e_entry` in 64-bit mode with RSI =
//!   boot_params (identity-mapped page tables for the first 1 GiB, flat GDT); a bzImage
//!   through its 64-bit entry.
//! - CPUID leaf 0x4000_0010: EAX = TSC frequency in kHz, EBX = LAPIC bus frequency in kHz,
//!   so a guest can measure time without calibrating.
//! - An MP table in the BIOS area lists every vCPU (APIC ids 0..N-1) and routes ISA IRQs
//!   0-15 to the IOAPIC pins of the same number.
//!
//! | device | where | what |
//! |---|---|---|
//! | COM1, the console (16550A) | port 0x3f8, IRQ 4 | output to `--serial`; input from stdin and `console_input` |
//! | COM2, the personalisation port (16550A) | port 0x2f8, IRQ 3 | input: the `personalise` line + `\n`, once the guest wrote 124 (a `rep insb` on 0x2f8 reads it in bulk, then 0s); output discarded |
//! | i8042 | ports 0x60, 0x64 | 0xFE to port 0x64 (reset) ends the VMM with code 0 |
//! | boot timer | port 0x3f0 | 123: `guest_ready`; 124: `awaiting_personalisation` |
//! | virtio-mmio disks and NICs | 0xd0000000 + 4 KiB × n, IRQs 5, 6, 7, 9, ... | `--disk`, `--net` |
//!
//! Both UARTs are always present (a legacy port costs nothing and a flag would be one more
//! thing for coinopd to get right) and wired alike. A Linux guest built with
//! `CONFIG_SERIAL_8250_RUNTIME_UARTS=1` needs `8250.nr_uarts=2` on its command line to see
//! COM2 as /dev/ttyS1; a guest that never touches COM2 is unaffected by it.
//!
//! # Layout of this crate
//! [`builder`] assembles a VM in one readable sequence; [`vstate`] holds the KVM objects
//! (memory, VM, vCPUs, their run state); [`arch::x86_64`] the boot structures (GDT, page
//! tables, CPUID, MSRs, MP table, e820/zero page/PVH start info, LAPIC); [`devices`] the
//! emulated port-I/O devices; [`snapshot`] snapshot files, taking and checking them;
//! [`control`] and [`events`] the two JSON-lines channels, whose
//! messages are the types of the `vmm-protocol` crate (shared with coinopd and the benches);
//! [`cli`], [`error`] and [`exit`] the command line, start-up errors and exit codes.

pub mod arch;
pub mod builder;
pub mod cli;
pub mod control;
pub mod device_specs;
pub mod devices;
pub mod error;
pub mod events;
pub mod exit;
pub mod kernel;
pub mod machine;
pub mod seccomp;
pub mod snapshot;
pub mod step_times;
pub mod vstate;

use events::Clock;

/// Runs the VMM for `args` (including argv\[0\]); `started_us` is CLOCK_MONOTONIC at
/// process start. Returns the exit code on paths that end before a guest runs; once the
/// guest runs, the process ends inside [`builder::Running::finish`].
pub fn run<I, T>(args: I, started_us: u64) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let (config, start_time) = match cli::parse(args, cli::host_memory_mib()) {
        Ok(cli::Parsed::Run(config, start_time)) => (config, start_time),
        Ok(cli::Parsed::Info(text)) => {
            print!("{text}");
            return 0;
        }
        Err(e) => {
            eprintln!("coinop-vmm: {e}");
            return 2;
        }
    };
    let clock = Clock::from_base(start_time.unwrap_or(started_us));
    match builder::start(&config, clock) {
        Ok(running) => {
            let exit = running.wait();
            running.finish(exit)
        }
        Err(e) => {
            eprintln!("coinop-vmm: {e}");
            e.exit_code()
        }
    }
}
