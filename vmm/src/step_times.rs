//! Where a restore's start-up time went: a mark per step, µs from the VMM's time base,
//! written as one line to stderr (a lease's VMM log, `STATE/run/<lease>.vmm.log`) before
//! the vCPUs start. The events say when the VM was created and restored; this line says
//! which step between them was slow (in the nested lab: KVM's VM and irqchip set-up and
//! the virtio registration, each ending in an SRCU grace period). It costs a clock read per
//! step and one write.

use crate::events::Clock;
use std::fmt::Write;

/// The marks of one start-up.
pub struct StepTimes {
    clock: Clock,
    what: &'static str,
    marks: Vec<(&'static str, u64)>,
}

impl StepTimes {
    /// Starts timing `what` (e.g. "restore") now.
    pub fn start(clock: Clock, what: &'static str) -> Self {
        StepTimes {
            clock,
            what,
            marks: vec![("start", clock.elapsed_us())],
        }
    }

    /// Marks the end of `step`.
    pub fn mark(&mut self, step: &'static str) {
        self.marks.push((step, self.clock.elapsed_us()));
    }

    /// `coinop-vmm: restore steps (ms): start at 185.9, state 12.5, memory 1.4, ...`: the
    /// first mark from the time base, each later one as the time since the one before.
    pub fn line(&self) -> String {
        let mut line = format!("coinop-vmm: {} steps (ms):", self.what);
        let mut previous = None;
        for &(step, at_us) in &self.marks {
            let _ = match previous {
                None => write!(line, " {step} at {:.1}", ms(at_us)),
                Some(before) => write!(line, ", {step} {:.1}", ms(at_us.saturating_sub(before))),
            };
            previous = Some(at_us);
        }
        line
    }

    /// Writes [`StepTimes::line`] to stderr.
    pub fn report(&self) {
        eprintln!("{}", self.line());
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_gives_the_start_and_each_step_s_own_time() {
        let times = StepTimes {
            clock: Clock::starting_now(),
            what: "restore",
            marks: vec![("start", 185_900), ("state", 198_400), ("vm", 240_150)],
        };
        assert_eq!(
            times.line(),
            "coinop-vmm: restore steps (ms): start at 185.9, state 12.5, vm 41.8"
        );
    }

    #[test]
    fn marks_follow_the_clock() {
        let mut times = StepTimes::start(Clock::starting_now(), "restore");
        std::thread::sleep(std::time::Duration::from_millis(2));
        times.mark("state");
        assert_eq!(times.marks.len(), 2);
        assert!(
            times.marks[1].1 >= times.marks[0].1 + 2_000,
            "{:?}",
            times.marks
        );
    }
}
