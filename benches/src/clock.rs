//! The clock every figure is measured on: CLOCK_MONOTONIC in µs, the same clock coinop-vmm's
//! `--start-time-us` expects, so the VMM's event times and ours share one origin.

pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
