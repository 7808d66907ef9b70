//! Personalisation: the one line of per-lease data coinopd sends a guest of an `agent` image
//! through its VMM's personalisation port (images/rootfs/PERSONALISE.md).
//!
//! Images declared `agent` ([`crate::image_catalogue`]) run a guest agent: after its init,
//! holding no per-lease state, the guest writes 124 to the boot timer (the VMM's event
//! `awaiting_personalisation`, also the point where a golden snapshot is taken) and waits
//! for the line. coinopd answers that event with the VMM control command `personalise`
//! ([`crate::supervisor`]), for a cold boot and a restore alike, so a lease restored from a
//! snapshot becomes as unique as a cold-booted one: fresh host entropy (the agent reseeds
//! the kernel RNG before it makes SSH host keys), the host's clock, its own host name,
//! address, MAC and tenant key. None of it goes on such a guest's kernel command line,
//! which stays the image's own so that every lease of the image shares one snapshot.
//!
//! [`Personalisation`] is what coinopd knows at the spawn; [`Personalisation::line`] adds
//! the entropy and the time when the guest asks, so neither is older than the request.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use coinop_proto::network::NetInfo;

/// The line's first word: the protocol and its version.
pub const PROTOCOL: &str = "coinop-personalise/1";
/// The longest line the VMM accepts.
pub const MAX_LINE: usize = 4096;
/// Bytes of host entropy per line (256 bits).
const ENTROPY_BYTES: usize = 32;

/// Kernel command-line words every agent image boots with: the second UART the line
/// arrives on (the guest kernel registers one only by default), and the agent's switch.
pub const AGENT_CMDLINE_WORDS: [&str; 2] = ["8250.nr_uarts=2", "coinop.personalise=1"];

/// `cmdline` with the agent words it lacks appended.
pub fn agent_cmdline(cmdline: &str) -> String {
    let mut out = cmdline.trim_end().to_string();
    for word in AGENT_CMDLINE_WORDS {
        if !cmdline.split_whitespace().any(|w| w == word) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    out
}

/// One lease's data for its guest agent, without the parts made at send time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personalisation {
    /// RFC 1123 host name (the lease id: `l` and hex digits).
    pub hostname: String,
    /// `ADDR/PREFIX`, gateway and MAC of eth0, when the lease has a NIC.
    pub ip: Option<String>,
    pub gw: Option<String>,
    pub mac: Option<String>,
    /// The tenant's OpenSSH public key line, as given (already checked by the create).
    pub ssh_key: Option<String>,
}

impl Personalisation {
    /// A lease's personalisation: host name from its id, network from its NIC.
    pub fn for_lease(lease_id: &str, net: Option<&NetInfo>, ssh_key: Option<&str>) -> Self {
        Personalisation {
            hostname: lease_id.to_ascii_lowercase(),
            ip: net.map(|n| format!("{}/{}", n.guest_ip, n.prefix_len)),
            gw: net.map(|n| n.host_ip.to_string()),
            mac: net.map(|n| n.mac.to_ascii_lowercase()),
            ssh_key: ssh_key.map(str::to_string),
        }
    }

    /// The line for the VMM (no newline): fresh entropy from the OS and the wall clock now.
    pub fn line(&self) -> String {
        let mut entropy = [0u8; ENTROPY_BYTES];
        OsRng.fill_bytes(&mut entropy);
        // Before the epoch only with a broken host clock: the guest then gets 0, as wrong
        // as the host.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.line_with(&entropy, now.as_secs(), now.subsec_nanos())
    }

    /// Whether a line with the SSH key line `key` fits the VMM's limit for any lease (the
    /// longest host name and address): checked when the lease is created, so a key too long
    /// for the port is a bad request, not a failed boot.
    pub fn key_fits(key: &str) -> bool {
        let worst = Personalisation {
            hostname: "x".repeat(63),
            ip: Some("255.255.255.255/32".into()),
            gw: Some("255.255.255.255".into()),
            mac: Some("ff:ff:ff:ff:ff:ff".into()),
            ssh_key: Some(key.to_string()),
        };
        worst
            .line_with(&[0; ENTROPY_BYTES], u64::MAX, 999_999_999)
            .len()
            <= MAX_LINE
    }

