//! coinop leases: the ledger, the metering scheduler, the `coinopd` daemon and the `coinop`
//! CLI.

pub mod api_error;
pub mod clock;
pub mod config;
pub mod image_catalogue;
pub mod ledger;
pub mod metering;
pub mod peer;
pub mod token;
