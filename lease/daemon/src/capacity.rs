//! Admission control: vCPUs (with overcommit) and MiB held by live leases. A slot is
//! reserved before the payment is claimed, so a full host answers 503 without taking money.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub vcpus: u32,
    pub mib: u64,
}

#[derive(Debug)]
pub struct Capacity {
    limit: Totals,
    held: HashMap<String, Totals>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub free: Totals,
}

impl Capacity {
    pub fn new(limit: Totals) -> Self {
        Capacity {
            limit,
            held: HashMap::new(),
        }
    }

    pub fn limit(&self) -> Totals {
        self.limit
    }

    pub fn used(&self) -> Totals {
        self.held
            .values()
            .fold(Totals { vcpus: 0, mib: 0 }, |a, t| Totals {
                vcpus: a.vcpus.saturating_add(t.vcpus),
                mib: a.mib.saturating_add(t.mib),
            })
    }

    pub fn free(&self) -> Totals {
        let u = self.used();
        Totals {
            vcpus: self.limit.vcpus.saturating_sub(u.vcpus),
            mib: self.limit.mib.saturating_sub(u.mib),
        }
    }

    /// Holds `want` for `lease_id`, or says how much is free.
    pub fn reserve(&mut self, lease_id: &str, want: Totals) -> Result<(), Full> {
        let free = self.free();
        if want.vcpus > free.vcpus || want.mib > free.mib {
            return Err(Full { free });
        }
        self.held.insert(lease_id.to_string(), want);
        Ok(())
    }

    /// Holds capacity for a lease found running at start-up, even past the limit (it is
    /// already running; refusing it would not free anything).
    pub fn adopt(&mut self, lease_id: &str, want: Totals) {
        self.held.insert(lease_id.to_string(), want);
    }

    /// Frees a lease's slot; freeing twice is harmless.
    pub fn release(&mut self, lease_id: &str) {
        self.held.remove(lease_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_until_full_then_release() {
        let mut c = Capacity::new(Totals { vcpus: 2, mib: 256 });
        c.reserve("a", Totals { vcpus: 1, mib: 128 }).expect("fits");
        c.reserve("b", Totals { vcpus: 1, mib: 128 }).expect("fits");
        let full = c.reserve("c", Totals { vcpus: 1, mib: 1 }).unwrap_err();
        assert_eq!(full.free, Totals { vcpus: 0, mib: 0 });
        c.release("a");
        c.release("a");
        assert_eq!(c.free(), Totals { vcpus: 1, mib: 128 });
    }
}
