//! The `ip coinop` nftables table. Its chains hold a fixed set of rules that look every
//! lease up in three named sets, so a lease's setup and teardown change only its own set
//! elements (one small `nft -f` transaction each), never the rules every other guest's
//! traffic goes through. The whole table is rendered only at start-up's sweep (and before
//! the first lease of a coinopd that never swept): create-if-missing, delete, recreate with
//! the live leases' elements, in one transaction, so no stale element survives a crash.
//!
//! Per lease (tap T, guest G, forwarded port P), tagged `comment "lease ID"`:
//! - `ssh_forward` maps P to G: TCP to P on any of the host's own addresses goes to G:22
//!   (`prerouting` for traffic from outside, `output` for connections made on the host);
//! - `guests` holds G: its traffic leaving by any interface but a guest tap takes the
//!   host's address (masquerade; guest to guest is dropped anyway);
//! - `guest_sources` holds T . G: anti-spoofing, packets from a guest tap with any other
//!   pair of tap and source are dropped (so a tap without a lease passes nothing). The
//!   check is in `antispoof`, a filter chain on the prerouting hook at raw priority, which
//!   every packet from a tap goes through before conntrack looks at it, whether it is
//!   forwarded or for the host itself: a forged source cannot pass as a reply to one of the
//!   host's own connections (conntrack tracks flows, not the link they came in by);
//! - guests reach neither each other nor the host itself, except replies to connections
//!   made to them;
//! - nothing reaches a guest but replies to its own connections (`ct state
//!   established,related`, which takes in ICMP errors about them) and connections the
//!   `ssh_forward` DNAT sent to its port 22 (`ct status dnat` and TCP port 22): not a
//!   connection made on the host to the guest's address (any local user could), nor one
//!   routed through the host from its LAN, to any port. Both ways in are filtered: `forward`
//!   for routed traffic and `local_out`, a filter chain on the output hook that runs after
//!   the nat `output` chain (priority filter, 0, after -100) and so sees the DNATed
//!   destination and the rerouted tap. coinopd itself never connects to a guest's address
//!   (it reaches a guest through its VMM), and an operator or the lab reaches one through
//!   its forwarded port, like its tenant;
//! - nor link-local addresses (169.254.0.0/16) through the host: they belong to the host's
//!   own link, where a cloud's instance metadata service (169.254.169.254) would hand a
//!   guest the host's credentials;
//! - each guest has at most N connections tracked at once (N is
//!   [`super::NetworkSettings::flows_per_guest`]): `forward` drops a guest's new connection
//!   past N, counted by `ct count` in `guest_flows`, a dynamic set keyed by the (checked)
//!   source address. Without it a guest forging connections (a UDP datagram or a TCP
//!   handshake each; masqueraded TCP the guest completes stays tracked for days) could
//!   fill the host's conntrack table, after which the kernel drops every tenant's and the
//!   host's new connections. A guest's new connections to the host itself are dropped
//!   before they are tracked (`input`). The set's elements are the kernel's, not a lease's:
//!   none is added or deleted per lease, and a render starts every count afresh (a live
//!   guest's open connections count again only once they are new ones). A stopped lease's
//!   tracked connections are deleted at its teardown (see the parent module).
//!
//! The forward is IPv4 only, but tenants are told a host name, which may have an IPv6
//! address too, and an SSH client tries that first. Any local user may bind `[::]:P` for
//! an unprivileged P and would then answer a tenant's IPv6 connection to its guest. So a
//! second table, `ip6 coinop` ([`render_ipv6_guard`]), refuses every IPv6 connection to the
//! forwarded range with a TCP reset, whoever listens there: the client goes on to the IPv4
//! address, where the DNAT takes it to the guest.

use std::fmt::Write;
use std::net::Ipv4Addr;

use super::address_pool::TAP_PREFIX;

/// The table's family and name.
pub const TABLE: &str = "ip coinop";

/// The IPv6 guard table's family and name.
pub const TABLE6: &str = "ip6 coinop";

