//! The local spent set's keys the fleet store has not been told of: what this host spent
//! on its own, before it joined a fleet (or while it ran without its `--store`), published
//! at the fleet's start-up ([`crate::fleet`]) and marked here once the store has them, so
//! that the next start sends only what was spent since. The same for the blind signatures
//! it recorded ([`crate::fleet_mint`] publishes them).

use payment::spent_set::{SignedOutput, SpendKey, SpendState, SqliteSpentSet};

use super::{Ledger, LedgerError};

impl Ledger {
    /// Up to `limit` keys of the local spent set not yet marked published, with their
    /// states, in key order after `after` (`None`: from the first).
    pub fn unpublished_spends(
        &self,
        after: Option<&SpendKey>,
        limit: usize,
    ) -> Result<Vec<(SpendKey, SpendState)>, LedgerError> {
        self.with_conn(|c| Ok(SqliteSpentSet::unpublished_in(c, after, limit)?))
    }

    /// Marks keys as held by the fleet store, in one transaction.
    pub fn mark_published(&self, keys: &[SpendKey]) -> Result<(), LedgerError> {
        self.with_tx(|tx| Ok(SqliteSpentSet::mark_published_in(tx, keys)?))
    }

    /// Up to `limit` recorded signatures not yet marked published, in `B_` order after
    /// `after` (`None`: from the first).
    pub fn unpublished_outputs(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<SignedOutput>, LedgerError> {
        self.with_conn(|c| Ok(SqliteSpentSet::unpublished_outputs_in(c, after, limit)?))
    }

    /// Marks signatures (by `B_`) as held by the fleet store, in one transaction.
    pub fn mark_outputs_published(&self, b_s: &[Vec<u8>]) -> Result<(), LedgerError> {
        self.with_tx(|tx| Ok(SqliteSpentSet::mark_outputs_published_in(tx, b_s)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{credit, ledger, new_lease};
    use payment::spent_set::SpendState;

    #[test]
    fn a_lease_payment_is_unpublished_until_marked() {
        let (_d, l) = ledger();
        let paid = credit(1, 3000);
        l.create_lease(&new_lease("a"), &paid).expect("create");
        let listed = l.unpublished_spends(None, 10).expect("list");
        let expected: Vec<_> = paid
            .keys
            .iter()
            .map(|k| (k.clone(), SpendState::Spent))
            .collect();
        assert_eq!(listed, expected);
        l.mark_published(&paid.keys).expect("mark");
        assert_eq!(l.unpublished_spends(None, 10).expect("list"), vec![]);
        assert!(
            l.first_claimed(&paid.keys).expect("read").is_some(),
            "still spent here"
        );
    }
}
