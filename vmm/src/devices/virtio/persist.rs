//! virtio devices' state in a snapshot: each transport's registers and queues, and what a
//! device itself holds between requests (rate-limiter tokens, a frame read from the tap
//! that no guest buffer has taken yet). A disk's own contents are not here: the device
//! flushes them (for a CoW overlay, data then bitmap) before its state is taken, and the
//! restoring caller attaches the disk, and overlay, it wants the guest to continue on.
//!
//! Nor is which queues a bounded pass left unfinished: the saved ring positions say it (the
//! next available entry behind the guest's index), and every session, a restored one too,
//! starts with a pass over every queue.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// Tokens left in a rate limiter's buckets (None: that bucket is unlimited).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LimiterState {
    /// Bytes-per-second bucket.
    pub bytes_tokens: Option<f64>,
    /// Operations-per-second bucket.
    pub ops_tokens: Option<f64>,
}

/// What a device holds besides its queues.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Its rate limiters, in the device's own order (block: one; net: rx, tx).
    pub limiters: Vec<LimiterState>,
    /// net: a received frame waiting for a guest buffer.
    pub pending_frame: Option<Vec<u8>>,
}

/// One virtqueue as virtio-queue describes it ([`QueueState`]), with serde.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// One virtio-mmio transport and its device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransportState {
    /// `VIRTIO_ID_*`, checked against the device attached at restore.
    pub device_type: u32,
    /// Device status register.
    pub status: u32,
    /// Features the driver acknowledged.
    pub acked: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// A refused queue register write is pending (DRIVER_OK will fail).
    pub bad_queue_config: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The device asked for a reset.
    pub needs_reset: bool,
    /// A device thread was serving the queues (DRIVER_OK reached).
    pub active: bool,
    /// Every queue.
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state.
    pub device: DeviceState,
}
