//! The virtio-mmio transport, version 2 (virtio 1.x "modern") register layout: feature
//! negotiation, queue configuration, device status and the configuration space. On
//! DRIVER_OK it validates the queues and hands them to a device thread; a write of 0 to
//! Status resets the device and stops that thread.

use super::interrupt::Interrupt;
use super::persist::{QueueSnapshot, TransportState};
use super::queue_handling::{Activation, Worker, WorkerSetup};
use super::VirtioDevice;
use std::sync::Arc;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout.
const MMIO_VERSION: u32 = 2;
/// "COIN": identifies the implementation, not a PCI vendor.
const VENDOR_ID: u32 = 0x4e49_4f43;

/// One device on the MMIO bus.
pub struct MmioTransport {
    name: String,
    mem: GuestMemoryMmap,
    device_type: u32,
    offered: u64,
    config: Vec<u8>,
    max_sizes: Vec<u16>,
    worker: Worker,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    /// A queue register write the device had to refuse (size not a power of two, ring
    /// misaligned): DRIVER_OK then ends in NEEDS_RESET instead of a broken device.
    bad_queue_config: bool,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked: u64,
    queue_sel: u32,
    /// The queues a snapshot took from the device thread, until it serves them again.
    parked: Option<Vec<Queue>>,
}

/// Why a snapshot's transport state does not fit the device attached at restore.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Another kind of device, or another queue count.
    #[error("{name}: the snapshot has a virtio device of type {saved} with {saved_queues} queues here, the command line attaches type {attached} with {attached_queues}")]
    Kind {
        /// The device thread's name.
        name: String,
        /// Saved `VIRTIO_ID_*`.
        saved: u32,
        /// Attached `VIRTIO_ID_*`.
        attached: u32,
        /// Saved queue count.
        saved_queues: usize,
        /// Attached queue count.
        attached_queues: usize,
    },
    /// The guest negotiated features this device does not offer.
    #[error(
        "{name}: the guest negotiated features {acked:#x}, the attached device offers {offered:#x}"
    )]
    Features {
        /// The device thread's name.
        name: String,
        /// Acked in the snapshot.
        acked: u64,
        /// Offered now.
        offered: u64,
    },
    /// A saved queue virtio-queue refuses (a corrupt snapshot).
    #[error("{name}: saved queue {index} is invalid: {source}")]
    Queue {
        /// The device thread's name.
        name: String,
        /// Queue index.
        index: usize,
        /// virtio-queue's reason.
        source: virtio_queue::Error,
    },
}

impl MmioTransport {
    /// A transport for `device`, whose thread (named `name`) starts now and idles until
    /// DRIVER_OK; `queue_events` are the ioeventfds registered on QueueNotify, one per queue.
    pub fn new(
        name: String,
        mem: GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        interrupt: Arc<Interrupt>,
        queue_events: Vec<EventFd>,
    ) -> std::io::Result<Self> {
        let max_sizes = device.queue_max_sizes();
        let (device_type, offered, config) = (
            device.device_type(),
            device.features(),
            device.config_space(),
        );
        let setup = WorkerSetup {
            mem: mem.clone(),
            queue_events,
            interrupt: Arc::clone(&interrupt),
        };
        let worker = Worker::spawn(name.clone(), device, setup)?;
        Ok(MmioTransport {
            name,
            mem,
            device_type,
            offered,
            config,
            queues: fresh_queues(&max_sizes),
            max_sizes,
            worker,
            interrupt,
            bad_queue_config: false,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked: 0,
            queue_sel: 0,
            parked: None,
        })
    }

