//! `--disk` and `--net` values: comma-separated `key=value` lists (paths may not contain
//! commas).
//!
//! ```text
//! --disk path=FILE[,ro][,cow=OVERLAY][,bw=BYTES_PER_S][,iops=N]
//! --net  tap=NAME,mac=AA:BB:CC:DD:EE:FF[,bw=BYTES_PER_S]
//! --net  fd=N,mac=AA:BB:CC:DD:EE:FF[,bw=BYTES_PER_S]
//! ```
//!
//! `fd=N` is a tap the parent opened and left open as fd N (a jailed VMM in its own network
//! namespace cannot open a host tap by name).

use crate::devices::virtio::net::parse_mac;
use std::path::PathBuf;

/// A virtio-blk device to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image (the shared base when `cow` is set).
    pub path: PathBuf,
    /// The guest may not write.
    pub read_only: bool,
    /// This lease's copy-on-write overlay over `path`.
    pub cow: Option<PathBuf>,
    /// Bytes per second, if limited.
    pub bytes_per_s: Option<u64>,
    /// Requests per second, if limited.
    pub ops_per_s: Option<u64>,
}

/// Where a NIC's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Opened by name (created if missing and the VMM may).
    Name(String),
    /// Already open and attached, inherited as this fd.
    Fd(i32),
}

/// A virtio-net device to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap interface.
    pub tap: TapSource,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Bytes per second each way, if limited.
    pub bytes_per_s: Option<u64>,
}

fn rate(key: &str, value: &str) -> Result<Option<u64>, String> {
    match value.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("{key}={value}: expected a positive integer")),
        Ok(n) => Ok(Some(n)),
    }
}

/// Parses a `--disk` value.
pub fn parse_disk(value: &str) -> Result<DiskSpec, String> {
    let mut spec = DiskSpec {
        path: PathBuf::new(),
        read_only: false,
        cow: None,
        bytes_per_s: None,
        ops_per_s: None,
    };
    for item in value.split(',') {
        match item.split_once('=') {
            Some(("path", p)) if !p.is_empty() => spec.path = p.into(),
            Some(("cow", p)) if !p.is_empty() => spec.cow = Some(p.into()),
            Some(("bw", v)) => spec.bytes_per_s = rate("bw", v)?,
            Some(("iops", v)) => spec.ops_per_s = rate("iops", v)?,
            None if item == "ro" => spec.read_only = true,
            _ => return Err(format!("'{item}': expected path=, ro, cow=, bw= or iops=")),
        }
    }
    if spec.path.as_os_str().is_empty() {
        return Err(format!("'{value}': path=FILE is required"));
    }
    if spec.read_only && spec.cow.is_some() {
        return Err(format!("'{value}': ro and cow= exclude each other"));
    }
    Ok(spec)
}

/// Parses a `--net` value.
pub fn parse_net(value: &str) -> Result<NetSpec, String> {
    let (mut tap, mut mac, mut bytes_per_s) = (None, None, None);
    for item in value.split(',') {
        let previous = match item.split_once('=') {
            Some(("tap", t)) if !t.is_empty() && t.len() < libc::IFNAMSIZ => {
                tap.replace(TapSource::Name(t.into()))
            }
            Some(("fd", n)) => match n.parse::<i32>() {
                // 0-2 are stdio: never a tap.
                Ok(fd) if fd > 2 => tap.replace(TapSource::Fd(fd)),
                _ => return Err(format!("fd={n}: expected an inherited fd number above 2")),
            },
            Some(("mac", m)) => {
                mac = Some(
                    parse_mac(m).ok_or_else(|| format!("mac={m}: expected AA:BB:CC:DD:EE:FF"))?,
                );
                None
            }
            Some(("bw", v)) => {
                bytes_per_s = rate("bw", v)?;
                None
            }
            _ => {
                return Err(format!(
                    "'{item}': expected tap=NAME (≤15 bytes), fd=N, mac= or bw="
                ))
            }
        };
        if previous.is_some() {
            return Err(format!("'{value}': give one tap=NAME or fd=N"));
        }
    }
    Ok(NetSpec {
        tap: tap.ok_or_else(|| format!("'{value}': tap=NAME or fd=N is required"))?,
        mac: mac.ok_or_else(|| format!("'{value}': mac=AA:BB:CC:DD:EE:FF is required"))?,
        bytes_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("path=/img/base.raw,cow=/run/l1.ov,bw=1048576,iops=500").expect("ok");
        assert_eq!(d.path, PathBuf::from("/img/base.raw"));
        assert_eq!(d.cow, Some(PathBuf::from("/run/l1.ov")));
        assert_eq!(
            (d.bytes_per_s, d.ops_per_s, d.read_only),
            (Some(1 << 20), Some(500), false)
        );
        assert!(parse_disk("path=/x,ro").expect("ok").read_only);
        for bad in [
            "ro",
            "path=",
            "path=/x,bw=0",
            "path=/x,iops=-1",
            "path=/x,ro,cow=/y",
            "path=/x,size=3",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn net_specs() {
        let n = parse_net("tap=tap0,mac=02:00:00:aa:bb:0c,bw=125000").expect("ok");
        assert_eq!(n.tap, TapSource::Name("tap0".into()));
        assert_eq!(n.mac, [2, 0, 0, 0xaa, 0xbb, 0x0c]);
        assert_eq!(n.bytes_per_s, Some(125_000));
        for bad in [
            "tap=tap0",
            "mac=02:00:00:00:00:01",
            "tap=tap0,mac=02:00:00:00:00",
            "tap=tap0,mac=02:00:00:00:00:01:02",
            "tap=a-very-long-tap-name,mac=02:00:00:00:00:01",
            "tap=t,mac=zz:00:00:00:00:01",
            "fd=2,mac=02:00:00:00:00:01",
            "fd=x,mac=02:00:00:00:00:01",
            "fd=5,tap=tap0,mac=02:00:00:00:00:01",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        let n = parse_net("fd=7,mac=02:00:00:aa:bb:0c").expect("fd form");
        assert_eq!(n.tap, TapSource::Fd(7));
    }
}
