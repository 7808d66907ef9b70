//! Attaching the command line's disks and NICs: opening their backends (before KVM, so a
//! missing image fails fast as bad input), the kernel command-line announcement, and
//! wiring each device's irqfd and ioeventfds into the VM.

use super::block::Block;
use super::disk_image::{self, DiskImage};
use super::interrupt::Interrupt;
use super::mmio_transport::MmioTransport;
use super::net::{Net, VNET_HDR_LEN};
use super::rate_limiter::{self, RateLimiter};
use super::tap::{self, Tap};
use super::{VirtioDevice, DEVICE_GSIS, MMIO_BASE, MMIO_WINDOW};
use crate::device_specs::{DiskSpec, NetSpec, TapSource};
use crate::devices::mmio_bus::MmioBus;
use kvm_ioctls::{IoEventAddress, VmFd};
use std::sync::Arc;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Errors attaching devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More devices than free IRQ lines.
    #[error("{0} virtio devices: at most {max} fit", max = DEVICE_GSIS.len())]
    TooMany(usize),
    /// A disk cannot be opened.
    #[error("--disk: {0}")]
    Disk(#[from] disk_image::Error),
    /// A tap cannot be opened.
    #[error("--net: {0}")]
    Tap(#[from] tap::Error),
    /// A rate limiter's timer cannot be created.
    #[error(transparent)]
    Limiter(#[from] rate_limiter::Error),
    /// An eventfd or KVM registration failed.
    #[error("virtio device {index}: {what}: {source}")]
    Kvm {
        /// Device index.
        index: usize,
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the input (a path, a tap name, a count) is at fault rather than the host.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::TooMany(_) | Error::Disk(_) | Error::Tap(_))
    }
}

/// A device with the name of its thread.
pub struct Opened {
    name: String,
    device: Box<dyn VirtioDevice>,
}

/// Opens every disk (in order, so the first is /dev/vda) and then every tap.
pub fn open(disks: &[DiskSpec], nets: &[NetSpec]) -> Result<Vec<Opened>, Error> {
    let count = disks.len() + nets.len();
    if count > DEVICE_GSIS.len() {
        return Err(Error::TooMany(count));
    }
    // Each Tap owns (and closes) its fd: one fd named twice would be closed twice.
    let mut fds: Vec<i32> = nets
        .iter()
        .filter_map(|n| match n.tap {
            TapSource::Fd(fd) => Some(fd),
            TapSource::Name(_) => None,
        })
        .collect();
    fds.sort_unstable();
    if let Some(pair) = fds.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Tap(tap::Error::NotTap {
            fd: pair[0],
            what: "given to more than one --net".into(),
        }));
    }
    let mut out = Vec::with_capacity(count);
    for (i, d) in disks.iter().enumerate() {
        let disk = DiskImage::open(&d.path, d.read_only, d.cow.as_deref())?;
        let id_source = d.cow.as_deref().unwrap_or(&d.path);
        let id = id_source
            .file_name()
            .map_or_else(|| format!("disk{i}"), |n| n.to_string_lossy().into_owned());
        let limiter = RateLimiter::new(d.bytes_per_s, d.ops_per_s)?;
        out.push(Opened {
            name: format!("virtio-blk{i}"),
            device: Box::new(Block::new(disk, d.read_only, &id, limiter)),
        });
    }
    for (i, n) in nets.iter().enumerate() {
        let tap = match &n.tap {
            TapSource::Name(name) => Tap::open(name, VNET_HDR_LEN as i32)?,
            TapSource::Fd(fd) => {
                // SAFETY: the parent passed this fd to this process for this one device (the
                // command line's `--net fd=N`), so no file or socket of the VMM's is on it:
                // cli::parse refuses a number also named by --events or --control, and the
                // check above one named by two `--net`s.
                let fd = unsafe { tap::inherited_fd(*fd) }?;
                Tap::from_fd(fd, VNET_HDR_LEN as i32)?
            }
        };
        let rx = RateLimiter::new(n.bytes_per_s, None)?;
        let tx = RateLimiter::new(n.bytes_per_s, None)?;
        out.push(Opened {
            name: format!("virtio-net{i}"),
            device: Box::new(Net::new(tap, n.mac, rx, tx)),
        });
    }
    Ok(out)
}

/// The kernel command-line words that announce `count` devices.
pub fn cmdline_words(count: usize) -> String {
    (0..count.min(DEVICE_GSIS.len()))
        .map(|i| {
            format!(
                " virtio_mmio.device=4K@{:#x}:{}",
                MMIO_BASE + i as u64 * MMIO_WINDOW,
                DEVICE_GSIS[i]
            )
        })
        .collect()
}

/// Wires each device's interrupt (irqfd on its GSI) and queue notifications (an
/// ioeventfd per queue on QueueNotify, matching the queue index) into `vm`.
pub fn register(devices: Vec<Opened>, vm: &VmFd, mem: &GuestMemoryMmap) -> Result<MmioBus, Error> {
    let mut bus = MmioBus::default();
    for (index, opened) in devices.into_iter().enumerate() {
        let kvm = |what| {
            move |e: kvm_ioctls::Error| Error::Kvm {
                index,
                what,
                source: std::io::Error::from_raw_os_error(e.errno()),
            }
        };
        let io = |what| {
            move |source| Error::Kvm {
                index,
                what,
                source,
            }
        };
        let base = MMIO_BASE + index as u64 * MMIO_WINDOW;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(io("irq eventfd"))?;
        vm.register_irqfd(&irqfd, DEVICE_GSIS[index])
            .map_err(kvm("KVM_IRQFD"))?;
        let queues = opened.device.queue_max_sizes().len();
        let mut queue_events = Vec::with_capacity(queues);
        for queue in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io("queue eventfd"))?;
            let addr = IoEventAddress::Mmio(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
            vm.register_ioevent(&evt, &addr, queue as u32)
                .map_err(kvm("KVM_IOEVENTFD"))?;
            queue_events.push(evt);
        }
        let transport = MmioTransport::new(
            opened.name,
            mem.clone(),
            opened.device,
            Arc::new(Interrupt::new(irqfd)),
            queue_events,
        )
        .map_err(io("starting the device thread"))?;
        bus.insert(base, MMIO_WINDOW, transport);
    }
    Ok(bus)
}
