//! The boot-timer port: a guest writes 123 to port 0x3f0 when it is ready, and the VMM
//! emits `guest_ready` once. (124 on the same port means "awaiting personalisation" and is
//! the personalisation port's business: [`super::personalisation`].)
//!
//! A guest restored from a snapshot taken after it was ready will not write again: the
//! snapshot records that it was ready, and its `guest_ready` follows `vcpus_started` at once
//! (every vCPU holds the ready guest's state and is about to enter it). Waiting for the
//! guest's first exit to the VMM instead would leave an idle restored guest (halted, with
//! no timer or I/O exit) without a `guest_ready` at all, and the host waiting for it. A
//! snapshot taken before the guest was ready keeps waiting for the write.
//!
//! `guest_ready` carries the process's peak RSS then (`vmhwm_kib`, [`PeakRss`]): a caller
//! reading `/proc/PID/status` itself races the VMM's exit when the guest ends right after
//! announcing itself, and `getrusage(RUSAGE_SELF).ru_maxrss` is no substitute, because at
//! exec the kernel folds the spawner's own high-water mark into it.

use crate::events::EventSink;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use vmm_protocol::Event;

/// The byte that means "ready".
pub const READY_MAGIC: u8 = 123;
/// The byte that means "listening on the personalisation port, no per-lease state yet".
pub const AWAITING_PERSONALISATION_MAGIC: u8 = 124;

/// Waiting for the magic write.
const WAITING: u8 = 0;
/// `guest_ready` is out.
const FIRED: u8 = 1;
/// Restored from a ready guest, vCPUs not yet started.
const RESTORED: u8 = 2;

/// Emits `guest_ready` on the first magic write (or, restored from a ready guest, once its
/// vCPUs start).
pub struct BootTimer {
    events: Arc<EventSink>,
    state: AtomicU8,
    peak_rss: PeakRss,
}

impl BootTimer {
    /// A timer reporting to `events`. Opens /proc/self/status (see [`PeakRss::open`]), so
    /// it must be built before the seccomp filters are installed.
    pub fn new(events: Arc<EventSink>) -> Self {
        BootTimer {
            events,
            state: AtomicU8::new(WAITING),
            peak_rss: PeakRss::open(),
        }
    }

    /// A timer restored from a snapshot in which the guest had (`was_ready`) or had not yet
    /// announced itself.
    pub fn restored(events: Arc<EventSink>, was_ready: bool) -> Self {
        BootTimer {
            events,
            state: AtomicU8::new(if was_ready { RESTORED } else { WAITING }),
            peak_rss: PeakRss::open(),
        }
    }

    /// Whether the guest has announced itself (what a snapshot records).
    pub fn was_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) != WAITING
    }

    /// Handles a guest write; returns whether this write emitted `guest_ready`.
    pub fn write(&self, value: u8) -> bool {
        value == READY_MAGIC && self.fire_from(WAITING)
    }

    /// Called once `vcpus_started` is out: a guest restored ready is ready now.
    pub fn vcpus_started(&self) {
        self.fire_from(RESTORED);
    }

    fn fire_from(&self, from: u8) -> bool {
        let won = self
            .state
            .compare_exchange(from, FIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            // Read under the sink's lock, right after the time is taken: the figure is the
            // peak at the event's `t_us`, and the read (a few µs, once per process) delays
            // this vCPU, not the event's time.
            let peak = &self.peak_rss;
            self.events.emit(|t_us| Event::GuestReady {
                t_us,
                vmhwm_kib: peak.read_kib(),
            });
        }
        won
    }
}

/// The VMM's own peak resident memory, from `/proc/self/status`, opened once before the
/// seccomp filters are installed and read with one `pread64` at offset 0 on the vCPU thread
/// that emits `guest_ready` (the vCPU filter allows that, not `openat`).
pub struct PeakRss {
    status: Option<File>,
}

impl PeakRss {
    /// Opens the status file; without /proc (a jail that does not mount it) the VMM runs
    /// on and `guest_ready` just lacks the figure.
    pub fn open() -> Self {
        PeakRss {
            status: File::open("/proc/self/status").ok(),
        }
    }

    /// `VmHWM` in KiB now, or `None` when the file could not be opened or read.
    pub fn read_kib(&self) -> Option<u64> {
        // VmHWM is among the first lines (after Name..VmPin, well under 1 KiB in), so one
        // read of this size has it even where the whole file is longer (many CPUs).
        let mut buf = [0u8; 4096];
        let n = self.status.as_ref()?.read_at(&mut buf, 0).ok()?;
        parse_vmhwm_kib(buf.get(..n)?)
    }
}

/// The number of the `VmHWM:   1234 kB` line of a /proc status file.
fn parse_vmhwm_kib(status: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(status).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Clock;

    #[test]
    fn fires_once_and_only_on_the_magic_byte() {
        let file = tempfile::tempfile().expect("temp file");
        let events = Arc::new(EventSink::from_file(
            file.try_clone().expect("dup"),
            Clock::starting_now(),
        ));
        let timer = BootTimer::new(events);
        assert!(!timer.write(1));
        assert!(timer.write(READY_MAGIC));
        assert!(!timer.write(READY_MAGIC));
        let text = std::fs::read_to_string(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))
        .expect("read back");
        assert_eq!(text.matches("guest_ready").count(), 1);
        let event = vmm_protocol::Event::from_line(text.trim_end()).expect("one event");
        let Event::GuestReady {
            vmhwm_kib: Some(kib),
            ..
        } = event
        else {
            panic!("guest_ready without vmhwm_kib: {text}");
        };
        // This test process: at least a few hundred KiB resident, far below 1 GiB.
        assert!((100..1 << 20).contains(&kib), "vmhwm_kib {kib}");
    }

    #[test]
    fn vmhwm_is_read_from_its_line_only() {
        let status =
            b"Name:\tcoinop-vmm\nVmPeak:\t   9000 kB\nVmHWM:\t    2028 kB\nVmRSS:\t 1900 kB\n";
        assert_eq!(parse_vmhwm_kib(status), Some(2028));
        assert_eq!(parse_vmhwm_kib(b"Name:\tx\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(
            PeakRss { status: None }.read_kib(),
            None,
            "no /proc: no figure"
        );
    }

    #[test]
    fn a_restored_ready_guest_fires_when_its_vcpus_start_without_any_exit() {
        let file = tempfile::tempfile().expect("temp file");
        let events = Arc::new(EventSink::from_file(
            file.try_clone().expect("dup"),
            Clock::starting_now(),
        ));
        let timer = BootTimer::restored(events, true);
        assert!(timer.was_ready());
        let text = std::fs::read_to_string(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))
        .expect("read back");
        assert_eq!(
            text.matches("guest_ready").count(),
            0,
            "not before the start"
        );
        timer.vcpus_started();
        timer.vcpus_started();
        assert!(!timer.write(READY_MAGIC), "already fired");
        let text = std::fs::read_to_string(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))
        .expect("read back");
        assert_eq!(text.matches("guest_ready").count(), 1);
        let events = Arc::new(EventSink::from_file(
            tempfile::tempfile().expect("temp file"),
            Clock::starting_now(),
        ));
        let waiting = BootTimer::restored(events, false);
        waiting.vcpus_started();
        assert!(!waiting.was_ready(), "a guest not yet ready must write 123");
        assert!(waiting.write(READY_MAGIC));
    }
}
