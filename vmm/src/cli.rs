//! Command-line parsing and validation into a [`Config`]; everything checkable without KVM
//! is checked here so bad input fails fast with exit code 2.

use crate::device_specs::{self, DiskSpec, NetSpec, TapSource};
use clap::Parser;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Most vCPUs a guest may have.
pub const MAX_VCPUS: u32 = 32;

/// The raw command line.
#[derive(Debug, Parser)]
#[command(
    name = "coinop-vmm",
    version,
    about = "coinop KVM microVM monitor: one process per guest"
)]
pub struct Args {
    /// Kernel image: an ELF vmlinux (PVH note honoured) or a bzImage.
    #[arg(long, required_unless_present = "restore")]
    pub kernel: Option<PathBuf>,
    /// Start from the snapshot in this directory (written by the control command
    /// `snapshot`) instead of booting a kernel; the guest's vCPUs and memory are the
    /// snapshot's. Its virtio devices get the backends of `--disk`/`--net`, which must
    /// match the snapshot's devices in number, kind and order.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "cmdline", "cmdline_fd", "vcpus", "mem_mib"])]
    pub restore: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Kernel command line read from this inherited fd (to its end; the fd is closed),
    /// instead of `--cmdline`: a process's arguments are readable by every local user in
    /// /proc/PID/cmdline, its open files are not.
    #[arg(long = "cmdline-fd", value_name = "N", conflicts_with = "cmdline", value_parser = parse_fd_number)]
    pub cmdline_fd: Option<RawFd>,
    /// Number of vCPUs (1..=32).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long = "mem-mib", default_value_t = 128)]
    pub mem_mib: u64,
    /// Console output: stdout, file:PATH or none.
    #[arg(long, default_value = "stdout", value_parser = parse_serial)]
    pub serial: SerialOut,
    /// Console output kept at most, in bytes; after it one marker line, then nothing
    /// (a guest printing without end must not fill the host's disk).
    #[arg(long = "serial-max-bytes")]
    pub serial_max_bytes: Option<u64>,
    /// Control socket: a path to create, or fd:N for an inherited listening socket.
    #[arg(long, value_parser = parse_control)]
    pub control: Option<ControlSocket>,
    /// Event stream: stderr or fd:N.
    #[arg(long, default_value = "stderr", value_parser = parse_events)]
    pub events: EventsOut,
    /// The caller's CLOCK_MONOTONIC reading in µs just before spawning the VMM.
    #[arg(long = "start-time-us")]
    pub start_time_us: Option<u64>,
    /// Debugging only: run without seccomp filters (announced by a `warning` event).
    #[arg(long = "no-seccomp")]
    pub no_seccomp: bool,
    /// Test builds only: this thread kind (main, vcpu, control, device) calls a forbidden syscall.
    #[cfg(feature = "seccomp-selftest")]
    #[arg(long = "seccomp-selftest", hide = true, value_parser = parse_thread_kind)]
    pub seccomp_selftest: Option<crate::seccomp::ThreadKind>,
    /// A virtio disk: path=FILE[,ro][,cow=OVERLAY][,bw=BYTES_PER_S][,iops=N]; repeatable.
    #[arg(long = "disk", value_parser = device_specs::parse_disk)]
    pub disks: Vec<DiskSpec>,
    /// A virtio NIC on a tap: tap=NAME,mac=AA:BB:CC:DD:EE:FF[,bw=BYTES_PER_S]; repeatable.
    #[arg(long = "net", value_parser = device_specs::parse_net)]
    pub nets: Vec<NetSpec>,
}

/// Where console output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOut {
    /// The VMM's stdout.
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    None,
}

/// The control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlSocket {
    /// Create and listen at this path.
    Path(PathBuf),
    /// An inherited listening socket.
    Fd(RawFd),
}

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsOut {
    /// The VMM's stderr.
    Stderr,
    /// An inherited fd.
    Fd(RawFd),
}

