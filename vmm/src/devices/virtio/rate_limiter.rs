//! Token-bucket rate limiting for a device: one bucket for bytes per second and one for
//! operations per second. A request proceeds only if both buckets allow it; otherwise the
//! device leaves it on the ring and a timerfd wakes the device thread when enough tokens
//! have come back. A large request is charged piece by piece as it moves (its operation
//! first, then its bytes a bucketful at most at a time), so it keeps to the rate too.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};
use vmm_sys_util::timerfd::TimerFd;

/// Errors creating a limiter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The timerfd could not be created.
    #[error("rate limiter timerfd: {0}")]
    Timer(vmm_sys_util::errno::Error),
}

/// A bucket refilled at `rate` tokens per second, holding at most one second's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second (`rate` > 0).
    pub fn new(rate: u64) -> Self {
        TokenBucket {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Tokens needed before `amount` may pass. An amount larger than the whole bucket
    /// passes once the bucket is full, and leaves it in debt, so it is slowed, not starved;
    /// callers keep that debt small by charging in pieces no larger than the bucket
    /// ([`RateLimiter::bytes_burst`]) where they can, and otherwise (a network frame, which
    /// cannot be split) in pieces of at most 64 KiB.
    fn threshold(&self, amount: u64) -> f64 {
        (amount as f64).min(self.rate)
    }

    /// How long until `amount` could pass (zero if it can now).
    fn wait_for(&self, amount: u64) -> Duration {
        let missing = self.threshold(amount) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }

    fn take(&mut self, amount: u64) {
        self.tokens -= amount as f64;
    }
}

/// The limiter of one device.
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    armed: bool,
}

impl RateLimiter {
    /// Limits to `bytes_per_s` and `ops_per_s`; None means unlimited.
    pub fn new(bytes_per_s: Option<u64>, ops_per_s: Option<u64>) -> Result<Self, Error> {
        Ok(RateLimiter {
            bytes: bytes_per_s.filter(|r| *r > 0).map(TokenBucket::new),
            ops: ops_per_s.filter(|r| *r > 0).map(TokenBucket::new),
            timer: TimerFd::new().map_err(Error::Timer)?,
            armed: false,
        })
    }

    /// Takes one operation of `bytes` if both buckets allow it. Otherwise takes nothing,
    /// arms the timer for when they will, and returns false.
    pub fn consume(&mut self, bytes: u64) -> bool {
        self.take(1, bytes)
    }

    /// Takes `bytes` more for an operation already admitted (the next piece of a large
    /// request), as [`RateLimiter::consume`] does.
    pub fn consume_bytes(&mut self, bytes: u64) -> bool {
        self.take(0, bytes)
    }

    /// The most bytes the bytes bucket holds (None: no bytes limit): a request charged in
    /// pieces no larger moves at the configured rate however large it is.
    pub fn bytes_burst(&self) -> Option<u64> {
        self.bytes.as_ref().map(|b| b.rate as u64)
    }

    fn take(&mut self, ops: u64, bytes: u64) -> bool {
        if self.armed {
            return false;
        }
        if !self.is_limited() {
            return true;
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (bucket, amount) in [(&mut self.bytes, bytes), (&mut self.ops, ops)] {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                wait = wait.max(bucket.wait_for(amount));
            }
        }
        if wait > Duration::ZERO {
            // A timer that cannot be armed would leave the queue stalled; a 1 ms retry
            // through the same path is the fallback.
            let wait = wait.max(Duration::from_micros(100));
            self.armed = self.timer.reset(wait, None).is_ok();
            return false;
        }
        if let Some(b) = &mut self.bytes {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(ops);
        }
        true
    }

    /// Whether requests are being held back.
    pub fn is_blocked(&self) -> bool {
        self.armed
    }

    /// Call when the timer fd is readable: requests may be retried.
    pub fn on_timer(&mut self) {
        // Reading clears the expiry count; a spurious wake-up reads nothing, which is fine.
        let _ = self.timer.wait();
        self.armed = false;
    }

