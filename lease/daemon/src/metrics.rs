//! Prometheus metrics for `/metrics`: leases by state, boots, boot latency, msat debited,
//! payments verified and rejected, the disk reserve, dropped log lines, the fleet store's
//! round trips and errors, and the reads its public read share refused.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use coinop_proto::LeaseState;

type Labels = Vec<(String, String)>;

const ALL_STATES: [LeaseState; 5] = [
    LeaseState::Booting,
    LeaseState::Running,
    LeaseState::PausedUnfunded,
    LeaseState::PausedReorg,
    LeaseState::Stopped,
];

pub struct Metrics {
    registry: Registry,
    leases: Family<Labels, Gauge>,
    boots: Family<Labels, Counter>,
    boot_latency_us: Histogram,
    debited_msat: Counter,
    refunded_msat: Counter,
    residual_msat: Counter,
    payments: Family<Labels, Counter>,
    storage: StorageMetrics,
    /// The fleet store's counters, brought up to date at each render (`--store` only).
    fleet_store: Family<Labels, Counter>,
    /// Unauthenticated reads the public read share refused `store_busy` (`--store` only;
    /// brought up to date at each render, like `fleet_store`).
    fleet_store_reads_busy: Counter,
    fleet_store_sync: std::sync::Mutex<()>,
    chain: ChainMetrics,
}

/// The header chain and its P2P sync, set from a snapshot at each scrape.
#[derive(Default)]
struct ChainMetrics {
    tip_height: Gauge,
    peers_connected: Gauge,
    peers_banned: Gauge,
    /// 1 for the current state, 0 for the others.
    state: Family<Labels, Gauge>,
    headers_from_peers: Gauge,
    last_header_time: Gauge,
}

