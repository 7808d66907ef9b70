//! Benchmark (not a test): header sync from one peer into a durable header chain, as
//! coinopd does it. Prints headers/s including validation and the fsync'd chain file.
//!
//! usage: header_sync PEER_HOST:PORT EXPECTED_HEIGHT [NETWORK]
//! (scripts/bench-header-sync.sh starts a loopback bcoin with a 10,000-block regtest chain
//! and runs this against it.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::BlockHash;
use coinop_bitcoin_net::{ChainAccess, PeerSetConfig, SyncStatus};
use payment::onchain::{
    AppendOutcome, ChainError, ChainNetwork, Checkpoint, HeaderChain, HeaderSource, Tip,
};

/// The chain, and the time spent in `append` (validation and the fsync'd write).
struct Chain(Mutex<HeaderChain>, Mutex<Duration>);

impl Chain {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeaderChain> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ChainAccess for Chain {
    fn locator(&self) -> Vec<BlockHash> {
        self.lock().locator()
    }
    fn checkpoint_header_wanted(&self) -> Option<BlockHash> {
        self.lock().checkpoint_header_wanted()
    }
    fn tip(&self) -> Tip {
        self.lock().tip()
    }
    fn knows(&self, hash: &BlockHash) -> bool {
        self.lock().contains(hash)
    }
    fn accept_headers(&self, headers: &[Header]) -> Result<AppendOutcome, ChainError> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut chain = self.lock();
        let start = Instant::now();
        let out = chain.append(headers, now_us, HeaderSource::Untrusted);
        *self
            .1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += start.elapsed();
        out
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: header_sync PEER_HOST:PORT EXPECTED_HEIGHT [NETWORK]");
        std::process::exit(2);
    }
    let peer = args[1].clone();
    let Ok(expected) = args[2].parse::<u32>() else {
        eprintln!("EXPECTED_HEIGHT {:?} is not a number", args[2]);
        std::process::exit(2);
    };
    let network = args
        .get(3)
        .map_or(Some(ChainNetwork::Regtest), |n| ChainNetwork::from_name(n));
    let Some(network) = network else {
        eprintln!("unknown network {:?}", args[3]);
        std::process::exit(2);
    };
    let dir = std::env::temp_dir().join(format!("coinop-header-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("headers.dat");
    let chain =
        HeaderChain::open(&path, network, Checkpoint::genesis(network)).expect("chain file opens");
    let chain = Arc::new(Chain(Mutex::new(chain), Mutex::new(Duration::ZERO)));
    let status = Arc::new(SyncStatus::default());
    let start = Instant::now();
    let set = coinop_bitcoin_net::spawn(
        PeerSetConfig::new(network, vec![peer]),
        Arc::clone(&chain) as Arc<dyn ChainAccess>,
        Arc::clone(&status),
    );
    let mut first_header = None;
    loop {
        let height = chain.tip().height;
        if first_header.is_none() && height > 0 {
            first_header = Some(start.elapsed());
        }
        if height >= expected {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            eprintln!("gave up at height {height} after 600 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total = start.elapsed();
    set.abort();
    let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    let _ = std::fs::remove_dir_all(&dir);
    let secs = total.as_secs_f64();
    let append = *chain
        .1
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let first = first_header.unwrap_or_default();
    println!(
        "header sync: {expected} headers in {:.3} s = {:.0} headers/s (incl. connect + handshake {:.1} ms to the first batch), chain file {} KiB",
        secs,
        f64::from(expected) / secs,
        first_header.unwrap_or_default().as_secs_f64() * 1000.0,
        bytes / 1024
    );
    println!(
        "  after the first batch: {:.0} headers/s end to end; the chain's own work (validation + fsync'd append): {:.3} s = {:.0} headers/s",
        f64::from(expected.saturating_sub(2000)) / (total - first).as_secs_f64(),
        append.as_secs_f64(),
        f64::from(expected) / append.as_secs_f64()
    );
}