/// The `ip6 coinop` table: TCP over IPv6 to a forwarded port on this host is refused with
/// a reset (see the module's doc), in one transaction that replaces any earlier version.
pub fn render_ipv6_guard(ports: (u16, u16)) -> String {
    let (first, last) = ports;
    format!(
        "table {TABLE6} {{}}\n\
         delete table {TABLE6}\n\
         table {TABLE6} {{\n\
         \x20 chain input {{\n    type filter hook input priority filter; policy accept;\n\
         \x20   tcp dport {first}-{last} reject with tcp reset\n  }}\n\
         }}\n"
    )
}

/// One lease's part of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRules {
    pub lease_id: String,
    pub tap: String,
    pub guest_ip: Ipv4Addr,
    pub ssh_port: u16,
}

impl LeaseRules {
    /// The lease's three elements, one `VERB element` line each.
    fn elements(&self, verb: &str, out: &mut String) {
        // Lease ids are [A-Za-z0-9_-] (jail directory names), safe inside a quoted comment.
        let tag = format!("comment \"lease {}\"", self.lease_id);
        let _ = writeln!(
            out,
            "{verb} element {TABLE} ssh_forward {{ {} {tag} : {} }}",
            self.ssh_port, self.guest_ip
        );
        let _ = writeln!(
            out,
            "{verb} element {TABLE} guests {{ {} {tag} }}",
            self.guest_ip
        );
        let _ = writeln!(
            out,
            "{verb} element {TABLE} guest_sources {{ \"{}\" . {} {tag} }}",
            self.tap, self.guest_ip
        );
    }
}

/// The whole table for `leases`: the chains and sets, and every lease's elements. A guest
/// may have `flows_per_guest` connections tracked at once.
pub fn render(leases: &[LeaseRules], flows_per_guest: u32) -> String {
    let taps = format!("\"{TAP_PREFIX}*\"");
    // `guest_flows` holds one element per guest address that passed `antispoof`, so at
    // most the pool's capacity, which the forwarded-port range bounds to 65535.
    // What may reach a guest's tap, routed or made on the host (see the module's doc).
    let to_guests = format!(
        "    oifname {taps} ct state established,related accept\n\
         \x20   oifname {taps} ct status dnat tcp dport 22 accept\n\
         \x20   oifname {taps} drop\n"
    );
    let mut script = format!(
        "table {TABLE} {{}}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \x20 map ssh_forward {{ type inet_service : ipv4_addr; }}\n\
         \x20 set guests {{ type ipv4_addr; }}\n\
         \x20 set guest_sources {{ type ifname . ipv4_addr; }}\n\
         \x20 set guest_flows {{ type ipv4_addr; size 65535; flags dynamic; }}\n\
         \x20 chain antispoof {{\n    type filter hook prerouting priority raw; policy accept;\n\
         \x20   iifname {taps} iifname . ip saddr != @guest_sources drop\n  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   fib daddr type local dnat to tcp dport map @ssh_forward : 22\n  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n\
         \x20   fib daddr type local dnat to tcp dport map @ssh_forward : 22\n  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip saddr @guests oifname != {taps} masquerade\n  }}\n\
         \x20 chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
         \x20   iifname {taps} oifname {taps} drop\n\
         \x20   iifname {taps} ip daddr 169.254.0.0/16 drop\n\
         \x20   iifname {taps} ct state new add @guest_flows {{ ip saddr ct count over {flows_per_guest} }} drop\n\
         {to_guests}  }}\n\
         \x20 chain local_out {{\n    type filter hook output priority filter; policy accept;\n\
         {to_guests}  }}\n\
         \x20 chain input {{\n    type filter hook input priority filter; policy accept;\n\
         \x20   iifname {taps} ct state established,related accept\n\
         \x20   iifname {taps} drop\n  }}\n\
         }}\n"
    );
    for l in leases {
        l.elements("add", &mut script);
    }
    script
}

/// The transaction that adds one lease's elements to a rendered table (adding an element
/// that is there already is no error).
pub fn add(lease: &LeaseRules) -> String {
    let mut script = String::new();
    lease.elements("add", &mut script);
    script
}

/// The transaction that removes one lease's elements, whether or not they are there: each
/// is added first (a no-op when present), so that deleting it cannot fail the transaction.
pub fn delete(lease: &LeaseRules) -> String {
    let mut script = add(lease);
    lease.elements("delete", &mut script);
    script
}

