//! The driver side of a split virtqueue for tests and fuzzing: writes descriptor tables and
//! available rings into guest memory the way a guest driver does, and reads the used ring.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub fn read(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable buffer.
    pub fn write(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            writable: true,
        }
    }
}

/// A queue laid out at `base`: descriptors, then the available ring, then (4 KiB further)
/// the used ring.
pub struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl DriverQueue {
    /// A queue of `size` entries at `base` (needs `16 * size + 0x2000` bytes).
    pub fn new(base: u64, size: u16) -> Self {
        let avail = base + 16 * u64::from(size);
        DriverQueue {
            size,
            desc: base,
            avail,
            used: (avail + 6 + 2 * u64::from(size) + 0x1000) & !0xfff,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device's view, configured and ready; the rings start zeroed.
    pub fn queue(&self, mem: &GuestMemoryMmap) -> Queue {
        for addr in [self.avail, self.used] {
            mem.write_obj(0u32, GuestAddress(addr))
                .expect("ring in memory");
        }
        let mut q = Queue::new(self.size).expect("valid test queue size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(index);
        mem.write_obj(addr, GuestAddress(at)).expect("desc");
        mem.write_obj(len, GuestAddress(at + 8)).expect("desc");
        mem.write_obj(flags, GuestAddress(at + 12)).expect("desc");
        mem.write_obj(next, GuestAddress(at + 14)).expect("desc");
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// Adds a chain of `bufs` and makes it available; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if b.writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.write_desc(mem, index, b.addr, b.len, flags, (index + 1) % self.size);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// Makes the chain at `head` available once more, as if it were a new one (a hostile
    /// driver: one head named by many ring entries).
    pub fn add_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.publish(mem, head);
    }

    /// Adds a one-descriptor chain whose `next` points at itself.
    pub fn add_looping_chain(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u32) -> u16 {
        let head = self.next_desc;
        self.write_desc(mem, head, addr, len, VRING_DESC_F_NEXT as u16, head);
        self.next_desc = (self.next_desc + 1) % self.size;
        self.publish(mem, head);
        head
    }

    /// Overwrites the available index (a hostile driver).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).expect("used idx")
    }

    /// Used element `i`: (head, length written).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            mem.read_obj(GuestAddress(at)).expect("used elem"),
            mem.read_obj(GuestAddress(at + 4)).expect("used elem"),
        )
    }

    /// Descriptor table, available ring and used ring addresses.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }
}
