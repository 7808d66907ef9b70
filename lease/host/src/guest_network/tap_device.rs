//! Creating a lease's tap: /dev/net/tun attached to a new, non-persistent tap with a
//! virtio-net header and no packet-info prefix, the flags `coinop-vmm --net fd=N` expects.
//! Non-persistent means the kernel deletes the tap when the last fd on it closes, so a
//! tap never outlives its VMM (and coinopd's own copy is closed right after the spawn).
//!
//! A tap speaks IPv4 only: IPv6 is turned off on it before it is first up. Left on, the
//! host would give the tap a link-local address (reachable from the guest, past the
//! IPv4-only rules, to any host service listening on `::`) and take router advertisements
//! from the guest (a hostile guest could route the host's IPv6 traffic through itself).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};

/// Creates tap `name` and returns the attached fd (close-on-exec; the spawn places it).
pub fn create(name: &str) -> std::io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("tap name {name:?} must be 1 to 15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // On failure the fd closes and the kernel deletes the tap with it.
    disable_ipv6(name)?;
    Ok(file.into())
}

/// Turns IPv6 off on interface `name` (nothing to do on a host without IPv6).
fn disable_ipv6(name: &str) -> std::io::Result<()> {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    let knob = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    std::fs::write(&knob, "1").map_err(|e| std::io::Error::new(e.kind(), format!("{knob}: {e}")))
}
