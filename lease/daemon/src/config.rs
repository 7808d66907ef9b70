//! `coinopd` settings: command-line flags, an optional TOML/JSON config file with the same
//! keys, and the defaults that make `coinopd --state-dir DIR --socket DIR/coinop.sock` run
//! alone on regtest. Precedence: flag > file > default.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use crate::device_limits::{
    DeviceRates, DEFAULT_DISK_BYTES_PER_S_PER_VCPU, DEFAULT_DISK_IOPS_PER_VCPU,
    DEFAULT_NET_BYTES_PER_S_PER_VCPU,
};
use crate::image_catalogue::{ImageCatalogue, ImageError, ImageSpec};
use coinop_host::guest_network::address_pool::{self, Cidr, PoolError};
use coinop_host::guest_network::NetworkMode;
use coinop_host::jail::SUBORDINATE_ID_FILES;
use payment::onchain::{AddressKind, ChainNetwork};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--socket-mode {0:?} is not an octal file mode like 0660")]
    SocketMode(String),
    #[error("--network {0:?} is not one of bitcoin, testnet, testnet4, signet, regtest")]
    Network(String),
    #[error("--{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error("--overcommit {0} must be a finite number >= 1")]
    Overcommit(f64),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("--guest-network {0:?} is not one of auto, always, never")]
    GuestNetwork(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("--bitcoin-peer {0:?} is not HOST:PORT")]
    BitcoinPeer(String),
    /// Bans end with the process anyway; a value this large was a mistake (it once
    /// overflowed the ban's deadline), so it is refused rather than silently cut.
    #[error("--bitcoin-ban-s {got} is above {max} (30 years)")]
    BanTooLong { got: u64, max: u64 },
    #[error("--address-type {0:?} is not one of p2wpkh, p2tr, p2sh-p2wpkh")]
    AddressType(String),
    #[error("--chain-start {0:?} is not one of checkpoint, genesis")]
    ChainStart(String),
    #[error("--store-password-file {path}: {source}")]
    StorePassword {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--mint-seed-file needs --store: a single host keeps its mint seed in its state dir")]
    MintSeedWithoutStore,
    #[error(
        "--store-public-reads {got} is not between 1 and {max}: unauthenticated reads need a \
         connection, and money requests must keep at least one of the store's {}",
        payment_postgres::DEFAULT_POOL_SIZE
    )]
    StorePublicReads { got: usize, max: usize },
    /// A settled payment's depth is no longer checked, and a refund (bearer credit) needs
    /// `--mint-min-conf` (and `--min-conf`): settling earlier would let a refund pay out
    /// credit for a payment that shallow.
    #[error(
        "--settle-conf {settle} is below the {need} confirmations a refund needs (--mint-min-conf, \
         --min-conf): a payment settled earlier would be refunded as credit unchecked; raise \
         --settle-conf to at least {need}"
    )]
    SettleBelowRefundDepth { settle: u32, need: u32 },
}

