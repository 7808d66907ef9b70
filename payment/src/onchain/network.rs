//! The networks coinop accepts payments on, with the consensus facts a header chain needs:
//! genesis, proof-of-work limit, how difficulty changes, and how many confirmations to ask.
//!
//! Signet is special: its blocks are valid only with a signature from the signet's key in the
//! coinbase, which headers alone cannot show. A signet header chain is therefore only as good
//! as its source, and [`super::header_chain::HeaderChain`] takes signet headers only from the
//! operator's own feed ([`super::header_chain::HeaderSource::Operator`]).

use bitcoin::block::Header;
use bitcoin::constants::genesis_block;
use bitcoin::params::Params;
use bitcoin::{CompactTarget, Network, Target};

/// How the required `bits` of the next header are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetargetRule {
    /// Every 2016 blocks from the last period's timespan and the last block's bits; in
    /// between, the bits stay the same (mainnet, signet).
    Standard,
    /// Standard, plus testnet's rule that a block more than 20 minutes after its parent may
    /// use the minimum difficulty (testnet3).
    TestnetMinDifficulty,
    /// Testnet4: the 20-minute rule, and BIP94: the retarget starts from the bits of the
    /// period's first block (never a minimum-difficulty exception), and the first block of a
    /// period may not be more than 600 s older than its parent (time-warp fix).
    Testnet4Bip94,
    /// Regtest: the target never changes.
    Fixed,
}

/// A network the host can verify payments on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainNetwork {
    Mainnet,
    /// Kept for real test data (Bitcoin Core's testnet3 headers); testnet4 replaces it.
    Testnet3,
    Testnet4,
    Signet,
    Regtest,
}

impl ChainNetwork {
    /// Every network, in a stable order (its index is the on-disk network code).
    pub const ALL: [ChainNetwork; 5] = [
        ChainNetwork::Mainnet,
        ChainNetwork::Testnet3,
        ChainNetwork::Testnet4,
        ChainNetwork::Signet,
        ChainNetwork::Regtest,
    ];

    /// The `bitcoin` crate's network (addresses, genesis).
    pub fn bitcoin_network(self) -> Network {
        match self {
            ChainNetwork::Mainnet => Network::Bitcoin,
            ChainNetwork::Testnet3 => Network::Testnet,
            ChainNetwork::Testnet4 => Network::Testnet4,
            ChainNetwork::Signet => Network::Signet,
            ChainNetwork::Regtest => Network::Regtest,
        }
    }

    /// Consensus parameters: pow limit, timespan, spacing.
    pub fn params(self) -> &'static Params {
        match self {
            ChainNetwork::Mainnet => &Params::MAINNET,
            ChainNetwork::Testnet3 => &Params::TESTNET3,
            ChainNetwork::Testnet4 => &Params::TESTNET4,
            ChainNetwork::Signet => &Params::SIGNET,
            ChainNetwork::Regtest => &Params::REGTEST,
        }
    }

    pub fn retarget_rule(self) -> RetargetRule {
        match self {
            ChainNetwork::Mainnet | ChainNetwork::Signet => RetargetRule::Standard,
            ChainNetwork::Testnet3 => RetargetRule::TestnetMinDifficulty,
            ChainNetwork::Testnet4 => RetargetRule::Testnet4Bip94,
            ChainNetwork::Regtest => RetargetRule::Fixed,
        }
    }

    /// The easiest target a header may carry (the crate renamed `pow_limit` to
    /// `max_attainable_target`).
    #[allow(clippy::misnamed_getters)]
    pub fn pow_limit(self) -> Target {
        self.params().max_attainable_target
    }

    /// The pow limit in the compact form headers carry it.
    pub fn pow_limit_bits(self) -> CompactTarget {
        self.pow_limit().to_compact_lossy()
    }

    pub fn genesis_header(self) -> Header {
        genesis_block(self.params()).header
    }

    /// Confirmations a lease payment needs unless the operator says otherwise
    /// (`coinopd --min-conf`). Each further block makes undoing the payment cost another
    /// block's reward:
    ///
    /// | network | default | why |
    /// |---|---|---|
    /// | mainnet | 2 | one reorg of depth 1 happens now and then; depth 2 is very rare, and the lease only buys time that is metered from the balance |
    /// | testnet3, testnet4 | 3 | the 20-minute minimum-difficulty rule makes blocks, and so reorgs, nearly free |
    /// | signet | 2 | only the signet's signers make blocks, but they may reorg (some signets do on purpose) |
    /// | regtest | 1 | blocks are free and local: tests and demos |
    pub fn default_min_conf(self) -> u32 {
        match self {
            ChainNetwork::Mainnet | ChainNetwork::Signet => 2,
            ChainNetwork::Testnet3 | ChainNetwork::Testnet4 => 3,
            ChainNetwork::Regtest => 1,
        }
    }

    /// Confirmations a coinbase output needs before it is taken as payment: consensus lets
    /// it be spent only then ([`bitcoin::constants::COINBASE_MATURITY`], the same on every
    /// network), and until then a reorg that drops its block destroys it outright.
    pub fn coinbase_maturity(self) -> u32 {
        bitcoin::constants::COINBASE_MATURITY
    }

    /// Whether the network's nodes refuse to relay a transaction with a dust output (Bitcoin
    /// Core's `fRequireStandard` in its chain parameters: on for mainnet, testnet4 and
    /// signet; off for testnet3 and regtest, whose nodes take non-standard transactions
    /// unless told `-acceptnonstdtxn=0`). Where they do, a quote below the dust limit could
    /// not be paid, so quotes are raised to it (`coinopd --quote-dust-floor`).
    pub fn refuses_dust(self) -> bool {
        match self {
            ChainNetwork::Mainnet | ChainNetwork::Testnet4 | ChainNetwork::Signet => true,
            ChainNetwork::Testnet3 | ChainNetwork::Regtest => false,
        }
    }

    /// Headers cannot prove a signet block valid (see the module doc).
    pub fn needs_operator_feed(self) -> bool {
        self == ChainNetwork::Signet
    }

    /// The stable one-byte code stored in the chain file.
    pub fn code(self) -> u8 {
        match self {
            ChainNetwork::Mainnet => 0,
            ChainNetwork::Testnet3 => 1,
            ChainNetwork::Testnet4 => 2,
            ChainNetwork::Signet => 3,
            ChainNetwork::Regtest => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.code() == code)
    }

    /// The name operators write in configuration (`mainnet`, `testnet4`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ChainNetwork::Mainnet => "mainnet",
            ChainNetwork::Testnet3 => "testnet3",
            ChainNetwork::Testnet4 => "testnet4",
            ChainNetwork::Signet => "signet",
            ChainNetwork::Regtest => "regtest",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow_limits_in_compact_form_match_the_genesis_bits() {
        for net in ChainNetwork::ALL {
            assert_eq!(
                net.pow_limit_bits(),
                net.genesis_header().bits,
                "{}",
                net.name()
            );
            assert_eq!(ChainNetwork::from_code(net.code()), Some(net));
            assert_eq!(ChainNetwork::from_name(net.name()), Some(net));
        }
    }
}
