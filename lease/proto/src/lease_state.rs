//! A lease's state and why it stopped, as the API and the ledger spell them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a lease is in its life. `booting → running ⇄ paused_unfunded → stopped`;
/// `stopped` is final (a recovered create may boot a `boot_failed` lease again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Paid and committed; its guest is being started.
    Booting,
    /// The guest runs and is metered.
    Running,
    /// The balance ran out: the guest is paused until a top-up or the grace period ends.
    PausedUnfunded,
    /// The block of an on-chain payment of this lease left the best chain before that
    /// payment settled: the guest is paused and the balance frozen (no metering, no refund)
    /// until the payment confirms again, or the lease is stopped (`payment_reorged`).
    PausedReorg,
    /// The guest is gone (or never started); the balance may still be collected.
    Stopped,
}

/// Why a lease stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The tenant asked (`POST /v1/leases/{id}/stop`).
    Tenant,
    /// Paused unfunded for longer than the grace period.
    BalanceExhausted,
    /// The guest ended by itself (it powered off or reset), or its VMM ended without saying
    /// why (e.g. a guest re-adopted after a restart of coinopd).
    GuestExit,
    /// The guest crashed: a triple fault, an instruction KVM could not emulate or a failed
    /// VM entry (the VMM's exit code 3).
    GuestCrashed,
    /// The guest never reached `guest_ready`; the balance was refunded or kept for the tenant.
    BootFailed,
    /// An on-chain payment's block left the best chain and the payment did not confirm
    /// again in time: the lease is stopped and its balance is never refunded.
    PaymentReorged,
    /// Its VMM ran on with nothing listening at its control socket (the socket removed
    /// from under it), so it could be neither metered nor paused: coinopd stopped it. The
    /// balance is kept for the tenant.
    ControlLost,
}

/// A state or reason string that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownName {
    /// `lease state` or `stop reason`.
    pub what: &'static str,
    pub value: String,
}

macro_rules! names {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name on the wire and in the ledger.
            pub const fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(UnknownName { what: $what, value: s.to_string() }),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // pad, not write_str: a table's `{:<16}` must line the names up.
                f.pad(self.as_str())
            }
        }
    };
}

names!(LeaseState, "lease state", {
    Booting => "booting",
    Running => "running",
    PausedUnfunded => "paused_unfunded",
    PausedReorg => "paused_reorg",
    Stopped => "stopped",
});

names!(StopReason, "stop reason", {
    Tenant => "tenant",
    BalanceExhausted => "balance_exhausted",
    GuestExit => "guest_exit",
    GuestCrashed => "guest_crashed",
    BootFailed => "boot_failed",
    PaymentReorged => "payment_reorged",
    ControlLost => "control_lost",
});

impl LeaseState {
    /// A guest exists (or is being started) for the lease: it holds capacity and is metered.
    pub const fn is_live(self) -> bool {
        !matches!(self, LeaseState::Stopped)
    }
}

/// The ledger stores states and reasons as their names (feature `sql`).
#[cfg(feature = "sql")]
mod sql {
    use super::{LeaseState, StopReason};
    use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

    macro_rules! sql_text {
        ($ty:ident) => {
            impl ToSql for $ty {
                fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                    Ok(ToSqlOutput::from(self.as_str()))
                }
            }
            impl FromSql for $ty {
                fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                    v.as_str()?
                        .parse()
                        .map_err(|e| FromSqlError::Other(Box::new(e)))
                }
            }
        };
    }
    sql_text!(LeaseState);
    sql_text!(StopReason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for s in [
            LeaseState::Booting,
            LeaseState::Running,
            LeaseState::PausedUnfunded,
            LeaseState::PausedReorg,
            LeaseState::Stopped,
        ] {
            assert_eq!(s.as_str().parse::<LeaseState>(), Ok(s));
            let json = serde_json::to_string(&s).expect("json");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        for r in [
            StopReason::Tenant,
            StopReason::BalanceExhausted,
            StopReason::GuestExit,
            StopReason::GuestCrashed,
            StopReason::BootFailed,
            StopReason::PaymentReorged,
            StopReason::ControlLost,
        ] {
            assert_eq!(r.as_str().parse::<StopReason>(), Ok(r));
            assert_eq!(
                serde_json::to_string(&r).expect("json"),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("Running".parse::<LeaseState>().is_err());
        assert_eq!(format!("{:<9}|", LeaseState::Running), "running  |");
        assert_eq!(
            "gone".parse::<StopReason>().unwrap_err().to_string(),
            "unknown stop reason \"gone\""
        );
    }
}
