//! The virtio-mmio register file under arbitrary guest loads and stores (any offset, any
//! width, any order, including DRIVER_OK with garbage queues and resets mid-flight), with
//! a real block device thread behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::disk_image::DiskImage;
use vmm::devices::virtio::interrupt::Interrupt;
use vmm::devices::virtio::mmio_transport::MmioTransport;
use vmm::devices::virtio::rate_limiter::RateLimiter;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vmm-fuzz-mmio-{}", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, vec![0u8; 16 << 10]).expect("disk");
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 10)]).expect("memory");
    let disk = DiskImage::open(&path, false, None).expect("disk");
    let dev = Block::new(
        disk,
        false,
        "fuzz",
        RateLimiter::new(None, None).expect("timer"),
    );
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let notify = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let notify_dev = notify.try_clone().expect("clone");
    let mut t = MmioTransport::new(
        "fuzz".into(),
        mem,
        Box::new(dev),
        Arc::new(Interrupt::new(irq)),
        vec![notify_dev],
    )
    .expect("device thread");
    // Each op: 1 byte kind/width, 2 bytes offset, 4 bytes value.
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) & 0xfff;
        let width = [1usize, 2, 4, 8][usize::from(op[0] & 3)];
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&op[3..7]);
        match op[0] >> 2 & 3 {
            0 => t.read(offset, &mut bytes[..width]),
            1 => {
                // A queue kick as the ioeventfd would deliver it.
                let _ = notify.write(1);
            }
            _ => t.write(offset, &bytes[..width]),
        }
    }
    // Reset joins the device thread: it must not be stuck.
    t.write(0x70, &0u32.to_le_bytes());
});