    fn line_with(&self, entropy: &[u8; ENTROPY_BYTES], secs: u64, nanos: u32) -> String {
        let mut line = format!(
            "{PROTOCOL} entropy={} time={secs}.{nanos:09} hostname={}",
            hex::encode(entropy),
            self.hostname
        );
        let optional = [
            ("ip", self.ip.clone()),
            ("gw", self.gw.clone()),
            ("mac", self.mac.clone()),
            (
                "ssh_key",
                self.ssh_key
                    .as_ref()
                    .map(|k| base64::engine::general_purpose::STANDARD.encode(k.trim())),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                line.push_str(&format!(" {key}={value}"));
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coinop_proto::network::SshEndpoint;

    fn net() -> NetInfo {
        NetInfo {
            guest_ip: "10.213.0.6".parse().expect("address"),
            host_ip: "10.213.0.5".parse().expect("address"),
            prefix_len: 30,
            mac: "02:C0:1B:00:00:01".into(),
            ssh: SshEndpoint {
                host: "h".into(),
                port: 22001,
            },
            tap: "cop1".into(),
            slot: 1,
        }
    }

    #[test]
    fn the_line_carries_every_field_in_the_protocols_format() {
        let p = Personalisation::for_lease("lABC0123", Some(&net()), Some("ssh-ed25519 AAAA x@y"));
        let line = p.line_with(&[0xab; 32], 1_733_360_000, 5);
        assert_eq!(
            line,
            format!(
                "coinop-personalise/1 entropy={} time=1733360000.000000005 hostname=labc0123 \
                 ip=10.213.0.6/30 gw=10.213.0.5 mac=02:c0:1b:00:00:01 ssh_key={}",
                "ab".repeat(32),
                base64::engine::general_purpose::STANDARD.encode("ssh-ed25519 AAAA x@y")
            )
        );
    }

    #[test]
    fn without_a_nic_or_key_only_the_required_fields_are_sent() {
        let line = Personalisation::for_lease("l1", None, None).line();
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 4, "{line}");
        assert_eq!(words[0], PROTOCOL);
        let entropy = words[1].strip_prefix("entropy=").expect("entropy first");
        assert_eq!(entropy.len(), 64);
        assert!(entropy
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(words[2].starts_with("time=") && words[2].contains('.'));
        assert_eq!(words[3], "hostname=l1");
    }

    #[test]
    fn every_line_has_its_own_entropy_and_fits_the_vmm() {
        let p = Personalisation::for_lease(
            "l0123456789abcdef",
            Some(&net()),
            Some(&format!("ssh-rsa {}", "A".repeat(2000))),
        );
        let (a, b) = (p.line(), p.line());
        let entropy = |l: &str| l.split(' ').nth(1).map(str::to_string);
        assert_ne!(entropy(&a), entropy(&b));
        for line in [a, b] {
            assert!(line.len() <= MAX_LINE, "{} bytes", line.len());
            assert!(line.bytes().all(|c| (0x20..=0x7e).contains(&c)));
        }
    }

    #[test]
    fn keys_too_long_for_the_port_are_found_before_a_boot() {
        assert!(Personalisation::key_fits(&format!(
            "ssh-rsa {}",
            "A".repeat(2800)
        )));
        assert!(!Personalisation::key_fits(&format!(
            "ssh-rsa {}",
            "A".repeat(3000)
        )));
    }

    #[test]
    fn agent_words_are_added_once() {
        assert_eq!(
            agent_cmdline("console=ttyS0 root=/dev/vda"),
            "console=ttyS0 root=/dev/vda 8250.nr_uarts=2 coinop.personalise=1"
        );
        let once = agent_cmdline("a");
        assert_eq!(agent_cmdline(&once), once);
        assert_eq!(agent_cmdline(""), "8250.nr_uarts=2 coinop.personalise=1");
    }
}
