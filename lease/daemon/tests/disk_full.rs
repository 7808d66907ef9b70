//! Logging and a full disk are never a crash (issue #13 item 3), with a real `coinopd`
//! process: its stderr on `/dev/full` (every log line refused) does not stop it.

mod common;

use std::time::Duration;

use common::leases::{credit_payment, testguest_body};
use common::{kvm_or_skip, Daemon};

/// A metric's value from `/metrics` (0 when absent).
async fn metric(d: &Daemon, name: &str) -> u64 {
    let text = d.call("GET", "/metrics", None, None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stderr_drops_log_lines_and_coinopd_serves_on() {
    let dir = common::StateDir::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut d = Daemon::spawn_with(dir.path(), dir.path(), &[], &[], full.into()).await;
    let h = d.call("GET", "/v1/host", None, None).await;
    assert_eq!(h.status, 200, "{}", h.text());
    // Minting logs (the regtest chain, the quote, the payment), and a guest's life logs
    // its boot and its stop.
    let proofs = serde_json::to_value(d.mint_credit(20).await).expect("proofs");
    if kvm_or_skip() {
        let l = d
            .create_lease(testguest_body("mode=echo", credit_payment(&proofs)))
            .await;
        d.stop_lease(&l.id, &l.token).await;
    }
    assert!(d.running(), "coinopd died of its log");
    let dropped = metric(&d, "coinop_log_lines_dropped_total").await;
    assert!(dropped > 0, "no dropped log line counted");
    let status = d.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}