/// The script that removes both tables (networking switched off).
pub fn remove() -> String {
    format!(
        "table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE6} {{}}\ndelete table {TABLE6}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_guard_resets_the_whole_forwarded_range_and_replaces_itself() {
        let script = render_ipv6_guard((22000, 22999));
        assert!(
            script.starts_with("table ip6 coinop {}\ndelete table ip6 coinop\n"),
            "{script}"
        );
        assert!(
            script.contains("type filter hook input priority filter; policy accept;")
                && script.contains("tcp dport 22000-22999 reject with tcp reset"),
            "{script}"
        );
        assert!(remove().contains("delete table ip6 coinop"));
    }

    fn lease() -> LeaseRules {
        LeaseRules {
            lease_id: "l-1".into(),
            tap: "cop3".into(),
            guest_ip: Ipv4Addr::new(10, 213, 0, 14),
            ssh_port: 22003,
        }
    }

    #[test]
    fn each_lease_gets_its_forward_masquerade_and_source_elements() {
        let script = render(&[lease()], 4096);
        assert!(script.starts_with("table ip coinop {}\ndelete table ip coinop\n"));
        assert_eq!(
            script
                .matches("dnat to tcp dport map @ssh_forward : 22")
                .count(),
            2,
            "prerouting and output:\n{script}"
        );
        assert!(script.contains(
            "add element ip coinop ssh_forward { 22003 comment \"lease l-1\" : 10.213.0.14 }"
        ));
        assert!(script.contains("add element ip coinop guests { 10.213.0.14 comment"));
        assert!(
            script.contains("add element ip coinop guest_sources { \"cop3\" . 10.213.0.14 comment")
        );
        assert!(
            !render(&[], 4096).contains("add element"),
            "no lease, no forwarding"
        );
        assert!(
            script.contains("iifname \"cop*\" ip daddr 169.254.0.0/16 drop"),
            "no instance metadata for guests:\n{script}"
        );
        for name in ["forward", "local_out"] {
            let rules: Vec<&str> = chain(&script, name)
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("oifname"))
                .collect();
            assert_eq!(
                rules,
                [
                    "oifname \"cop*\" ct state established,related accept",
                    "oifname \"cop*\" ct status dnat tcp dport 22 accept",
                    "oifname \"cop*\" drop",
                ],
                "only replies and the SSH forward reach a guest ({name}):\n{script}"
            );
        }
        assert!(chain(&script, "local_out").contains("type filter hook output priority filter;"));
        assert!(
            chain(&script, "forward").contains(
                "iifname \"cop*\" ct state new add @guest_flows { ip saddr ct count over 4096 } drop"
            ),
            "a guest's tracked connections are capped:\n{script}"
        );
        assert!(render(&[], 7).contains("ct count over 7 }"));
        let antispoof = chain(&script, "antispoof");
        assert!(
            antispoof.contains("type filter hook prerouting priority raw;")
                && antispoof.contains("iifname . ip saddr != @guest_sources drop"),
            "every packet from a tap is checked, before conntrack:\n{script}"
        );
    }

    /// The text of chain `name` in a rendered script.
    fn chain<'s>(script: &'s str, name: &str) -> &'s str {
        let start = script
            .find(&format!("chain {name} {{"))
            .unwrap_or_else(|| panic!("no chain {name}:\n{script}"));
        let body = &script[start..];
        // Rules are indented by four spaces, a chain's closing brace by two.
        &body[..body.find("\n  }").map_or(body.len(), |end| end + 4)]
    }

    #[test]
    fn a_lease_is_added_and_deleted_by_its_elements_alone() {
        let add = add(&lease());
        assert_eq!(add.lines().count(), 3, "{add}");
        assert!(add.lines().all(|l| l.starts_with("add element ip coinop ")));
        let delete = delete(&lease());
        let verbs: Vec<&str> = delete
            .lines()
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(
            verbs,
            ["add", "add", "add", "delete", "delete", "delete"],
            "{delete}"
        );
        assert!(!delete.contains("table ip coinop {"), "no re-render");
    }
}
