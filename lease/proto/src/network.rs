//! How a tenant reaches its guest (`network` in a lease's view). coinop-host writes the same
//! record to disk so that a restarted coinopd re-adopts a running guest's addresses.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A lease's network, absent for guests without a NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInfo {
    pub guest_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    /// The forwarded host port to the guest's SSH server.
    pub ssh: SshEndpoint,
    /// The host-side interface (for the operator; the guest sees eth0).
    pub tap: String,
    /// The address pool slot, so a restarted coinopd claims the same one back.
    pub slot: u32,
}

/// `ssh -p PORT root@HOST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
}