/// Invalid arguments; all map to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// clap rejected the command line.
    #[error("{0}")]
    Syntax(String),
    /// --vcpus out of range.
    #[error("--vcpus {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
    /// --mem-mib 0.
    #[error("--mem-mib 0: the guest needs some memory")]
    NoMemory,
    /// --mem-mib beyond the host.
    #[error("--mem-mib {requested}: more than the host's {host} MiB of RAM")]
    TooMuchMemory {
        /// Asked for.
        requested: u64,
        /// Host MemTotal.
        host: u64,
    },
    /// --cmdline too long.
    #[error("--cmdline is {0} bytes; at most {max} fit", max = crate::arch::x86_64::layout::CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    /// More --disk and --net than free IRQ lines.
    #[error("{0} --disk/--net devices: at most {max} fit", max = crate::devices::virtio::DEVICE_GSIS.len())]
    TooManyDevices(usize),
    /// `--cmdline-fd N` could not be read.
    #[error("--cmdline-fd {fd}: cannot read it: {source}")]
    CmdlineRead {
        /// The fd.
        fd: RawFd,
        /// Why.
        source: std::io::Error,
    },
    /// `--cmdline-fd N` held something no kernel command line can be.
    #[error("--cmdline-fd {fd}: the command line is not text (invalid UTF-8 or a NUL byte)")]
    CmdlineNotText {
        /// The fd.
        fd: RawFd,
    },
    /// An fd:N that is not open.
    #[error("{flag} fd:{fd}: not an open file descriptor")]
    BadFd {
        /// The flag.
        flag: &'static str,
        /// The fd.
        fd: RawFd,
    },
    /// One inherited fd named for two channels.
    #[error("fd {0} is named more than once among --events fd:N, --control fd:N, --cmdline-fd N and --net fd=N")]
    FdTwice(RawFd),
}

fn parse_fd(value: &str) -> Option<Result<RawFd, String>> {
    value.strip_prefix("fd:").map(|n| {
        n.parse::<RawFd>()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| format!("'{value}': fd:N needs a non-negative number"))
    })
}

fn parse_fd_number(value: &str) -> Result<RawFd, String> {
    value
        .parse::<RawFd>()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| format!("'{value}': expected a non-negative fd number"))
}

/// The command line from `--cmdline-fd`: read to its end (bounded: one byte more than fits
/// shows it is too long without reading a huge file whole), then the fd is closed.
fn read_cmdline_fd(fd: RawFd) -> Result<String, Error> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    check_fd("--cmdline-fd", fd)?;
    // SAFETY: `fd` is open (checked above) and named for this use alone
    // (`check_fds_distinct`), so taking it over and closing it after reading is ours to do.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let max = crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
    let mut bytes = Vec::new();
    file.take(max as u64)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::CmdlineRead { fd, source })?;
    if bytes.len() >= max {
        return Err(Error::CmdlineTooLong(bytes.len()));
    }
    if bytes.contains(&0) {
        return Err(Error::CmdlineNotText { fd });
    }
    String::from_utf8(bytes).map_err(|_| Error::CmdlineNotText { fd })
}

fn parse_serial(value: &str) -> Result<SerialOut, String> {
    match value {
        "stdout" => Ok(SerialOut::Stdout),
        "none" => Ok(SerialOut::None),
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOut::File(path.into())),
            _ => Err(format!("'{value}': expected stdout, none or file:PATH")),
        },
    }
}

fn parse_control(value: &str) -> Result<ControlSocket, String> {
    match parse_fd(value) {
        Some(fd) => fd.map(ControlSocket::Fd),
        None if value.is_empty() => Err("empty control socket path".into()),
        None => Ok(ControlSocket::Path(value.into())),
    }
}

