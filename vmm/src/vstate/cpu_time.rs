//! CPU time each vCPU thread really consumed, read from the kernel's per-thread clocks.

use std::sync::OnceLock;

/// One CPU-time clock per vCPU thread, registered by the thread itself.
pub struct VcpuClocks {
    clocks: Vec<OnceLock<libc::clockid_t>>,
}

impl VcpuClocks {
    /// Slots for `count` vCPUs.
    pub fn new(count: usize) -> Self {
        VcpuClocks {
            clocks: (0..count).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Called on vCPU thread `index`: remembers the calling thread's CPU clock.
    pub fn register_current_thread(&self, index: usize) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_self() is the calling, live thread and `clock` is a valid out-pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        if rc == 0 {
            if let Some(slot) = self.clocks.get(index) {
                let _ = slot.set(clock);
            }
        }
    }

    /// µs of CPU each vCPU thread has used so far (0 for one that has not started).
    pub fn usage_us(&self) -> Vec<u64> {
        self.clocks
            .iter()
            .map(|slot| slot.get().map_or(0, |clock| clock_us(*clock)))
            .collect()
    }
}

fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock only makes the call fail.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_accumulates_cpu_time() {
        let clocks = VcpuClocks::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                clocks.register_current_thread(0);
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed() < std::time::Duration::from_millis(20) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                let usage = clocks.usage_us();
                assert!(usage[0] >= 1_000, "busy thread used {} µs", usage[0]);
                assert_eq!(usage[1], 0);
            });
        });
    }
}
