//! What one local user may take of coinopd, so that no peer of the socket can deny the API
//! to the others or to the operator:
//!
//! - [`ConnLimits`]: connections open at once, for all non-operator peers together and for
//!   each peer uid (SO_PEERCRED), with room on top kept for the operator. A connection
//!   beyond them is answered 503 `too_many_connections` by a handful of short-lived
//!   refusal tasks, or, when those are busy too, closed at accept.
//! - [`QuoteLimiter`]: address quotes per peer uid (each takes the next address of the
//!   operator's xpub, so an unbounded stream of them pushes the wallet past any gap limit).
//!
//! - [`QuoteHolds`]: addresses held by one uid's quotes at once. An unpaid quote keeps
//!   its address out of use for its life and `--quote-reuse-after-s` after, and at most
//!   `--max-open-quotes` are held host-wide: without a share per uid, one uid within its
//!   rate fills them all in well under an hour and keeps every other tenant from paying.
//!
//! The operator (root, or the configured uid/gid) is never limited by the per-uid cap or
//! the quote rate: it is the host's owner and could stop coinopd anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Connections answered 503 at once; beyond them a refused connection is closed at accept
/// (each refusal holds an fd for up to its short header timeout).
pub const REFUSING_AT_ONCE: usize = 64;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// All non-operator peers together hold `--max-connections`.
    Total,
    /// This peer's uid holds `--max-connections-per-uid`.
    PerUid,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Total => "the host has too many connections open; retry shortly",
            Refusal::PerUid => "your uid has too many connections open to this host",
        }
    }
}

/// What to do with a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it; the slot is given back when dropped.
    Serve(ConnSlot),
    /// Answer 503 and close; the slot is given back when dropped.
    Refuse(RefusalSlot, Refusal),
    /// Close it now: too many refusals are being answered already.
    Drop(Refusal),
}

#[derive(Debug, Default)]
struct Counts {
    /// Connections being served, the operator's included.
    total: usize,
    /// Connections being served per non-operator uid (`None`: credentials unknown).
    by_uid: HashMap<Option<u32>, usize>,
    /// Refusals being answered.
    refusing: usize,
}

/// The connection caps and what is open now.
#[derive(Debug)]
pub struct ConnLimits {
    max: usize,
    per_uid: usize,
    operator_room: usize,
    counts: Mutex<Counts>,
}

impl ConnLimits {
    pub fn new(max: usize, per_uid: usize, operator_room: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            max,
            per_uid,
            operator_room,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Plain counters: a panic elsewhere cannot leave them half-updated.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits or refuses a connection from `uid`: the operator while all connections stay
    /// within `max + operator_room`, anyone else while they stay within `max` and their
    /// uid's within `per_uid`.
    pub fn admit(self: &Arc<Self>, uid: Option<u32>, operator: bool) -> Admission {
        let mut c = self.counts();
        let refusal = if operator {
            (c.total >= self.max + self.operator_room).then_some(Refusal::Total)
        } else if c.total >= self.max {
            Some(Refusal::Total)
        } else if c.by_uid.get(&uid).copied().unwrap_or(0) >= self.per_uid {
            Some(Refusal::PerUid)
        } else {
            None
        };
        match refusal {
            None => {
                c.total += 1;
                let key = (!operator).then_some(uid);
                if let Some(uid) = key {
                    *c.by_uid.entry(uid).or_default() += 1;
                }
                Admission::Serve(ConnSlot {
                    limits: Arc::clone(self),
                    uid: key,
                })
            }
            Some(why) if c.refusing < REFUSING_AT_ONCE => {
                c.refusing += 1;
                Admission::Refuse(
                    RefusalSlot {
                        limits: Arc::clone(self),
                    },
                    why,
                )
            }
            Some(why) => Admission::Drop(why),
        }
    }

    /// Connections being served now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

/// A served connection's place in the counts.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    /// The uid it counts against (`None` for the operator's connections).
    uid: Option<Option<u32>>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.limits.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(uid) = self.uid {
            if let Some(n) = c.by_uid.get_mut(&uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_uid.remove(&uid);
                }
            }
        }
    }
}

