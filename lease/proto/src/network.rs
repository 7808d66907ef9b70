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

/// `ssh -p PORT root@HOST`, and the host key the guest's SSH server presents there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    /// The guest's SSH host key, an OpenSSH public key line (`ssh-ed25519 AAAA...`), when
    /// coinopd made it: a guest of an `agent` image gets a fresh host key pair per boot in
    /// its personalisation line, so the tenant can pin it (known_hosts) instead of trusting
    /// the first connection. Absent when the guest makes its own (command-line images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}
