//! virtio 1.x devices (block, network) behind the virtio-mmio transport.
//!
//! Each device sits in its own 4 KiB window of the MMIO gap and is announced to the guest
//! on the kernel command line (`virtio_mmio.device=4K@0xd0000000:5`), since a microVM has no
//! PCI, ACPI or device tree. The guest's queue notifications reach a device thread through
//! ioeventfds and the device's interrupts reach the guest through irqfds on the in-kernel
//! IOAPIC, so the hot path never exits to a vCPU thread in userspace.

pub mod attach;
pub mod block;
pub mod cow_overlay;
pub mod disk_image;
pub mod interrupt;
pub mod mmio_transport;
pub mod net;
pub mod persist;
pub mod queue_handling;
pub mod rate_limiter;
pub mod tap;
#[cfg(any(test, feature = "test-driver"))]
pub mod test_driver;

use std::os::fd::RawFd;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

/// Guest-physical base of the first device window (inside the 32-bit MMIO gap).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of each device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// IOAPIC pins (GSIs) handed to devices in order. Only ISA IRQs 0-15 are in the MP table,
/// so the free ones are used: not the PIT (0), i8042 (1), cascade (2), COM ports (3, 4),
/// RTC (8) or FPU (13).
pub const DEVICE_GSIS: [u32; 9] = [5, 6, 7, 9, 10, 11, 12, 14, 15];

/// Something a device thread must stop for: the device can no longer trust its queues.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// virtio-queue refused a ring access (bad index, address outside guest memory).
    #[error("queue {queue}: {source}")]
    Queue {
        /// Queue index.
        queue: usize,
        /// What virtio-queue reported.
        source: virtio_queue::Error,
    },
    /// The host side of the device failed (tap gone, timer broken).
    #[error("{0}")]
    Host(String),
}

/// What serving a queue (or an extra fd) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Whether the guest must be interrupted for the chains used.
    pub notify: bool,
    /// A queue whose pass ended on its budget ([`queue_handling::PASS_CHAINS`],
    /// [`queue_handling::PASS_BYTES`]), chains perhaps left on it: the device thread serves
    /// it again once it has looked at its fds (a stop request among them), without waiting
    /// for a notification the guest need not send.
    pub unfinished: Option<usize>,
}

/// An fd a device wants its thread to poll besides the queue notifications.
pub struct ExtraFd {
    /// The descriptor.
    pub fd: RawFd,
    /// Readiness to wait for (e.g. `IN | EDGE_TRIGGERED` for a tap).
    pub events: EventSet,
}

/// The device-specific half of a virtio device; the transport does the rest.
pub trait VirtioDevice: Send + 'static {
    /// virtio device id (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Feature bits offered (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The device configuration space (read-only for the guest).
    fn config_space(&self) -> Vec<u8>;
    /// Called with the negotiated features as the device thread starts serving (after
    /// DRIVER_OK, a resume after a snapshot, a restore).
    fn set_acked_features(&mut self, _features: u64) {}
    /// Descriptors to poll besides the queue notifications, in `process_extra` index order.
    fn extra_fds(&self) -> Vec<ExtraFd> {
        Vec::new()
    }
    /// Services queue `index` after a notification, in one bounded pass.
    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &mut [Queue],
        index: usize,
    ) -> Result<Served, DeviceError>;
    /// What the device holds between requests, for a snapshot; called on its thread when a
    /// session ends, after its last request. Durable devices flush here, and a flush that
    /// fails is an error: a snapshot of a guest that saw its writes complete is only good
    /// with those writes on the disk.
    fn save_state(&mut self) -> Result<persist::DeviceState, String> {
        Ok(persist::DeviceState::default())
    }
    /// Takes back what [`VirtioDevice::save_state`] gave, before serving restored queues.
    fn restore_state(&mut self, _state: &persist::DeviceState) {}
    /// Services extra fd number `index`, in one bounded pass.
    fn process_extra(
        &mut self,
        _mem: &GuestMemoryMmap,
        _queues: &mut [Queue],
        _index: usize,
    ) -> Result<Served, DeviceError> {
        Ok(Served::default())
    }
}

/// Bit `bit` as a feature mask.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}