/// A refusal being answered.
#[derive(Debug)]
pub struct RefusalSlot {
    limits: Arc<ConnLimits>,
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        let mut c = self.limits.counts();
        c.refusing = c.refusing.saturating_sub(1);
    }
}

/// Quotes per peer uid: a token bucket of `per_min` quotes refilled at `per_min` a minute
/// (as GCRA: one "theoretical arrival time" per uid).
#[derive(Debug)]
pub struct QuoteLimiter {
    /// Time one quote's token takes to come back; `None`: no limit.
    interval: Option<Duration>,
    /// How far ahead of now a uid's arrival time may run: a full bucket's worth.
    burst: Duration,
    tats: Mutex<HashMap<Option<u32>, Instant>>,
}

/// Forgotten arrival times are pruned once this many uids are remembered.
const PRUNE_AT: usize = 4096;

impl QuoteLimiter {
    /// `per_min` quotes a minute, in bursts of as many; 0 for no limit.
    pub fn new(per_min: u32) -> Self {
        let interval = (per_min > 0).then(|| Duration::from_secs(60) / per_min);
        QuoteLimiter {
            interval,
            burst: interval.map_or(Duration::ZERO, |i| i * per_min.saturating_sub(1)),
            tats: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one quote for `uid` at `now`, or says how long until one is free.
    pub fn take(&self, uid: Option<u32>, now: Instant) -> Result<(), Duration> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let mut tats = self.tats.lock().unwrap_or_else(PoisonError::into_inner);
        if tats.len() >= PRUNE_AT {
            // A uid whose arrival time has passed has a full bucket: forgetting it changes
            // nothing.
            tats.retain(|_, tat| *tat > now);
        }
        let tat = tats.get(&uid).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > self.burst {
            return Err(ahead - self.burst);
        }
        tats.insert(uid, tat + interval);
        Ok(())
    }
}

/// Addresses held by each uid's quotes: a quote counts from when it is issued until its
/// address may be used again (its life and the reuse delay), paid or not (a paid quote's
/// address is never reused, so counting it that long is on the safe side, and a tenant
/// who pays its quotes needs few at once). Kept in memory: a restart forgets them, as it
/// forgets the rate.
#[derive(Debug)]
pub struct QuoteHolds {
    /// Quotes one uid may hold at once; 0: no cap.
    per_uid: usize,
    /// How long an issued quote holds its address.
    hold: Duration,
    /// Per uid, when each of its holds ends (oldest first).
    held: Mutex<HashMap<Option<u32>, std::collections::VecDeque<Instant>>>,
}

/// One quote's hold, taken before the quote is made: kept unless given back
/// ([`QuoteHold::give_back`]) once the route is known to have refused the quote. Kept by
/// default: a client that hangs up drops the handler, whose blocking step may still
/// issue the quote, and a hold given back on drop would let one uid hold every address
/// by hanging up at once.
#[derive(Debug)]
pub struct QuoteHold {
    holds: Arc<QuoteHolds>,
    uid: Option<u32>,
    until: Instant,
}

impl QuoteHold {
    /// The route refused the quote: no address is held for it.
    pub fn give_back(self) {
        let mut held = self.holds.lock();
        if let Some(q) = held.get_mut(&self.uid) {
            if let Some(i) = q.iter().rposition(|t| *t == self.until) {
                q.remove(i);
            }
        }
    }
}

impl QuoteHolds {
    /// At most `per_uid` quotes per uid (0: no cap), each held `hold`.
    pub fn new(per_uid: usize, hold: Duration) -> Arc<Self> {
        Arc::new(QuoteHolds {
            per_uid,
            hold,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Option<u32>, std::collections::VecDeque<Instant>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A hold for one more quote of `uid` at `now`, or how long until its oldest ends.
    pub fn take(self: &Arc<Self>, uid: Option<u32>, now: Instant) -> Result<QuoteHold, Duration> {
        let until = now + self.hold;
        if self.per_uid > 0 {
            let mut held = self.lock();
            if held.len() >= PRUNE_AT {
                held.retain(|_, q| q.back().is_some_and(|t| *t > now));
            }
            let q = held.entry(uid).or_default();
            while q.front().is_some_and(|t| *t <= now) {
                q.pop_front();
            }
            if q.len() >= self.per_uid {
                let oldest = q.front().copied().unwrap_or(now);
                return Err(oldest.saturating_duration_since(now));
            }
            q.push_back(until);
        }
        Ok(QuoteHold {
            holds: Arc::clone(self),
            uid,
            until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_holds_at_most_its_share_of_quote_addresses() {
        let holds = QuoteHolds::new(2, Duration::from_secs(100));
        let t0 = Instant::now();
        drop(holds.take(Some(1000), t0).expect("first"));
        drop(
            holds
                .take(Some(1000), t0 + Duration::from_secs(10))
                .expect("second"),
        );
        let wait = holds
            .take(Some(1000), t0 + Duration::from_secs(20))
            .expect_err("a third at once");
        assert_eq!(wait, Duration::from_secs(80), "until the first hold ends");
        // Another uid has its own share.
        drop(holds.take(Some(1001), t0).expect("another uid"));
        // A quote that was refused gives its hold back; one merely dropped (its client hung
        // up, the quote maybe issued) keeps it.
        let other = QuoteHolds::new(1, Duration::from_secs(100));
        other.take(Some(7), t0).expect("taken").give_back();
        drop(other.take(Some(7), t0).expect("given back"));
        assert!(other.take(Some(7), t0).is_err(), "a dropped hold is kept");
        // Once the first hold ended, there is room again.
        drop(
            holds
                .take(Some(1000), t0 + Duration::from_secs(100))
                .expect("the first hold ended"),
        );
        // No cap: always granted.
        let free = QuoteHolds::new(0, Duration::from_secs(100));
        for _ in 0..10 {
            drop(free.take(None, t0).expect("no cap"));
        }
    }

    #[test]
    fn per_uid_and_total_caps_leave_room_for_the_operator() {
        let limits = ConnLimits::new(3, 2, 1);
        let mut held = Vec::new();
        for _ in 0..2 {
            match limits.admit(Some(1000), false) {
                Admission::Serve(s) => held.push(s),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            limits.admit(Some(1000), false),
            Admission::Refuse(_, Refusal::PerUid)
        ));
        match limits.admit(Some(1001), false) {
            Admission::Serve(s) => held.push(s),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            limits.admit(Some(1002), false),
            Admission::Refuse(_, Refusal::Total)
        ));
        match limits.admit(Some(0), true) {
            Admission::Serve(s) => held.push(s),
            other => panic!("the operator's room: {other:?}"),
        }
        assert!(matches!(
            limits.admit(Some(0), true),
            Admission::Refuse(_, Refusal::Total)
        ));
        assert_eq!(limits.open(), 4);
        held.clear();
        assert_eq!(limits.open(), 0);
        assert!(matches!(
            limits.admit(Some(1000), false),
            Admission::Serve(_)
        ));
    }

    #[test]
    fn refusals_beyond_the_answering_ones_are_dropped() {
        let limits = ConnLimits::new(1, 1, 0);
        let _served = limits.admit(Some(5), false);
        let refusing: Vec<_> = (0..REFUSING_AT_ONCE)
            .map(|_| limits.admit(Some(6), false))
            .collect();
        assert!(refusing
            .iter()
            .all(|a| matches!(a, Admission::Refuse(_, Refusal::Total))));
        assert!(matches!(
            limits.admit(Some(6), false),
            Admission::Drop(Refusal::Total)
        ));
        drop(refusing);
        assert!(matches!(
            limits.admit(Some(6), false),
            Admission::Refuse(..)
        ));
    }

    #[test]
    fn quotes_come_in_bursts_then_at_the_rate() {
        let q = QuoteLimiter::new(6);
        let t0 = Instant::now();
        for i in 0..6 {
            assert_eq!(q.take(Some(7), t0), Ok(()), "quote {i} of the burst");
        }
        let wait = q.take(Some(7), t0).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_secs(10));
        assert_eq!(
            q.take(Some(8), t0),
            Ok(()),
            "another uid has its own bucket"
        );
        assert_eq!(q.take(Some(7), t0 + Duration::from_secs(10)), Ok(()));
        assert!(q.take(Some(7), t0 + Duration::from_secs(10)).is_err());
        let unlimited = QuoteLimiter::new(0);
        for _ in 0..1000 {
            assert_eq!(unlimited.take(Some(7), t0), Ok(()));
        }
    }
}
