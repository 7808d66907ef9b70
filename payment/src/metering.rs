//! Metering arithmetic: what one tick of guest usage costs, in integer msat.
//!
//! Rounding: every cost is first computed exactly in "nano-units" of 1/(1024·10⁶) msat
//! (vCPU: µs × msat/s × 1024; memory: MiB × µs × msat/GiB·s), added to the lease's carried
//! remainder, and only whole msat are debited. The remainder (< 1 msat) is carried to the
//! next tick, so over a lease's life the tenant pays `floor(exact cost)`: never more than the
//! exact price, and at most 1 msat less. No floats.

/// Nano-units per msat: 10⁶ µs per second × 1024 MiB per GiB.
pub const UNITS_PER_MSAT: u128 = 1_024_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    pub vcpu_msat_per_s: u64,
    pub gib_msat_per_s: u64,
}

/// One tick's measured usage of one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDelta {
    pub vcpu_us: u64,
    pub mem_mib: u64,
    pub wall_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit {
    /// Whole msat taken from the balance (never more than the balance).
    pub msat: u64,
    /// Remainder carried to the next tick, in nano-units (< UNITS_PER_MSAT), or 0 when the
    /// balance ran out (the unpaid part of the last tick is the host's loss, ≤ one tick).
    pub carry_units: u64,
    /// The balance could not cover the whole tick.
    pub exhausted: bool,
}

/// Debits one tick from `balance_msat`, carrying `carry_units` from earlier ticks.
pub fn debit(prices: Prices, usage: UsageDelta, carry_units: u64, balance_msat: u64) -> Debit {
    let units = u128::from(carry_units)
        + u128::from(usage.vcpu_us) * u128::from(prices.vcpu_msat_per_s) * 1024
        + u128::from(usage.mem_mib) * u128::from(usage.wall_us) * u128::from(prices.gib_msat_per_s);
    let owed = units / UNITS_PER_MSAT;
    let carry = (units % UNITS_PER_MSAT) as u64;
    if owed >= u128::from(balance_msat) && (owed > u128::from(balance_msat) || balance_msat == 0) {
        return Debit {
            msat: balance_msat,
            carry_units: 0,
            exhausted: true,
        };
    }
    let msat = owed as u64; // owed < balance_msat: fits
    Debit {
        msat,
        carry_units: carry,
        exhausted: msat == balance_msat,
    }
}

/// Cost of running a guest flat out for `seconds`: every vCPU busy, memory reserved. This is
/// what a quote charges and what `estimated_remaining_s` divides by, rounded up to msat.
pub fn full_rate_msat(prices: Prices, vcpus: u64, mem_mib: u64, seconds: u64) -> u128 {
    let per_s_units = u128::from(vcpus) * u128::from(prices.vcpu_msat_per_s) * 1024 * 1_000_000
        + u128::from(mem_mib) * 1_000_000 * u128::from(prices.gib_msat_per_s);
    (per_s_units * u128::from(seconds)).div_ceil(UNITS_PER_MSAT)
}

/// Seconds `balance_msat` lasts at the full rate (a lower bound: idle vCPUs cost less).
pub fn remaining_s(prices: Prices, vcpus: u64, mem_mib: u64, balance_msat: u64) -> u64 {
    let per_s_units = u128::from(vcpus) * u128::from(prices.vcpu_msat_per_s) * 1024 * 1_000_000
        + u128::from(mem_mib) * 1_000_000 * u128::from(prices.gib_msat_per_s);
    if per_s_units == 0 {
        return u64::MAX;
    }
    let secs = u128::from(balance_msat) * UNITS_PER_MSAT / per_s_units;
    u64::try_from(secs).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Prices = Prices {
        vcpu_msat_per_s: 1000,
        gib_msat_per_s: 2000,
    };

    #[test]
    fn one_vcpu_second_costs_the_vcpu_price() {
        let d = debit(
            P,
            UsageDelta {
                vcpu_us: 1_000_000,
                mem_mib: 0,
                wall_us: 1_000_000,
            },
            0,
            10_000,
        );
        assert_eq!(d.msat, 1000);
        assert_eq!(d.carry_units, 0);
        assert!(!d.exhausted);
    }

    #[test]
    fn sub_msat_fractions_are_carried_not_lost() {
        // 1 µs of vCPU at 1000 msat/s is 1/1000 msat: 1000 such ticks make 1 msat.
        let mut carry = 0;
        let mut total = 0;
        for _ in 0..1000 {
            let d = debit(
                P,
                UsageDelta {
                    vcpu_us: 1,
                    mem_mib: 0,
                    wall_us: 0,
                },
                carry,
                1_000_000,
            );
            carry = d.carry_units;
            total += d.msat;
        }
        assert_eq!(total, 1);
        assert_eq!(carry, 0);
    }

    #[test]
    fn memory_time_uses_gib_price() {
        // 512 MiB for 2 s at 2000 msat/GiB·s = 2000 msat.
        let d = debit(
            P,
            UsageDelta {
                vcpu_us: 0,
                mem_mib: 512,
                wall_us: 2_000_000,
            },
            0,
            1_000_000,
        );
        assert_eq!(d.msat, 2000);
    }

    #[test]
    fn debit_never_exceeds_balance() {
        let d = debit(
            P,
            UsageDelta {
                vcpu_us: 5_000_000,
                mem_mib: 0,
                wall_us: 0,
            },
            0,
            1234,
        );
        assert_eq!(d.msat, 1234);
        assert!(d.exhausted);
        let d = debit(
            P,
            UsageDelta {
                vcpu_us: 0,
                mem_mib: 0,
                wall_us: 0,
            },
            0,
            0,
        );
        assert!(d.exhausted);
        assert_eq!(d.msat, 0);
    }

    #[test]
    fn quote_and_remaining_agree() {
        let amount = full_rate_msat(P, 2, 256, 60);
        // 2 vCPU × 1000 + 0.25 GiB × 2000 = 2500 msat/s.
        assert_eq!(amount, 150_000);
        assert_eq!(remaining_s(P, 2, 256, 150_000), 60);
    }
}
