//! coinop's lease API on the wire: the bodies of `lease/openapi.yaml`, defined once and used
//! by the daemon (`coinopd`), the tenant CLI (`coinop`) and the benchmark harness alike, so
//! that no body is built by hand on one side and picked apart by field name on the other.
//!
//! | module | what |
//! |---|---|
//! | [`money`] | [`Msat`], checked, with whole-sat rounding and change splitting |
//! | [`lease_state`] | [`LeaseState`], [`StopReason`] (stored by name in the ledger, feature `sql`) |
//! | [`lease_view`] | [`LeaseView`], [`BootFigures`], [`BootStart`]: one lease as the API shows it |
//! | [`network`] | [`NetInfo`]: how a tenant reaches its guest |
//! | [`requests`] | create, top-up, stop, quote and header bodies; [`PaymentBody`] |
//! | [`replies`] | create, recovery, boot failure, top-up, stop, quote, host; [`ErrorBody`] |
//! | [`recovery_key`] | the form of a create's recovery key and the hash the daemon keeps |
//!
//! The Cashu routes speak the Cashu NUTs' own types (`payment::credit::nut_types`).

pub mod lease_state;
pub mod lease_view;
pub mod money;
pub mod network;
pub mod recovery_key;
pub mod replies;
pub mod requests;

pub use lease_state::{LeaseState, StopReason};
pub use lease_view::{BootFigures, BootStart, LeaseView};
pub use money::Msat;
pub use network::NetInfo;
pub use replies::ErrorBody;
pub use requests::PaymentBody;