/// The disk reserve's figures ([`crate::disk_reserve`]): handles on registered metrics.
#[derive(Clone, Default)]
pub struct StorageMetrics {
    /// 1 while coinopd runs without its disk reserve (and takes no new leases).
    pub degraded: Gauge,
    /// How often the reserve was deleted to make room on a full disk.
    pub reserve_released: Counter,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coinop");
        let leases = Family::<Labels, Gauge>::default();
        let boots = Family::<Labels, Counter>::default();
        // 100 µs .. ~3.3 s
        let boot_latency_us = Histogram::new(exponential_buckets(100.0, 2.0, 16));
        let debited_msat = Counter::default();
        let refunded_msat = Counter::default();
        let residual_msat = Counter::default();
        let payments = Family::<Labels, Counter>::default();
        registry.register("leases", "Leases by state", leases.clone());
        registry.register("boots", "Guest boots by result", boots.clone());
        registry.register(
            "boot_latency_us",
            "Request arrival to guest_ready, microseconds",
            boot_latency_us.clone(),
        );
        registry.register(
            "debited_msat",
            "Balance debited for usage, msat",
            debited_msat.clone(),
        );
        registry.register(
            "refunded_msat",
            "Balance refunded to tenants as change, msat (whole sats)",
            refunded_msat.clone(),
        );
        registry.register(
            "residual_msat",
            "Sub-sat refund remainders kept by the host, msat",
            residual_msat.clone(),
        );
        registry.register("payments", "Payments by kind and result", payments.clone());
        let storage = StorageMetrics::default();
        registry.register(
            "storage_degraded",
            "1 while the state directory's disk is too full for the disk reserve: no new leases",
            storage.degraded.clone(),
        );
        registry.register(
            "storage_reserve_released",
            "Disk reserve deletions, each on a full state directory disk",
            storage.reserve_released.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines stderr refused (dropped, not retried)",
            crate::log_writer::dropped_lines(),
        );
        let chain = ChainMetrics::default();
        registry.register(
            "chain_tip_height",
            "Height of the host's best header chain",
            chain.tip_height.clone(),
        );
        registry.register(
            "chain_sync_peers_connected",
            "Bitcoin peers connected for header sync",
            chain.peers_connected.clone(),
        );
        registry.register(
            "chain_sync_peers_banned",
            "Bitcoin peers banned for sending invalid headers",
            chain.peers_banned.clone(),
        );
        registry.register(
            "chain_sync_state",
            "Header sync state (1 for the current one): off, no_peers, syncing, synced",
            chain.state.clone(),
        );
        registry.register(
            "chain_sync_headers_from_peers",
            "New headers taken from Bitcoin peers since start",
            chain.headers_from_peers.clone(),
        );
        registry.register(
            "chain_sync_last_header_time",
            "Unix time the last new header from a peer was stored (0: none yet)",
            chain.last_header_time.clone(),
        );
        let fleet_store = Family::<Labels, Counter>::default();
        registry.register(
            "fleet_store",
            "Fleet store (--store) statement round trips, errors, and of those outages",
            fleet_store.clone(),
        );
        let fleet_store_reads_busy = Counter::default();
        registry.register(
            "fleet_store_reads_busy",
            "Unauthenticated fleet store reads answered 503 store_busy: the host's public \
             read share (--store-public-reads) was taken",
            fleet_store_reads_busy.clone(),
        );
        Metrics {
            chain,
            registry,
            fleet_store,
            fleet_store_reads_busy,
            fleet_store_sync: std::sync::Mutex::new(()),
            leases,
            boots,
            boot_latency_us,
            debited_msat,
            refunded_msat,
            residual_msat,
            payments,
            storage,
        }
    }

    /// Handles on the disk reserve's metrics.
    pub fn storage(&self) -> StorageMetrics {
        self.storage.clone()
    }

    pub fn boot(&self, ok: bool, latency_us: Option<u64>) {
        let result = if ok { "ok" } else { "failed" };
        self.boots
            .get_or_create(&labels(&[("result", result)]))
            .inc();
        if let Some(us) = latency_us {
            // Histogram observations are f64 by the crate's design; this is a duration.
            self.boot_latency_us.observe(us as f64);
        }
    }

    pub fn debited(&self, msat: u64) {
        self.debited_msat.inc_by(msat);
    }

    pub fn refunded(&self, refund_msat: u64, residual_msat: u64) {
        self.refunded_msat.inc_by(refund_msat);
        self.residual_msat.inc_by(residual_msat);
    }

    /// A payment that verified (`accepted`) or was refused by verification.
    pub fn payment(&self, kind: &str, accepted: bool) {
        let result = if accepted { "verified" } else { "rejected" };
        self.payment_result(kind, result);
    }

    /// A verified payment whose claim the ledger refused (already spent).
    pub fn payment_already_spent(&self, kind: &str) {
        self.payment_result(kind, "already_spent");
    }

    /// A verified payment that had already paid for the requester's own lease, handed back
    /// to a retried create (see `create_recovery`).
    pub fn payment_recovered(&self, kind: &str) {
        self.payment_result(kind, "recovered");
    }

    fn payment_result(&self, kind: &str, result: &str) {
        self.payments
            .get_or_create(&labels(&[("kind", kind), ("result", result)]))
            .inc();
    }

    /// The chain's figures for the next render.
    pub fn chain(&self, tip_height: u32, sync: &coinop_bitcoin_net::SyncSnapshot) {
        use coinop_bitcoin_net::SyncState;
        let c = &self.chain;
        c.tip_height.set(i64::from(tip_height));
        c.peers_connected.set(i64::from(sync.peers_connected));
        c.peers_banned.set(i64::from(sync.peers_banned));
        for state in [
            SyncState::Off,
            SyncState::NoPeers,
            SyncState::Syncing,
            SyncState::Synced,
        ] {
            c.state
                .get_or_create(&labels(&[("state", state.as_str())]))
                .set(i64::from(state == sync.state));
        }
        c.headers_from_peers
            .set(i64::try_from(sync.headers_accepted).unwrap_or(i64::MAX));
        c.last_header_time.set(
            sync.last_header_unix_s
                .and_then(|t| i64::try_from(t).ok())
                .unwrap_or(0),
        );
    }

    /// Brings the fleet store's counters up to the store's own figures, and the public
    /// read share's refusals up to `reads_busy` ([`crate::fleet::Fleet::reads_busy`]).
    pub fn fleet_store(&self, m: payment_postgres::StoreMetrics, reads_busy: u64) {
        // One render at a time, so two cannot both add the same difference.
        let _one = self
            .fleet_store_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (what, now) in [
            ("round_trips", m.round_trips),
            ("errors", m.errors),
            ("unavailable", m.unavailable),
        ] {
            let c = self.fleet_store.get_or_create(&labels(&[("what", what)]));
            c.inc_by(now.saturating_sub(c.get()));
        }
        let busy = &self.fleet_store_reads_busy;
        busy.inc_by(reads_busy.saturating_sub(busy.get()));
    }

    /// Renders the text format; `states` are the current lease counts by state.
    pub fn render(&self, states: &[(String, i64)]) -> String {
        self.leases.clear();
        // Every state is always present (0 when empty) so rate/absent queries work.
        for state in ALL_STATES {
            self.leases
                .get_or_create(&labels(&[("state", state.as_str())]))
                .set(0);
        }
        for (state, n) in states {
            self.leases
                .get_or_create(&labels(&[("state", state.as_str())]))
                .set(*n);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;
    use payment_postgres::StoreMetrics;

    fn reads_busy(m: &Metrics) -> Option<u64> {
        m.render(&[]).lines().find_map(|l| {
            l.strip_prefix("coinop_fleet_store_reads_busy_total ")?
                .parse()
                .ok()
        })
    }

    /// The share's refusals show as the fleet counted them, however often `/metrics` is
    /// rendered in between (each render brings the counter up, never adds twice).
    #[test]
    fn reads_refused_busy_show_as_the_fleet_counted_them() {
        let m = Metrics::new();
        assert_eq!(reads_busy(&m), Some(0), "present before any refusal");
        m.fleet_store(StoreMetrics::default(), 3);
        m.fleet_store(StoreMetrics::default(), 3);
        assert_eq!(reads_busy(&m), Some(3));
        m.fleet_store(StoreMetrics::default(), 5);
        assert_eq!(reads_busy(&m), Some(5));
    }
}
