//! Fresh receive addresses from the operator's extended public key: BIP32 non-hardened
//! derivation `xpub/0/index` (the external chain), as P2WPKH, P2TR (BIP86 key-path only) or
//! P2SH-P2WPKH. The host never holds a private key.
//!
//! Wallets export account keys in the SLIP-132 forms too, whose version bytes name the script
//! type: `zpub`/`vpub` (P2WPKH, BIP84) and `ypub`/`upub` (P2SH-P2WPKH, BIP49). They carry the
//! same key as the `xpub`/`tpub` with other version bytes, so they are read by swapping the
//! version to `xpub`/`tpub`, and the script type they name is the one derived.

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
    /// P2WPKH nested in P2SH (BIP49): only for a `ypub`/`upub`.
    P2shP2wpkh,
}

impl AddressKind {
    pub fn name(self) -> &'static str {
        match self {
            AddressKind::P2wpkh => "p2wpkh",
            AddressKind::P2tr => "p2tr",
            AddressKind::P2shP2wpkh => "p2sh-p2wpkh",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "p2wpkh" => Some(AddressKind::P2wpkh),
            "p2tr" => Some(AddressKind::P2tr),
            "p2sh-p2wpkh" => Some(AddressKind::P2shP2wpkh),
            _ => None,
        }
    }
}

/// What an extended public key's version bytes say (SLIP-132's registry).
struct KeyVersion {
    network: NetworkKind,
    /// The script type the version names; `None` for plain `xpub`/`tpub`.
    implies: Option<AddressKind>,
}

/// The BIP32 version of a plain extended public key.
const XPUB_VERSION: [u8; 4] = [0x04, 0x88, 0xb2, 0x1e];
const TPUB_VERSION: [u8; 4] = [0x04, 0x35, 0x87, 0xcf];

fn key_version(version: [u8; 4]) -> Option<KeyVersion> {
    let (network, implies) = match version {
        XPUB_VERSION => (NetworkKind::Main, None),
        [0x04, 0x9d, 0x7c, 0xb2] => (NetworkKind::Main, Some(AddressKind::P2shP2wpkh)), // ypub
        [0x04, 0xb2, 0x47, 0x46] => (NetworkKind::Main, Some(AddressKind::P2wpkh)),     // zpub
        TPUB_VERSION => (NetworkKind::Test, None),
        [0x04, 0x4a, 0x52, 0x62] => (NetworkKind::Test, Some(AddressKind::P2shP2wpkh)), // upub
        [0x04, 0x5f, 0x1c, 0xf6] => (NetworkKind::Test, Some(AddressKind::P2wpkh)),     // vpub
        _ => return None,
    };
    Some(KeyVersion { network, implies })
}

/// Parses an `xpub`/`tpub` or a SLIP-132 `ypub`/`zpub`/`upub`/`vpub`: the key, and the
/// script type its version names.
fn parse_extended_key(text: &str) -> Result<(Xpub, Option<AddressKind>), QuoteError> {
    let mut data =
        bitcoin::base58::decode_check(text).map_err(|e| QuoteError::BadXpub(e.to_string()))?;
    let version: [u8; 4] = data
        .get(..4)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| QuoteError::BadXpub(format!("{} bytes", data.len())))?;
    let known = key_version(version).ok_or_else(|| {
        QuoteError::BadXpub(format!(
            "version {} is none of xpub, ypub, zpub, tpub, upub, vpub",
            hex::encode(version)
        ))
    })?;
    let plain = match known.network {
        NetworkKind::Main => XPUB_VERSION,
        NetworkKind::Test => TPUB_VERSION,
    };
    data[..4].copy_from_slice(&plain);
    let key = Xpub::decode(&data).map_err(|e| QuoteError::BadXpub(e.to_string()))?;
    Ok((key, known.implies))
}