/// Flags and config-file keys. Every field is optional so the two sources can be merged.
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "coinopd",
    version,
    about = "coinop host daemon: coin-operated KVM microVMs"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Config file (TOML, or JSON when the name ends in .json) with the same keys as the flags.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Unix socket the API listens on (keep it outside the state dir, which only root may
    /// enter; removed again at SIGTERM).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// File mode of the socket, octal (default 0666: leases are open to any local peer;
    /// operator endpoints are checked by SO_PEERCRED).
    #[arg(long)]
    pub socket_mode: Option<String>,
    /// State directory: ledger.db, run/ (control sockets, consoles), generated demo xpub.
    /// One coinopd at a time (coinopd.lock; a second one exits 2); kept 0700, its secrets
    /// and consoles 0600.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// bitcoin, testnet, testnet4, signet or regtest.
    #[arg(long)]
    pub network: Option<String>,
    /// Operator xpub (tpub on test networks): quote addresses are derived from it. A
    /// SLIP-132 zpub/vpub (P2WPKH) or ypub/upub (P2SH-P2WPKH) is taken too, and derives the
    /// type it names. On regtest, when absent, a throwaway one is generated and kept in the
    /// state dir.
    #[arg(long)]
    pub xpub: Option<String>,
    /// Address type of quotes: p2wpkh (default) or p2tr (BIP86 key path), or p2sh-p2wpkh;
    /// a SLIP-132 key already names its type (and another one here is an error).
    #[arg(long)]
    pub address_type: Option<String>,
    /// Where a new header chain starts: `checkpoint` (default: the network's shipped
    /// checkpoint, e.g. mainnet 840,000, testnet3 2,500,000, signet 160,000; a network
    /// without one starts at genesis) or `genesis` (every header from block 0, for an
    /// operator who wants the whole chain checked or feeds old headers). An existing chain
    /// file keeps the start it was made with.
    #[arg(long)]
    pub chain_start: Option<String>,
    /// Confirmations an on-chain lease payment needs (default per network: mainnet 2,
    /// testnet3/testnet4 3, signet 2, regtest 1; a coinbase always needs 100).
    #[arg(long)]
    pub min_conf: Option<u32>,
    /// Raise quotes below the dust limit of their address type to it (P2WPKH 294 sat, P2TR
    /// 330 sat): true or false. Default: true where nodes refuse to relay dust (mainnet,
    /// testnet4, signet), false on testnet3 and regtest, whose nodes relay it.
    #[arg(long)]
    pub quote_dust_floor: Option<bool>,
    /// How long a quote's price and address hold, seconds (default 3600). A payment mined
    /// later is still credited at the quote's price, flagged `late`.
    #[arg(long)]
    pub quote_ttl_s: Option<u64>,
    /// How long after its expiry an unpaid quote keeps its address before a new quote may
    /// take it over, seconds (default 86400: room for a late payment to confirm).
    #[arg(long)]
    pub quote_reuse_after_s: Option<u64>,
    /// Most quotes holding an address without a verified payment at once (default 1000);
    /// beyond it quotes are 503 with Retry-After. Derived addresses never run more than
    /// this far ahead of paid ones: a watch-only wallet with at least this gap limit (its
    /// lookahead; Bitcoin Core's keypool is 1000) sees every payment.
    #[arg(long)]
    pub max_open_quotes: Option<u64>,
    /// Unpaid quotes one non-operator uid may hold at once (each holds its address for its
    /// life and --quote-reuse-after-s after); default a tenth of --max-open-quotes, so no
    /// single uid can hold every address. 0: no per-uid cap.
    #[arg(long)]
    pub max_open_quotes_per_uid: Option<u64>,
    /// Price of one vCPU-second of CPU time actually used, in msat.
    #[arg(long)]
    pub price_vcpu_msat_per_s: Option<u64>,
    /// Price of one GiB of guest memory reserved for one second, in msat.
    #[arg(long)]
    pub price_gib_msat_per_s: Option<u64>,
    /// vCPUs the host sells (default: the host's CPU count).
    #[arg(long)]
    pub capacity_vcpus: Option<u32>,
    /// Guest memory the host sells, MiB (default: half the host's RAM).
    #[arg(long)]
    pub capacity_mib: Option<u64>,
    /// vCPU overcommit factor (memory is never overcommitted).
    #[arg(long)]
    pub overcommit: Option<f64>,
    /// Image: NAME=KERNEL[,initrd=PATH][,rootfs=PATH][,snapshot][,agent][,cmdline=STR]
    /// (repeatable; cmdline takes the rest). rootfs= is the guest's root disk, copy-on-write
    /// per lease; snapshot starts its leases from a golden snapshot of the booted image;
    /// agent: the guest runs the personalisation agent (images/rootfs/PERSONALISE.md) and
    /// gets its lease's address, SSH key, host name, clock and entropy through it.
    #[arg(long = "image")]
    #[serde(default)]
    pub images: Vec<String>,
    /// The test guest kernel for the default `testguest` image (default: testguest-pvh.elf
    /// next to the coinopd binary, else STATE/images/testguest-pvh.elf).
    #[arg(long)]
    pub testguest: Option<PathBuf>,
    /// Scheduler tick, ms.
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Seconds a lease out of funds stays paused before it is stopped (default 60); never
    /// longer than the lease ran since it was last funded, so a tiny payment cannot hold a
    /// large guest's room for the whole grace.
    #[arg(long)]
    pub grace_s: Option<u64>,
    /// How long a boot may take before it counts as failed, ms.
    #[arg(long)]
    pub boot_timeout_ms: Option<u64>,
    /// How long an agent guest may take from its personalisation line to guest_ready, ms
    /// (default 5000). A guest past it is ended: a warm restore's lease then boots on its
    /// own, a restore on the request path falls back to a cold boot, a cold boot fails.
    /// The boot timeout still bounds the whole boot.
    #[arg(long)]
    pub personalise_timeout_ms: Option<u64>,
    /// Largest request body, bytes (413 above).
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Peers with this uid may call operator endpoints (root always may).
    #[arg(long)]
    pub operator_uid: Option<u32>,
    /// Peers with this gid may call operator endpoints.
    #[arg(long)]
    pub operator_gid: Option<u32>,
    /// The VMM binary (default: coinop-vmm next to the coinopd executable).
    #[arg(long)]
    pub vmm_bin: Option<PathBuf>,
    /// DEBUGGING ONLY: start guests' VMMs without the jail (namespaces, pivot_root, pool
    /// uid). Logged as a warning.
    #[arg(long)]
    #[serde(default)]
    pub no_jail: bool,
    /// DEBUGGING ONLY: start guests' VMMs without their seccomp filters. Logged as a warning.
    #[arg(long)]
    #[serde(default)]
    pub no_seccomp: bool,
    /// First uid (and gid) of the pool jailed VMMs run as, one per running lease (default
    /// 1900000000: clear of useradd's subordinate ids and container ranges; a range
    /// overlapping /etc/subuid or /etc/subgid is refused, see --subid-file). Each uid in use
    /// is claimed host-wide in /run/coinop, so coinopds sharing a host (and a range) skip
    /// each other's.
    #[arg(long)]
    pub jail_uid_base: Option<u32>,
    /// How many uids the pool holds (the most leases that can run at once).
    #[arg(long)]
    pub jail_uid_count: Option<u32>,
    /// A file of subordinate uid or gid ranges (`NAME:START:COUNT` or `UID:START:COUNT`
    /// lines, as useradd writes) the jail uid range must not overlap: a user given jail
    /// uids there could run processes as them (newuidmap) and signal other tenants' VMMs,
    /// so coinopd refuses to start on an overlap. Repeatable; default /etc/subuid and
    /// /etc/subgid (a missing file holds no range).
    #[arg(long = "subid-file")]
    #[serde(default)]
    pub subid_files: Vec<PathBuf>,
    /// Lease slots kept ready ahead of creates: cgroup, jail root and a child already
    /// jailed, waiting to exec the VMM (default 4; 0 builds each on the request path).
    #[arg(long)]
    pub jail_pool: Option<usize>,
    /// Leases of a snapshot image kept restored ahead of their creates, per host: VMMs
    /// restored from the golden snapshot of the shape last created, each with its own
    /// jail, cgroup, overlay and network, the guest waiting for its personalisation; each
    /// holds its room (default 1; 0 restores on the request path). Built once no boot is in
    /// flight; given up when a create of another shape needs the room.
    #[arg(long)]
    pub warm_restores: Option<usize>,
    /// Golden snapshot directories kept on disk, all images and shapes together (default
    /// 16; 0 keeps none, so leases of snapshot images boot cold): a build that would make
    /// one more removes the least recently used (restored from or built) that no restore
    /// may be opening right now.
    #[arg(long)]
    pub max_golden_snapshots: Option<usize>,
    /// Guest networking (tap, routed /30, NAT, SSH port forward): auto (default: for
    /// images with a rootfs), always, or never. Needs root, ip and nft.
    #[arg(long)]
    pub guest_network: Option<String>,
    /// Address pool guests' /30s are cut from (default 10.213.0.0/16).
    #[arg(long)]
    pub guest_net_pool: Option<String>,
    /// Host TCP ports forwarded to guests' SSH port, FIRST-LAST (default 22000-22999);
    /// over IPv4 only, and TCP over IPv6 to these ports is refused (reset), so keep the
    /// range for coinopd alone.
    #[arg(long)]
    pub guest_ssh_ports: Option<String>,
    /// Host name or address tenants are told to SSH to (default: this host's name).
    #[arg(long)]
    pub guest_ssh_host: Option<String>,
    /// Connections one guest may have tracked by conntrack at once (default 4096); a new
    /// one past it is dropped until one ends. Keep guests x this under the host's
    /// net.netfilter.nf_conntrack_max, so no guest can fill the host's table.
    #[arg(long)]
    pub guest_max_flows: Option<u32>,
    /// Connections open at once from peers that are not the operator, all uids together
    /// (default 1024). Beyond it a connection is answered 503 `too_many_connections` and
    /// closed. Lowered at start-up if coinopd's open-file limit cannot hold it.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections open at once from one non-operator uid (SO_PEERCRED; default 64).
    #[arg(long)]
    pub max_connections_per_uid: Option<usize>,
    /// Connections kept for the operator (root, --operator-uid/--operator-gid) on top of
    /// --max-connections, so the operator always gets in (default 64).
    #[arg(long)]
    pub operator_connections: Option<usize>,
    /// A request's head must arrive within this many ms of the connection opening or of
    /// the previous reply, else the connection is closed: also how long an idle
    /// keep-alive connection is kept (default 10000).
    #[arg(long)]
    pub header_timeout_ms: Option<u64>,
    /// A connection on which no byte moves for this many ms while no request of it is
    /// being worked on (a request body that stalls, a reply the client does not read) is
    /// closed, as is one whose request body is not all in this many ms after its head
    /// (default 30000).
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Address quotes (`POST /v1/quotes`, `POST /v1/mint/quote/onchain`) one non-operator
    /// uid may ask for per minute, in bursts of as many (default 30; 0: no limit). Each
    /// quote takes the next address of the xpub; beyond the rate: 429 with Retry-After.
    #[arg(long)]
    pub quotes_per_min: Option<u32>,
    /// A Bitcoin node to sync block headers from over the P2P protocol, HOST:PORT
    /// (repeatable; e.g. the operator's own node). Every header still passes the host's
    /// own chain checks; a peer that sends an invalid one is disconnected and banned.
    #[arg(long = "bitcoin-peer")]
    #[serde(default)]
    pub bitcoin_peers: Vec<String>,
    /// Also sync from peers found through the network's DNS seeds (mainnet, testnet3,
    /// testnet4; off by default: the host then talks only to the peers it is given).
    #[arg(long)]
    #[serde(default)]
    pub bitcoin_dns_seeds: bool,
    /// How long a Bitcoin peer that sent an invalid header is banned, seconds (default
    /// 86400; 1 to 946080000, i.e. 30 years).
    #[arg(long)]
    pub bitcoin_ban_s: Option<u64>,
    /// Confirmations an on-chain payment needs before it mints credit (`POST
    /// /v1/mint/onchain`; default 6, 1 on regtest). Credit is bearer money that cannot be
    /// taken back after a reorg, so it waits longer than a lease (--min-conf); never less.
    #[arg(long)]
    pub mint_min_conf: Option<u32>,
    /// Confirmations after which an accepted on-chain lease payment is settled: until then
    /// a reorg that takes its block off the best chain freezes the lease (default 6, or
    /// --mint-min-conf / --min-conf if higher). Never below those: a refund is credit and
    /// needs its payments --mint-min-conf deep, and a settled payment is not checked again,
    /// so a lower value is refused at start-up.
    #[arg(long)]
    pub settle_conf: Option<u32>,
    /// How long a lease frozen by a reorg waits for its payment to confirm again before it
    /// is stopped with `payment_reorged`, seconds (default 3600).
    #[arg(long)]
    pub reorg_window_s: Option<u64>,
    /// The fleet store that several coinopd hosts share (the spent set, so a payment is
    /// accepted once across all of them): a PostgreSQL `postgres://user@host/db` URL or a
    /// libpq-style `host=... user=... dbname=...` string. Put no password in it: use
    /// --store-password-file or PGPASSWORD. Unset: this host's own SQLite state only.
    #[arg(long)]
    pub store: Option<String>,
    /// File whose first line is the fleet store's password (else PGPASSWORD, if set).
    #[arg(long)]
    pub store_password_file: Option<PathBuf>,
    /// This host's id in the fleet, recorded with each of its claims (default: the host
    /// name and the state dir). Two hosts must never share one.
    #[arg(long)]
    pub host_id: Option<String>,
    /// With --store: how many of the fleet store's 16 connections unauthenticated reads
    /// (NUT-07 checkstate, NUT-09 restore, GET /v1/quotes/{id}, GET
    /// /v1/mint/quote/onchain/{quote}, and the first lookup of the quote a payment proof,
    /// a mint or a lease's on-chain payment names) may hold at once, 1 to 15 (default 4).
    /// Beyond them such a read waits up to 1 s, then is answered 503 `store_busy`
    /// (Retry-After), so a flood of them leaves the other connections to money requests.
    #[arg(long)]
    pub store_public_reads: Option<usize>,
    /// With --store: the fleet's mint seed, 64 hex characters (32 bytes) on the first line,
    /// mode 0600. Every host of the fleet gets the same file; the keys of every keyset are
    /// derived from it and the fleet store keeps only the keyset list. Unset: the seed in
    /// this host's STATE/credit-keysets.json (copied to every host by the operator).
    #[arg(long)]
    pub mint_seed_file: Option<PathBuf>,
    /// Bytes of a guest's console output kept in its console file (default 1 MiB); after
    /// them one marker line, and the rest of the output is dropped, so a guest printing
    /// without end cannot fill the host's disk.
    #[arg(long)]
    pub console_max_bytes: Option<u64>,
    /// Disk bytes per second a lease's VMM lets its guest read and write, per vCPU of the
    /// lease (default 67108864, 64 MiB/s; a lease gets its vCPUs' worth, in bursts of one
    /// second's worth). One guest cannot saturate the host's disk for the others. 0: no
    /// limit (warned about at start-up).
    #[arg(long)]
    pub disk_bytes_per_s_per_vcpu: Option<u64>,
    /// Disk requests per second (reads, writes and flushes alike; a flush is an
    /// fdatasync on the host) per vCPU of the lease (default 1000). 0: no limit.
    #[arg(long)]
    pub disk_iops_per_vcpu: Option<u64>,
    /// Network bytes per second a lease's guest may send, and as many receive, per vCPU
    /// of the lease (default 12500000, 100 Mbit/s). 0: no limit.
    #[arg(long)]
    pub net_bytes_per_s_per_vcpu: Option<u64>,
    /// NUT-02 fee per credit note spent (swaps, lease payments), in parts per thousand of
    /// a sat; a payment's fee is the sum over its notes rounded up to a whole sat.
    #[arg(long)]
    pub input_fee_ppk: Option<u64>,
}