    /// Takes the queues back from the device thread (which finishes its request and flushes)
    /// and returns the transport's and device's state, or why the device has none (its
    /// disk did not flush: a snapshot then would lose writes the guest saw complete). Either
    /// way the device stays stopped until [`MmioTransport::resume_after_snapshot`].
    pub fn save(&mut self) -> Result<TransportState, String> {
        let (queues, device) = match self.worker.stop() {
            Some((queues, device)) => {
                let saved = queues.iter().map(|q| q.state().into()).collect();
                self.parked = Some(queues);
                (
                    saved,
                    device.map_err(|why| format!("{}: {why}", self.name))?,
                )
            }
            None => (
                self.queues.iter().map(|q| q.state().into()).collect(),
                Default::default(),
            ),
        };
        let (interrupt_status, needs_reset) = self.interrupt.state();
        Ok(TransportState {
            device_type: self.device_type,
            status: self.status,
            acked: self.acked,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            bad_queue_config: self.bad_queue_config,
            interrupt_status,
            needs_reset,
            active: self.parked.is_some(),
            queues,
            device,
        })
    }

    /// Hands the queues [`MmioTransport::save`] took back to the device thread.
    pub fn resume_after_snapshot(&mut self) {
        if let Some(queues) = self.parked.take() {
            let activation = Activation {
                queues,
                acked_features: self.acked,
                restore: None,
            };
            if !self.worker.activate(activation) {
                self.fail("the device thread is gone");
            }
        }
    }

