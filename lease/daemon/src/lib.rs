//! `coinopd`, the coinop host daemon: it sells leases of microVMs for payments it checks
//! itself, boots each guest in its own `coinop-vmm` (jailed, in its own cgroup) and meters
//! what the payment bought until the balance runs out.
//!
//! | module | job |
//! |---|---|
//! | [`daemon`] | start-up and shutdown: state dir, ledger, re-adoption, the HTTP server, the scheduler |
//! | [`config`] | command line and config file (`Settings` → `Config`) |
//! | [`app`] | the state shared by handlers, scheduler and supervisor |
//! | [`state_dir`] | one coinopd per state dir (its lock), and the dir kept private |
//! | [`http`] | the API of `lease/openapi.yaml`: the server (connection caps and timeouts), router, auth, rate limits, body limits, error mapping, one file per resource |
//! | [`leases`] | the lease flows behind the handlers (create, recover, top up, stop, view) with typed outcomes and errors |
//! | [`guest_stop`], [`vmm_process`], `vmm_log_events`, `boot_record`, `adopted_boot` | carrying out a guest stop; a VMM found again by pid and start time; how far a VMM that is not our child booted and why it ended, from its log; the boot figures kept at a spawn, finished by a restart that adopts a booting guest |
//! | [`ledger`] | SQLite, one file per table or job: leases, balances, payments claimed in the same transaction, refunds, metering ticks, quotes, a lost create reply's recovery ([`ledger::recovery`]) |
//! | [`chain_sync`] | the host's header chain fed by Bitcoin peers over P2P (`coinop_bitcoin_net`) |
//! | [`payment_reorgs`] | on-chain lease payments followed to a settled depth: a lease whose paying block leaves the best chain is frozen, then thawed or stopped |
//! | [`quote_store`] | where quotes live: the host's SQLite book, or the fleet's PostgreSQL with `--store` (one address index for every host, quotes usable on any host) |
//! | [`scheduler`], `usage_floor` | the tick that debits (`payment::metering`), pauses and stops; the kernel's count and coinopd's clock as a floor under what a VMM reports; `vmm_file_bounds`: the files a VMM writes held to their sizes |
//! | [`supervisor`], [`stops_in_flight`], `device_limits` | one `coinop-vmm` per lease: spawn (with its disk and network rates), its events (`vmm_protocol`), stop |
//! | [`golden_snapshot`], `sparse_copy`, [`warm_restores`] | images' golden snapshots: built once per image and shape (with the root-disk overlay the golden guest wrote), leases started by restore on a copy of that overlay, or taken from VMMs restored ahead of their creates |
//! | `personalisation`, `guest_host_key` | the per-lease line (entropy, clock, host name, address, SSH key, the guest's fresh SSH host key pair) sent to an `agent` image's guest after boot or restore |
//! | [`isolation`] | the daemon's use of `coinop_host` (jail, cgroups, guest network, slot pool) |
//! | [`capacity`], [`image_catalogue`], [`metrics`], [`token`], [`clock`], [`fault`] | host capacity, images, `/metrics`, lease ids and tokens, clocks, fault injection for tests |
//! | [`fleet`], [`fleet_mint`], `mint_seed` | `--store`: the spent set shared by the fleet's hosts in PostgreSQL (fences, reconciliation); the fleet as one mint (keysets from one seed file, the list and the signed outputs in the store) |
//! | [`disk_reserve`], [`log_writer`] | a full disk: room kept for metering and stops, degraded mode; logging that never stops the daemon |
//!
//! Wire types are `coinop_proto`'s; the privileged mechanics are `coinop_host`'s; the tenant
//! CLI (`coinop_cli`) links none of this crate.

mod adopted_boot;
pub mod app;
mod boot_record;
mod capacity;
pub mod chain_sync;
pub mod clock;
pub mod config;
pub mod daemon;
mod device_limits;
mod disk_reserve;
mod event_lines;
pub mod fault;
pub mod fleet;
pub mod fleet_mint;
pub mod golden_snapshot;
mod guest_host_key;
pub mod guest_stop;
mod http;
mod image_catalogue;
pub mod isolation;
mod leases;
pub mod ledger;
pub mod log_writer;
mod metrics;
mod mint_seed;
mod names_in_flight;
pub mod payment_reorgs;
mod personalisation;
pub mod quote_store;
mod scheduler;
mod sparse_copy;
pub mod state_dir;
mod stops_in_flight;
mod supervisor;
mod token;
mod usage_floor;
mod vmm_file_bounds;
mod vmm_log_events;
pub mod vmm_process;
pub mod warm_restores;