/// The first jail uid by default: 1.9e9, in the span the common allocators leave alone
/// (above useradd's subordinate ids, 100000 up to 600100000 + 65536 with its defaults, and
/// systemd-nspawn's container ranges, 524288 to 1879048191; below 2^31, where software
/// that keeps uids signed goes wrong, and systemd's foreign range at 2147352576). The old
/// default, 900000, fell inside the 13th useradd user's subordinate uids. Guests a coinopd
/// started under another range are re-adopted with their uids all the same.
const DEFAULT_JAIL_UID_BASE: u32 = 1_900_000_000;

/// A guest's console output kept by default: a boot log many times over, and 1 MiB of
/// disk per lease at most.
const DEFAULT_CONSOLE_MAX_BYTES: u64 = 1 << 20;

/// Golden snapshots kept by default: room for the few images and sizes a host's tenants
/// actually use, each snapshot costing what its golden guest touched (memory and disk
/// writes, megabytes for a small guest), while a run of one-off shapes cannot fill the
/// state disk.
const DEFAULT_MAX_GOLDEN_SNAPSHOTS: usize = 16;

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub state_dir: PathBuf,
    pub network: bitcoin::Network,
    pub xpub: Option<String>,
    /// `None`: p2wpkh, or the type a SLIP-132 key names.
    pub address_type: Option<AddressKind>,
    /// `--chain-start genesis`: a new chain starts at block 0, not at the checkpoint.
    pub chain_from_genesis: bool,
    pub min_conf: u32,
    pub quote_dust_floor: bool,
    pub quote_ttl_s: u64,
    pub quote_reuse_after_s: u64,
    pub max_open_quotes: u64,
    pub max_open_quotes_per_uid: u64,
    pub price_vcpu_msat_per_s: u64,
    pub price_gib_msat_per_s: u64,
    pub capacity_vcpus: u32,
    pub capacity_mib: u64,
    pub overcommit: f64,
    pub images: ImageCatalogue,
    pub tick_ms: u64,
    pub grace_s: u64,
    pub boot_timeout_ms: u64,
    pub personalise_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub operator_uid: Option<u32>,
    pub operator_gid: Option<u32>,
    pub vmm_bin: PathBuf,
    pub no_jail: bool,
    pub no_seccomp: bool,
    pub jail_uid_base: u32,
    pub jail_uid_count: u32,
    /// Subordinate id files the jail uid range is checked against at start-up.
    pub subid_files: Vec<PathBuf>,
    pub jail_pool: usize,
    pub warm_restores: usize,
    pub max_golden_snapshots: usize,
    pub guest_network: NetworkMode,
    pub guest_net_pool: Cidr,
    pub guest_ssh_ports: (u16, u16),
    pub guest_ssh_host: String,
    pub guest_max_flows: u32,
    pub max_connections: usize,
    pub max_connections_per_uid: usize,
    pub operator_connections: usize,
    pub header_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub quotes_per_min: u32,
    pub bitcoin_peers: Vec<String>,
    pub bitcoin_dns_seeds: bool,
    pub bitcoin_ban_s: u64,
    pub mint_min_conf: u32,
    pub settle_conf: u32,
    pub reorg_window_s: u64,
    pub console_max_bytes: u64,
    /// Disk and network rates per vCPU every lease's VMM is given.
    pub device_rates: DeviceRates,
    pub input_fee_ppk: u64,
    /// `--store`: the fleet store, if any.
    pub store: Option<StoreConfig>,
    /// `--host-id`, or its default.
    pub host_id: String,
    /// `--mint-seed-file` (only with `--store`).
    pub mint_seed_file: Option<PathBuf>,
}