    /// Puts a freshly attached transport in the state a snapshot saved and, if its device
    /// was serving, has the device thread serve the saved queues again.
    pub fn restore(&mut self, saved: &TransportState) -> Result<(), RestoreError> {
        if saved.device_type != self.device_type || saved.queues.len() != self.max_sizes.len() {
            return Err(RestoreError::Kind {
                name: self.name.clone(),
                saved: saved.device_type,
                attached: self.device_type,
                saved_queues: saved.queues.len(),
                attached_queues: self.max_sizes.len(),
            });
        }
        if saved.acked & !self.offered != 0 {
            return Err(RestoreError::Features {
                name: self.name.clone(),
                acked: saved.acked,
                offered: self.offered,
            });
        }
        let queues = saved
            .queues
            .iter()
            .enumerate()
            .map(|(index, q): (usize, &QueueSnapshot)| {
                Queue::try_from(QueueState::from(*q)).map_err(|source| RestoreError::Queue {
                    name: self.name.clone(),
                    index,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.status = saved.status;
        self.acked = saved.acked;
        self.device_features_sel = saved.device_features_sel;
        self.driver_features_sel = saved.driver_features_sel;
        self.queue_sel = saved.queue_sel;
        self.bad_queue_config = saved.bad_queue_config;
        self.interrupt
            .restore(saved.interrupt_status, saved.needs_reset);
        if !saved.active {
            self.queues = queues;
            return Ok(());
        }
        // As after DRIVER_OK: the thread owns the queues, the transport's copies only
        // answer QueueReady.
        self.queues = fresh_queues(&self.max_sizes);
        self.queues.iter_mut().for_each(|q| q.set_ready(true));
        let activation = Activation {
            queues,
            acked_features: self.acked,
            restore: Some(saved.device.clone()),
        };
        if !self.worker.activate(activation) {
            self.fail("the device thread is gone");
        }
        Ok(())
    }

    /// Guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            let start = (offset - u64::from(VIRTIO_MMIO_CONFIG)) as usize;
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = start
                    .checked_add(i)
                    .and_then(|at| self.config.get(at))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 {
            // The spec allows only 32-bit accesses to the registers.
            data.fill(0);
            return;
        }
        let value = self.register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .max_sizes
                .get(self.queue_sel as usize)
                .map_or(0, |s| u32::from(*s)),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => {
                let needs_reset = if self.interrupt.needs_reset() {
                    VIRTIO_CONFIG_S_NEEDS_RESET
                } else {
                    0
                };
                self.status | needs_reset
            }
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    /// Guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // Neither block nor net has a writable configuration field coinop offers.
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(value),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Notifications for existing queues go to the ioeventfds and never get here;
                // anything else names no queue.
            }
            other => self.write_queue_register(other, value),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            return;
        }
        match self.driver_features_sel {
            0 => self.acked = (self.acked & !0xffff_ffff) | u64::from(value),
            1 => self.acked = (self.acked & 0xffff_ffff) | (u64::from(value) << 32),
            _ => {}
        }
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            return;
        }
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        if q.ready() && offset != VIRTIO_MMIO_QUEUE_READY {
            return;
        }
        let lo = Some(value);
        let result = match offset {
            VIRTIO_MMIO_QUEUE_NUM => q.try_set_size(value.try_into().unwrap_or(0)),
            VIRTIO_MMIO_QUEUE_READY => {
                q.set_ready(value == 1);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                q.set_desc_table_address(lo, None);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                q.set_desc_table_address(None, lo);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                q.set_avail_ring_address(lo, None);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                q.set_avail_ring_address(None, lo);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                q.set_used_ring_address(lo, None);
                Ok(())
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                q.set_used_ring_address(None, lo);
                Ok(())
            }
            _ => Ok(()),
        };
        if result.is_err() {
            self.bad_queue_config = true;
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & self.status != self.status {
            // Drivers may not clear status bits except by writing 0 (a reset); honouring it
            // would let a guest re-send DRIVER_OK to a device that is already running.
            return;
        }
        let newly = value & !self.status;
        let mut status = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if newly & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver reads Status back and gives up when FEATURES_OK did not stick.
            status &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        self.status = status;
        if newly & VIRTIO_CONFIG_S_DRIVER_OK != 0 && status & VIRTIO_CONFIG_S_FAILED == 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.acked & !self.offered == 0 && self.acked & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        if self.worker.is_active() {
            return;
        }
        let valid = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && !self.bad_queue_config
            && self
                .queues
                .iter()
                .all(|q| q.ready() && q.is_valid(&self.mem));
        if !valid {
            self.fail("queues not all ready and valid at DRIVER_OK");
            return;
        }
        let event_idx = self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = std::mem::replace(&mut self.queues, fresh_queues(&self.max_sizes));
        for (q, fresh) in queues.iter_mut().zip(self.queues.iter_mut()) {
            q.set_event_idx(event_idx);
            // The transport's copies only answer QueueReady reads from now on.
            fresh.set_ready(true);
        }
        let activation = Activation {
            queues,
            acked_features: self.acked,
            restore: None,
        };
        if !self.worker.activate(activation) {
            self.fail("the device thread is gone");
        }
    }

    fn fail(&mut self, why: &str) {
        crate::devices::device_log::say(format_args!("{}: {why}; device needs reset", self.name));
        let _ = self.interrupt.signal_needs_reset();
    }

    fn reset(&mut self) {
        let _ = self.worker.stop();
        self.parked = None;
        self.queues = fresh_queues(&self.max_sizes);
        self.interrupt.reset();
        self.bad_queue_config = false;
        self.status = 0;
        self.acked = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }

    /// Whether a device thread is running.
    pub fn is_active(&self) -> bool {
        self.worker.is_active()
    }
}

fn fresh_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .map(|max| Queue::new(*max).expect("device queue sizes are nonzero powers of two ≤ 32768"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::Block;
    use crate::devices::virtio::disk_image::DiskImage;
    use crate::devices::virtio::rate_limiter::RateLimiter;
    use crate::devices::virtio::test_driver::{Buf, DriverQueue};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID};
    use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER};
    use vm_memory::{Bytes, GuestAddress};

    struct Rig {
        mem: GuestMemoryMmap,
        t: MmioTransport,
        irq: EventFd,
        notify: EventFd,
        _img: tempfile::NamedTempFile,
    }

    fn rig() -> Rig {
        rig_on(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("8 MiB"))
    }

