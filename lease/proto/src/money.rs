//! Money on the wire: every amount the API carries is integer millisatoshis.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Millisatoshis per satoshi.
pub const MSAT_PER_SAT: u64 = 1000;

/// An amount in millisatoshis. Serialised as a bare integer (the API's `*_msat` fields);
/// arithmetic is checked, because a wrapped balance is money made or lost.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Msat(u64);

impl Msat {
    pub const ZERO: Msat = Msat(0);

    pub const fn from_msat(msat: u64) -> Self {
        Msat(msat)
    }

    /// Whole satoshis as msat; `None` past `u64::MAX` msat.
    pub const fn from_sat(sat: u64) -> Option<Self> {
        match sat.checked_mul(MSAT_PER_SAT) {
            Some(m) => Some(Msat(m)),
            None => None,
        }
    }

    pub const fn msat(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, other: Msat) -> Option<Msat> {
        self.0.checked_add(other.0).map(Msat)
    }

    pub fn checked_sub(self, other: Msat) -> Option<Msat> {
        self.0.checked_sub(other.0).map(Msat)
    }

    pub fn saturating_sub(self, other: Msat) -> Msat {
        Msat(self.0.saturating_sub(other.0))
    }

    /// Whole satoshis, rounded down: what a sat-denominated refund can carry.
    pub const fn sat_floor(self) -> u64 {
        self.0 / MSAT_PER_SAT
    }

    /// Whole satoshis, rounded up: what a payer must send to cover this amount.
    pub const fn sat_ceil(self) -> u64 {
        self.0.div_ceil(MSAT_PER_SAT)
    }

    /// Splits an amount for change: the part in whole satoshis (a multiple of 1000 msat,
    /// which blind-signed notes can carry) and the sub-sat remainder (< 1000 msat) that
    /// stays with the host as recorded residual.
    pub const fn split_change(self) -> Change {
        let residual = self.0 % MSAT_PER_SAT;
        Change {
            whole: Msat(self.0 - residual),
            residual: Msat(residual),
        }
    }
}

/// An amount split by [`Msat::split_change`]: `whole + residual` is the amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Whole satoshis, in msat.
    pub whole: Msat,
    /// The sub-sat remainder, < 1000 msat.
    pub residual: Msat,
}

impl fmt::Display for Msat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} msat", self.0)
    }
}

impl From<Msat> for u64 {
    fn from(m: Msat) -> u64 {
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_splits_into_whole_sat_and_a_sub_sat_residual() {
        let c = Msat::from_msat(12_345).split_change();
        assert_eq!(c.whole, Msat::from_msat(12_000));
        assert_eq!(c.residual, Msat::from_msat(345));
        assert_eq!(Msat::from_msat(999).split_change().whole, Msat::ZERO);
        assert_eq!(Msat::from_msat(3000).split_change().residual, Msat::ZERO);
    }

    #[test]
    fn arithmetic_is_checked_and_rounding_is_explicit() {
        assert_eq!(
            Msat::from_msat(u64::MAX).checked_add(Msat::from_msat(1)),
            None
        );
        assert_eq!(Msat::ZERO.checked_sub(Msat::from_msat(1)), None);
        assert_eq!(Msat::from_sat(u64::MAX), None);
        assert_eq!(Msat::from_sat(2), Some(Msat::from_msat(2000)));
        assert_eq!(Msat::from_msat(1001).sat_floor(), 1);
        assert_eq!(Msat::from_msat(1001).sat_ceil(), 2);
        assert_eq!(Msat::from_msat(1000).sat_ceil(), 1);
    }

    #[test]
    fn it_is_a_bare_integer_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&Msat::from_msat(42)).expect("json"),
            "42"
        );
        let m: Msat = serde_json::from_str("42").expect("json");
        assert_eq!(m.msat(), 42);
    }
}
