//! Clocks: `CLOCK_MONOTONIC` µs (the same clock coinop-vmm's `--start-time-us` uses, so boot
//! figures line up across processes) and wall-clock seconds for timestamps.

use std::time::Instant;

use nix::time::{clock_gettime, ClockId};

/// `CLOCK_MONOTONIC` in µs.
pub fn monotonic_us() -> u64 {
    // CLOCK_MONOTONIC is always available on Linux; a failure would be a kernel bug.
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always readable");
    (ts.tv_sec() as u64) * 1_000_000 + (ts.tv_nsec() as u64) / 1000
}

/// Unix time in seconds.
pub fn unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix time in ms.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One moment on both clocks: the wall clock, which the ledger's timestamps are written in
/// (meaningful across restarts, but an operator or NTP may step it either way), and the
/// monotonic one, which only moves forward at the pace time passes while coinopd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix time in ms.
    pub wall_ms: i64,
    pub mono: Instant,
}

impl Now {
    /// Both clocks, read now.
    pub fn read() -> Now {
        Now {
            wall_ms: unix_ms(),
            mono: Instant::now(),
        }
    }

    /// The wall time in whole seconds (the ledger's `updated_at`, `paused_at`, ...).
    pub fn wall_s(&self) -> i64 {
        self.wall_ms.div_euclid(1000)
    }
}

/// Waits until `done()` holds, looking every 20 ms, for at most `limit`; whether it held.
/// For state that only changes under a lock (no channel to wait on), at shutdown.
pub async fn poll_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}