/// Where the fleet store is, and the password to it (kept out of `Debug`).
#[derive(Clone)]
pub struct StoreConfig {
    pub conninfo: String,
    pub password: Option<String>,
    /// `--store-public-reads`: the store connections unauthenticated reads may hold at once.
    pub public_reads: usize,
}

/// `--store-public-reads` unless given: a quarter of the pool, enough for honest wallets'
/// checks and restores, leaving three quarters to money requests.
pub const DEFAULT_STORE_PUBLIC_READS: usize = 4;

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("conninfo", &self.conninfo)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("public_reads", &self.public_reads)
            .finish()
    }
}

/// The fleet store's settings: the password from `password_file`, else PGPASSWORD.
fn store_config(
    conninfo: Option<String>,
    password_file: Option<PathBuf>,
    public_reads: Option<usize>,
) -> Result<Option<StoreConfig>, ConfigError> {
    let Some(conninfo) = conninfo else {
        return Ok(None);
    };
    let public_reads = public_reads.unwrap_or(DEFAULT_STORE_PUBLIC_READS);
    // At least one, or no such read is ever answered; fewer than the pool holds, or money
    // requests could be left none.
    let max = payment_postgres::DEFAULT_POOL_SIZE - 1;
    if !(1..=max).contains(&public_reads) {
        return Err(ConfigError::StorePublicReads {
            got: public_reads,
            max,
        });
    }
    let password = match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::StorePassword { path, source })?;
            Some(text.lines().next().unwrap_or_default().to_string())
        }
        None => std::env::var("PGPASSWORD").ok(),
    };
    Ok(Some(StoreConfig {
        conninfo,
        password,
        public_reads,
    }))
}