fn parse_events(value: &str) -> Result<EventsOut, String> {
    match (value, parse_fd(value)) {
        ("stderr", _) => Ok(EventsOut::Stderr),
        (_, Some(fd)) => fd.map(EventsOut::Fd),
        _ => Err(format!("'{value}': expected stderr or fd:N")),
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kernel path (empty with `restore`).
    pub kernel: PathBuf,
    /// `--restore DIR`: the snapshot to start from; kernel, initrd, command line, vCPUs and
    /// memory are then the snapshot's, not the fields here (`disks`/`nets` are the backends
    /// of its virtio devices).
    pub restore: Option<PathBuf>,
    /// Initrd path.
    pub initrd: Option<PathBuf>,
    /// Command line.
    pub cmdline: String,
    /// vCPU count, 1..=32.
    pub vcpus: u8,
    /// Guest MiB, ≥ 1.
    pub mem_mib: u64,
    /// Console output.
    pub serial: SerialOut,
    /// Console bytes kept at most (`None`: no cap).
    pub serial_max_bytes: Option<u64>,
    /// Control socket.
    pub control: Option<ControlSocket>,
    /// Event stream.
    pub events: EventsOut,
    /// Seccomp filters on or off (and the test-only self-test).
    pub seccomp: crate::seccomp::Policy,
    /// virtio disks, in guest order.
    pub disks: Vec<DiskSpec>,
    /// virtio NICs, after the disks.
    pub nets: Vec<NetSpec>,
}

/// Outcome of parsing: run, or print help/version and exit 0.
pub enum Parsed {
    /// Run with this configuration; events count from `start_time_us` if given. Boxed:
    /// the configuration is large beside the help text.
    Run(Box<Config>, Option<u64>),
    /// `--help` or `--version` text.
    Info(String),
}

/// Parses and validates the command line. `host_mib` is the host's RAM (None if unknown).
pub fn parse<I, T>(args: I, host_mib: Option<u64>) -> Result<Parsed, Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => return Ok(Parsed::Info(e.to_string())),
        Err(e) => {
            return Err(Error::Syntax(one_line(&e.to_string())));
        }
    };
    let start = args.start_time_us;
    Ok(Parsed::Run(Box::new(validate(args, host_mib)?), start))
}

/// clap's multi-line message up to its usage section, on one line.
fn one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = parts.join(" ");
    let joined = joined.trim_start_matches("error: ");
    if joined.is_empty() {
        "invalid arguments".into()
    } else {
        joined.into()
    }
}

fn validate(args: Args, host_mib: Option<u64>) -> Result<Config, Error> {
    if args.vcpus == 0 || args.vcpus > MAX_VCPUS {
        return Err(Error::Vcpus(args.vcpus));
    }
    if args.mem_mib == 0 {
        return Err(Error::NoMemory);
    }
    if let Some(host) = host_mib {
        if args.mem_mib > host {
            return Err(Error::TooMuchMemory {
                requested: args.mem_mib,
                host,
            });
        }
    }
    let devices = args.disks.len() + args.nets.len();
    if devices > crate::devices::virtio::DEVICE_GSIS.len() {
        return Err(Error::TooManyDevices(devices));
    }
    if let EventsOut::Fd(fd) = args.events {
        check_fd("--events", fd)?;
    }
    if let Some(ControlSocket::Fd(fd)) = args.control {
        check_fd("--control", fd)?;
    }
    check_fds_distinct(&args)?;
    let cmdline = match args.cmdline_fd {
        Some(fd) => read_cmdline_fd(fd)?,
        None => args.cmdline.clone(),
    };
    let announced = crate::devices::virtio::attach::cmdline_words(devices).len();
    if cmdline.len() + announced >= crate::arch::x86_64::layout::CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLong(cmdline.len()));
    }
    let seccomp = seccomp_policy(&args);
    Ok(Config {
        kernel: args.kernel.unwrap_or_default(),
        restore: args.restore,
        initrd: args.initrd,
        cmdline,
        vcpus: args.vcpus as u8,
        mem_mib: args.mem_mib,
        serial: args.serial,
        serial_max_bytes: args.serial_max_bytes,
        control: args.control,
        events: args.events,
        seccomp,
        disks: args.disks,
        nets: args.nets,
    })
}

fn seccomp_policy(args: &Args) -> crate::seccomp::Policy {
    crate::seccomp::Policy {
        enabled: !args.no_seccomp,
        #[cfg(feature = "seccomp-selftest")]
        selftest: args.seccomp_selftest,
        #[cfg(not(feature = "seccomp-selftest"))]
        selftest: None,
    }
}

#[cfg(feature = "seccomp-selftest")]
fn parse_thread_kind(value: &str) -> Result<crate::seccomp::ThreadKind, String> {
    crate::seccomp::ThreadKind::from_name(value)
        .ok_or_else(|| format!("'{value}': expected main, vcpu, control or device"))
}

