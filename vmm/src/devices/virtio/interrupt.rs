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

    /// Takes a snapshot's InterruptStatus and reset request back. The line is not raised
    /// again: the restored IOAPIC already holds whatever the guest had not taken.
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::Release);
        self.needs_reset.store(needs_reset, Ordering::Release);
    }

    /// The irqfd, for registering with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}
