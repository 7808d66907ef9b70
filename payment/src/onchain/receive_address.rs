//! Fresh receive addresses from the operator's extended public key: BIP32 non-hardened
//! derivation `xpub/0/index` (the external chain), as P2WPKH or P2TR (BIP86 key-path only).
//! The host never holds a private key.

use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::key::CompressedPublicKey;
use bitcoin::secp256k1::{Secp256k1, VerifyOnly};
use bitcoin::{Address, NetworkKind};

use super::error::QuoteError;
use super::network::ChainNetwork;

/// Longest xpub string accepted (a base58 xpub is 111 characters).
pub const MAX_XPUB_LEN: usize = 120;
/// First hardened index: non-hardened derivation stops below it.
pub const HARDENED: u64 = 1 << 31;

/// The address type handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    P2wpkh,
    P2tr,
}

impl AddressKind {
    pub fn name(self) -> &'static str {
        match self {
            AddressKind::P2wpkh => "p2wpkh",
            AddressKind::P2tr => "p2tr",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "p2wpkh" => Some(AddressKind::P2wpkh),
            "p2tr" => Some(AddressKind::P2tr),
            _ => None,
        }
    }
}

/// Derives receive addresses from one xpub.
pub struct AddressDeriver {
    xpub: Xpub,
    xpub_text: String,
    kind: AddressKind,
    network: ChainNetwork,
    secp: Secp256k1<VerifyOnly>,
}

impl std::fmt::Debug for AddressDeriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressDeriver")
            .field("xpub", &self.xpub_text)
            .field("kind", &self.kind)
            .field("network", &self.network)
            .finish()
    }
}

impl AddressDeriver {
    /// Parses the operator's xpub (`xpub…` for mainnet, `tpub…` for the test networks).
    pub fn new(xpub: &str, kind: AddressKind, network: ChainNetwork) -> Result<Self, QuoteError> {
        if xpub.len() > MAX_XPUB_LEN {
            return Err(QuoteError::BadXpub(format!(
                "{} characters, at most {MAX_XPUB_LEN}",
                xpub.len()
            )));
        }
        let parsed = Xpub::from_str(xpub).map_err(|e| QuoteError::BadXpub(e.to_string()))?;
        let host_kind = NetworkKind::from(network.bitcoin_network());
        if parsed.network != host_kind {
            return Err(QuoteError::XpubNetwork {
                xpub: format!("{:?}", parsed.network),
                host: network.name().to_owned(),
            });
        }
        Ok(AddressDeriver {
            xpub: parsed,
            xpub_text: xpub.to_owned(),
            kind,
            network,
            secp: Secp256k1::verification_only(),
        })
    }

    /// The xpub as the operator wrote it (the quote book keys its counter by it).
    pub fn xpub_text(&self) -> &str {
        &self.xpub_text
    }

    pub fn kind(&self) -> AddressKind {
        self.kind
    }

    /// The receive address at `index` (< 2^31).
    pub fn address_at(&self, index: u32) -> Result<Address, QuoteError> {
        let child = ChildNumber::from_normal_idx(index).map_err(|e| QuoteError::Derive {
            index,
            reason: e.to_string(),
        })?;
        let path = [ChildNumber::Normal { index: 0 }, child];
        let derived = self
            .xpub
            .derive_pub(&self.secp, &path)
            .map_err(|e| QuoteError::Derive {
                index,
                reason: e.to_string(),
            })?;
        let net = self.network.bitcoin_network();
        Ok(match self.kind {
            AddressKind::P2wpkh => Address::p2wpkh(&CompressedPublicKey(derived.public_key), net),
            AddressKind::P2tr => Address::p2tr(&self.secp, derived.to_x_only_pub(), None, net),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // BIP84's test vector account key (mnemonic "abandon … about", m/84'/0'/0'), whose first
    // receive address BIP84 lists as bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu.
    const BIP84_ZPUB_AS_XPUB: &str = "xpub6CatWdiZiodmUeTDp8LT5or8nmbKNcuyvz7WyksVFkKB4RHwCD3XyuvPEbvqAQY3rAPshWcMLoP2fMFMKHPJ4ZeZXYVUhLv1VMrjPC7PW6V";
    // BIP86's test vector account key (same mnemonic, m/86'/0'/0').
    const BIP86_XPUB: &str = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";

    #[test]
    fn bip84_first_receive_address() {
        let d = AddressDeriver::new(
            BIP84_ZPUB_AS_XPUB,
            AddressKind::P2wpkh,
            ChainNetwork::Mainnet,
        )
        .unwrap();
        assert_eq!(
            d.address_at(0).unwrap().to_string(),
            "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
        );
        assert_eq!(
            d.address_at(1).unwrap().to_string(),
            "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"
        );
    }

    #[test]
    fn bip86_first_receive_address() {
        let d = AddressDeriver::new(BIP86_XPUB, AddressKind::P2tr, ChainNetwork::Mainnet).unwrap();
        assert_eq!(
            d.address_at(0).unwrap().to_string(),
            "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
        );
    }

    #[test]
    fn refuses_bad_and_foreign_xpubs() {
        assert!(matches!(
            AddressDeriver::new(
                "xpub-not-base58",
                AddressKind::P2wpkh,
                ChainNetwork::Mainnet
            ),
            Err(QuoteError::BadXpub(_))
        ));
        assert!(matches!(
            AddressDeriver::new(&"x".repeat(500), AddressKind::P2wpkh, ChainNetwork::Mainnet),
            Err(QuoteError::BadXpub(_))
        ));
        assert!(matches!(
            AddressDeriver::new(BIP86_XPUB, AddressKind::P2wpkh, ChainNetwork::Regtest),
            Err(QuoteError::XpubNetwork { .. })
        ));
        let d = AddressDeriver::new(BIP86_XPUB, AddressKind::P2tr, ChainNetwork::Mainnet).unwrap();
        assert!(matches!(
            d.address_at(1 << 31),
            Err(QuoteError::Derive { .. })
        ));
    }
}
