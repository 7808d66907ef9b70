//! virtio-blk queue processing on guest memory the fuzzer writes: descriptor table,
//! available ring and request buffers are all fuzz bytes, so chains may loop, point outside
//! memory, overflow lengths or carry any request type and sector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::disk_image::DiskImage;
use vmm::devices::virtio::rate_limiter::RateLimiter;
use vmm::devices::virtio::test_driver::DriverQueue;
use vmm::devices::virtio::VirtioDevice;

/// Guest RAM: small, so most fuzzed addresses fall outside it.
const MEM_BYTES: usize = 256 << 10;

fn disk_path() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmm-fuzz-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 64 << 10]).expect("fuzz disk image");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&size_sel, rest)) = data.split_first() else {
        return;
    };
    let size = 1u16 << (size_sel % 9); // 1..=256
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_BYTES)]).expect("guest memory");
    let drv = DriverQueue::new(0, size);
    let mut queues = [drv.queue(&mem)];
    // Everything the driver would have written comes from the fuzzer, except that the
    // used ring was zeroed by queue() above and is left to the device.
    let (_, _, used) = drv.addresses();
    let n = rest.len().min(used as usize);
    mem.write_slice(&rest[..n], GuestAddress(0))
        .expect("in memory");
    if rest.len() > n {
        let tail = &rest[n..];
        let at = used as usize + 0x1000;
        let m = tail.len().min(MEM_BYTES - at);
        mem.write_slice(&tail[..m], GuestAddress(at as u64))
            .expect("in memory");
    }
    let read_only = size_sel & 0x80 != 0;
    let disk = DiskImage::open(disk_path(), read_only, None).expect("disk");
    let limiter = RateLimiter::new(None, None).expect("timerfd");
    let mut dev = Block::new(disk, read_only, "fuzz", limiter);
    for _ in 0..2 {
        if dev.process_queue(&mem, &mut queues, 0).is_err() {
            break;
        }
    }
});
