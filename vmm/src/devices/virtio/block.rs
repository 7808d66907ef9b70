//! virtio-blk: one request queue served from a [`DiskImage`], with IN, OUT, FLUSH (an
//! fdatasync) and GET_ID, read-only disks, and a rate limiter. Requests are copied through
//! a bounded buffer in chunks, so a request's size never decides how much the VMM
//! allocates; every sector range is checked against the disk before any I/O.

use super::disk_image::{DiskImage, SECTOR_SIZE};
use super::persist::DeviceState;
use super::queue_handling::{drain_queue, Completion};
use super::rate_limiter::RateLimiter;
use super::{feature, DeviceError, ExtraFd, Served, VirtioDevice};
use std::io::{Read, Write};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments (descriptors) per request, offered as seg_max. With the header and the
/// status descriptor a chain has at most `SEG_MAX + 2` descriptors.
const SEG_MAX: u32 = 128;
/// Bytes per descriptor, offered as size_max (Linux merges pages into segments up to it).
const SIZE_MAX: u32 = 64 << 10;
/// Most descriptors in a chain once SEG_MAX is negotiated: header, data, status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Most data bytes in one request, negotiated limits or not: what SEG_MAX segments of
/// SIZE_MAX bytes hold (8 MiB; Linux's default request is at most 1.25 MiB). It bounds the
/// disk and memory copying one chain can cost, however its descriptors overlap.
pub const MAX_REQUEST_BYTES: usize = SEG_MAX as usize * SIZE_MAX as usize;
/// Largest piece of a request copied at once.
const CHUNK_BYTES: usize = 1 << 20;
/// Length of the request header (type, reserved, sector).
const HEADER_LEN: usize = 16;
/// GET_ID answer length.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// A virtio-blk device.
pub struct Block {
    disk: DiskImage,
    read_only: bool,
    id: [u8; ID_LEN],
    limiter: RateLimiter,
    chunk: Vec<u8>,
    /// Features the driver acknowledged: which of SEG_MAX and SIZE_MAX it promised to keep.
    acked: u64,
    /// The request the bytes limiter stopped partway. Its chain stays on the ring, first in
    /// line, and goes on from here when the limiter's timer runs the queue again.
    partial: Option<Partial>,
}

/// How far a request the bytes limiter stopped got.
#[derive(Clone, Copy, Debug)]
struct Partial {
    /// Its chain.
    head: u16,
    /// What it asked, so a chain the guest rewrote meanwhile starts over.
    request: Request,
    /// Data bytes moved.
    done: usize,
}

/// A parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    In {
        offset: u64,
        len: usize,
    },
    Out {
        offset: u64,
        len: usize,
    },
    Flush,
    GetId,
    Unsupported,
    /// Malformed (short header, range outside the disk, write to a read-only disk, more
    /// descriptors or bytes than the limits).
    Bad,
}

impl Block {
    /// A device over `disk`; `id` is what GET_ID returns (truncated to 20 bytes).
    pub fn new(disk: DiskImage, read_only: bool, id: &str, limiter: RateLimiter) -> Self {
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Block {
            disk,
            read_only,
            id: id_bytes,
            limiter,
            chunk: Vec::new(),
            acked: 0,
            partial: None,
        }
    }

    /// Whether `chain` keeps to the limits the driver negotiated: SEG_MAX data descriptors
    /// (so `MAX_DESCRIPTORS` in all) and SIZE_MAX bytes each. A driver that did not
    /// negotiate them is held to the spec's own: no chain longer than the queue (a longer
    /// one goes through an indirect table, a feature not offered) and no descriptor larger
    /// than a whole request. At most one descriptor past the limit is read, so the check
    /// costs little whatever the chain's length (finding a refused chain's status byte is
    /// another matter: see `serve`).
    fn within_limits(&self, chain: &DescriptorChain<&GuestMemoryMmap>) -> bool {
        let max_descriptors = if self.acked & feature(VIRTIO_BLK_F_SEG_MAX) != 0 {
            MAX_DESCRIPTORS
        } else {
            usize::from(QUEUE_SIZE)
        };
        let max_len = if self.acked & feature(VIRTIO_BLK_F_SIZE_MAX) != 0 {
            SIZE_MAX as usize
        } else {
            MAX_REQUEST_BYTES
        };
        let mut count = 0;
        for desc in chain.clone() {
            count += 1;
            if count > max_descriptors || desc.len() as usize > max_len {
                return false;
            }
        }
        true
    }