impl Settings {
    /// Fills every unset field of `self` from `file`.
    fn or(self, file: Settings) -> Settings {
        Settings {
            config: self.config,
            socket: self.socket.or(file.socket),
            socket_mode: self.socket_mode.or(file.socket_mode),
            state_dir: self.state_dir.or(file.state_dir),
            network: self.network.or(file.network),
            xpub: self.xpub.or(file.xpub),
            address_type: self.address_type.or(file.address_type),
            chain_start: self.chain_start.or(file.chain_start),
            min_conf: self.min_conf.or(file.min_conf),
            quote_dust_floor: self.quote_dust_floor.or(file.quote_dust_floor),
            quote_ttl_s: self.quote_ttl_s.or(file.quote_ttl_s),
            quote_reuse_after_s: self.quote_reuse_after_s.or(file.quote_reuse_after_s),
            max_open_quotes: self.max_open_quotes.or(file.max_open_quotes),
            max_open_quotes_per_uid: self
                .max_open_quotes_per_uid
                .or(file.max_open_quotes_per_uid),
            price_vcpu_msat_per_s: self.price_vcpu_msat_per_s.or(file.price_vcpu_msat_per_s),
            price_gib_msat_per_s: self.price_gib_msat_per_s.or(file.price_gib_msat_per_s),
            capacity_vcpus: self.capacity_vcpus.or(file.capacity_vcpus),
            capacity_mib: self.capacity_mib.or(file.capacity_mib),
            overcommit: self.overcommit.or(file.overcommit),
            images: if self.images.is_empty() {
                file.images
            } else {
                self.images
            },
            testguest: self.testguest.or(file.testguest),
            tick_ms: self.tick_ms.or(file.tick_ms),
            grace_s: self.grace_s.or(file.grace_s),
            boot_timeout_ms: self.boot_timeout_ms.or(file.boot_timeout_ms),
            personalise_timeout_ms: self.personalise_timeout_ms.or(file.personalise_timeout_ms),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            operator_uid: self.operator_uid.or(file.operator_uid),
            operator_gid: self.operator_gid.or(file.operator_gid),
            vmm_bin: self.vmm_bin.or(file.vmm_bin),
            no_jail: self.no_jail || file.no_jail,
            no_seccomp: self.no_seccomp || file.no_seccomp,
            jail_uid_base: self.jail_uid_base.or(file.jail_uid_base),
            jail_uid_count: self.jail_uid_count.or(file.jail_uid_count),
            subid_files: if self.subid_files.is_empty() {
                file.subid_files
            } else {
                self.subid_files
            },
            jail_pool: self.jail_pool.or(file.jail_pool),
            warm_restores: self.warm_restores.or(file.warm_restores),
            max_golden_snapshots: self.max_golden_snapshots.or(file.max_golden_snapshots),
            guest_network: self.guest_network.or(file.guest_network),
            guest_net_pool: self.guest_net_pool.or(file.guest_net_pool),
            guest_ssh_ports: self.guest_ssh_ports.or(file.guest_ssh_ports),
            guest_ssh_host: self.guest_ssh_host.or(file.guest_ssh_host),
            guest_max_flows: self.guest_max_flows.or(file.guest_max_flows),
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_uid: self
                .max_connections_per_uid
                .or(file.max_connections_per_uid),
            operator_connections: self.operator_connections.or(file.operator_connections),
            header_timeout_ms: self.header_timeout_ms.or(file.header_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(file.idle_timeout_ms),
            quotes_per_min: self.quotes_per_min.or(file.quotes_per_min),
            bitcoin_peers: if self.bitcoin_peers.is_empty() {
                file.bitcoin_peers
            } else {
                self.bitcoin_peers
            },
            bitcoin_dns_seeds: self.bitcoin_dns_seeds || file.bitcoin_dns_seeds,
            bitcoin_ban_s: self.bitcoin_ban_s.or(file.bitcoin_ban_s),
            mint_min_conf: self.mint_min_conf.or(file.mint_min_conf),
            settle_conf: self.settle_conf.or(file.settle_conf),
            reorg_window_s: self.reorg_window_s.or(file.reorg_window_s),
            store: self.store.or(file.store),
            store_password_file: self.store_password_file.or(file.store_password_file),
            host_id: self.host_id.or(file.host_id),
            store_public_reads: self.store_public_reads.or(file.store_public_reads),
            mint_seed_file: self.mint_seed_file.or(file.mint_seed_file),
            console_max_bytes: self.console_max_bytes.or(file.console_max_bytes),
            disk_bytes_per_s_per_vcpu: self
                .disk_bytes_per_s_per_vcpu
                .or(file.disk_bytes_per_s_per_vcpu),
            disk_iops_per_vcpu: self.disk_iops_per_vcpu.or(file.disk_iops_per_vcpu),
            net_bytes_per_s_per_vcpu: self
                .net_bytes_per_s_per_vcpu
                .or(file.net_bytes_per_s_per_vcpu),
            input_fee_ppk: self.input_fee_ppk.or(file.input_fee_ppk),
        }
    }

    /// Reads the config file named by `--config` and merges it under the flags.
    pub fn with_file(self) -> Result<Settings, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: Settings = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?
        };
        Ok(self.or(file))
    }

    pub fn resolve(self) -> Result<Config, ConfigError> {
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/coinop"));
        let socket = self
            .socket
            .unwrap_or_else(|| PathBuf::from("/run/coinop/coinop.sock"));
        let mode_text = self.socket_mode.unwrap_or_else(|| "0666".to_string());
        let socket_mode = u32::from_str_radix(mode_text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or(ConfigError::SocketMode(mode_text))?;
        let network = parse_network(self.network.as_deref().unwrap_or("regtest"))?;
        let address_type = self
            .address_type
            .map(|t| AddressKind::from_name(&t).ok_or(ConfigError::AddressType(t)))
            .transpose()?;
        let chain_from_genesis = match self.chain_start.as_deref() {
            None | Some("checkpoint") => false,
            Some("genesis") => true,
            Some(other) => return Err(ConfigError::ChainStart(other.to_string())),
        };
        let overcommit = self.overcommit.unwrap_or(1.0);
        if !overcommit.is_finite() || overcommit < 1.0 {
            return Err(ConfigError::Overcommit(overcommit));
        }
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        let testguest = self
            .testguest
            .unwrap_or_else(|| default_testguest(exe_dir.as_deref(), &state_dir));
        let mut images = ImageCatalogue::default();
        images.insert(ImageSpec {
            name: "testguest".into(),
            kernel: testguest,
            initrd: None,
            rootfs: None,
            cmdline: "mode=echo".into(),
            snapshot: false,
            agent: false,
        });
        for text in &self.images {
            images.insert(ImageSpec::parse(text)?);
        }
        let vmm_bin = self.vmm_bin.unwrap_or_else(|| {
            exe_dir
                .map(|d| d.join("coinop-vmm"))
                .unwrap_or_else(|| PathBuf::from("coinop-vmm"))
        });
        let guest_network_text = self.guest_network.unwrap_or_else(|| "auto".into());
        let guest_network = NetworkMode::parse(&guest_network_text)
            .ok_or(ConfigError::GuestNetwork(guest_network_text))?;
        let guest_net_pool =
            Cidr::parse(self.guest_net_pool.as_deref().unwrap_or("10.213.0.0/16"))?;
        let guest_ssh_ports =
            address_pool::parse_ports(self.guest_ssh_ports.as_deref().unwrap_or("22000-22999"))?;
        let guest_ssh_host = self.guest_ssh_host.unwrap_or_else(host_name);
        for peer in &self.bitcoin_peers {
            let port = peer
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                return Err(ConfigError::BitcoinPeer(peer.clone()));
            }
        }
        let host_id = self
            .host_id
            .unwrap_or_else(|| format!("{}:{}", host_name(), state_dir.display()));
        let store = store_config(
            self.store,
            self.store_password_file,
            self.store_public_reads,
        )?;
        if store.is_none() && self.mint_seed_file.is_some() {
            return Err(ConfigError::MintSeedWithoutStore);
        }
        let explicit_settle_conf = self.settle_conf;
        let mut config = Config {
            socket,
            socket_mode,
            state_dir,
            network,
            xpub: self.xpub,
            address_type,
            chain_from_genesis,
            min_conf: self
                .min_conf
                .unwrap_or_else(|| chain_network(network).default_min_conf()),
            quote_dust_floor: self
                .quote_dust_floor
                .unwrap_or_else(|| chain_network(network).refuses_dust()),
            quote_ttl_s: self.quote_ttl_s.unwrap_or(3600),
            quote_reuse_after_s: self.quote_reuse_after_s.unwrap_or(86_400),
            max_open_quotes: self.max_open_quotes.unwrap_or(1000),
            max_open_quotes_per_uid: self
                .max_open_quotes_per_uid
                .unwrap_or(self.max_open_quotes.unwrap_or(1000).div_ceil(10)),
            price_vcpu_msat_per_s: self.price_vcpu_msat_per_s.unwrap_or(1000),
            price_gib_msat_per_s: self.price_gib_msat_per_s.unwrap_or(2000),
            capacity_vcpus: self.capacity_vcpus.unwrap_or_else(host_cpus),
            capacity_mib: self.capacity_mib.unwrap_or_else(|| host_mib() / 2),
            overcommit,
            images,
            tick_ms: self.tick_ms.unwrap_or(100),
            grace_s: self.grace_s.unwrap_or(60),
            boot_timeout_ms: self.boot_timeout_ms.unwrap_or(10_000),
            personalise_timeout_ms: self.personalise_timeout_ms.unwrap_or(5_000),
            max_body_bytes: self
                .max_body_bytes
                .unwrap_or(coinop_proto::requests::DEFAULT_MAX_BODY_BYTES),
            operator_uid: self.operator_uid,
            operator_gid: self.operator_gid,
            vmm_bin,
            no_jail: self.no_jail,
            no_seccomp: self.no_seccomp,
            jail_uid_base: self.jail_uid_base.unwrap_or(DEFAULT_JAIL_UID_BASE),
            jail_uid_count: self.jail_uid_count.unwrap_or(1000),
            subid_files: if self.subid_files.is_empty() {
                SUBORDINATE_ID_FILES.iter().map(PathBuf::from).collect()
            } else {
                self.subid_files
            },
            jail_pool: self.jail_pool.unwrap_or(4),
            warm_restores: self.warm_restores.unwrap_or(1),
            max_golden_snapshots: self
                .max_golden_snapshots
                .unwrap_or(DEFAULT_MAX_GOLDEN_SNAPSHOTS),
            guest_network,
            guest_net_pool,
            guest_ssh_ports,
            guest_ssh_host,
            guest_max_flows: self
                .guest_max_flows
                .unwrap_or(coinop_host::guest_network::DEFAULT_FLOWS_PER_GUEST),
            max_connections: self.max_connections.unwrap_or(1024),
            max_connections_per_uid: self.max_connections_per_uid.unwrap_or(64),
            operator_connections: self.operator_connections.unwrap_or(64),
            header_timeout_ms: self.header_timeout_ms.unwrap_or(10_000),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(30_000),
            quotes_per_min: self.quotes_per_min.unwrap_or(30),
            bitcoin_peers: self.bitcoin_peers,
            bitcoin_dns_seeds: self.bitcoin_dns_seeds,
            bitcoin_ban_s: self.bitcoin_ban_s.unwrap_or(24 * 60 * 60),
            mint_min_conf: self.mint_min_conf.unwrap_or(match network {
                bitcoin::Network::Regtest => 1,
                _ => 6,
            }),
            settle_conf: self.settle_conf.unwrap_or(6),
            reorg_window_s: self.reorg_window_s.unwrap_or(3600),
            store,
            host_id,
            mint_seed_file: self.mint_seed_file,
            console_max_bytes: self.console_max_bytes.unwrap_or(DEFAULT_CONSOLE_MAX_BYTES),
            device_rates: DeviceRates {
                disk_bytes_per_s: self
                    .disk_bytes_per_s_per_vcpu
                    .unwrap_or(DEFAULT_DISK_BYTES_PER_S_PER_VCPU),
                disk_iops: self
                    .disk_iops_per_vcpu
                    .unwrap_or(DEFAULT_DISK_IOPS_PER_VCPU),
                net_bytes_per_s: self
                    .net_bytes_per_s_per_vcpu
                    .unwrap_or(DEFAULT_NET_BYTES_PER_S_PER_VCPU),
            },
            input_fee_ppk: self.input_fee_ppk.unwrap_or(0),
        };
        for (flag, value) in [
            ("tick-ms", config.tick_ms),
            ("capacity-vcpus", u64::from(config.capacity_vcpus)),
            ("capacity-mib", config.capacity_mib),
            ("max-body-bytes", config.max_body_bytes as u64),
            ("boot-timeout-ms", config.boot_timeout_ms),
            ("personalise-timeout-ms", config.personalise_timeout_ms),
            ("jail-uid-count", u64::from(config.jail_uid_count)),
            ("max-connections", config.max_connections as u64),
            (
                "max-connections-per-uid",
                config.max_connections_per_uid as u64,
            ),
            ("operator-connections", config.operator_connections as u64),
            ("header-timeout-ms", config.header_timeout_ms),
            ("idle-timeout-ms", config.idle_timeout_ms),
            ("quote-ttl-s", config.quote_ttl_s),
            ("max-open-quotes", config.max_open_quotes),
            ("guest-max-flows", u64::from(config.guest_max_flows)),
            // A zero ban would redial a peer that just sent an invalid header after only
            // the reconnect back-off: not a ban at all.
            ("bitcoin-ban-s", config.bitcoin_ban_s),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        let max_ban = coinop_bitcoin_net::peer_set::MAX_BAN.as_secs();
        if config.bitcoin_ban_s > max_ban {
            return Err(ConfigError::BanTooLong {
                got: config.bitcoin_ban_s,
                max: max_ban,
            });
        }
        // A refund is credit: it waits until the lease's unsettled on-chain payments are
        // this deep, and a settled one is not looked at again, so settling must come no
        // earlier. Unset, --settle-conf rises to it; set below it, it is a contradiction.
        let refund_conf = config.mint_min_conf.max(config.min_conf);
        match explicit_settle_conf {
            None => config.settle_conf = config.settle_conf.max(refund_conf),
            Some(settle) if settle < refund_conf => {
                return Err(ConfigError::SettleBelowRefundDepth {
                    settle,
                    need: refund_conf,
                })
            }
            Some(_) => {}
        }
        Ok(config)
    }
}

