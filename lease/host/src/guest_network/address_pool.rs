//! The per-lease network slots: slot `i` is the `i`-th /30 of the operator's pool (host side
//! `.1`, guest `.2`) and the `i`-th port of the forwarded-port range, so a slot number alone
//! says a lease's addresses, its tap name, its MAC and its SSH port.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Bad pool or port-range settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Not `A.B.C.D/N` with N in 8..=30 and the host bits zero.
    #[error("--guest-net-pool {0:?}: expected an aligned IPv4 prefix A.B.C.D/N with N in 8..=30")]
    Cidr(String),
    /// Not `FIRST-LAST` with 1 <= FIRST <= LAST.
    #[error("--guest-ssh-ports {0:?}: expected FIRST-LAST, 1 <= FIRST <= LAST <= 65535")]
    Ports(String),
}

/// Every lease gets a /30: network, host side, guest, broadcast.
pub const LEASE_PREFIX_LEN: u8 = 30;
/// Names of coinop's taps start with this (and nothing else on the host should).
pub const TAP_PREFIX: &str = "cop";

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, PoolError> {
        let bad = || PoolError::Cidr(text.to_string());
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=LEASE_PREFIX_LEN).contains(&len) || u32::from(base) & !mask(len) != 0 {
            return Err(bad());
        }
        Ok(Cidr { base, len })
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX << (32 - u32::from(len))
}

/// Parses `FIRST-LAST`.
pub fn parse_ports(text: &str) -> Result<(u16, u16), PoolError> {
    let bad = || PoolError::Ports(text.to_string());
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Which slots are taken.
#[derive(Debug)]
pub struct AddressPool {
    cidr: Cidr,
    first_port: u16,
    slots: u32,
    used: BTreeSet<u32>,
}

impl AddressPool {
    /// As many slots as both the prefix (one /30 each) and the port range allow.
    pub fn new(cidr: Cidr, ports: (u16, u16)) -> AddressPool {
        let by_prefix = 1u32 << (LEASE_PREFIX_LEN - cidr.len);
        let by_ports = u32::from(ports.1 - ports.0) + 1;
        AddressPool {
            cidr,
            first_port: ports.0,
            slots: by_prefix.min(by_ports),
            used: BTreeSet::new(),
        }
    }

    /// How many leases can have networking at once.
    pub fn capacity(&self) -> u32 {
        self.slots
    }

    /// The lowest free slot.
    pub fn take(&mut self) -> Option<u32> {
        let free = (0..self.slots).find(|i| !self.used.contains(i))?;
        self.used.insert(free);
        Some(free)
    }

    /// Marks `slot` taken (a guest re-adopted after a restart); false if it is out of range
    /// or already taken.
    pub fn claim(&mut self, slot: u32) -> bool {
        slot < self.slots && self.used.insert(slot)
    }

    pub fn free(&mut self, slot: u32) {
        self.used.remove(&slot);
    }

    fn address(&self, slot: u32, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.base) + slot * 4 + offset)
    }

    pub fn host_ip(&self, slot: u32) -> Ipv4Addr {
        self.address(slot, 1)
    }

    pub fn guest_ip(&self, slot: u32) -> Ipv4Addr {
        self.address(slot, 2)
    }

    pub fn ssh_port(&self, slot: u32) -> u16 {
        // slot < slots <= the range's length, so this stays inside the range.
        self.first_port + slot as u16
    }
}

/// The tap of slot `slot` (at most 3 + 10 characters: under the 15-byte limit).
pub fn tap_name(slot: u32) -> String {
    format!("{TAP_PREFIX}{slot}")
}

/// A locally administered unicast MAC for slot `slot`.
pub fn mac(slot: u32) -> String {
    let b = slot.to_be_bytes();
    format!("02:c0:1e:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_30s_and_ports() {
        let mut pool =
            AddressPool::new(Cidr::parse("10.213.0.0/28").expect("cidr"), (22000, 22999));
        assert_eq!(pool.capacity(), 4, "a /28 holds four /30s");
        assert_eq!(pool.take(), Some(0));
        assert_eq!(pool.take(), Some(1));
        assert_eq!(pool.host_ip(1), Ipv4Addr::new(10, 213, 0, 5));
        assert_eq!(pool.guest_ip(1), Ipv4Addr::new(10, 213, 0, 6));
        assert_eq!(pool.ssh_port(1), 22001);
        pool.free(0);
        assert_eq!(pool.take(), Some(0), "freed slots come back first");
        assert!(pool.claim(3));
        assert!(!pool.claim(3), "a slot is claimed once");
        assert!(!pool.claim(4), "out of range");
        assert_eq!(pool.take(), Some(2));
        assert_eq!(pool.take(), None, "full");
        assert_eq!(mac(258), "02:c0:1e:00:01:02");
        assert_eq!(tap_name(u32::MAX).len(), 13);
    }

    #[test]
    fn the_port_range_can_be_the_limit() {
        let pool = AddressPool::new(Cidr::parse("10.0.0.0/8").expect("cidr"), (30000, 30009));
        assert_eq!(pool.capacity(), 10);
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/31",
            "10.0.0.0",
            "10.0.0.0/x",
            "300.0.0.0/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        for bad in ["0-10", "20-10", "22000", "a-b", "1-70000"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ports("22000-22999"), Ok((22000, 22999)));
    }
}
