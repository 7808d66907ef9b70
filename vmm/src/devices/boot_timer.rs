//! The boot-timer port: a guest writes 123 to port 0x3f0 when it is ready, and the VMM
//! emits `guest_ready` once.
//!
//! A guest restored from a snapshot taken after it was ready will not write again: its
//! `guest_ready` is then the first exit any vCPU makes to the VMM after `vcpus_started`,
//! the first proof that the restored guest executes. A snapshot taken before the guest was
//! ready keeps waiting for the write.

use crate::events::EventSink;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use vmm_protocol::Event;

/// The byte that means "ready".
pub const READY_MAGIC: u8 = 123;

/// Waiting for the magic write.
const WAITING: u8 = 0;
/// `guest_ready` is out.
const FIRED: u8 = 1;
/// Restored from a ready guest, vCPUs not yet started.
const RESTORED: u8 = 2;
/// Restored from a ready guest, vCPUs started: the next guest exit fires.
const AWAITING_EXIT: u8 = 3;

/// Emits `guest_ready` on the first magic write (or, restored, the first guest exit).
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

    /// Called once `vcpus_started` is out.
    pub fn vcpus_started(&self) {
        let _ = self.state.compare_exchange(
            RESTORED,
            AWAITING_EXIT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Called on every exit from the guest; a plain load unless a restore awaits it.
    pub fn guest_ran(&self) {
        if self.state.load(Ordering::Relaxed) == AWAITING_EXIT {
            self.fire_from(AWAITING_EXIT);
        }
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
    fn a_restored_ready_guest_fires_on_its_first_exit_after_the_start() {
        let file = tempfile::tempfile().expect("temp file");
        let events = Arc::new(EventSink::from_file(
            file.try_clone().expect("dup"),
            Clock::starting_now(),
        ));
        let timer = BootTimer::restored(events, true);
        timer.guest_ran();
        assert!(timer.was_ready());
        timer.vcpus_started();
        timer.guest_ran();
        timer.guest_ran();
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
        waiting.guest_ran();
        assert!(!waiting.was_ready(), "a guest not yet ready must write 123");
        assert!(waiting.write(READY_MAGIC));
    }
}
