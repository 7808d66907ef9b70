//! coinop leases: the ledger, the metering scheduler, the `coinopd` daemon and the `coinop`
//! CLI.

pub mod api;
pub mod api_error;
pub mod app;
pub mod capacity;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod create_recovery;
pub mod daemon;
pub mod fault;
pub mod guest_network;
pub mod guest_stop;
pub mod image_catalogue;
pub mod isolation;
pub mod jail;
pub mod ledger;
pub mod metering;
pub mod metrics;
pub mod payment_intake;
pub mod peer;
pub mod regtest_pay;
pub mod scheduler;
pub mod slot_pool;
pub mod stops_in_flight;
pub mod supervisor;
pub mod token;
pub mod vmm_control;
pub mod wallet;
pub mod wallet_commands;