/// Each inherited fd serves one channel: the control listener and every tap take the fd
/// over and close it, so a number named twice would be used, and closed, twice.
fn check_fds_distinct(args: &Args) -> Result<(), Error> {
    let events = match args.events {
        EventsOut::Fd(fd) => Some(fd),
        EventsOut::Stderr => None,
    };
    let control = match args.control {
        Some(ControlSocket::Fd(fd)) => Some(fd),
        Some(ControlSocket::Path(_)) | None => None,
    };
    let taps = args.nets.iter().filter_map(|n| match n.tap {
        TapSource::Fd(fd) => Some(fd),
        TapSource::Name(_) => None,
    });
    let mut fds: Vec<RawFd> = events
        .into_iter()
        .chain(control)
        .chain(args.cmdline_fd)
        .chain(taps)
        .collect();
    fds.sort_unstable();
    match fds.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(Error::FdTwice(pair[0])),
        None => Ok(()),
    }
}

fn check_fd(flag: &'static str, fd: RawFd) -> Result<(), Error> {
    // SAFETY: F_GETFD only inspects the descriptor table; any integer is acceptable.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::BadFd { flag, fd });
    }
    Ok(())
}

/// The host's RAM in MiB from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, Error> {
        let full = std::iter::once("coinop-vmm").chain(args.iter().copied());
        match parse(full, Some(1024))? {
            Parsed::Run(c, _) => Ok(*c),
            Parsed::Info(_) => panic!("unexpected help output for {args:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["--kernel", "k"]).expect("valid");
        assert_eq!((c.vcpus, c.mem_mib), (1, 128));
        assert_eq!(c.serial, SerialOut::Stdout);
        assert_eq!(c.events, EventsOut::Stderr);
        assert!(c.control.is_none());
    }

    #[test]
    fn specs_parse() {
        let c = run(&[
            "--kernel",
            "k",
            "--serial",
            "file:/tmp/x",
            "--control",
            "fd:0",
            "--events",
            "fd:2",
            "--serial-max-bytes",
            "65536",
        ])
        .expect("valid");
        assert_eq!(c.serial, SerialOut::File("/tmp/x".into()));
        assert_eq!(c.serial_max_bytes, Some(65536));
        assert_eq!(c.control, Some(ControlSocket::Fd(0)));
        assert_eq!(c.events, EventsOut::Fd(2));
        let c = run(&[
            "--kernel",
            "k",
            "--control",
            "/run/vm.sock",
            "--serial",
            "none",
        ])
        .expect("valid");
        assert_eq!(c.control, Some(ControlSocket::Path("/run/vm.sock".into())));
        assert_eq!(c.serial, SerialOut::None);
        assert_eq!(c.serial_max_bytes, None, "uncapped unless asked");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(matches!(
            run(&["--kernel", "k", "--vcpus", "0"]),
            Err(Error::Vcpus(0))
        ));
        assert!(matches!(
            run(&["--kernel", "k", "--vcpus", "33"]),
            Err(Error::Vcpus(33))
        ));
        assert!(matches!(
            run(&["--kernel", "k", "--mem-mib", "0"]),
            Err(Error::NoMemory)
        ));
        assert!(matches!(
            run(&["--kernel", "k", "--mem-mib", "2048"]),
            Err(Error::TooMuchMemory {
                requested: 2048,
                host: 1024
            })
        ));
        assert!(matches!(
            run(&["--kernel", "k", "--serial", "tty"]),
            Err(Error::Syntax(_))
        ));
        assert!(matches!(
            run(&["--kernel", "k", "--events", "fd:x"]),
            Err(Error::Syntax(_))
        ));
        assert!(matches!(run(&["--vcpus", "1"]), Err(Error::Syntax(_))));
        assert!(matches!(
            run(&["--kernel", "k", "--events", "fd:987654"]),
            Err(Error::BadFd { .. })
        ));
    }

    #[test]
    fn an_inherited_fd_serves_one_channel() {
        // fd 2 is open in every test process. A tap's fd is only checked once the tap is
        // opened, after parsing, so an unopened number shows the overlap too.
        assert!(matches!(
            run(&["--kernel", "k", "--events", "fd:2", "--control", "fd:2"]),
            Err(Error::FdTwice(2))
        ));
        let taps = [
            "--kernel",
            "k",
            "--net",
            "fd=9,mac=02:00:00:00:00:01",
            "--net",
            "fd=9,mac=02:00:00:00:00:02",
        ];
        assert!(matches!(run(&taps), Err(Error::FdTwice(9))));
    }

    /// The read end of a pipe holding `bytes` (write end closed), as a raw fd the parse
    /// takes over.
    fn fd_holding(bytes: &[u8]) -> RawFd {
        use std::io::Write;
        use std::os::fd::IntoRawFd;
        let (reader, mut writer) = std::io::pipe().expect("a pipe");
        writer.write_all(bytes).expect("fits in the pipe's buffer");
        drop(writer);
        reader.into_raw_fd()
    }

    #[test]
    fn the_command_line_can_come_from_an_fd_which_is_then_closed() {
        use std::os::fd::IntoRawFd;
        // A file of its own (not a pipe): "closed" is then checked by what the number
        // names, which another test's thread may have reused meanwhile.
        let dir = tempfile::tempdir().expect("a scratch directory");
        let path = dir.path().join("cmdline");
        std::fs::write(&path, "mode=count console=ttyS0").expect("writing the command line");
        let fd = std::fs::File::open(&path)
            .expect("opening it")
            .into_raw_fd();
        let n = fd.to_string();
        let c = run(&["--kernel", "k", "--cmdline-fd", &n]).expect("valid");
        assert_eq!(c.cmdline, "mode=count console=ttyS0");
        let named = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
        assert_ne!(named, Some(path), "fd {fd} left open after reading");
    }

    #[test]
    fn a_command_line_fd_that_cannot_serve_is_refused() {
        let max = crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
        let long = fd_holding(&vec![b'a'; max]).to_string();
        assert!(matches!(
            run(&["--kernel", "k", "--cmdline-fd", &long]),
            Err(Error::CmdlineTooLong(n)) if n >= max
        ));
        for bytes in [&b"mode=count\0x"[..], &[0xff, 0xfe][..]] {
            let fd = fd_holding(bytes);
            let n = fd.to_string();
            assert!(
                matches!(run(&["--kernel", "k", "--cmdline-fd", &n]), Err(Error::CmdlineNotText { fd: f }) if f == fd),
                "{bytes:?} accepted"
            );
        }
        assert!(matches!(
            run(&["--kernel", "k", "--cmdline-fd", "987654"]),
            Err(Error::BadFd {
                flag: "--cmdline-fd",
                fd: 987654
            })
        ));
        let fd = fd_holding(b"x").to_string();
        for args in [
            vec!["--kernel", "k", "--cmdline", "y", "--cmdline-fd", &fd],
            vec!["--restore", "/snap", "--cmdline-fd", &fd],
            vec!["--kernel", "k", "--cmdline-fd", "-1"],
        ] {
            assert!(
                matches!(run(&args), Err(Error::Syntax(_))),
                "{args:?} accepted"
            );
        }
        assert!(matches!(
            run(&["--kernel", "k", "--events", "fd:2", "--cmdline-fd", "2"]),
            Err(Error::FdTwice(2))
        ));
    }

    #[test]
    fn restore_replaces_the_kernel_and_excludes_the_machine_flags() {
        let c = run(&["--restore", "/snap", "--serial", "none"]).expect("valid");
        assert_eq!(c.restore, Some(PathBuf::from("/snap")));
        let c = run(&["--restore", "/snap", "--disk", "path=/lease.img"]).expect("valid");
        assert_eq!(
            c.disks.len(),
            1,
            "backends for the snapshot's virtio devices"
        );
        for extra in [
            ["--kernel", "k"],
            ["--vcpus", "2"],
            ["--mem-mib", "64"],
            ["--cmdline", "x"],
        ] {
            let mut args = vec!["--restore", "/snap"];
            args.extend(extra);
            assert!(
                matches!(run(&args), Err(Error::Syntax(_))),
                "{args:?} accepted"
            );
        }
    }

    #[test]
    fn missing_kernel_is_named_on_one_line() {
        let err = run(&["--cmdline", "x"]).expect_err("no kernel");
        let text = err.to_string();
        assert!(text.contains("--kernel"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let err = run(&["--kernel", "k", "--vcpus", "-1"]).expect_err("negative");
        assert!(!err.to_string().contains('\n'));
    }
}