impl Config {
    /// The network as the payment crate names it (consensus rules, policy defaults).
    pub fn chain_network(&self) -> ChainNetwork {
        chain_network(self.network)
    }

    /// Directory of per-lease control sockets and console files.
    pub fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// Directory of golden snapshots, one subdirectory per image
    /// ([`crate::golden_snapshot`]).
    pub fn snapshot_dir(&self) -> PathBuf {
        self.state_dir.join("snapshots")
    }

    /// Directory of per-lease jail roots.
    pub fn jail_dir(&self) -> PathBuf {
        self.state_dir.join("jail")
    }

    /// Directory of the warm restores' marker files (one per VMM restored ahead of a
    /// lease: [`crate::warm_restores`]).
    pub fn warm_dir(&self) -> PathBuf {
        self.state_dir.join("warm")
    }

    /// Directory of the slot pool's marker files (one per slot built ahead of a lease).
    pub fn pool_dir(&self) -> PathBuf {
        self.state_dir.join("pool")
    }

    /// Directory of per-lease copy-on-write overlays of image root filesystems.
    pub fn overlay_dir(&self) -> PathBuf {
        self.state_dir.join("overlays")
    }

    /// Whether guest networking must be set up at start (some lease may get a NIC).
    pub fn guest_network_wanted(&self) -> bool {
        match self.guest_network {
            NetworkMode::Always => true,
            NetworkMode::Auto => self.images.iter().any(|i| i.rootfs.is_some()),
            NetworkMode::Never => false,
        }
    }