/// What the quote books key an extended public key's index counter and index holders by:
/// the key itself (its public key and chain code, all that derivation uses), never its
/// spelling. The same key as `vpub` or `tpub`, `zpub` or `xpub`, or with other depth or
/// parent metadata derives the very same addresses, so it must draw from one counter, or
/// an address already handed out would be handed out again from index 0.
/// `key:` + hex SHA-256 of the 33-byte public key and the 32-byte chain code (a digest, so
/// that the stores' keys do not spell the xpub out).
fn key_id_of_key(key: &Xpub) -> String {
    use bitcoin::hashes::{sha256, Hash, HashEngine};
    let mut engine = sha256::Hash::engine();
    engine.input(&key.public_key.serialize());
    engine.input(key.chain_code.as_bytes());
    format!(
        "key:{}",
        hex::encode(sha256::Hash::from_engine(engine).to_byte_array())
    )
}

/// [`AddressDeriver::key_id`] of an extended public key written in any accepted form
/// (`xpub`, `tpub` or a SLIP-132 one; any network), or `None` if `text` is not one: what a
/// store migrates a counter kept under the typed string to.
pub fn key_id_of(text: &str) -> Option<String> {
    if text.len() > MAX_XPUB_LEN {
        return None;
    }
    parse_extended_key(text)
        .ok()
        .map(|(k, _)| key_id_of_key(&k))
}

/// Derives receive addresses from one xpub.
pub struct AddressDeriver {
    xpub: Xpub,
    xpub_text: String,
    key_id: String,
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
    /// Parses the operator's key for addresses of type `kind`: an `xpub` (mainnet) or `tpub`
    /// (test networks), or a SLIP-132 key whose version names `kind`.
    pub fn new(xpub: &str, kind: AddressKind, network: ChainNetwork) -> Result<Self, QuoteError> {
        Self::for_key(xpub, Some(kind), network)
    }

    /// Parses the operator's key; the address type is `asked`, else the one a SLIP-132 key
    /// names, else P2WPKH. A SLIP-132 key naming another type than `asked` is refused.
    pub fn for_key(
        xpub: &str,
        asked: Option<AddressKind>,
        network: ChainNetwork,
    ) -> Result<Self, QuoteError> {
        if xpub.len() > MAX_XPUB_LEN {
            return Err(QuoteError::BadXpub(format!(
                "{} characters, at most {MAX_XPUB_LEN}",
                xpub.len()
            )));
        }
        let (parsed, implied) = parse_extended_key(xpub)?;
        let kind = match (implied, asked) {
            (Some(implied), Some(asked)) if implied != asked => {
                return Err(QuoteError::XpubKind {
                    prefix: xpub.chars().take(4).collect(),
                    implied: implied.name(),
                    asked: asked.name(),
                })
            }
            (Some(kind), _) | (None, Some(kind)) => kind,
            (None, None) => AddressKind::P2wpkh,
        };
        let host_kind = NetworkKind::from(network.bitcoin_network());
        if parsed.network != host_kind {
            return Err(QuoteError::XpubNetwork {
                xpub: format!("{:?}", parsed.network),
                host: network.name().to_owned(),
            });
        }
        Ok(AddressDeriver {
            key_id: key_id_of_key(&parsed),
            xpub: parsed,
            xpub_text: xpub.to_owned(),
            kind,
            network,
            secp: Secp256k1::verification_only(),
        })
    }

    /// The xpub as the operator wrote it (the quote books once keyed their counter by it,
    /// and migrate what they kept under it to [`AddressDeriver::key_id`]).
    pub fn xpub_text(&self) -> &str {
        &self.xpub_text
    }

