//! Note amounts: every note is worth a power of two sat, so any amount splits into at most
//! 64 notes, one per set bit.

use super::error::CreditError;

/// Number of distinct note amounts: 2^0 ..= 2^63 sat.
pub const AMOUNT_ORDERS: u32 = 64;

/// `Ok(log2(amount))` if `amount` is a non-zero power of two.
pub fn order(field: &'static str, amount: u64) -> Result<u32, CreditError> {
    if amount.is_power_of_two() {
        Ok(amount.trailing_zeros())
    } else {
        Err(CreditError::AmountNotPowerOfTwo { field, amount })
    }
}

/// The power-of-two notes that make up `amount`, smallest first (NUT-00 recommends ascending
/// order so the list leaks as little as possible about the payment).
pub fn split(amount: u64) -> Vec<u64> {
    (0..AMOUNT_ORDERS)
        .map(|bit| 1u64 << bit)
        .filter(|note| amount & note != 0)
        .collect()
}

/// The sum of note amounts, failing instead of wrapping.
pub fn checked_sum(
    what: &'static str,
    amounts: impl IntoIterator<Item = u64>,
) -> Result<u64, CreditError> {
    amounts.into_iter().try_fold(0u64, |acc, a| {
        acc.checked_add(a).ok_or(CreditError::AmountOutOfRange {
            what,
            amount: u64::MAX,
            min: 0,
            max: u64::MAX,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sums_back_and_is_ascending_powers() {
        for amount in [0u64, 1, 2, 3, 13, 1000, 65535, u64::MAX] {
            let parts = split(amount);
            assert_eq!(checked_sum("t", parts.iter().copied()).unwrap(), amount);
            assert!(parts.iter().all(|p| p.is_power_of_two()));
            assert!(parts.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(parts.len(), amount.count_ones() as usize);
        }
    }

    #[test]
    fn order_rejects_non_powers() {
        assert_eq!(order("a", 1).unwrap(), 0);
        assert_eq!(order("a", 1 << 63).unwrap(), 63);
        for bad in [0u64, 3, 6, 100, u64::MAX] {
            assert!(matches!(
                order("a", bad),
                Err(CreditError::AmountNotPowerOfTwo { amount, .. }) if amount == bad
            ));
        }
    }

    #[test]
    fn checked_sum_detects_overflow() {
        assert!(checked_sum("t", [u64::MAX, 1]).is_err());
    }
}
