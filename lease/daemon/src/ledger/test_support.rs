//! What the ledger's unit tests share: a ledger in a temporary directory, a lease, a payment,
//! a reading and prices.

use std::time::Duration;

use payment::metering::Prices;
use payment::spent_set::SpendKey;

use super::{Credit, Ledger, NewLease, Sample};
use crate::clock::Now;

/// A usage reading of lease "a": cumulative vCPU µs and uptime µs.
pub(crate) fn s(vcpu_total_us: u64, uptime_us: u64) -> Sample<'static> {
    Sample {
        lease_id: "a",
        vcpu_total_us,
        uptime_us,
        vm_paused: false,
    }
}

pub(crate) fn ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().expect("tempdir");
    let l = Ledger::open(&dir.path().join("ledger.db")).expect("open ledger");
    (dir, l)
}

pub(crate) fn new_lease(id: &str) -> NewLease {
    NewLease {
        id: id.into(),
        token_hash: crate::token::token_hash("t"),
        vcpus: 1,
        mem_mib: 1024,
        image: "testguest".into(),
        cmdline: String::new(),
        control_path: "/x.sock".into(),
        console_path: "/x.console".into(),
        recovery_hash: None,
        baseline: Default::default(),
    }
}

pub(crate) fn credit(key: u8, msat: u64) -> Credit {
    Credit {
        kind: "onchain",
        reference: format!("k{key}"),
        amount_msat: msat,
        keys: vec![SpendKey::outpoint([key; 32], 0)],
        block_hash: None,
        quote_id: None,
    }
}

pub(crate) const P: Prices = Prices {
    vcpu_msat_per_s: 1000,
    gib_msat_per_s: 1000,
};

/// Moves lease `id`'s `funded_at` back `secs` seconds, as if it had run that long on its
/// payment: its grace, once paused, is at most that run (`tick::grace_of`).
pub(crate) fn funded_ago(l: &Ledger, id: &str, secs: i64) {
    l.with_conn(|c| {
        c.execute(
            "UPDATE leases SET funded_at = funded_at - ?2 WHERE id = ?1",
            rusqlite::params![id, secs],
        )?;
        Ok(())
    })
    .expect("moving funded_at back");
}

/// When lease `id`'s usage marks were set: where a test's ticks count from
/// (`Ledger::apply_tick_at`, `t0 + ms`), a reading's growth being held to the time since.
pub(crate) fn metered_at(l: &Ledger, id: &str) -> Now {
    Now {
        wall_ms: l.get(id).expect("get").expect("row").metered_since_ms(),
        // Where this ledger set them (a test that moved them by hand measures on the wall
        // clock: any instant will do).
        mono: l
            .stamps
            .metered_at(id)
            .unwrap_or_else(std::time::Instant::now),
    }
}

/// Lease "a" created with `msat` of credit and running, funded 600 s ago (its grace once
/// paused is then the whole grace of the tests' 60 s), and when its usage marks were set.
pub(crate) fn running_funded_long_ago(l: &Ledger, msat: u64) -> Now {
    l.create_lease(&new_lease("a"), &credit(1, msat))
        .expect("create");
    l.mark_running("a", None, "{}").expect("run");
    funded_ago(l, "a", 600);
    metered_at(l, "a")
}

/// `ms` later on both clocks, as time passes when nobody steps the wall clock.
impl std::ops::Add<u64> for Now {
    type Output = Now;

    fn add(self, ms: u64) -> Now {
        Now {
            wall_ms: self.wall_ms + i64::try_from(ms).expect("a test's ms fit i64"),
            mono: self.mono + Duration::from_millis(ms),
        }
    }
}

/// Moves the time lease `id`'s usage marks were set back `secs` seconds, as if its last
/// reading had been that long ago.
pub(crate) fn metered_ago(l: &Ledger, id: &str, secs: i64) {
    l.with_conn(|c| {
        c.execute(
            "UPDATE leases SET metered_at_ms = metered_at_ms - ?2 * 1000 WHERE id = ?1",
            rusqlite::params![id, secs],
        )?;
        Ok(())
    })
    .expect("moving metered_at_ms back");
}

impl Now {
    /// The same moment with the wall clock stepped by `ms` (back if negative): what an
    /// operator's `date -s` or an NTP correction does, the monotonic clock untouched.
    pub(crate) fn wall_stepped(self, ms: i64) -> Now {
        Now {
            wall_ms: self.wall_ms + ms,
            ..self
        }
    }
}