    /// A block device rig over `mem` (a second rig on the same memory plays the restored
    /// VMM).
    fn rig_on(mem: GuestMemoryMmap) -> Rig {
        let mut img = tempfile::NamedTempFile::new().expect("temp file");
        img.write_all(&[0u8; 8192]).expect("image");
        let disk = DiskImage::open(img.path(), false, None).expect("disk");
        let dev = Block::new(
            disk,
            false,
            "rig",
            RateLimiter::new(None, None).expect("timer"),
        );
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let notify = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let t = MmioTransport::new(
            "test-blk".into(),
            mem.clone(),
            Box::new(dev),
            Arc::new(Interrupt::new(irq.try_clone().expect("clone"))),
            vec![notify.try_clone().expect("clone")],
        )
        .expect("device thread starts");
        Rig {
            mem,
            t,
            irq,
            notify,
            _img: img,
        }
    }

    fn rd(t: &MmioTransport, offset: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    /// The Linux driver's probe sequence up to (not including) DRIVER_OK.
    fn negotiate(t: &mut MmioTransport, features_lo: u32, features_hi: u32) {
        wr(t, VIRTIO_MMIO_STATUS, 0);
        wr(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features_lo);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features_hi);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, drv: &DriverQueue, size: u32) {
        let (desc, avail, used) = drv.addresses();
        wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, size);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
        wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    const ALL_OK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK;

