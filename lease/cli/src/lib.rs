//! `coinop`, the command line of tenants, operators and provisioning scripts: a thin client
//! of coinopd's API (HTTP/JSON on its Unix socket) with a small Cashu wallet. It links none
//! of the daemon.
//!
//! | module | job |
//! |---|---|
//! | [`args`] | the command line (clap) |
//! | [`commands`] | each command as one API call, and how its answer is shown |
//! | [`human`] | the human-readable rendering of replies (`--json` prints them unchanged) |
//! | [`exit`] | exit codes, part of the interface |
//! | [`input`] | reading payments and credit from files or arguments |
//! | [`create_retry`] | creates that survive a lost reply (recovery keys kept on disk) |
//! | `durable` | atomic, power-cut-safe writes of the wallet, its seed and recovery keys |
//! | `header_upload` | `coinop chain add-headers`: a long header file in requests that fit the body limit |
//! | [`client`] | HTTP/1.1 over the daemon's Unix socket (hyper) |
//! | [`wallet`], [`wallet_commands`], [`wallet_cli`] | the tenant's credit: Cashu notes in a file, minting, paying, change, tokens sent and received |
//! | [`wallet_seed`] | NUT-13 deterministic secrets from a BIP39 phrase, for restore |
//! | [`regtest_pay`] | `coinop regtest pay`: a demo on-chain payment mined in-process |

pub mod args;
pub mod client;
mod commands;
mod create_retry;
mod durable;
pub mod exit;
mod header_upload;
mod human;
mod input;
pub mod regtest_pay;
mod wallet;
mod wallet_cli;
mod wallet_commands;
mod wallet_seed;

pub use commands::run;
