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

use crate::events::EventSink;
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
}

impl BootTimer {
    /// A timer reporting to `events`.
    pub fn new(events: Arc<EventSink>) -> Self {
        BootTimer {
            events,
            state: AtomicU8::new(WAITING),
        }
    }

    /// A timer restored from a snapshot in which the guest had (`was_ready`) or had not yet
    /// announced itself.
    pub fn restored(events: Arc<EventSink>, was_ready: bool) -> Self {
        BootTimer {
            events,
            state: AtomicU8::new(if was_ready { RESTORED } else { WAITING }),
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
            self.events.emit(|t_us| Event::GuestReady { t_us });
        }
        won
    }
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
