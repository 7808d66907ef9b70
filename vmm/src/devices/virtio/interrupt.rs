//! A device's interrupt line: the virtio-mmio InterruptStatus bits plus the irqfd that
//! raises the device's GSI on the in-kernel IOAPIC, and the device's NEEDS_RESET flag.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// Shared between the transport (register reads, ACKs) and the device thread (signals).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irqfd: EventFd,
}

impl Interrupt {
    /// A line that fires `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irqfd,
        }
    }

    /// The used ring changed.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// The device gave up on its queues: the guest sees DEVICE_NEEDS_RESET and a
    /// configuration-change interrupt, as the virtio spec asks.
    pub fn signal_needs_reset(&self) -> std::io::Result<()> {
        self.needs_reset.store(true, Ordering::Release);
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::AcqRel);
        self.irqfd.write(1)
    }

    /// InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Clears everything on a device reset.
    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }

    /// InterruptStatus and the reset request, for a snapshot.
    pub fn state(&self) -> (u32, bool) {
        (self.status(), self.needs_reset())
    }

    /// Takes a snapshot's InterruptStatus and reset request back, and raises the line once
    /// more if a bit is set. The restored IOAPIC need not hold that interrupt: KVM delivers
    /// an irqfd's signal from a work item, which may run after the interrupt controllers
    /// were read, and the guest would then wait for good on a request the device finished.
    /// A second interrupt costs the guest one read of InterruptStatus.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
        if status != 0 {
            // Fails only with the counter at its maximum, when the line is pending anyway.
            let _ = self.irqfd.write(1);
        }
    }

    /// The irqfd, for registering with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restored InterruptStatus with a bit set raises the line again; a clear one does
    /// not.
    #[test]
    fn a_restored_pending_status_raises_the_line_again() {
        let pending = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        pending.restore(VIRTIO_MMIO_INT_VRING, false);
        assert_eq!(pending.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(pending.irqfd().read().ok(), Some(1));

        let quiet = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        quiet.restore(0, false);
        assert!(quiet.irqfd().read().is_err(), "nothing to raise");
    }
}
