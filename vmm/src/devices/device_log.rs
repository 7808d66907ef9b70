//! Device messages a guest can provoke again and again, on stderr under a budget.
//!
//! A device that fails (a virtio driver that sets DRIVER_OK on broken queues, a ring whose
//! indices make no sense) says why on stderr, and the guest can reset it and fail it again
//! in a loop, a few VM exits per line. coinopd keeps each VMM's stderr in a file in its run
//! directory, and unbounded it would fill the host's disk: the console has its cap
//! ([`super::console_cap`]), and these lines have [`BUDGET`]. The first failures are the
//! ones worth reading; after the budget one line says the rest are left out.

use std::sync::atomic::{AtomicU32, Ordering};

/// Device messages one VMM writes at most.
pub const BUDGET: u32 = 64;

/// What the budget allows for one message.
#[derive(Debug, PartialEq, Eq)]
enum Allowance {
    /// Within the budget: write it.
    Write,
    /// The budget's last: write it, and say that the rest are left out.
    WriteLast,
    /// Past the budget.
    Drop,
}

/// Messages left; shared by every device thread and the vCPU threads.
struct Budget(AtomicU32);

impl Budget {
    const fn new(messages: u32) -> Self {
        Budget(AtomicU32::new(messages))
    }

    fn take(&self) -> Allowance {
        match self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            }) {
            Ok(1) => Allowance::WriteLast,
            Ok(_) => Allowance::Write,
            Err(_) => Allowance::Drop,
        }
    }
}

static LEFT: Budget = Budget::new(BUDGET);

/// Writes `coinop-vmm: MESSAGE` to stderr while the budget lasts.
pub fn say(message: std::fmt::Arguments<'_>) {
    match LEFT.take() {
        Allowance::Write => eprintln!("coinop-vmm: {message}"),
        Allowance::WriteLast => {
            eprintln!("coinop-vmm: {message}");
            eprintln!(
                "coinop-vmm: {BUDGET} device messages written; later ones are left out \
                 (the guest keeps failing its devices)"
            );
        }
        Allowance::Drop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_writes_its_messages_marks_the_last_and_then_drops() {
        let budget = Budget::new(3);
        let taken: Vec<Allowance> = (0..6).map(|_| budget.take()).collect();
        assert_eq!(
            taken,
            [
                Allowance::Write,
                Allowance::Write,
                Allowance::WriteLast,
                Allowance::Drop,
                Allowance::Drop,
                Allowance::Drop
            ]
        );
    }
}
