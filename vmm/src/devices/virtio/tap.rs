//! A tap device opened through /dev/net/tun: Ethernet frames with a virtio-net header in
//! front (IFF_VNET_HDR), no packet-info prefix, non-blocking.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name does not fit an interface name.
    #[error("tap name '{0}': must be 1 to 15 bytes without NUL")]
    Name(String),
    /// /dev/net/tun cannot be opened.
    #[error("tap {name}: opening /dev/net/tun: {source}")]
    Open {
        /// The tap.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// An ioctl on the tap failed.
    #[error("tap {name}: {call}: {source}")]
    Ioctl {
        /// The tap.
        name: String,
        /// Which ioctl.
        call: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// An open tap.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates, if the caller may) tap `name` with a `vnet_hdr_len`-byte header.
    pub fn open(name: &str, vnet_hdr_len: i32) -> Result<Tap, Error> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(Error::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| Error::Open {
                name: name.into(),
                source,
            })?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        let tap = Tap {
            file,
            name: name.into(),
        };
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        tap.check(rc, "TUNSETIFF")?;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &vnet_hdr_len) };
        tap.check(rc, "TUNSETVNETHDRSZ")?;
        // No offloads: the guest negotiates none, so frames must arrive whole and checksummed
        // (and no larger than an RX buffer of the driver).
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                0 as libc::c_ulong,
            )
        };
        tap.check(rc, "TUNSETOFFLOAD")?;
        Ok(tap)
    }

    fn check(&self, rc: libc::c_int, call: &'static str) -> Result<(), Error> {
        if rc < 0 {
            return Err(Error::Ioctl {
                name: self.name.clone(),
                call,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its vnet header); WouldBlock when none is queued.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (with its vnet header).
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