    /// What the quote books key this key's index counter and index holders by: the same
    /// for every spelling of the key (see [`key_id_of`]).
    pub fn key_id(&self) -> &str {
        &self.key_id
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
            AddressKind::P2shP2wpkh => {
                Address::p2shwpkh(&CompressedPublicKey(derived.public_key), net)
            }
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

    // BIP84's test vector, as the zpub BIP84 lists for account 0 (same mnemonic, m/84'/0'/0';
    // https://github.com/bitcoin/bips/blob/master/bip-0084.mediawiki#test-vectors, also in
    // SLIP-0132's test vectors). The same key as BIP84_ZPUB_AS_XPUB above.
    const BIP84_ZPUB: &str = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs";
    // SLIP-0132's test vector for m/49'/0'/0' (same mnemonic) and its first address
    // (https://github.com/satoshilabs/slips/blob/master/slip-0132.md#bitcoin-test-vectors).
    const SLIP132_YPUB: &str = "ypub6Ww3ibxVfGzLrAH1PNcjyAWenMTbbAosGNB6VvmSEgytSER9azLDWCxoJwW7Ke7icmizBMXrzBx9979FfaHxHcrArf3zbeJJJUZPf663zsP";

    #[test]
    fn zpub_derives_bip84s_addresses_and_names_p2wpkh() {
        let d = AddressDeriver::for_key(BIP84_ZPUB, None, ChainNetwork::Mainnet).unwrap();
        assert_eq!(d.kind(), AddressKind::P2wpkh);
        assert_eq!(
            d.address_at(0).unwrap().to_string(),
            "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
        );
        let as_xpub = AddressDeriver::new(
            BIP84_ZPUB_AS_XPUB,
            AddressKind::P2wpkh,
            ChainNetwork::Mainnet,
        )
        .unwrap();
        assert_eq!(d.xpub, as_xpub.xpub);
        // A zpub names P2WPKH: asking it for taproot is a configuration mistake.
        assert!(matches!(
            AddressDeriver::for_key(BIP84_ZPUB, Some(AddressKind::P2tr), ChainNetwork::Mainnet),
            Err(QuoteError::XpubKind { .. })
        ));
        // A zpub is a mainnet key.
        assert!(matches!(
            AddressDeriver::for_key(BIP84_ZPUB, None, ChainNetwork::Testnet4),
            Err(QuoteError::XpubNetwork { .. })
        ));
    }

    #[test]
    fn ypub_derives_slip132s_nested_segwit_address() {
        let d = AddressDeriver::for_key(SLIP132_YPUB, None, ChainNetwork::Mainnet).unwrap();
        assert_eq!(d.kind(), AddressKind::P2shP2wpkh);
        assert_eq!(
            d.address_at(0).unwrap().to_string(),
            "37VucYSaXLCAsxYyAPfbSi9eh4iEcbShgf"
        );
    }

    #[test]
    fn vpub_and_upub_are_tpubs_with_other_version_bytes() {
        let secp = Secp256k1::new();
        let master = bitcoin::bip32::Xpriv::new_master(NetworkKind::Test, &[9u8; 32]).unwrap();
        let tpub = Xpub::from_priv(&secp, &master);
        let with_version = |v: [u8; 4]| {
            let mut data = tpub.encode();
            data[..4].copy_from_slice(&v);
            bitcoin::base58::encode_check(&data)
        };
        let vpub = with_version([0x04, 0x5f, 0x1c, 0xf6]);
        assert!(vpub.starts_with("vpub"), "{vpub}");
        let d = AddressDeriver::for_key(&vpub, None, ChainNetwork::Regtest).unwrap();
        let plain = AddressDeriver::new(
            &tpub.to_string(),
            AddressKind::P2wpkh,
            ChainNetwork::Regtest,
        )
        .unwrap();
        assert_eq!(d.address_at(5).unwrap(), plain.address_at(5).unwrap());
        let upub = with_version([0x04, 0x4a, 0x52, 0x62]);
        assert!(upub.starts_with("upub"), "{upub}");
        let d = AddressDeriver::for_key(&upub, None, ChainNetwork::Regtest).unwrap();
        assert_eq!(d.kind(), AddressKind::P2shP2wpkh);
        assert!(d.address_at(0).unwrap().to_string().starts_with('2'));
        // An unknown version is refused with what it was.
        let odd = with_version([0x01, 0x02, 0x03, 0x04]);
        assert!(matches!(
            AddressDeriver::for_key(&odd, None, ChainNetwork::Regtest),
            Err(QuoteError::BadXpub(m)) if m.contains("01020304")
        ));
    }

    #[test]
    fn a_plain_key_takes_the_asked_type_and_defaults_to_p2wpkh() {
        let d = AddressDeriver::for_key(BIP86_XPUB, None, ChainNetwork::Mainnet).unwrap();
        assert_eq!(d.kind(), AddressKind::P2wpkh);
        let d = AddressDeriver::for_key(BIP86_XPUB, Some(AddressKind::P2tr), ChainNetwork::Mainnet)
            .unwrap();
        assert_eq!(
            d.address_at(0).unwrap().to_string(),
            "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
        );
    }
}
