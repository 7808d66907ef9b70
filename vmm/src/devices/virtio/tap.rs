//! A tap device opened through /dev/net/tun, or inherited already attached from the parent
//! (a jailed VMM has no host network namespace to find a tap in): Ethernet frames with a
//! virtio-net header in front (IFF_VNET_HDR), no packet-info prefix, non-blocking.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
    /// An inherited fd that is not open.
    #[error("tap fd {fd}: not an open file descriptor: {source}")]
    BadFd {
        /// The fd number.
        fd: RawFd,
        /// Why.
        source: std::io::Error,
    },
    /// An inherited fd that is not a tap with a vnet header and no packet info.
    #[error("tap fd {fd}: {what}")]
    NotTap {
        /// The fd number.
        fd: RawFd,
        /// What is wrong with it.
        what: String,
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
        tap.configure(vnet_hdr_len)?;
        Ok(tap)
    }

    /// Takes over `fd`, a /dev/net/tun file the parent already attached to a tap (TUNSETIFF
    /// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), and sets it up like [`Tap::open`] does. The
    /// fd is closed when the tap is dropped. [`inherited_fd`] turns the fd number of the
    /// command line into the `OwnedFd`.
    pub fn from_fd(fd: OwnedFd, vnet_hdr_len: i32) -> Result<Tap, Error> {
        let file = File::from(fd);
        // Errors name the fd by the number the command line gave it.
        let fd = file.as_raw_fd();
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) };
        if rc < 0 {
            return Err(Error::NotTap {
                fd,
                what: format!(
                    "TUNGETIFF: {} (not a tun/tap file attached to an interface)",
                    std::io::Error::last_os_error()
                ),
            });
        }
        let name: String = req
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let got = i32::from(unsafe { req.ifr_ifru.ifru_flags });
        let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if got & want != want {
            return Err(Error::NotTap {
                fd,
                what: format!(
                    "{name} has flags {got:#x}; needs IFF_TAP | IFF_NO_PI | IFF_VNET_HDR"
                ),
            });
        }
        let tap = Tap { file, name };
        // SAFETY: F_GETFL on our open fd only reads its status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        tap.check(flags, "F_GETFL")?;
        // SAFETY: F_SETFL with an int argument on our open fd.
        let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
        tap.check(rc, "F_SETFL O_NONBLOCK")?;
        // SAFETY: F_SETFD with an int argument on our open fd; threads never exec anyway.
        let rc = unsafe { libc::fcntl(tap.file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        tap.check(rc, "F_SETFD FD_CLOEXEC")?;
        tap.configure(vnet_hdr_len)?;
        Ok(tap)
    }

    /// The header size and offloads every tap gets, however it was opened.
    fn configure(&self, vnet_hdr_len: i32) -> Result<(), Error> {
        let tap = self;
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
        Ok(())
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

/// Claims the inherited fd number `fd` (from `--net fd=N`) for a [`Tap`] after checking
/// that it is open and not stdin, stdout or stderr, which the standard library owns.
///
/// # Safety
/// Nothing else in the process may own `fd`: the returned `OwnedFd` closes it when dropped,
/// so the caller must claim each inherited number at most once.
pub unsafe fn inherited_fd(fd: RawFd) -> Result<OwnedFd, Error> {
    if fd <= 2 {
        return Err(Error::NotTap {
            fd,
            what: "stdin, stdout and stderr are the VMM's own".into(),
        });
    }
    // SAFETY: F_GETFD on any integer is harmless; it tells whether the fd is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::BadFd {
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the fd is open (checked above), and the caller guarantees that nothing else
    // in the process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
