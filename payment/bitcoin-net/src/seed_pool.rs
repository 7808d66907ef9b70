//! The addresses the DNS seeds gave, shared by the peer slots that draw on them: each
//! seeded slot takes an address from here, and gives it back when the peer there was
//! banned or kept failing, then takes another. Without it a slot kept its first address
//! for good, and a dead, silent or banned one left the host with fewer working peers.
//!
//! A few ideas from Bitcoin Core's address manager, none of its tables: an address is
//! given up after [`FAILURES_BEFORE_REPLACING`] failures in a row (Core's
//! ADDRMAN_RETRIES), one just given up rests for [`REST`] before it is taken again (Core
//! makes recently tried addresses unlikely picks), addresses that failed less are taken
//! first, and what one source can put in is bounded by source: here a seed, whose
//! unauthenticated DNS answers anyone on the path can forge. So no seed holds more than
//! [`MAX_PER_SEED`] slots at once (as before the pool) nor more than [`MAX_KEPT_PER_SEED`]
//! entries, banned ones included: memory stays bounded however many addresses are offered.
//!
//! Only the seeds' answers fill it: coinopd does not ask peers for addresses (`getaddr`)
//! and ignores the `addr` messages they send.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// At most this many slots hold addresses from one DNS seed at once, so that no single
/// seed operator (or whoever spoofs its DNS answers) picks every seeded peer.
pub const MAX_PER_SEED: usize = 2;
/// At most this many addresses from one seed are kept (a seed answers with up to a few
/// dozen; the rest of an answer is dropped).
pub const MAX_KEPT_PER_SEED: usize = 16;
/// Sessions in a row that failed (no connection, no handshake, gone quiet, or ended before
/// it was stable) after which a slot gives its address up for another.
pub const FAILURES_BEFORE_REPLACING: u32 = 3;
/// How long an address given up is left alone before a slot may take it again.
pub const REST: Duration = Duration::from_secs(10 * 60);

/// Why a slot gives its address back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The peer misbehaved: not taken again before the ban ends.
    Banned { until: Instant },
    /// It failed [`FAILURES_BEFORE_REPLACING`] times in a row: rests for [`REST`].
    Failing,
}

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    /// Index of the seed that gave it first.
    seed: usize,
    in_use: bool,
    banned_until: Option<Instant>,
    /// Times a slot gave it up for failing.
    given_up: u32,
    resting_until: Option<Instant>,
}

impl Entry {
    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|t| t > now)
    }

    fn takeable(&self, now: Instant) -> bool {
        !self.in_use && !self.banned(now) && self.resting_until.is_none_or(|t| t <= now)
    }

    /// Whether a fresh address may take its place: one that was given up or banned and
    /// is free now. Entries never tried stay, so a long answer does not churn the pool.
    fn replaceable(&self, now: Instant) -> bool {
        !self.in_use && !self.banned(now) && (self.given_up > 0 || self.banned_until.is_some())
    }
}

/// The seeds' addresses, in the order they came (seed order, then answer order).
#[derive(Debug, Default)]
pub struct SeedPool {
    entries: Vec<Entry>,
    /// Addresses never taken: the configured peers, which have slots of their own.
    exclude: Vec<SocketAddr>,
}

