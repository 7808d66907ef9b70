//! The JSON-lines event stream (`vm_created`, `restored`, `vcpus_started`,
//! `awaiting_personalisation`, `personalised`, `guest_ready`, `warning`, `exit`), each
//! stamped with µs since the caller's spawn (`--start-time-us`) or the VMM's start. The lines themselves are [`vmm_protocol::Event`]s.

use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;
use vmm_protocol::Event;

/// CLOCK_MONOTONIC now, in µs: the clock `--start-time-us` is read from.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The time base events count from.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_us: u64,
}

impl Clock {
    /// Counting from `base_us` (CLOCK_MONOTONIC µs).
    pub fn from_base(base_us: u64) -> Self {
        Clock { base_us }
    }

    /// Counting from now.
    pub fn starting_now() -> Self {
        Clock::from_base(monotonic_us())
    }

    /// µs elapsed since the base (0 if the base is in the future).
    pub fn elapsed_us(&self) -> u64 {
        monotonic_us().saturating_sub(self.base_us)
    }
}

/// Writes events, one `write` per line so lines from different threads never interleave.
pub struct EventSink {
    out: Mutex<ManuallyDrop<File>>,
    clock: Clock,
    /// Whether boot-timing events are copied to stderr (the supervisor's log of this VMM),
    /// so that a supervisor that lost the stream (restarted while the guest booted) still
    /// learns the boot's timing. Off when the stream is stderr itself.
    copy_boot_to_stderr: bool,
}

impl EventSink {
    /// Events on an inherited fd (stderr is 2). The fd is never closed by the sink.
    ///
    /// # Safety
    /// `fd` must be an open file descriptor that stays open for the life of the process.
    pub unsafe fn from_fd(fd: RawFd, clock: Clock) -> Self {
        // SAFETY: the caller guarantees `fd` is open for the process lifetime; ManuallyDrop
        // keeps us from closing a descriptor we do not own.
        let file = unsafe { File::from_raw_fd(fd) };
        EventSink {
            out: Mutex::new(ManuallyDrop::new(file)),
            clock,
            copy_boot_to_stderr: fd != libc::STDERR_FILENO,
        }
    }

    /// Events into an owned file (used by tests).
    pub fn from_file(file: File, clock: Clock) -> Self {
        EventSink {
            out: Mutex::new(ManuallyDrop::new(file)),
            clock,
            copy_boot_to_stderr: false,
        }
    }

    /// The sink's time base.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Emits the event `stamp` builds from the current `t_us`. A broken event channel must
    /// not take the guest down, so write errors are dropped.
    pub fn emit(&self, stamp: impl FnOnce(u64) -> Event) {
        // The time is read under the lock so lines are in time order.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let event = stamp(self.clock.elapsed_us());
        let line = event.to_line();
        let _ = out.write_all(line.as_bytes());
        drop(out);
        // After the stream has it, so the copy never delays the supervisor's reading; once
        // per boot, a few lines in all. (`exit` is copied by whoever ends the process.)
        let boot_timing = matches!(
            event,
            Event::VmCreated { .. }
                | Event::Restored { .. }
                | Event::VcpusStarted { .. }
                | Event::AwaitingPersonalisation { .. }
                | Event::Personalised { .. }
                | Event::GuestReady { .. }
        );
        if self.copy_boot_to_stderr && boot_timing {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    #[test]
    fn lines_are_json_with_event_and_time() {
        let mut file = tempfile::tempfile().expect("temp file");
        let sink = EventSink::from_file(
            file.try_clone().expect("dup"),
            Clock::from_base(monotonic_us() - 1_000),
        );
        sink.emit(|t_us| Event::VcpusStarted { t_us, vcpus: 2 });
        let mut text = String::new();
        file.rewind().expect("rewind");
        file.read_to_string(&mut text).expect("read back");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).expect("one JSON line");
        assert_eq!(v["event"], "vcpus_started");
        assert_eq!(v["vcpus"], 2);
        assert!(v["t_us"].as_u64().expect("number") >= 1_000);
        assert!(text.starts_with(r#"{"event":"vcpus_started","t_us":"#));
        assert!(text.ends_with('\n'));
    }
}
