//! Guest stops that were accepted (a tenant's `POST /stop`, the end of a grace period) and
//! are still being carried out. A stop runs off the request path, so coinopd counts them
//! here and a graceful shutdown waits for the count to reach zero: an accepted stop must
//! not be dropped with the runtime and leave its guest running (and unbilled) for good.
//! Each stop is for one lease, and a lease has at most one at a time: the tick's
//! reconciliation and a tenant's stop may both ask for the same one.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::names_in_flight::{Entered, NamesInFlight};

/// Counts the stop tasks still running.
#[derive(Debug)]
pub struct StopsInFlight {
    count: watch::Sender<usize>,
    /// The leases whose stop runs.
    leases: NamesInFlight,
}

/// Decrements the count and forgets the lease when its task ends, also when the task
/// panics or is cancelled.
struct InFlight {
    count: watch::Sender<usize>,
    _lease: Entered,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Default for StopsInFlight {
    fn default() -> Self {
        StopsInFlight {
            count: watch::Sender::new(0),
            leases: NamesInFlight::default(),
        }
    }
}

impl StopsInFlight {
    /// Runs `stop` for lease `lease_id` on the runtime, counted until it ends, unless a stop
    /// of that lease already runs; whether it was started.
    pub fn spawn(&self, lease_id: &str, stop: impl Future<Output = ()> + Send + 'static) -> bool {
        let Some(lease) = self.leases.enter(lease_id) else {
            return false;
        };
        self.count.send_modify(|n| *n += 1);
        let guard = InFlight {
            count: self.count.clone(),
            _lease: lease,
        };
        tokio::spawn(async move {
            let _guard = guard;
            stop.await;
        });
        true
    }

    /// Whether a stop of `lease_id` runs.
    pub fn running(&self, lease_id: &str) -> bool {
        self.leases.contains(lease_id)
    }

    /// Stops not finished yet.
    pub fn pending(&self) -> usize {
        *self.count.borrow()
    }

    /// Waits until every stop has finished or `limit` passed; whether all finished.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_a_running_stop_and_counts_it_down() {
        let stops = StopsInFlight::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(stops.spawn("a", async move {
            let _ = rx.await;
        }));
        assert_eq!(stops.pending(), 1);
        assert!(stops.running("a"));
        assert!(
            !stops.spawn("a", async {}),
            "a second stop of the same lease is not started"
        );
        assert_eq!(stops.pending(), 1);
        assert!(!stops.wait_idle(Duration::from_millis(20)).await);
        let _ = tx.send(());
        assert!(stops.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(stops.pending(), 0);
        assert!(!stops.running("a"));
        assert!(
            stops.spawn("a", async {}),
            "once done, the lease can be stopped again"
        );
    }

    #[tokio::test]
    async fn a_panicking_stop_still_counts_down() {
        let stops = StopsInFlight::default();
        stops.spawn("a", async { panic!("stop task failed") });
        assert!(stops.wait_idle(Duration::from_secs(5)).await);
        assert!(!stops.running("a"));
    }

    #[tokio::test]
    async fn idle_at_once_without_stops() {
        assert!(StopsInFlight::default().wait_idle(Duration::ZERO).await);
    }
}