    /// Whether a lease of `image` gets a NIC.
    pub fn lease_gets_network(&self, image: &ImageSpec) -> bool {
        match self.guest_network {
            NetworkMode::Always => true,
            NetworkMode::Auto => image.rootfs.is_some(),
            NetworkMode::Never => false,
        }
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.db")
    }

    /// vCPUs admission control lets out (capacity × overcommit, rounded down).
    pub fn sellable_vcpus(&self) -> u32 {
        // Not money: a capacity ratio, so a float is fine; the result is clamped to u32.
        (f64::from(self.capacity_vcpus) * self.overcommit).floor() as u32
    }
}

pub fn parse_network(name: &str) -> Result<bitcoin::Network, ConfigError> {
    match name {
        "bitcoin" | "mainnet" => Ok(bitcoin::Network::Bitcoin),
        "testnet" | "testnet3" => Ok(bitcoin::Network::Testnet),
        "testnet4" => Ok(bitcoin::Network::Testnet4),
        "signet" => Ok(bitcoin::Network::Signet),
        "regtest" => Ok(bitcoin::Network::Regtest),
        other => Err(ConfigError::Network(other.to_string())),
    }
}

fn chain_network(n: bitcoin::Network) -> ChainNetwork {
    match n {
        bitcoin::Network::Bitcoin => ChainNetwork::Mainnet,
        bitcoin::Network::Testnet => ChainNetwork::Testnet3,
        bitcoin::Network::Testnet4 => ChainNetwork::Testnet4,
        bitcoin::Network::Signet => ChainNetwork::Signet,
        bitcoin::Network::Regtest => ChainNetwork::Regtest,
    }
}