    /// The timer fd to poll.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.bytes.is_some() || self.ops.is_some()
    }

    /// The tokens left now, for a snapshot.
    pub fn state(&mut self) -> super::persist::LimiterState {
        let now = Instant::now();
        let tokens = |bucket: &mut Option<TokenBucket>| {
            bucket.as_mut().map(|b| {
                b.refill(now);
                b.tokens
            })
        };
        super::persist::LimiterState {
            bytes_tokens: tokens(&mut self.bytes),
            ops_tokens: tokens(&mut self.ops),
        }
    }

    /// Starts from a snapshot's tokens (at most a full bucket, at least a debt of
    /// `u32::MAX` seconds of refill, an empty bucket for a value that is no number; a bucket
    /// this limiter does not have is ignored), refilling from now on. The bounds keep every
    /// wait this bucket computes a `Duration`: the state file's checksum finds corruption,
    /// not a forged value.
    pub fn restore(&mut self, state: &super::persist::LimiterState) {
        let now = Instant::now();
        for (bucket, tokens) in [
            (&mut self.bytes, state.bytes_tokens),
            (&mut self.ops, state.ops_tokens),
        ] {
            if let (Some(bucket), Some(tokens)) = (bucket, tokens) {
                let deepest = -f64::from(u32::MAX) * bucket.rate;
                bucket.tokens = if tokens.is_finite() {
                    tokens.clamp(deepest, bucket.rate)
                } else {
                    0.0
                };
                bucket.last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_passes() {
        let mut l = RateLimiter::new(None, None).expect("timerfd");
        assert!(!l.is_limited());
        for _ in 0..10_000 {
            assert!(l.consume(1 << 20));
        }
    }

    #[test]
    fn ops_bucket_holds_one_second_then_blocks() {
        let mut l = RateLimiter::new(None, Some(5)).expect("timerfd");
        let passed = (0..20).filter(|_| l.consume(512)).count();
        assert_eq!(passed, 5);
        assert!(l.is_blocked());
    }

    #[test]
    fn bytes_bucket_blocks_after_its_budget() {
        let mut l = RateLimiter::new(Some(1 << 20), None).expect("timerfd");
        assert!(l.consume(512 << 10));
        assert!(l.consume(512 << 10));
        assert!(!l.consume(4096));
    }

    #[test]
    fn oversized_request_passes_on_a_full_bucket_and_leaves_debt() {
        let mut l = RateLimiter::new(Some(1000), None).expect("timerfd");
        assert!(
            l.consume(5000),
            "a full bucket admits one oversized request"
        );
        assert!(!l.consume(1), "the debt blocks the next");
    }

    /// Pieces of one operation take bytes only, and wait for the bucket like whole ones.
    #[test]
    fn pieces_of_an_operation_take_bytes_only() {
        let mut l = RateLimiter::new(Some(1000), Some(1)).expect("timerfd");
        assert_eq!(l.bytes_burst(), Some(1000));
        assert!(l.consume(0), "the operation");
        assert!(l.consume_bytes(600));
        assert!(!l.consume_bytes(600), "600 more than the bucket holds");
        let saved = l.state();
        assert_eq!(saved.ops_tokens.map(f64::round), Some(0.0));
        assert!(saved.bytes_tokens.expect("bytes bucket") < 401.0);
        assert_eq!(
            RateLimiter::new(None, Some(1))
                .expect("timer")
                .bytes_burst(),
            None
        );
    }

    #[test]
    fn a_restored_limiter_keeps_the_saved_debt() {
        let mut l = RateLimiter::new(None, Some(5)).expect("timerfd");
        while l.consume(0) {}
        let saved = l.state();
        assert!(saved.ops_tokens.expect("ops bucket") < 1.0);
        assert_eq!(saved.bytes_tokens, None);
        let mut fresh = RateLimiter::new(None, Some(5)).expect("timerfd");
        fresh.restore(&saved);
        assert!(
            !fresh.consume(0),
            "the restored bucket is as empty as the saved one"
        );
    }

    /// A state file whose checksum was made to fit a forged token count (no number, or a
    /// debt no request leaves) gives a limiter that still works: no wait it computes
    /// panics, and what it keeps is finite and at most a full bucket.
    #[test]
    fn forged_restored_tokens_are_bounded() {
        for forged in [f64::NAN, f64::NEG_INFINITY, f64::INFINITY, -1e30, 1e30] {
            let mut l = RateLimiter::new(Some(1000), Some(5)).expect("timerfd");
            l.restore(&crate::devices::virtio::persist::LimiterState {
                bytes_tokens: Some(forged),
                ops_tokens: Some(forged),
            });
            let _ = l.consume(4096);
            let kept = l.state();
            for tokens in [kept.bytes_tokens, kept.ops_tokens] {
                let tokens = tokens.expect("both buckets");
                assert!(tokens.is_finite() && tokens <= 1000.0, "{forged}: {tokens}");
            }
        }
    }

    #[test]
    fn timer_fires_and_unblocks() {
        let mut l = RateLimiter::new(None, Some(1000)).expect("timerfd");
        while l.consume(0) {}
        let mut pfd = libc::pollfd {
            fd: l.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 5_000) };
        assert_eq!(ready, 1, "the timer fires within 5 s");
        l.on_timer();
        assert!(!l.is_blocked());
        assert!(l.consume(0), "one token came back");
    }
}
