//! Personalisation: the one line of per-lease data coinopd sends a guest of an `agent` image
//! through its VMM's personalisation port (images/rootfs/PERSONALISE.md).
//!
//! Images declared `agent` ([`crate::image_catalogue`]) run a guest agent: after its init,
//! holding no per-lease state, the guest writes 124 to the boot timer (the VMM's event
//! `awaiting_personalisation`, also the point where a golden snapshot is taken) and waits
//! for the line. coinopd answers that event with the VMM control command `personalise`
//! ([`crate::supervisor`]), for a cold boot and a restore alike, so a lease restored from a
//! snapshot becomes as unique as a cold-booted one: fresh host entropy (the agent reseeds
//! the kernel RNG before anything draws from it), the host's clock, its own host name,
//! address, MAC and tenant key, and a fresh SSH host key pair made here
//! ([`GuestHostKey`]: its public half goes in the lease's reply, its private half only in
//! the line). None of it goes on such a guest's kernel command line,
//! which stays the image's own so that every lease of the image shares one snapshot.
//!
//! [`Personalisation`] is what coinopd knows at the spawn (and the host key, made then so
//! the reply can name it); [`Personalisation::line`] adds the entropy and the time when the
//! guest asks, so neither is older than the request.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use coinop_proto::network::NetInfo;

use crate::guest_host_key::GuestHostKey;

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

/// One lease's data for its guest agent, without the parts made at send time. Its `Debug`
/// shows the host key's public half only.
#[derive(Debug, Clone)]
pub struct Personalisation {
    /// RFC 1123 host name (the lease id: `l` and hex digits).
    pub hostname: String,
    /// `ADDR/PREFIX`, gateway and MAC of eth0, when the lease has a NIC.
    pub ip: Option<String>,
    pub gw: Option<String>,
    pub mac: Option<String>,
    /// The tenant's OpenSSH public key line, as given (already checked by the create).
    pub ssh_key: Option<String>,
    /// The guest's SSH host key pair, fresh for this boot.
    pub host_key: GuestHostKey,
}

impl Personalisation {
    /// A lease's personalisation: host name from its id, network from its NIC, a fresh SSH
    /// host key pair.
    pub fn for_lease(lease_id: &str, net: Option<&NetInfo>, ssh_key: Option<&str>) -> Self {
        Personalisation {
            hostname: lease_id.to_ascii_lowercase(),
            ip: net.map(|n| format!("{}/{}", n.guest_ip, n.prefix_len)),
            gw: net.map(|n| n.host_ip.to_string()),
            mac: net.map(|n| n.mac.to_ascii_lowercase()),
            ssh_key: ssh_key.map(str::to_string),
            host_key: GuestHostKey::generate(),
        }
    }

    /// The guest's SSH host key as an OpenSSH public key line, for the tenant.
    pub fn host_key_openssh(&self) -> String {
        self.host_key.openssh()
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
            // Its value has one length whatever the key.
            host_key: GuestHostKey::from_seed(&[0; 32]),
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
        line.push_str(" host_key=");
        line.push_str(&self.host_key.line_value());
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
                host_key: None,
            },
            tap: "cop1".into(),
            slot: 1,
        }
    }

    #[test]
    fn the_line_carries_every_field_in_the_protocols_format() {
        let mut p =
            Personalisation::for_lease("lABC0123", Some(&net()), Some("ssh-ed25519 AAAA x@y"));
        p.host_key = GuestHostKey::from_seed(&[7; 32]);
        let line = p.line_with(&[0xab; 32], 1_733_360_000, 5);
        assert_eq!(
            line,
            format!(
                "coinop-personalise/1 entropy={} time=1733360000.000000005 hostname=labc0123 \
                 ip=10.213.0.6/30 gw=10.213.0.5 mac=02:c0:1b:00:00:01 ssh_key={} host_key={}",
                "ab".repeat(32),
                base64::engine::general_purpose::STANDARD.encode("ssh-ed25519 AAAA x@y"),
                GuestHostKey::from_seed(&[7; 32]).line_value()
            )
        );
    }

    #[test]
    fn without_a_nic_or_key_only_the_required_fields_are_sent() {
        let line = Personalisation::for_lease("l1", None, None).line();
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 5, "{line}");
        assert_eq!(words[0], PROTOCOL);
        let entropy = words[1].strip_prefix("entropy=").expect("entropy first");
        assert_eq!(entropy.len(), 64);
        assert!(entropy
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(words[2].starts_with("time=") && words[2].contains('.'));
        assert_eq!(words[3], "hostname=l1");
        assert!(words[4].starts_with("host_key="), "{line}");
    }

    #[test]
    fn the_line_carries_a_fresh_host_key_whose_public_half_the_tenant_is_told() {
        let p = Personalisation::for_lease("l1", Some(&net()), None);
        let line = p.line();
        let value = line
            .split(' ')
            .find_map(|w| w.strip_prefix("host_key="))
            .expect("a host_key in every line");
        assert_eq!(value.len(), 128, "{value}");
        assert!(value
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let bytes = hex::decode(value).expect("hex");
        // The first half is the seed, the second the public key that seed derives.
        let seed: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
        let derived = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        assert_eq!(&bytes[32..], derived.as_bytes());
        // What the reply carries is that public key, as an OpenSSH line.
        let told = p.host_key_openssh();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(told.strip_prefix("ssh-ed25519 ").expect("an ed25519 line"))
            .expect("base64");
        assert_eq!(&blob[blob.len() - 32..], derived.as_bytes());
        // Another lease (or another boot) gets another key; the same one the same.
        assert_eq!(p.line().split(' ').next_back(), line.split(' ').next_back());
        let other = Personalisation::for_lease("l1", Some(&net()), None);
        assert_ne!(other.host_key_openssh(), told);
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
            "A".repeat(2700)
        )));
        assert!(!Personalisation::key_fits(&format!(
            "ssh-rsa {}",
            "A".repeat(2800)
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
