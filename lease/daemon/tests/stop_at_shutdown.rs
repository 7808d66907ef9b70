//! An accepted stop is carried out even when coinopd is asked to shut down right after it,
//! and even when the guest's VMM does not answer the stop request. Before this held, a
//! stop still in flight when the daemon exited (or one whose control request timed out on
//! a loaded host) left a `mode=spin` guest burning a core for ten minutes after the suite.
//!
//! The tests make the stop slow on purpose: they hold the VMM's control socket (it serves
//! one client at a time), so coinopd's stop request waits behind them. The last test checks
//! the harness's own guard for a test that ends with a lease still running.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::guest_reaper::running_vmms;
use common::leases::{credit_payment, testguest_body, CreatedLease};
use common::{kvm_or_skip, Daemon, StateDir};

/// Creates a spinning lease; its control socket path.
async fn spinning_lease(d: &Daemon) -> (String, String, std::path::PathBuf) {
    let proofs = d.mint_credit(50).await;
    let CreatedLease { id, token, .. } = d
        .create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await;
    let control = d.dir.join("run").join(format!("{id}.sock"));
    (id, token, control)
}

/// Takes the VMM's control thread: a `status` answered proves it is serving this client,
/// and it then waits for this client's next line until the stream is dropped.
fn hold_control(control: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(control).expect("connect control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    writeln!(stream, r#"{{"cmd":"status"}}"#).expect("send status");
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .expect("status reply");
    assert!(reply.contains("\"ok\":true"), "{reply}");
    stream
}

async fn stop(d: &Daemon, id: &str, token: &str) {
    d.stop_lease(id, token).await;
}

/// In-process daemon: the stop waits behind the held control socket, which is let go a
/// second after the shutdown began (before the stop request's own 2 s timeout); once
/// `serve` has returned the guest must be gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_a_stop_accepted_just_before() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let (id, token, control) = spinning_lease(&d).await;
    assert_eq!(running_vmms(dir.path()).len(), 1, "the guest runs");
    let held = hold_control(&control);
    stop(&d, &id, &token).await;
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(held);
    });
    d.shutdown().await;
    let left = running_vmms(dir.path());
    release.join().expect("release thread");
    assert!(
        left.is_empty(),
        "coinopd returned from its shutdown with the stopped lease's VMM still running: {left:?}"
    );
}

/// coinopd process: SIGTERM right after the stop was accepted, and the VMM never answers
/// the stop request (its control socket stays held). The stop ends in SIGKILL and the
/// daemon exits only after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_the_vmm_does_not_answer_kills_it_before_the_daemon_exits() {
    if !kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let (id, token, control) = spinning_lease(&d).await;
    assert_eq!(running_vmms(dir.path()).len(), 1, "the guest runs");
    let held = hold_control(&control);
    stop(&d, &id, &token).await;
    let status = d.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "coinopd exit: {status:?}");
    let left = running_vmms(dir.path());
    drop(held);
    assert!(
        left.is_empty(),
        "coinopd exited with the stopped lease's VMM still running: {left:?}"
    );
}

/// The harness side: a test that ends (or panics) with a lease still running leaves no
/// guest behind, because its state directory's guard kills the VMMs that belong to it,
/// and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_state_dir_kills_the_guests_a_test_left_running() {
    if !kvm_or_skip() {
        return;
    }
    let other = StateDir::new();
    let dir = StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let _ = spinning_lease(&d).await;
    // Guests outlive their daemon (re-adoption), so ending it leaves the guest up.
    d.shutdown().await;
    let pids = running_vmms(dir.path());
    assert_eq!(pids.len(), 1, "the guest outlives its daemon");
    assert!(
        running_vmms(other.path()).is_empty(),
        "another state dir's guests are not this one's"
    );
    drop(dir);
    assert!(
        !pids.iter().any(|&p| coinopd::guest_stop::vmm_running(p)),
        "VMM {pids:?} still running after its state dir was dropped"
    );
}