    fn sectors(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    fn parse(&self, kind: u32, sector: u64, data_len: usize) -> Request {
        let range = || {
            let offset = sector.checked_mul(SECTOR_SIZE)?;
            let end = offset.checked_add(data_len as u64)?;
            (data_len as u64 % SECTOR_SIZE == 0
                && data_len <= MAX_REQUEST_BYTES
                && end <= self.disk.size())
            .then_some(offset)
        };
        match kind {
            VIRTIO_BLK_T_IN => range().map_or(Request::Bad, |offset| Request::In {
                offset,
                len: data_len,
            }),
            VIRTIO_BLK_T_OUT if self.read_only => Request::Bad,
            VIRTIO_BLK_T_OUT => range().map_or(Request::Bad, |offset| Request::Out {
                offset,
                len: data_len,
            }),
            VIRTIO_BLK_T_FLUSH => Request::Flush,
            VIRTIO_BLK_T_GET_ID => Request::GetId,
            _ => Request::Unsupported,
        }
    }

    /// Serves one chain; None if the rate limiter holds it back (not consumed): before it
    /// starts, or partway through its data, to go on from there when the limiter allows.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<Completion> {
        let head = chain.head_index();
        // A chain the limiter stopped partway was charged its operation already.
        let partial = self.partial.take().filter(|p| p.head == head);
        // Every chain costs an operation, charged before anything can end it early: the
        // ops limit bounds how many chains the guest makes the device look at, malformed
        // ones too.
        if partial.is_none() && !self.limiter.consume(0) {
            return None;
        }
        // Before Reader and Writer walk the chain: an over-long one is refused after reading
        // one descriptor too many, and is then walked only to find its status byte. That
        // walk (up to 64K descriptors through an indirect table) counts against the pass
        // as much as the largest request, so a ring of such chains is no cheaper to refuse
        // than one of honest requests is to serve.
        let within_limits = self.within_limits(&chain);
        let refused_cost = if within_limits {
            0
        } else {
            MAX_REQUEST_BYTES as u64
        };
        let no_status = Completion {
            written: 0,
            cost: refused_cost,
        };
        let (Ok(mut reader), Ok(mut writer)) =
            (chain.clone().reader::<()>(mem), chain.writer::<()>(mem))
        else {
            // A descriptor outside guest memory: there is nowhere safe to put a status.
            return Some(no_status);
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            return Some(no_status);
        }
        let Ok(mut status_writer) = writer.split_at(writable - 1) else {
            return Some(no_status);
        };
        let mut header = [0u8; HEADER_LEN];
        let request = match reader.read_exact(&mut header) {
            Ok(()) if within_limits => {
                let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                let mut sector = [0u8; 8];
                sector.copy_from_slice(&header[8..16]);
                let sector = u64::from_le_bytes(sector);
                let data_len = if kind == VIRTIO_BLK_T_OUT {
                    reader.available_bytes()
                } else {
                    writer.available_bytes()
                };
                self.parse(kind, sector, data_len)
            }
            _ => Request::Bad,
        };
        // Go on where the limiter stopped only if the guest still asks the same; otherwise
        // (it rewrote the chain meanwhile) the request is served from its first byte.
        let start = partial
            .filter(|p| p.request == request)
            .map_or(0, |p| p.done);
        let copied = match request {
            Request::In { offset, len } => self.copy_data(offset, len, start, Guest::In(writer)),
            Request::Out { offset, len } => self.copy_data(offset, len, start, Guest::Out(reader)),
            Request::Flush => Copied::Finished(ok_or_ioerr(self.disk.flush().is_ok()), 0),
            Request::GetId => {
                let n = ID_LEN.min(writer.available_bytes());
                let ok = writer.write_all(&self.id[..n]).is_ok();
                Copied::Finished(ok_or_ioerr(ok), n)
            }
            Request::Unsupported => Copied::Finished(VIRTIO_BLK_S_UNSUPP as u8, 0),
            Request::Bad => Copied::Finished(VIRTIO_BLK_S_IOERR as u8, 0),
        };
        let (status, moved) = match copied {
            Copied::Finished(status, moved) => (status, moved),
            Copied::Held(done) => {
                self.partial = Some(Partial {
                    head,
                    request,
                    done,
                });
                return None;
            }
        };
        let cost = match request {
            Request::In { .. } | Request::Out { .. } => moved.saturating_sub(start) as u64,
            _ => 0,
        } + refused_cost;
        // What the device wrote into the chain: an IN request's data, GET_ID's answer.
        let written = match request {
            Request::Out { .. } => 0,
            _ => moved,
        };
        if status_writer.write_all(&[status]).is_err() {
            return Some(Completion { written: 0, cost });
        }
        Some(Completion {
            written: written as u32 + 1,
            cost,
        })
    }

    /// How many bytes are charged to the limiter, and copied, at once: at most what its
    /// bytes bucket holds, so a request larger than the bucket moves at the configured rate
    /// instead of passing whole once the bucket is full; whole sectors, at least one.
    fn piece_len(&self) -> usize {
        let burst = self
            .limiter
            .bytes_burst()
            .map_or(CHUNK_BYTES, |b| CHUNK_BYTES.min(b as usize));
        (burst - burst % SECTOR_SIZE as usize).max(SECTOR_SIZE as usize)
    }

    /// Moves a request's `len` data bytes between the disk at `offset` and the guest's
    /// buffers, in `guest`'s direction; the first `start` of them an earlier pass moved.
    fn copy_data(&mut self, offset: u64, len: usize, start: usize, guest: Guest<'_>) -> Copied {
        // Only a resumed request skips what is done (split_at moves the buffers' list).
        let mut guest = match start {
            0 => guest,
            _ => match guest.skip(start) {
                Some(tail) => tail,
                None => return Copied::Finished(VIRTIO_BLK_S_IOERR as u8, 0),
            },
        };
        let piece = self.piece_len();
        self.chunk.resize(piece.min(len), 0);
        let mut done = start;
        while done < len {
            let n = (len - done).min(piece);
            if !self.limiter.consume_bytes(n as u64) {
                return Copied::Held(done);
            }
            let buf = &mut self.chunk[..n];
            if !guest.move_piece(&mut self.disk, buf, offset + done as u64) {
                return Copied::Finished(VIRTIO_BLK_S_IOERR as u8, done);
            }
            done += n;
        }
        Copied::Finished(VIRTIO_BLK_S_OK as u8, done)
    }
}

