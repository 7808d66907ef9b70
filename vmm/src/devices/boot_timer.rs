//! The boot-timer port: a guest writes 123 to port 0x3f0 when it is ready, and the VMM
//! emits `guest_ready` once.

use crate::events::EventSink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vmm_protocol::Event;

/// The byte that means "ready".
pub const READY_MAGIC: u8 = 123;

/// Emits `guest_ready` on the first magic write.
pub struct BootTimer {
    events: Arc<EventSink>,
    fired: AtomicBool,
}

impl BootTimer {
    /// A timer reporting to `events`.
    pub fn new(events: Arc<EventSink>) -> Self {
        BootTimer {
            events,
            fired: AtomicBool::new(false),
        }
    }

    /// Handles a guest write; returns whether this write emitted `guest_ready`.
    pub fn write(&self, value: u8) -> bool {
        if value != READY_MAGIC || self.fired.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.events.emit(|t_us| Event::GuestReady { t_us });
        true
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
}