    fn wait_irq(irq: &EventFd) -> bool {
        let mut pfd = libc::pollfd {
            fd: irq.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 5_000) == 1 }
    }

    fn get_id_request(mem: &GuestMemoryMmap, drv: &mut DriverQueue) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_GET_ID.to_le_bytes());
        mem.write_slice(&header, GuestAddress(0x10_0000))
            .expect("hdr");
        drv.add_chain(
            mem,
            &[
                Buf::read(0x10_0000, 16),
                Buf::write(0x20_0000, 20),
                Buf::write(0x30_0000, 1),
            ],
        );
    }

    /// A request served before the snapshot, the state moved to a new transport and device
    /// on the same guest memory, and the next request there: the ring positions carried
    /// over, so the second request lands in used-ring slot 1, not 0.
    #[test]
    fn a_saved_transport_serves_on_in_a_restored_one() {
        let mut r = rig();
        let mut drv = DriverQueue::new(0, 16);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut r.t, &drv, 16);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        get_id_request(&r.mem, &mut drv);
        r.notify.write(1).expect("notify");
        assert!(wait_irq(&r.irq), "first request served");
        assert_eq!(drv.used_idx(&r.mem), 1);

        let saved = r.t.save().expect("the disk flushes");
        assert!(saved.active, "{saved:?}");
        assert!(!r.t.is_active(), "the device thread let go of the queues");
        assert_eq!(saved.queues[0].next_avail, 1);
        assert_eq!(saved.queues[0].next_used, 1);
        assert_eq!(saved.device.limiters.len(), 1);
        assert_eq!(saved.status, ALL_OK);

        // Through the snapshot encoding, into a new transport on the same memory.
        let bytes = postcard::to_stdvec(&saved).expect("encodes");
        let loaded: TransportState = postcard::from_bytes(&bytes).expect("decodes");
        let mut restored = rig_on(r.mem.clone());
        restored
            .t
            .restore(&loaded)
            .expect("fits the attached block device");
        assert!(restored.t.is_active());
        // The first request's interrupt was never acknowledged: the restored line is raised
        // again (the restored IOAPIC need not hold it).
        assert_ne!(rd(&restored.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert!(
            wait_irq(&restored.irq),
            "the pending interrupt raised again"
        );
        restored.irq.read().expect("one raise");
        assert_eq!(rd(&restored.t, VIRTIO_MMIO_STATUS), ALL_OK);
        wr(&mut restored.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&restored.t, VIRTIO_MMIO_QUEUE_READY), 1);

        restored
            .mem
            .write_slice(&[0xffu8], GuestAddress(0x30_0000))
            .expect("status byte");
        get_id_request(&restored.mem, &mut drv);
        restored.notify.write(1).expect("notify");
        assert!(
            wait_irq(&restored.irq),
            "second request served by the restored device"
        );
        assert_eq!(drv.used_idx(&restored.mem), 2);
        let mut status = [0xffu8];
        restored
            .mem
            .read_slice(&mut status, GuestAddress(0x30_0000))
            .expect("status");
        assert_eq!(status[0], VIRTIO_BLK_S_OK as u8);

        // A transport of another kind, or one whose queues do not fit, is refused.
        let mut wrong = loaded.clone();
        wrong.device_type = 1;
        assert!(matches!(
            rig().t.restore(&wrong),
            Err(RestoreError::Kind { .. })
        ));
        let mut bad_queue = loaded;
        bad_queue.queues[0].size = 3;
        assert!(matches!(
            rig().t.restore(&bad_queue),
            Err(RestoreError::Queue { .. })
        ));
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_block_device() {
        let r = rig();
        assert_eq!(rd(&r.t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&r.t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&r.t, VIRTIO_MMIO_DEVICE_ID), 2);
        let mut cap = [0u8; 8];
        r.t.read(u64::from(VIRTIO_MMIO_CONFIG), &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16, "8 KiB is 16 sectors");
        let mut far = [0xaau8; 4];
        r.t.read(0xffc, &mut far);
        assert_eq!(far, [0; 4], "config reads past the end are zero");
        let mut narrow = [0xaau8; 1];
        r.t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut narrow);
        assert_eq!(narrow, [0], "registers answer only 32-bit reads");
    }

    #[test]
    fn full_driver_handshake_then_a_notified_request_completes_with_an_interrupt() {
        let mut r = rig();
        let mut drv = DriverQueue::new(0, 16);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        assert_ne!(
            rd(&r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        wr(&mut r.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(rd(&r.t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        setup_queue(&mut r.t, &drv, 16);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(r.t.is_active());
        get_id_request(&r.mem, &mut drv);
        r.notify.write(1).expect("notify");
        assert!(wait_irq(&r.irq), "the device interrupts within 5 s");
        assert_eq!(rd(&r.t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        wr(&mut r.t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&r.t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(drv.used_idx(&r.mem), 1);
        let status: u8 = r.mem.read_obj(GuestAddress(0x30_0000)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        // Reset stops the thread; the device can be brought up again.
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 0);
        assert!(!r.t.is_active());
        assert_eq!(rd(&r.t, VIRTIO_MMIO_STATUS), 0);
        let drv2 = DriverQueue::new(0x40_0000, 16);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut r.t, &drv2, 16);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(r.t.is_active());
    }

    #[test]
    fn notification_before_driver_ok_is_served_only_after_it() {
        let mut r = rig();
        let mut drv = DriverQueue::new(0, 16);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut r.t, &drv, 16);
        get_id_request(&r.mem, &mut drv);
        r.notify.write(1).expect("early notify");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(drv.used_idx(&r.mem), 0, "nothing runs before DRIVER_OK");
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(wait_irq(&r.irq));
        assert_eq!(drv.used_idx(&r.mem), 1);
    }

    #[test]
    fn driver_ok_again_without_reset_starts_no_second_session() {
        let mut r = rig();
        let mut drv = DriverQueue::new(0, 16);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut r.t, &drv, 16);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        let without_driver_ok = ALL_OK & !VIRTIO_CONFIG_S_DRIVER_OK;
        wr(&mut r.t, VIRTIO_MMIO_STATUS, without_driver_ok);
        assert_eq!(
            rd(&r.t, VIRTIO_MMIO_STATUS),
            ALL_OK,
            "status bits cannot be cleared"
        );
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 0);
        assert!(!r.t.is_active());
        // After the reset nothing serves the old rings any more.
        get_id_request(&r.mem, &mut drv);
        r.notify.write(1).expect("notify");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            drv.used_idx(&r.mem),
            0,
            "no device thread still serves the queue"
        );
    }

    #[test]
    fn legacy_driver_without_version_1_cannot_set_features_ok() {
        let mut r = rig();
        negotiate(&mut r.t, 0, 0);
        assert_eq!(
            rd(&r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        negotiate(&mut r.t, 0, 1 << 30);
        assert_eq!(
            rd(&r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "a feature the device did not offer"
        );
    }

    #[test]
    fn queue_size_not_a_power_of_two_ends_in_needs_reset() {
        let mut r = rig();
        let drv = DriverQueue::new(0, 16);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut r.t, &drv, 12);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(!r.t.is_active());
        assert_ne!(
            rd(&r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        assert!(wait_irq(&r.irq), "a config-change interrupt announces it");
        assert_eq!(
            rd(&r.t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_CONFIG
        );
        // And the driver can recover by resetting.
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 0);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut r.t, &drv, 16);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(r.t.is_active());
        assert_eq!(
            rd(&r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
    }

    #[test]
    fn rings_outside_guest_memory_end_in_needs_reset() {
        let mut r = rig();
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        wr(&mut r.t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(&mut r.t, VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(&mut r.t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
        wr(&mut r.t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x10);
        wr(&mut r.t, VIRTIO_MMIO_QUEUE_READY, 1);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(!r.t.is_active());
        assert_ne!(
            rd(&r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
    }

    #[test]
    fn a_ring_broken_after_driver_ok_stops_the_device_with_needs_reset() {
        let mut r = rig();
        let mut drv = DriverQueue::new(0, 16);
        negotiate(&mut r.t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut r.t, &drv, 16);
        wr(&mut r.t, VIRTIO_MMIO_STATUS, ALL_OK);
        drv.set_avail_idx(&r.mem, 500);
        r.notify.write(1).expect("notify");
        assert!(wait_irq(&r.irq));
        assert_ne!(
            rd(&r.t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        wr(&mut r.t, VIRTIO_MMIO_STATUS, 0);
        assert!(!r.t.is_active(), "the parked thread joins on reset");
    }

    /// A device whose state cannot be had (its disk would not flush, say).
    struct Unsaveable;

    impl VirtioDevice for Unsaveable {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![16]
        }
        fn features(&self) -> u64 {
            1 << VIRTIO_F_VERSION_1
        }
        fn config_space(&self) -> Vec<u8> {
            vec![0; 8]
        }
        fn process_queue(
            &mut self,
            _mem: &GuestMemoryMmap,
            _queues: &mut [Queue],
            _index: usize,
        ) -> Result<crate::devices::virtio::Served, crate::devices::virtio::DeviceError> {
            Ok(Default::default())
        }
        fn save_state(&mut self) -> Result<crate::devices::virtio::persist::DeviceState, String> {
            Err("flushing the disk: No space left on device".into())
        }
    }

    /// A device that cannot give its state fails the transport's save (so no snapshot is
    /// written without it), and its queues are still parked: it serves again after.
    #[test]
    fn a_device_without_its_state_fails_the_save_and_serves_again() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("8 MiB");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let notify = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut t = MmioTransport::new(
            "test-unsaveable".into(),
            mem,
            Box::new(Unsaveable),
            Arc::new(Interrupt::new(irq.try_clone().expect("clone"))),
            vec![notify.try_clone().expect("clone")],
        )
        .expect("device thread starts");
        let drv = DriverQueue::new(0, 16);
        negotiate(&mut t, 0, 1 << (VIRTIO_F_VERSION_1 - 32));
        setup_queue(&mut t, &drv, 16);
        wr(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(t.is_active());
        let saved = t.save();
        assert!(
            saved
                .as_ref()
                .is_err_and(|why| why.contains("test-unsaveable") && why.contains("No space")),
            "{saved:?}"
        );
        assert!(!t.is_active(), "stopped for the snapshot all the same");
        t.resume_after_snapshot();
        assert!(t.is_active(), "serving again");
    }
}