/// The guest's side of a request's data, which also says which way it moves.
enum Guest<'m> {
    /// IN: from the disk into the chain's writable buffers.
    In(virtio_queue::Writer<'m>),
    /// OUT: from the chain's readable buffers to the disk.
    Out(virtio_queue::Reader<'m>),
}

impl<'m> Guest<'m> {
    /// The buffers past their first `n` bytes; None if the chain holds fewer.
    fn skip(self, n: usize) -> Option<Self> {
        match self {
            Guest::In(mut writer) => writer.split_at(n).ok().map(Guest::In),
            Guest::Out(mut reader) => reader.split_at(n).ok().map(Guest::Out),
        }
    }

    /// Moves the next `buf.len()` bytes, through `buf`, between the guest's buffers and
    /// `disk` at `at`; false on an I/O error either side.
    fn move_piece(&mut self, disk: &mut DiskImage, buf: &mut [u8], at: u64) -> bool {
        match self {
            Guest::In(writer) => disk.read_at(buf, at).is_ok() && writer.write_all(buf).is_ok(),
            Guest::Out(reader) => reader.read_exact(buf).is_ok() && disk.write_at(buf, at).is_ok(),
        }
    }
}

/// How far serving a request's data got.
enum Copied {
    /// To its end, or to an I/O error: the status, and the bytes moved in all.
    Finished(u8, usize),
    /// The bytes limiter stopped it after this many bytes in all.
    Held(usize),
}

fn ok_or_ioerr(ok: bool) -> u8 {
    if ok {
        VIRTIO_BLK_S_OK as u8
    } else {
        VIRTIO_BLK_S_IOERR as u8
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only {
            feature(VIRTIO_BLK_F_RO)
        } else {
            0
        };
        feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | ro
    }

    fn config_space(&self) -> Vec<u8> {
        // struct virtio_blk_config: capacity, size_max, seg_max.
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&self.sectors().to_le_bytes());
        config.extend_from_slice(&SIZE_MAX.to_le_bytes());
        config.extend_from_slice(&SEG_MAX.to_le_bytes());
        config
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
        // A new session (DRIVER_OK, a resume after a snapshot or a restore) serves a request
        // the last one left partway from its first byte: after a reset the ring is another,
        // and redoing the part already done is harmless, as nothing else touches those
        // sectors before the request completes and the driver leaves its buffers alone
        // while it is in flight. Not keeping it also keeps it out of the snapshot.
        self.partial = None;
    }

    fn extra_fds(&self) -> Vec<ExtraFd> {
        // Edge-triggered, as net's timers are: a broken device reads no timer.
        vec![ExtraFd {
            fd: self.limiter.timer_fd(),
            events: EventSet::IN | EventSet::EDGE_TRIGGERED,
        }]
    }

    fn process_queue(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &mut [Queue],
        index: usize,
    ) -> Result<Served, DeviceError> {
        let Some(queue) = queues.get_mut(index) else {
            return Ok(Served::default());
        };
        if self.limiter.is_blocked() {
            // The limiter's timer runs the queue again.
            return Ok(Served::default());
        }
        drain_queue(queue, mem, index, |chain| self.serve(mem, chain))
    }

    fn process_extra(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &mut [Queue],
        _index: usize,
    ) -> Result<Served, DeviceError> {
        self.limiter.on_timer();
        self.process_queue(mem, queues, 0)
    }

    fn save_state(&mut self) -> Result<DeviceState, String> {
        // Completed writes reach the disk (a CoW overlay's data, then its bitmap) before a
        // snapshot can hand the guest's view of them to another VMM.
        self.disk.flush().map_err(|e| {
            let why = format!("virtio-blk: flushing the disk: {e}");
            crate::devices::device_log::say(format_args!("{why}"));
            why
        })?;
        Ok(DeviceState {
            limiters: vec![self.limiter.state()],
            pending_frame: None,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) {
        if let Some(limiter) = state.limiters.first() {
            self.limiter.restore(limiter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::interrupt::Interrupt;
    use crate::devices::virtio::queue_handling::{
        Activation, Worker, WorkerSetup, PASS_BYTES, PASS_CHAINS,
    };
    use crate::devices::virtio::test_driver::{Buf, DriverQueue};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("8 MiB")
    }

    fn image(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(bytes).expect("write image");
        f
    }

    fn device(path: &std::path::Path, ro: bool, limiter: RateLimiter) -> Block {
        let disk = DiskImage::open(path, ro, None).expect("disk opens");
        Block::new(disk, ro, "coinop-disk-0", limiter)
    }

    fn unlimited() -> RateLimiter {
        RateLimiter::new(None, None).expect("timerfd")
    }

    /// Submits one request (header, optional data, status) and returns (status, used len).
    fn request(
        dev: &mut Block,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: Option<(u32, bool)>,
    ) -> (u8, u32) {
        let data: Vec<Buf> = data
            .map(|(len, writable)| Buf {
                addr: DATA,
                len,
                writable,
            })
            .into_iter()
            .collect();
        submit(dev, mem, kind, sector, &data)
    }

    /// Submits one request with the data descriptors `data` between its header and its
    /// status byte, and returns (status, used len).
    fn submit(
        dev: &mut Block,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[Buf],
    ) -> (u8, u32) {
        let mut drv = DriverQueue::new(0, QUEUE_SIZE);
        let mut q = [drv.queue(mem)];
        write_header(mem, HDR, kind, sector);
        mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        let mut bufs = vec![Buf::read(HDR, 16)];
        bufs.extend_from_slice(data);
        bufs.push(Buf::write(STATUS, 1));
        drv.add_chain(mem, &bufs);
        dev.process_queue(mem, &mut q, 0).expect("queue is sane");
        assert_eq!(drv.used_idx(mem), 1, "the request completed");
        let (_, used_len) = drv.used_elem(mem, 0);
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).expect("status");
        (status, used_len)
    }

    fn write_header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(at)).expect("header");
    }

    /// A device whose driver negotiated everything it offers, as Linux does.
    fn negotiated(mut dev: Block) -> Block {
        let features = dev.features();
        dev.set_acked_features(features);
        dev
    }

    #[test]
    fn size_max_and_seg_max_are_offered() {
        let img = image(&[0u8; 4096]);
        let dev = device(img.path(), false, unlimited());
        let offered = dev.features();
        assert_ne!(offered & feature(VIRTIO_BLK_F_SEG_MAX), 0);
        assert_ne!(offered & feature(VIRTIO_BLK_F_SIZE_MAX), 0);
        let config = dev.config_space();
        assert_eq!(config[8..12], SIZE_MAX.to_le_bytes(), "size_max");
        assert_eq!(config[12..16], SEG_MAX.to_le_bytes(), "seg_max");
    }

    /// One data descriptor more than seg_max: IOERR, status written, nothing read into
    /// the guest; exactly seg_max is served.
    #[test]
    fn more_than_seg_max_segments_is_ioerr() {
        let img = image(&[0x42u8; SEG_MAX as usize * 512 + 512]);
        let mem = mem();
        let mut dev = negotiated(device(img.path(), false, unlimited()));
        let segments =
            |n: u64| -> Vec<Buf> { (0..n).map(|i| Buf::write(DATA + i * 512, 512)).collect() };
        let n = u64::from(SEG_MAX);
        let (status, len) = submit(&mut dev, &mem, VIRTIO_BLK_T_IN, 0, &segments(n));
        assert_eq!((status, len), (VIRTIO_BLK_S_OK as u8, SEG_MAX * 512 + 1));
        mem.write_slice(&vec![0u8; (n as usize + 1) * 512], GuestAddress(DATA))
            .expect("clear");
        let (status, len) = submit(&mut dev, &mem, VIRTIO_BLK_T_IN, 0, &segments(n + 1));
        assert_eq!((status, len), (VIRTIO_BLK_S_IOERR as u8, 1));
        let mut got = vec![0xffu8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).expect("data");
        assert_eq!(got, vec![0u8; 512], "an over-long request reads nothing");
    }

    /// A data descriptor one sector over size_max: IOERR; exactly size_max is served.
    #[test]
    fn a_segment_over_size_max_is_ioerr() {
        let img = image(&vec![0u8; SIZE_MAX as usize + 512]);
        let mem = mem();
        let mut dev = negotiated(device(img.path(), false, unlimited()));
        for (len, expect) in [
            (SIZE_MAX, VIRTIO_BLK_S_OK),
            (SIZE_MAX + 512, VIRTIO_BLK_S_IOERR),
        ] {
            for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
                let data = Buf {
                    addr: DATA,
                    len,
                    writable: kind == VIRTIO_BLK_T_IN,
                };
                let (status, _) = submit(&mut dev, &mem, kind, 0, &[data]);
                assert_eq!(status, expect as u8, "kind {kind} len {len}");
            }
        }
    }

    /// A driver that negotiated neither limit still cannot make one request move more
    /// than MAX_REQUEST_BYTES, however its descriptors overlap: 129 descriptors of 64 KiB,
    /// all on the same guest buffer, over a disk big enough for them.
    #[test]
    fn a_request_over_the_byte_cap_is_ioerr_even_without_the_features() {
        let img = image(&[]);
        img.as_file()
            .set_len(2 * MAX_REQUEST_BYTES as u64)
            .expect("sparse disk");
        let mem = mem();
        let mut dev = device(img.path(), false, unlimited());
        dev.set_acked_features(feature(VIRTIO_F_VERSION_1));
        let data = |n: u32| vec![Buf::write(DATA, SIZE_MAX); n as usize];
        let (status, _) = submit(&mut dev, &mem, VIRTIO_BLK_T_IN, 0, &data(SEG_MAX + 1));
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        let (status, _) = submit(&mut dev, &mem, VIRTIO_BLK_T_IN, 0, &data(SEG_MAX));
        assert_eq!(status, VIRTIO_BLK_S_OK as u8, "exactly the cap is served");
    }

    #[test]
    fn read_returns_the_image_sectors() {
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i / 512) as u8 + 1).collect();
        let img = image(&bytes);
        let mem = mem();
        let mut dev = device(img.path(), false, unlimited());
        let (status, len) = request(&mut dev, &mem, VIRTIO_BLK_T_IN, 2, Some((1024, true)));
        assert_eq!((status, len), (VIRTIO_BLK_S_OK as u8, 1025));
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(DATA)).expect("data");
        assert_eq!(got, bytes[1024..2048]);
    }

    #[test]
    fn write_then_flush_reaches_the_file() {
        let img = image(&[0u8; 4096]);
        let mem = mem();
        let mut dev = device(img.path(), false, unlimited());
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA))
            .expect("data");
        let (status, len) = request(&mut dev, &mem, VIRTIO_BLK_T_OUT, 7, Some((512, false)));
        assert_eq!((status, len), (VIRTIO_BLK_S_OK as u8, 1));
        let (status, _) = request(&mut dev, &mem, VIRTIO_BLK_T_FLUSH, 0, None);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let file = std::fs::read(img.path()).expect("image");
        assert_eq!(&file[3584..4096], &[0x5a; 512][..]);
        assert_eq!(&file[..3584], &[0u8; 3584][..]);
    }

    #[test]
    fn get_id_returns_the_serial() {
        let img = image(&[0u8; 512]);
        let mem = mem();
        let mut dev = device(img.path(), false, unlimited());
        let (status, len) = request(&mut dev, &mem, VIRTIO_BLK_T_GET_ID, 0, Some((20, true)));
        assert_eq!((status, len), (VIRTIO_BLK_S_OK as u8, 21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).expect("id");
        assert_eq!(&id[..13], b"coinop-disk-0");
        assert_eq!(&id[13..], &[0u8; 7]);
    }

    #[test]
    fn out_of_range_sector_is_ioerr() {
        let img = image(&[0u8; 4096]);
        let mem = mem();
        let mut dev = device(img.path(), false, unlimited());
        for (sector, len) in [(8, 512), (7, 1024), (u64::MAX / 256, 512), (0, 100)] {
            let (status, _) = request(&mut dev, &mem, VIRTIO_BLK_T_IN, sector, Some((len, true)));
            assert_eq!(
                status, VIRTIO_BLK_S_IOERR as u8,
                "sector {sector} len {len}"
            );
        }
    }

    #[test]
    fn read_only_disk_rejects_writes_and_keeps_its_bytes() {
        let img = image(&[3u8; 1024]);
        let mem = mem();
        let mut dev = device(img.path(), true, unlimited());
        assert_ne!(dev.features() & feature(VIRTIO_BLK_F_RO), 0);
        mem.write_slice(&[9u8; 512], GuestAddress(DATA))
            .expect("data");
        let (status, _) = request(&mut dev, &mem, VIRTIO_BLK_T_OUT, 0, Some((512, false)));
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(std::fs::read(img.path()).expect("image"), vec![3u8; 1024]);
    }

    #[test]
    fn unknown_type_is_unsupported() {
        let img = image(&[0u8; 512]);
        let mem = mem();
        let mut dev = device(img.path(), false, unlimited());
        let (status, _) = request(&mut dev, &mem, 0x77, 0, None);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP as u8);
    }

    #[test]
    fn cow_disk_writes_go_to_the_overlay_only() {
        let base_bytes: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let base = image(&base_bytes);
        let dir = tempfile::tempdir().expect("dir");
        let overlay = dir.path().join("lease-1.overlay");
        let mem = mem();
        let disk = DiskImage::open(base.path(), false, Some(&overlay)).expect("cow disk");
        let mut dev = Block::new(disk, false, "lease-1", unlimited());
        mem.write_slice(&[0xee; 1024], GuestAddress(DATA))
            .expect("data");
        let (status, _) = request(&mut dev, &mem, VIRTIO_BLK_T_OUT, 4, Some((1024, false)));
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let (status, _) = request(&mut dev, &mem, VIRTIO_BLK_T_FLUSH, 0, None);
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        mem.write_slice(&[0u8; 4096], GuestAddress(DATA))
            .expect("clear");
        let (status, _) = request(&mut dev, &mem, VIRTIO_BLK_T_IN, 0, Some((4096, true)));
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(DATA)).expect("data");
        let mut expect = base_bytes[..4096].to_vec();
        expect[2048..3072].fill(0xee);
        assert_eq!(got, expect, "the guest sees its write over the base");
        assert_eq!(
            std::fs::read(base.path()).expect("base"),
            base_bytes,
            "the base image is untouched"
        );
        // A second lease over the same base sees the base, not lease 1's write.
        let other = DiskImage::open(base.path(), false, Some(&dir.path().join("lease-2")))
            .expect("second overlay");
        let mut dev2 = Block::new(other, false, "lease-2", unlimited());
        let (status, _) = request(&mut dev2, &mem, VIRTIO_BLK_T_IN, 4, Some((1024, true)));
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        mem.read_slice(&mut got[..1024], GuestAddress(DATA))
            .expect("data");
        assert_eq!(&got[..1024], &base_bytes[2048..3072]);
    }

    #[test]
    fn rate_limiter_holds_requests_on_the_ring() {
        let img = image(&[0u8; 4096]);
        let mem = mem();
        let mut dev = device(
            img.path(),
            false,
            RateLimiter::new(None, Some(3)).expect("timerfd"),
        );
        let mut drv = DriverQueue::new(0, QUEUE_SIZE);
        let mut q = [drv.queue(&mem)];
        for i in 0..8u64 {
            let hdr = HDR + i * 16;
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            mem.write_slice(&header, GuestAddress(hdr)).expect("header");
            drv.add_chain(
                &mem,
                &[
                    Buf::read(hdr, 16),
                    Buf::write(DATA + i * 512, 512),
                    Buf::write(STATUS + i, 1),
                ],
            );
        }
        dev.process_queue(&mem, &mut q, 0).expect("sane");
        assert_eq!(drv.used_idx(&mem), 3, "a 3 ops/s bucket admits 3 at once");
        assert!(dev.limiter.is_blocked());
        dev.process_queue(&mem, &mut q, 0).expect("sane");
        assert_eq!(
            drv.used_idx(&mem),
            3,
            "a notification does not bypass the limit"
        );
    }

    #[test]
    fn hostile_chains_never_panic() {
        let img = image(&[0u8; 4096]);
        let mem = mem();
        let mut dev = device(img.path(), false, unlimited());
        let mut drv = DriverQueue::new(0, 16);
        let mut q = [drv.queue(&mem)];
        // Outside guest memory.
        drv.add_chain(&mem, &[Buf::read(0xffff_0000, 16), Buf::write(STATUS, 1)]);
        // Header only, no status byte.
        drv.add_chain(&mem, &[Buf::read(HDR, 16)]);
        // Giant read length.
        drv.add_chain(
            &mem,
            &[
                Buf::read(HDR, 16),
                Buf::write(0, u32::MAX),
                Buf::write(STATUS, 1),
            ],
        );
        // A loop: the descriptor points at itself.
        drv.add_looping_chain(&mem, HDR, 16);
        dev.process_queue(&mem, &mut q, 0)
            .expect("queue stays usable");
        assert_eq!(drv.used_idx(&mem), 4, "every hostile chain is consumed");
        // An avail index running far ahead of the ring is a broken queue: an error for
        // the device thread (NEEDS_RESET), not a panic.
        drv.set_avail_idx(&mem, 1000);
        assert!(dev.process_queue(&mem, &mut q, 0).is_err());
    }

    /// Every entry of the ring names one chain, a read of the largest size (seg_max
    /// descriptors of size_max bytes, all over one guest buffer): 2 GiB of copying for one
    /// notification before passes were bounded. A pass now stops once it moved PASS_BYTES
    /// and says the queue is unfinished; the next pass goes on from there.
    #[test]
    fn one_head_named_by_every_ring_entry_costs_a_bounded_pass() {
        let img = image(&[]);
        img.as_file()
            .set_len(MAX_REQUEST_BYTES as u64)
            .expect("sparse disk");
        let mem = mem();
        let mut dev = negotiated(device(img.path(), false, unlimited()));
        let mut drv = DriverQueue::new(0, QUEUE_SIZE);
        let mut q = [drv.queue(&mem)];
        write_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        let mut bufs = vec![Buf::read(HDR, 16)];
        bufs.extend(std::iter::repeat_n(
            Buf::write(DATA, SIZE_MAX),
            SEG_MAX as usize,
        ));
        bufs.push(Buf::write(STATUS, 1));
        let head = drv.add_chain(&mem, &bufs);
        for _ in 1..QUEUE_SIZE {
            drv.add_avail(&mem, head);
        }
        let per_pass = (PASS_BYTES / MAX_REQUEST_BYTES as u64) as u16;
        for pass in 1..=2 {
            let served = dev.process_queue(&mem, &mut q, 0).expect("sane");
            assert_eq!(served.unfinished, Some(0), "pass {pass}: more to do");
            assert!(served.notify, "pass {pass}: its requests are answered");
            assert_eq!(drv.used_idx(&mem), pass * per_pass, "pass {pass}");
        }
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_OK as u8, "the requests are legal");
    }

    /// A ring whose own disk keeps refilling it: each request reads one sector into a
    /// buffer over the available ring and over the request header, and sector k holds an
    /// available index one past the chain being served and a header naming sector k + 1.
    /// With 65536 sectors the sectors wrap with the 16-bit ring index and the ring never
    /// looks empty, with no vCPU doing anything; with fewer, the last one lets it run dry.
    fn self_rewriting_ring(
        mem: &GuestMemoryMmap,
        sectors: u32,
    ) -> (tempfile::NamedTempFile, DriverQueue, Queue) {
        let mut drv = DriverQueue::new(0, 16);
        let q = drv.queue(mem);
        let (desc, avail, _) = drv.addresses();
        let window = 512u64;
        assert!(
            desc + 16 * 16 <= avail,
            "the window leaves the descriptors alone"
        );
        let header_at = 0x100;
        let mut disk = vec![0u8; sectors as usize * 512];
        for (k, sector) in (0..sectors).zip(disk.chunks_mut(512)) {
            let endless = sectors == 1 << 16;
            let idx = if k + 1 == sectors && !endless {
                k + 1
            } else {
                k + 2
            };
            // Offset 2: avail.idx; the flags and ring entries (all head 0) stay zero.
            sector[2..4].copy_from_slice(&(idx as u16).to_le_bytes());
            sector[header_at..header_at + 4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            let next = u64::from((k + 1) % sectors);
            sector[header_at + 8..header_at + 16].copy_from_slice(&next.to_le_bytes());
        }
        let img = image(&disk);
        write_header(mem, avail + header_at as u64, VIRTIO_BLK_T_IN, 0);
        drv.add_chain(
            mem,
            &[
                Buf::read(avail + header_at as u64, 16),
                Buf::write(avail, window as u32),
                Buf::write(STATUS, 1),
            ],
        );
        (img, drv, q)
    }

    /// The self-refilling ring (1,000 chains here) is served PASS_CHAINS at a time, each
    /// pass saying there is more, until the disk lets it run dry.
    #[test]
    fn a_ring_its_own_disk_refills_is_served_in_bounded_passes() {
        let mem = mem();
        let chains = 1000;
        let (img, drv, queue) = self_rewriting_ring(&mem, chains);
        let mut q = [queue];
        let mut dev = negotiated(device(img.path(), false, unlimited()));
        let mut passes = 0;
        loop {
            let before = drv.used_idx(&mem);
            let served = dev.process_queue(&mem, &mut q, 0).expect("sane");
            let done = drv.used_idx(&mem).wrapping_sub(before);
            assert!(u32::from(done) <= PASS_CHAINS, "{done} chains in one pass");
            passes += 1;
            match served.unfinished {
                Some(index) => assert_eq!(index, 0),
                None => break,
            }
        }
        assert_eq!(u32::from(drv.used_idx(&mem)), chains, "every chain served");
        assert!(passes > chains / PASS_CHAINS, "{passes} passes");
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    }

    /// A device thread serving `dev` on `queue`, and the queue's notification eventfd.
    fn serving(dev: Block, mem: &GuestMemoryMmap, queue: Queue) -> (Worker, EventFd) {
        let notify = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let acked_features = dev.features();
        let setup = WorkerSetup {
            mem: mem.clone(),
            queue_events: vec![notify.try_clone().expect("clone")],
            interrupt: Arc::new(Interrupt::new(irq)),
        };
        let mut worker = Worker::spawn("test-blk".into(), Box::new(dev), setup).expect("thread");
        let activation = Activation {
            queues: vec![queue],
            acked_features,
            restore: None,
        };
        assert!(worker.activate(activation), "the thread takes the queue");
        (worker, notify)
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An honest driver fills the whole descriptor table (128 reads of two descriptors)
    /// and notifies once: the device thread serves all of them over several passes with no
    /// second notification, and turns notifications back on at the end.
    #[test]
    fn a_full_ring_drains_across_passes_on_one_notification() {
        let chains = u64::from(QUEUE_SIZE) / 2;
        let bytes: Vec<u8> = (0..chains * 512).map(|i| (i / 512) as u8).collect();
        let img = image(&bytes);
        let mem = mem();
        let mut drv = DriverQueue::new(0, QUEUE_SIZE);
        let queue = drv.queue(&mem);
        let (_, _, used) = drv.addresses();
        let (worker, notify) = serving(device(img.path(), false, unlimited()), &mem, queue);
        for i in 0..chains {
            write_header(&mem, HDR + i * 16, VIRTIO_BLK_T_IN, i);
            // Data and status in one buffer, as virtio 1.x allows.
            drv.add_chain(
                &mem,
                &[
                    Buf::read(HDR + i * 16, 16),
                    Buf::write(DATA + i * 1024, 513),
                ],
            );
        }
        assert!(
            chains > u64::from(PASS_CHAINS),
            "more than one pass of work"
        );
        notify.write(1).expect("notify");
        wait_until("every chain used and notifications on", || {
            let flags: u16 = mem.read_obj(GuestAddress(used)).expect("used flags");
            u64::from(drv.used_idx(&mem)) == chains && flags == 0
        });
        for i in 0..chains {
            let mut got = [0u8; 513];
            mem.read_slice(&mut got, GuestAddress(DATA + i * 1024))
                .expect("data");
            assert_eq!(got[..512], [i as u8; 512], "request {i}'s sector");
            assert_eq!(got[512], VIRTIO_BLK_S_OK as u8, "request {i}'s status");
        }
        drop(worker);
    }

    /// The ring that never looks empty (its disk refills it forever): a stop request (a
    /// reset, a snapshot) still ends the session, between two passes.
    #[test]
    fn stop_ends_a_session_on_a_ring_that_never_empties() {
        let mem = mem();
        let (img, drv, queue) = self_rewriting_ring(&mem, 1 << 16);
        let dev = device(img.path(), false, unlimited());
        let (mut worker, _notify) = serving(dev, &mem, queue);
        wait_until("the device thread serving the ring", || {
            u32::from(drv.used_idx(&mem)) > 4 * PASS_CHAINS
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let session = worker.stop();
            let _ = tx.send(session.map(|(queues, _)| queues.len()));
        });
        let stopped = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("Worker::stop returns");
        assert_eq!(stopped, Some(1), "the session gives its queue back");
        let after = drv.used_idx(&mem);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            drv.used_idx(&mem),
            after,
            "nothing serves the ring any more"
        );
    }

    /// Waits (up to 5 s) for `fd` to be readable.
    fn readable_within_5s(fd: std::os::fd::RawFd) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 5_000) == 1 }
    }

    /// A 256 KiB read against a 128 KiB/s bytes limit used to pass whole once the bucket
    /// was full. Now one bucketful moves, the chain waits on the ring, and the rest moves
    /// when the bucket has filled again, a second later.
    #[test]
    fn a_request_larger_than_the_bytes_bucket_moves_at_its_rate() {
        let rate = 128usize << 10;
        let len = 2 * rate;
        let bytes: Vec<u8> = (0..len).map(|i| (i / 4096) as u8 | 1).collect();
        let img = image(&bytes);
        let mem = mem();
        let limiter = RateLimiter::new(Some(rate as u64), None).expect("timerfd");
        let mut dev = negotiated(device(img.path(), false, limiter));
        let mut drv = DriverQueue::new(0, QUEUE_SIZE);
        let mut q = [drv.queue(&mem)];
        write_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
        let segment = u64::from(SIZE_MAX);
        let mut bufs = vec![Buf::read(HDR, 16)];
        bufs.extend((0..len as u64 / segment).map(|i| Buf::write(DATA + i * segment, SIZE_MAX)));
        bufs.push(Buf::write(STATUS, 1));
        drv.add_chain(&mem, &bufs);
        let started = Instant::now();
        dev.process_queue(&mem, &mut q, 0).expect("sane");
        assert_eq!(drv.used_idx(&mem), 0, "the request waits for the bucket");
        assert!(dev.limiter.is_blocked());
        let mut got = vec![0u8; len];
        mem.read_slice(&mut got, GuestAddress(DATA)).expect("data");
        assert_eq!(got[..rate], bytes[..rate], "a bucketful moved");
        assert!(got[rate..].iter().all(|b| *b == 0), "and no more");
        let deadline = Instant::now() + Duration::from_secs(5);
        while drv.used_idx(&mem) == 0 && Instant::now() < deadline {
            assert!(
                readable_within_5s(dev.limiter.timer_fd()),
                "the timer fires"
            );
            dev.process_extra(&mem, &mut q, 0).expect("sane");
        }
        assert_eq!(drv.used_idx(&mem), 1, "the request completes");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "at 128 KiB/s: {:?}",
            started.elapsed()
        );
        assert_eq!(drv.used_elem(&mem, 0).1, len as u32 + 1);
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        mem.read_slice(&mut got, GuestAddress(DATA)).expect("data");
        assert_eq!(got, bytes, "every byte in its place");
    }

    /// The same for a write: the part written before the limiter stopped it is not written
    /// twice or skipped, and the header's own descriptor is not taken for data.
    #[test]
    fn a_write_larger_than_the_bytes_bucket_resumes_where_it_stopped() {
        let rate = 64usize << 10;
        let len = 2 * rate;
        let img = image(&vec![0u8; len]);
        let mem = mem();
        let limiter = RateLimiter::new(Some(rate as u64), None).expect("timerfd");
        let mut dev = negotiated(device(img.path(), false, limiter));
        let mut drv = DriverQueue::new(0, QUEUE_SIZE);
        let mut q = [drv.queue(&mem)];
        let bytes: Vec<u8> = (0..len).map(|i| (i / 512) as u8 ^ 0x5a).collect();
        mem.write_slice(&bytes, GuestAddress(DATA)).expect("data");
        write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
        // Uneven descriptors, so the resumed piece starts inside one.
        drv.add_chain(
            &mem,
            &[
                Buf::read(HDR, 16),
                Buf::read(DATA, 1536),
                Buf::read(DATA + 1536, SIZE_MAX),
                Buf::read(
                    DATA + 1536 + u64::from(SIZE_MAX),
                    len as u32 - 1536 - SIZE_MAX,
                ),
                Buf::write(STATUS, 1),
            ],
        );
        dev.process_queue(&mem, &mut q, 0).expect("sane");
        assert_eq!(drv.used_idx(&mem), 0, "the request waits for the bucket");
        let on_disk = std::fs::read(img.path()).expect("image");
        assert_eq!(on_disk[..rate], bytes[..rate], "a bucketful written");
        assert!(on_disk[rate..].iter().all(|b| *b == 0), "and no more");
        let deadline = Instant::now() + Duration::from_secs(5);
        while drv.used_idx(&mem) == 0 && Instant::now() < deadline {
            assert!(
                readable_within_5s(dev.limiter.timer_fd()),
                "the timer fires"
            );
            dev.process_extra(&mem, &mut q, 0).expect("sane");
        }
        assert_eq!(drv.used_elem(&mem, 0).1, 1, "only the status written");
        let status: u8 = mem.read_obj(GuestAddress(STATUS)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        assert_eq!(std::fs::read(img.path()).expect("image"), bytes);
    }

    /// Chains with nowhere to put a status (no writable byte) are dropped unanswered, but
    /// each costs an operation first: a 3 ops/s bucket lets 3 of 5 through.
    #[test]
    fn malformed_requests_are_charged_an_operation() {
        let img = image(&[0u8; 4096]);
        let mem = mem();
        let limiter = RateLimiter::new(None, Some(3)).expect("timerfd");
        let mut dev = negotiated(device(img.path(), false, limiter));
        let mut drv = DriverQueue::new(0, QUEUE_SIZE);
        let mut q = [drv.queue(&mem)];
        for _ in 0..5 {
            drv.add_chain(&mem, &[Buf::read(HDR, 16)]);
        }
        dev.process_queue(&mem, &mut q, 0).expect("sane");
        assert_eq!(drv.used_idx(&mem), 3);
        assert!(dev.limiter.is_blocked());
    }
}
