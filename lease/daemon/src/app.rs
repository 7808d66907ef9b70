//! The daemon's shared state: configuration, ledger, mint, header chain, quote book,
//! supervisor, capacity and metrics, opened from the state directory.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::secp256k1::rand::{rngs::OsRng, RngCore};
use bitcoin::secp256k1::Secp256k1;
use payment::credit::{Mint, MintLimits};
use payment::onchain::{
    default_checkpoint, AddressDeriver, ChainNetwork, Checkpoint, HeaderChain, IndexPolicy,
    PaymentWatch, QuoteBook,
};
use payment::spent_set::GroupCommitSpentSet;
use payment_postgres::{FleetIndexPolicy, PgQuoteBook};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::capacity::{Capacity, Totals};
use crate::config::Config;
use crate::disk_reserve::DiskReserve;
use crate::fleet::Fleet;
use crate::golden_snapshot::GoldenSnapshots;
use crate::http::limits::QuoteLimiter;
use crate::http::peer::OperatorPolicy;
use crate::isolation::Isolation;
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::quote_store::Quotes;
use crate::state_dir::{self, StateDirError, StateLock};
use crate::stops_in_flight::StopsInFlight;
use crate::supervisor::{GuestExit, Supervisor};
use payment::metering::Prices;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("state dir {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("mint: {0}")]
    Mint(#[from] payment::credit::CreditError),
    #[error("header chain: {0}")]
    Chain(#[from] payment::onchain::ChainError),
    #[error("quotes / xpub: {0}")]
    Quote(#[from] payment::onchain::QuoteError),
    #[error("spent set: {0}")]
    SpentSet(#[from] payment::spent_set::SpentSetError),
    #[error("payment watch: {0}")]
    Watch(#[from] payment::onchain::WatchError),
    #[error("fleet store: {0}")]
    Fleet(#[from] payment_postgres::PgStoreError),
    #[error(transparent)]
    MintSeed(#[from] crate::mint_seed::MintSeedError),
    #[error("isolation: {0}")]
    Isolation(#[from] crate::isolation::IsolationError),
    #[error("--xpub is required on {0} (only regtest generates a throwaway one)")]
    NoXpub(&'static str),
    /// The state dir is another coinopd's, or cannot be made private.
    #[error(transparent)]
    State(#[from] StateDirError),
}

impl StartError {
    /// Whether another coinopd holds the state dir, or manages guest networking in this
    /// network namespace (`coinopd` exits 2 for it: a configuration mistake, not a failure
    /// to retry).
    pub fn is_held_by_another_coinopd(&self) -> bool {
        use crate::isolation::IsolationError;
        use coinop_host::guest_network::netns_claim::ClaimError;
        matches!(
            self,
            StartError::State(StateDirError::Held { .. })
                | StartError::Isolation(IsolationError::NetworkClaim(ClaimError::Held { .. }))
        )
    }
}

pub struct AppState {
    pub config: Config,
    pub ledger: Arc<Ledger>,
    pub mint: Mint,
    /// Shared with the P2P header sync ([`crate::chain_sync`]).
    pub chain: Arc<RwLock<HeaderChain>>,
    /// What the P2P header sync is doing (`GET /v1/host`, `/metrics`).
    pub chain_sync: Arc<coinop_bitcoin_net::SyncStatus>,
    /// The host's quotes, or the fleet's with `--store` ([`crate::quote_store`]).
    pub quotes: Arc<Quotes>,
    /// Outputs paying quotes that the host saw in blocks from its peers.
    pub watch: Arc<PaymentWatch>,
    /// The spent set the mint and the ledger claim in (read here for quote status).
    pub spent: Arc<GroupCommitSpentSet>,
    pub supervisor: Supervisor,
    /// Images' golden snapshots ([`crate::golden_snapshot`]).
    pub golden: GoldenSnapshots,
    /// Leases restored ahead of their creates ([`crate::warm_restores`]).
    pub warm: crate::warm_restores::WarmRestores,
    pub capacity: Mutex<Capacity>,
    pub metrics: Metrics,
    /// Room kept on the state directory's disk for metering and stops; without it
    /// (degraded) no new leases are taken.
    pub disk: Arc<DiskReserve>,
    pub operator: OperatorPolicy,
    pub prices: Prices,
    pub chain_network: ChainNetwork,
    /// Accepted guest stops still being carried out (shutdown waits for them).
    pub stops: StopsInFlight,
    /// Quotes each peer uid may still ask for (each one advances the xpub index).
    pub quote_limiter: QuoteLimiter,
    /// Unpaid quotes' addresses held per uid (`--max-open-quotes-per-uid`).
    pub quote_holds: std::sync::Arc<crate::http::limits::QuoteHolds>,
    /// Held by a tenant's re-proof of a frozen payment from its filing to its answer, and
    /// by the reorg check from its last look at a frozen lease's payments to its stop: a
    /// proof answered "thaws at the next check" is never followed by that lease's stop.
    pub reorg_gate: tokio::sync::Mutex<()>,
    /// `--store`: the spent set shared with the other hosts of the fleet, if any.
    pub fleet: Option<Arc<Fleet>>,
    /// With `--store`: the mint keysets and signed outputs shared with the fleet.
    pub fleet_mint: Option<Arc<crate::fleet_mint::FleetMint>>,
    /// This coinopd's hold on the state dir, released when the state is dropped. Declared
    /// last so it is dropped last, after everything that uses the state dir.
    _lock: StateLock,
}

pub type Shared = Arc<AppState>;

/// The header chain: a new one starts at the network's shipped checkpoint (mainnet:
/// block 840,000), or at genesis with `--chain-start genesis`; a chain file an earlier
/// coinopd started at genesis is kept as it is.
fn open_chain(
    path: &Path,
    network: ChainNetwork,
    from_genesis: bool,
) -> Result<HeaderChain, StartError> {
    let shipped = if from_genesis {
        Checkpoint::genesis(network)
    } else {
        default_checkpoint(network)
    };
    match HeaderChain::open(path, network, shipped) {
        Err(payment::onchain::ChainError::StoreCorrupt { .. })
            if shipped != Checkpoint::genesis(network) =>
        {
            // Only a file that opens from genesis is taken; any other mismatch stays an error.
            HeaderChain::open(path, network, Checkpoint::genesis(network)).map_err(Into::into)
        }
        other => other.map_err(Into::into),
    }
}

fn dir_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::StateDir {
        path: path.display().to_string(),
        source,
    }
}

/// The operator xpub: the configured one, or on regtest a throwaway kept in
/// STATE/demo-xpub so quotes survive restarts.
fn operator_xpub(config: &Config) -> Result<String, StartError> {
    if let Some(x) = &config.xpub {
        return Ok(x.clone());
    }
    if config.network != bitcoin::Network::Regtest {
        return Err(StartError::NoXpub(match config.network {
            bitcoin::Network::Bitcoin => "bitcoin",
            bitcoin::Network::Signet => "signet",
            _ => "testnet",
        }));
    }
    let path = config.state_dir.join("demo-xpub");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_string());
    }
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let secp = Secp256k1::new();
    // A 32-byte seed is always a valid BIP32 seed length.
    let xpriv = Xpriv::new_master(bitcoin::Network::Regtest, &seed).expect("32-byte BIP32 seed");
    let xpub = Xpub::from_priv(&secp, &xpriv).to_string();
    std::fs::write(&path, format!("{xpub}\n")).map_err(dir_err(&path))?;
    tracing::warn!(
        %xpub,
        path = %path.display(),
        "DEMO SETTING: no --xpub given on regtest; generated a throwaway operator xpub \
         (its private key was discarded: regtest coins paid to it are unspendable)"
    );
    Ok(xpub)
}

/// The mint: with `--mint-seed-file` (a fleet), keys from that seed and the keyset list
/// from the fleet store once it is reached (until then keyset 0, and no money request is
/// served); otherwise the seed and list of STATE/credit-keysets.json, created if missing.
fn open_mint(config: &Config, spent: Arc<GroupCommitSpentSet>) -> Result<Mint, StartError> {
    match &config.mint_seed_file {
        Some(path) => {
            let seed = crate::mint_seed::read_seed_file(path)?;
            let first = payment::credit::keyset_store::KeysetRecord {
                counter: 0,
                state: payment::credit::keyset_store::KeysetState::Active,
            };
            Ok(Mint::from_seed(
                seed,
                &[first],
                spent,
                MintLimits::default(),
            )?)
        }
        None => Ok(Mint::open(&config.state_dir, spent, MintLimits::default())?),
    }
}

impl AppState {
    pub fn open(
        config: Config,
    ) -> Result<(Shared, mpsc::UnboundedReceiver<GuestExit>), StartError> {
        // Before anything reads or writes the state dir: it is this coinopd's alone, and
        // private, before the ledger, the slot pool or the socket are touched.
        let lock = StateLock::take(&config.state_dir)?;
        let ledger_path = config.ledger_path();
        state_dir::make_private(&config.state_dir, &config.run_dir(), &ledger_path)?;
        let metrics = Metrics::new();
        // Before the ledger: on a full disk SQLite cannot even open it (its WAL index
        // needs room) unless the reserve is freed for it first.
        let disk = DiskReserve::open(&config.state_dir, metrics.storage());
        disk.watch();
        let ledger = Arc::new(Ledger::open(&ledger_path)?);
        let on_full = Arc::clone(&disk);
        ledger.on_storage_error(move || on_full.release());
        // Swaps from many wallets at once share one fsync per batch; lease payments claim
        // inside the ledger's own transaction instead (one commit with the balance).
        let spent = Arc::new(GroupCommitSpentSet::open(&ledger_path)?);
        let mint = open_mint(&config, spent.clone())?
            .with_input_fee_ppk(config.input_fee_ppk)
            // What /v1/info promises an on-chain mint needs: --mint-min-conf (never below
            // --min-conf, and at least one confirmation whatever they say).
            .with_onchain_confirmations(config.mint_min_conf.max(config.min_conf).max(1));
        let watch = Arc::new(PaymentWatch::open(&ledger_path)?);
        let network = config.chain_network();
        let chain = open_chain(
            &config.state_dir.join("headers.dat"),
            network,
            config.chain_from_genesis,
        )?;
        let xpub = operator_xpub(&config)?;
        let deriver = AddressDeriver::for_key(&xpub, config.address_type, network)?;
        let policy = IndexPolicy {
            reuse_after_us: config.quote_reuse_after_s.saturating_mul(1_000_000),
            max_open: config.max_open_quotes,
        };
        let local_quotes = Arc::new(
            QuoteBook::open(&ledger_path, deriver)?
                .with_policy(policy)
                .with_dust_floor(config.quote_dust_floor),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let isolation = Arc::new(Isolation::start(&config)?);
        let supervisor = Supervisor::new(
            config.vmm_bin.clone(),
            config.console_max_bytes,
            config.device_rates,
            isolation,
            Arc::clone(&ledger),
            tx,
        );
        let capacity = Capacity::new(Totals {
            vcpus: config.sellable_vcpus(),
            mib: config.capacity_mib,
        });
        let quotes_per_min = config.quotes_per_min;
        let quote_holds = crate::http::limits::QuoteHolds::new(
            usize::try_from(config.max_open_quotes_per_uid).unwrap_or(usize::MAX),
            std::time::Duration::from_secs(
                config
                    .quote_ttl_s
                    .saturating_add(config.quote_reuse_after_s),
            ),
        );
        let fleet = Fleet::open(&config)?;
        let fleet_mint = fleet.as_ref().map(|f| {
            Arc::new(crate::fleet_mint::FleetMint::new(
                f.store().clone(),
                config.input_fee_ppk,
            ))
        });
        let quotes = Arc::new(match &fleet {
            None => Quotes::local(local_quotes),
            Some(fleet) => {
                let deriver = AddressDeriver::for_key(&xpub, config.address_type, network)?;
                let book = PgQuoteBook::new(
                    fleet.store().clone(),
                    deriver,
                    FleetIndexPolicy {
                        reuse_after_us: policy.reuse_after_us,
                        max_open: policy.max_open,
                    },
                )
                .with_dust_floor(config.quote_dust_floor);
                Quotes::fleet(local_quotes, book, Arc::clone(fleet))
            }
        });
        let golden = GoldenSnapshots::new(
            config.snapshot_dir(),
            config.vmm_bin.clone(),
            config.max_golden_snapshots,
            std::time::Duration::from_millis(config.boot_timeout_ms),
        );
        let warm = crate::warm_restores::WarmRestores::new(config.warm_restores, config.warm_dir());
        let state = AppState {
            operator: OperatorPolicy {
                uid: config.operator_uid,
                gid: config.operator_gid,
            },
            prices: Prices {
                vcpu_msat_per_s: config.price_vcpu_msat_per_s,
                gib_msat_per_s: config.price_gib_msat_per_s,
            },
            config,
            ledger,
            mint,
            chain: Arc::new(RwLock::new(chain)),
            chain_sync: Arc::default(),
            quotes,
            watch,
            spent,
            supervisor,
            golden,
            warm,
            capacity: Mutex::new(capacity),
            metrics,
            disk,
            chain_network: network,
            stops: StopsInFlight::default(),
            quote_limiter: QuoteLimiter::new(quotes_per_min),
            quote_holds,
            reorg_gate: tokio::sync::Mutex::new(()),
            fleet,
            fleet_mint,
            _lock: lock,
        };
        Ok((Arc::new(state), rx))
    }

    pub fn capacity(&self) -> std::sync::MutexGuard<'_, Capacity> {
        self.capacity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn chain_read(&self) -> std::sync::RwLockReadGuard<'_, HeaderChain> {
        self.chain
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn chain_write(&self) -> std::sync::RwLockWriteGuard<'_, HeaderChain> {
        self.chain
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
