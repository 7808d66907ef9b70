//! The `ip coinop` nftables table, rendered whole from the live leases and swapped in
//! atomically (`nft -f`: create-if-missing, delete, recreate, in one transaction). Setup,
//! teardown and the start-up sweep of a crashed coinopd's left-overs are all the same
//! operation, so no stale rule can survive a render.
//!
//! Per lease (tap T, guest G, forwarded port P):
//! - DNAT: TCP to P on any of the host's own addresses goes to G:22 (`prerouting` for
//!   traffic from outside, `output` for connections made on the host itself);
//! - masquerade: G's traffic leaving by any other interface than T takes the host's address;
//! - anti-spoofing: frames from T with another source than G are dropped;
//! - guests reach neither each other nor the host itself, except replies to connections
//!   made to them.

use std::fmt::Write;
use std::net::Ipv4Addr;

use super::address_pool::TAP_PREFIX;

/// The table's family and name.
pub const TABLE: &str = "ip coinop";

/// One lease's part of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRules {
    pub lease_id: String,
    pub tap: String,
    pub guest_ip: Ipv4Addr,
    pub ssh_port: u16,
}

/// The whole script for `leases`.
pub fn render(leases: &[LeaseRules]) -> String {
    let mut dnat = String::new();
    let mut masquerade = String::new();
    let mut spoof = String::new();
    for l in leases {
        // Lease ids are [A-Za-z0-9_-] (jail directory names), safe inside a quoted comment.
        let tag = format!("comment \"lease {}\"", l.lease_id);
        let _ = writeln!(
            dnat,
            "    fib daddr type local tcp dport {} dnat to {}:22 {tag}",
            l.ssh_port, l.guest_ip
        );
        let _ = writeln!(
            masquerade,
            "    ip saddr {} oifname != \"{}\" masquerade {tag}",
            l.guest_ip, l.tap
        );
        let _ = writeln!(
            spoof,
            "    iifname \"{}\" ip saddr != {} drop {tag}",
            l.tap, l.guest_ip
        );
    }
    let taps = format!("\"{TAP_PREFIX}*\"");
    format!(
        "table {TABLE} {{}}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{masquerade}  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n{spoof}\
         \x20   iifname {taps} oifname {taps} drop\n  }}\n\
         \x20 chain input {{\n    type filter hook input priority filter; policy accept;\n\
         \x20   iifname {taps} ct state established,related accept\n\
         \x20   iifname {taps} drop\n  }}\n\
         }}\n"
    )
}

/// The script that removes the table (networking switched off).
pub fn remove() -> String {
    format!("table {TABLE} {{}}\ndelete table {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lease_gets_its_dnat_masquerade_and_spoof_rules() {
        let script = render(&[LeaseRules {
            lease_id: "l-1".into(),
            tap: "cop3".into(),
            guest_ip: Ipv4Addr::new(10, 213, 0, 14),
            ssh_port: 22003,
        }]);
        assert!(script.starts_with("table ip coinop {}\ndelete table ip coinop\n"));
        assert_eq!(
            script
                .matches("tcp dport 22003 dnat to 10.213.0.14:22 comment \"lease l-1\"")
                .count(),
            2,
            "prerouting and output:\n{script}"
        );
        assert!(script.contains("ip saddr 10.213.0.14 oifname != \"cop3\" masquerade"));
        assert!(script.contains("iifname \"cop3\" ip saddr != 10.213.0.14 drop"));
        assert!(!render(&[]).contains("dnat"), "no lease, no forwarding");
    }
}