impl SeedPool {
    pub fn new(exclude: Vec<SocketAddr>) -> Self {
        SeedPool {
            entries: Vec::new(),
            exclude,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Never takes `addrs` from now on (a configured peer named by host name, resolved):
    /// drops them from the pool, but for one a slot holds now, which stays until that
    /// slot gives it back and is not taken again.
    pub fn exclude(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for addr in addrs {
            if !self.exclude.contains(&addr) {
                self.exclude.push(addr);
            }
        }
        let exclude = &self.exclude;
        self.entries
            .retain(|e| e.in_use || !exclude.contains(&e.addr));
    }

    /// Adds what seed number `seed` answered; returns how many addresses were new to the
    /// pool. An address it already has keeps its history (a ban or a rest is not washed
    /// away by the seed naming it again).
    pub fn add(
        &mut self,
        seed: usize,
        addrs: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) -> usize {
        let mut added = 0;
        for addr in addrs {
            if self.exclude.contains(&addr) || self.entries.iter().any(|e| e.addr == addr) {
                continue;
            }
            if self.entries.iter().filter(|e| e.seed == seed).count() >= MAX_KEPT_PER_SEED {
                // The seed's entry that failed most makes room, if one may.
                let victim = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.seed == seed && e.replaceable(now))
                    .max_by_key(|(_, e)| e.given_up)
                    .map(|(i, _)| i);
                let Some(i) = victim else { continue };
                self.entries.remove(i);
            }
            self.entries.push(Entry {
                addr,
                seed,
                in_use: false,
                banned_until: None,
                given_up: 0,
                resting_until: None,
            });
            added += 1;
        }
        added
    }

    /// An address for a slot: not in use, not banned, not resting, from a seed that holds
    /// fewer than [`MAX_PER_SEED`] slots; the one given up least, earliest first. It is in
    /// use until [`SeedPool::give_back`].
    pub fn take(&mut self, now: Instant) -> Option<SocketAddr> {
        let in_use = |seed: usize| {
            self.entries
                .iter()
                .filter(|e| e.seed == seed && e.in_use)
                .count()
        };
        let pick = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.takeable(now) && in_use(e.seed) < MAX_PER_SEED && !self.exclude.contains(&e.addr)
            })
            // `min_by_key` keeps the first of equals: the earliest.
            .min_by_key(|(_, e)| e.given_up)
            .map(|(i, _)| i)?;
        let e = &mut self.entries[pick];
        e.in_use = true;
        Some(e.addr)
    }

    /// A slot gives `addr` up, for `why`.
    pub fn give_back(&mut self, addr: SocketAddr, why: GiveUp, now: Instant) {
        let Some(e) = self.entries.iter_mut().find(|e| e.addr == addr) else {
            return;
        };
        e.in_use = false;
        match why {
            GiveUp::Banned { until } => e.banned_until = Some(until),
            GiveUp::Failing => {
                e.given_up = e.given_up.saturating_add(1);
                e.resting_until = now.checked_add(REST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(first: u8, n: u8) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, first, i], 8333)))
            .collect()
    }

    #[test]
    fn no_seed_holds_more_than_two_slots_or_sixteen_entries() {
        let now = Instant::now();
        let mut pool = SeedPool::default();
        assert_eq!(pool.add(0, addrs(1, 25), now), MAX_KEPT_PER_SEED);
        assert_eq!(pool.add(2, addrs(3, 25), now), MAX_KEPT_PER_SEED);
        let taken: Vec<String> = std::iter::from_fn(|| pool.take(now))
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            taken,
            [
                "127.0.1.0:8333",
                "127.0.1.1:8333",
                "127.0.3.0:8333",
                "127.0.3.1:8333"
            ]
        );
        // A seed that names the same addresses again adds nothing.
        assert_eq!(pool.add(0, addrs(1, 25), now), 0);
    }

    #[test]
    fn an_address_given_up_rests_and_a_banned_one_waits_out_its_ban() {
        let now = Instant::now();
        let mut pool = SeedPool::default();
        pool.add(0, addrs(1, 2), now);
        let a = pool.take(now).unwrap();
        let b = pool.take(now).unwrap();
        assert_eq!(pool.take(now), None, "both in use");
        pool.give_back(a, GiveUp::Failing, now);
        let until = now + Duration::from_secs(60);
        pool.give_back(b, GiveUp::Banned { until }, now);
        assert_eq!(pool.take(now), None);
        assert_eq!(pool.take(until), Some(b), "the ban is over");
        assert_eq!(pool.take(now + REST), Some(a), "rested");
    }

    #[test]
    fn an_address_that_failed_less_is_taken_first() {
        let now = Instant::now();
        let mut pool = SeedPool::default();
        pool.add(0, addrs(1, 2), now);
        let a = pool.take(now).unwrap();
        pool.give_back(a, GiveUp::Failing, now);
        let later = now + REST;
        assert_eq!(pool.take(later), Some(addrs(1, 2)[1]));
        assert_eq!(pool.take(later), Some(a));
    }

    #[test]
    fn a_full_seed_makes_room_only_by_dropping_a_failed_free_address() {
        let now = Instant::now();
        let mut pool = SeedPool::default();
        pool.add(0, addrs(1, 16), now);
        // All fresh: a longer answer does not push them out.
        assert_eq!(pool.add(0, addrs(2, 1), now), 0);
        let first = pool.take(now).unwrap();
        pool.give_back(first, GiveUp::Failing, now);
        assert_eq!(
            pool.add(0, addrs(2, 2), now),
            1,
            "one failed entry made room"
        );
        assert!(!pool.entries.iter().any(|e| e.addr == first));
        // A banned address is kept while banned: dropping it would let the seed name it
        // again with a clean slate.
        let banned = pool.take(now).unwrap();
        pool.give_back(
            banned,
            GiveUp::Banned {
                until: now + Duration::from_secs(60),
            },
            now,
        );
        assert_eq!(pool.add(0, addrs(3, 1), now), 0);
        assert_eq!(pool.entries.len(), MAX_KEPT_PER_SEED);
    }

    #[test]
    fn addresses_excluded_later_leave_the_pool_and_are_not_taken_again() {
        let now = Instant::now();
        let mut pool = SeedPool::new(Vec::new());
        pool.add(0, addrs(1, 2), now);
        pool.add(1, addrs(2, 1), now);
        let held = pool.take(now).expect("an address");
        assert_eq!(held, addrs(1, 1)[0]);
        // A configured peer's host name resolved to two of them: the one held and a free one.
        pool.exclude([held, addrs(2, 1)[0]]);
        assert_eq!(pool.take(now), Some(addrs(1, 2)[1]));
        assert_eq!(pool.take(now), None, "the free excluded one is gone");
        pool.give_back(held, GiveUp::Failing, now);
        let later = now + REST + Duration::from_secs(1);
        pool.give_back(addrs(1, 2)[1], GiveUp::Failing, now);
        assert_eq!(
            pool.take(later),
            Some(addrs(1, 2)[1]),
            "the held one, given back, is not taken again"
        );
        assert_eq!(pool.take(later), None);
        // Added again by a seed, an excluded address stays out.
        pool.add(1, addrs(2, 1), later);
        assert_eq!(pool.take(later), None);
    }

    #[test]
    fn excluded_addresses_are_never_taken() {
        let now = Instant::now();
        let mut pool = SeedPool::new(vec![addrs(1, 1)[0]]);
        assert_eq!(pool.add(0, addrs(1, 2), now), 1);
        assert_eq!(pool.take(now), Some(addrs(1, 2)[1]));
    }
}