fn default_testguest(exe_dir: Option<&Path>, state_dir: &Path) -> PathBuf {
    let beside = exe_dir.map(|d| d.join("testguest-pvh.elf"));
    match beside {
        Some(p) if p.exists() => p,
        _ => state_dir.join("images").join("testguest-pvh.elf"),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

fn host_mib() -> u64 {
    // SAFETY: sysconf only reads system configuration values; no pointers involved.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page <= 0 {
        return 1024;
    }
    (pages as u64).saturating_mul(page as u64) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_on_regtest() {
        let s = Settings::parse_from(["coinopd", "--state-dir", "/tmp/x"]);
        let c = s.resolve().expect("defaults resolve");
        assert_eq!(c.network, bitcoin::Network::Regtest);
        assert_eq!(c.tick_ms, 100);
        assert_eq!(c.socket_mode, 0o666);
        assert!(c.images.get("testguest").is_some());
        assert_eq!((c.max_connections, c.max_connections_per_uid), (1024, 64));
        assert_eq!(c.operator_connections, 64);
        assert_eq!((c.header_timeout_ms, c.idle_timeout_ms), (10_000, 30_000));
        assert_eq!(c.quotes_per_min, 30);
        assert_eq!(c.console_max_bytes, 1 << 20);
        assert_eq!((c.jail_uid_base, c.jail_uid_count), (1_900_000_000, 1000));
        assert_eq!(
            c.subid_files,
            [PathBuf::from("/etc/subuid"), PathBuf::from("/etc/subgid")]
        );
        assert_eq!(c.input_fee_ppk, 0, "no fee unless the operator sets one");
    }

    /// A refund (credit) needs its payments --mint-min-conf deep and a settled payment is
    /// not checked again: settling earlier is refused at start-up, and the default rises.
    #[test]
    fn payments_settle_no_earlier_than_a_refund_may_pay_them_out() {
        let args = |extra: &[&str]| {
            let mut a = vec!["coinopd", "--state-dir", "/tmp/x", "--network", "signet"];
            a.extend_from_slice(extra);
            Settings::parse_from(a).resolve()
        };
        assert!(matches!(
            args(&["--settle-conf", "2", "--mint-min-conf", "6"]),
            Err(ConfigError::SettleBelowRefundDepth { settle: 2, need: 6 })
        ));
        assert!(matches!(
            args(&[
                "--settle-conf",
                "2",
                "--mint-min-conf",
                "1",
                "--min-conf",
                "3"
            ]),
            Err(ConfigError::SettleBelowRefundDepth { settle: 2, need: 3 })
        ));
        let c = args(&["--mint-min-conf", "10"]).expect("the default settle-conf rises");
        assert_eq!((c.settle_conf, c.mint_min_conf), (10, 10));
        let c = args(&["--settle-conf", "6", "--mint-min-conf", "6"]).expect("equal is fine");
        assert_eq!(c.settle_conf, 6);
        assert_eq!(args(&[]).expect("defaults").settle_conf, 6);
    }

    #[test]
    fn a_mint_seed_file_goes_with_a_fleet_store_only() {
        let alone = Settings::parse_from([
            "coinopd",
            "--state-dir",
            "/tmp/x",
            "--mint-seed-file",
            "/etc/coinop/mint-seed",
        ]);
        assert!(matches!(
            alone.resolve(),
            Err(ConfigError::MintSeedWithoutStore)
        ));
        let fleet = Settings::parse_from([
            "coinopd",
            "--state-dir",
            "/tmp/x",
            "--store",
            "host=/run/postgresql dbname=coinop",
            "--mint-seed-file",
            "/etc/coinop/mint-seed",
        ]);
        let c = fleet.resolve().expect("a fleet with a seed file resolves");
        assert_eq!(
            c.mint_seed_file.as_deref(),
            Some(Path::new("/etc/coinop/mint-seed"))
        );
    }

    #[test]
    fn store_public_reads_leave_money_requests_connections() {
        let fleet = |reads: Option<&str>| {
            let mut argv = vec![
                "coinopd",
                "--state-dir",
                "/tmp/x",
                "--store",
                "host=/run/postgresql dbname=coinop",
            ];
            if let Some(n) = reads {
                argv.extend(["--store-public-reads", n]);
            }
            Settings::parse_from(argv).resolve()
        };
        let public_reads = |c: Config| c.store.map(|s| s.public_reads);
        assert_eq!(
            public_reads(fleet(None).expect("default")),
            Some(DEFAULT_STORE_PUBLIC_READS)
        );
        assert_eq!(
            public_reads(fleet(Some("15")).expect("all but one")),
            Some(15)
        );
        for refused in ["0", "16"] {
            assert!(
                matches!(
                    fleet(Some(refused)),
                    Err(ConfigError::StorePublicReads { max: 15, .. })
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "tick-ms = 50\ngrace-s = 7\nnetwork = \"signet\"\n").expect("write");
        let s = Settings::parse_from([
            "coinopd",
            "--config",
            path.to_str().expect("utf-8 temp path"),
            "--tick-ms",
            "20",
        ]);
        let c = s.with_file().expect("file").resolve().expect("resolve");
        assert_eq!(c.tick_ms, 20);
        assert_eq!(c.grace_s, 7);
        assert_eq!(c.network, bitcoin::Network::Signet);
    }

    #[test]
    fn device_rates_default_finite_and_come_from_flags_or_file() {
        let c = Settings::parse_from(["coinopd"])
            .resolve()
            .expect("defaults");
        assert_eq!(c.device_rates, DeviceRates::default());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "disk-iops-per-vcpu = 0\nnet-bytes-per-s-per-vcpu = 5\ndisk-bytes-per-s-per-vcpu = 9\n",
        )
        .expect("write");
        let s = Settings::parse_from([
            "coinopd",
            "--config",
            path.to_str().expect("utf-8 temp path"),
            "--disk-bytes-per-s-per-vcpu",
            "1000",
        ]);
        let c = s.with_file().expect("file").resolve().expect("resolve");
        assert_eq!(
            c.device_rates,
            DeviceRates {
                disk_bytes_per_s: 1000,
                disk_iops: 0,
                net_bytes_per_s: 5,
            }
        );
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"tick-mss": 5}"#).expect("write");
        let s = Settings {
            config: Some(path),
            ..Settings::default()
        };
        assert!(matches!(s.with_file(), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn the_slot_pool_holds_four_unless_told_and_zero_disables_it() {
        let c = Settings::parse_from(["coinopd"])
            .resolve()
            .expect("defaults");
        assert_eq!(c.jail_pool, 4);
        let c = Settings::parse_from(["coinopd", "--jail-pool", "0"])
            .resolve()
            .expect("zero is allowed");
        assert_eq!(c.jail_pool, 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "jail-pool = 9\n").expect("write");
        let s = Settings {
            config: Some(path),
            ..Settings::default()
        };
        let c = s.with_file().expect("file").resolve().expect("resolve");
        assert_eq!(c.jail_pool, 9);
    }

    #[test]
    fn guest_network_is_on_by_default_only_for_rootfs_images() {
        let c = Settings::parse_from(["coinopd"])
            .resolve()
            .expect("defaults");
        assert_eq!(c.guest_network, NetworkMode::Auto);
        assert!(!c.guest_network_wanted(), "the test guest has no rootfs");
        let c = Settings::parse_from(["coinopd", "--image", "srv=/k,rootfs=/r.ext4"])
            .resolve()
            .expect("rootfs image");
        assert!(c.guest_network_wanted());
        let srv = c.images.get("srv").expect("srv").clone();
        let tg = c.images.get("testguest").expect("testguest").clone();
        assert!(c.lease_gets_network(&srv) && !c.lease_gets_network(&tg));
        let s = Settings::parse_from(["coinopd", "--guest-network", "sometimes"]);
        assert!(matches!(s.resolve(), Err(ConfigError::GuestNetwork(_))));
        let s = Settings::parse_from(["coinopd", "--guest-net-pool", "10.0.0.1/16"]);
        assert!(matches!(s.resolve(), Err(ConfigError::Pool(_))));
    }

    #[test]
    fn payment_policy_defaults_follow_the_network() {
        let on = |net: &str| {
            Settings::parse_from(["coinopd", "--network", net])
                .resolve()
                .expect("resolves")
        };
        assert_eq!(on("mainnet").min_conf, 2);
        assert!(on("mainnet").quote_dust_floor && !on("regtest").quote_dust_floor);
        assert_eq!(on("testnet4").min_conf, 3);
        assert_eq!(on("signet").min_conf, 2);
        let c = on("regtest");
        assert_eq!(c.min_conf, 1);
        assert_eq!((c.quote_ttl_s, c.quote_reuse_after_s), (3600, 86_400));
        assert_eq!((c.max_open_quotes, c.address_type), (1000, None));
        let c = Settings::parse_from([
            "coinopd",
            "--network",
            "mainnet",
            "--min-conf",
            "6",
            "--address-type",
            "p2tr",
        ])
        .resolve()
        .expect("resolves");
        assert_eq!((c.min_conf, c.address_type), (6, Some(AddressKind::P2tr)));
        let s = Settings::parse_from(["coinopd", "--address-type", "p2pkh"]);
        assert!(matches!(s.resolve(), Err(ConfigError::AddressType(_))));
        let s = Settings::parse_from(["coinopd", "--max-open-quotes", "0"]);
        assert!(matches!(s.resolve(), Err(ConfigError::Zero { .. })));
        let s = Settings::parse_from(["coinopd", "--guest-max-flows", "0"]);
        assert!(matches!(
            s.resolve(),
            Err(ConfigError::Zero {
                flag: "guest-max-flows"
            })
        ));
        let c = Settings::parse_from(["coinopd", "--guest-max-flows", "64"])
            .resolve()
            .expect("resolves");
        assert_eq!(c.guest_max_flows, 64);
    }

    #[test]
    fn a_bitcoin_ban_is_between_one_second_and_thirty_years() {
        let ban = |v: &str| Settings::parse_from(["coinopd", "--bitcoin-ban-s", v]).resolve();
        assert!(matches!(
            ban("0"),
            Err(ConfigError::Zero {
                flag: "bitcoin-ban-s"
            })
        ));
        let max = coinop_bitcoin_net::peer_set::MAX_BAN.as_secs();
        assert!(matches!(
            ban(&u64::MAX.to_string()),
            Err(ConfigError::BanTooLong { got: u64::MAX, max: m }) if m == max
        ));
        assert!(matches!(
            ban(&(max + 1).to_string()),
            Err(ConfigError::BanTooLong { .. })
        ));
        assert_eq!(ban(&max.to_string()).expect("resolves").bitcoin_ban_s, max);
        assert_eq!(ban("1").expect("resolves").bitcoin_ban_s, 1);
        let c = Settings::default().resolve().expect("resolves");
        assert_eq!(c.bitcoin_ban_s, 86_400);
    }

    #[test]
    fn the_chain_starts_at_the_checkpoint_unless_genesis_is_asked() {
        let start = |v: &[&str]| {
            let args = [&["coinopd", "--network", "testnet"][..], v].concat();
            Settings::parse_from(args).resolve()
        };
        assert!(!start(&[]).expect("default").chain_from_genesis);
        assert!(
            !start(&["--chain-start", "checkpoint"])
                .expect("checkpoint")
                .chain_from_genesis
        );
        assert!(
            start(&["--chain-start", "genesis"])
                .expect("genesis")
                .chain_from_genesis
        );
        assert!(matches!(
            start(&["--chain-start", "block0"]),
            Err(ConfigError::ChainStart(v)) if v == "block0"
        ));
    }

    #[test]
    fn bad_socket_mode_is_rejected() {
        let s = Settings::parse_from(["coinopd", "--socket-mode", "999"]);
        assert!(matches!(s.resolve(), Err(ConfigError::SocketMode(_))));
    }
}
