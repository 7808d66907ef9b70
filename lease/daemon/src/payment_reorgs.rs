//! Reorgs and lease payments: every metering tick, each accepted on-chain payment that has
//! not settled (`--settle-conf` deep) is checked against the best chain.
//! - Its block is on the best chain (or its outputs were seen again in a best-chain block:
//!   the same transaction re-mined after a reorg, which moves the payment there): fine, and
//!   settled once deep enough. A lease frozen for it is thawed (its guest resumed, metered
//!   from the guest's current counters so the pause is not billed).
//! - Its outputs are on no best-chain block: the lease is frozen (`paused_reorg`: guest
//!   paused, not metered, nothing refunded or minted from it). After `--reorg-window-s`
//!   it is stopped with `payment_reorged`; the balance stays frozen for good.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bitcoin::BlockHash;
use coinop_proto::LeaseState;
use payment::onchain::{HeaderChain, PaymentWatch};
use vmm_protocol::client;
use vmm_protocol::Request;

use crate::app::Shared;
use crate::clock::unix_s;
use crate::guest_stop::stop_guest;
use crate::ledger::reorg::Unsettled;
use crate::ledger::LedgerError;

/// Where a payment stands on the best chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// In this best-chain block, with these confirmations.
    On(BlockHash, u32),
    Off,
}

/// The payment's standing: its own block, else a best-chain block its outputs were seen in.
fn standing(chain: &HeaderChain, watch: &PaymentWatch, p: &Unsettled) -> Standing {
    if let Ok(hash) = p.block_hash.parse::<BlockHash>() {
        if let Some(b) = chain.block(&hash).filter(|b| b.on_best_chain) {
            return Standing::On(hash, b.confirmations);
        }
    }
    // Re-mined elsewhere? Every outpoint must be in a best-chain block; the payment counts
    // from the shallowest of them.
    let mut shallowest: Option<(BlockHash, u32)> = None;
    for text in p.reference.split(',') {
        let Ok(outpoint) = text.trim().parse::<bitcoin::OutPoint>() else {
            return Standing::Off;
        };
        let found = watch.blocks_with(&outpoint).ok().and_then(|blocks| {
            blocks.into_iter().find_map(|h| {
                chain
                    .block(&h)
                    .filter(|b| b.on_best_chain)
                    .map(|b| (h, b.confirmations))
            })
        });
        match found {
            None => return Standing::Off,
            Some((h, c)) if shallowest.is_none_or(|(_, sc)| c < sc) => shallowest = Some((h, c)),
            Some(_) => {}
        }
    }
    shallowest.map_or(Standing::Off, |(h, c)| Standing::On(h, c))
}

/// One pass over the unsettled payments (a few rows at most: payments settle in an hour).
pub async fn check(s: &Shared) -> Result<(), LedgerError> {
    let unsettled = s.ledger.unsettled_payments()?;
    if unsettled.is_empty() {
        return Ok(());
    }
    let standings: Vec<(Unsettled, Standing)> = {
        let chain = s.chain_read();
        unsettled
            .into_iter()
            .map(|p| {
                let st = standing(&chain, &s.watch, &p);
                (p, st)
            })
            .collect()
    };
    let settle = s.config.settle_conf.max(1);
    let mut by_lease: BTreeMap<String, Vec<(Unsettled, Standing)>> = BTreeMap::new();
    for (p, st) in standings {
        if let Standing::On(hash, conf) = st {
            let hash = hash.to_string();
            if hash != p.block_hash {
                tracing::info!(lease = %p.lease_id, payment = p.payment_id, block = %hash, "payment confirmed again in another block");
                s.ledger.move_payment(p.payment_id, &hash)?;
            }
            // A frozen lease's payment settles with its thaw, below: settled first, a thaw
            // put off (its guest's counters unread) would never be tried again, as a
            // settled payment is not checked again, and the lease would stay frozen.
            if conf >= settle && p.reorg_at.is_none() {
                s.ledger.settle_payment(p.payment_id, false)?;
            }
        }
        by_lease
            .entry(p.lease_id.clone())
            .or_default()
            .push((p, st));
    }
    let now = unix_s();
    for (lease_id, payments) in by_lease {
        let any_off = payments.iter().any(|(_, st)| *st == Standing::Off);
        let (state, reorg_at) = (payments[0].0.lease_state, payments[0].0.reorg_at);
        match (any_off, reorg_at) {
            (true, None) => {
                tracing::warn!(lease = %lease_id, "a payment's block left the best chain; lease frozen");
                freeze(s, &lease_id).await?;
            }
            (true, Some(at)) if now.saturating_sub(at) >= s.config.reorg_window_s as i64 => {
                // Asked again now, under the gate a tenant's proof of the payment mined
                // again (leases::reproof) holds from its filing to its answer: a proof
                // filed since the standings were read was answered "thaws at the next
                // check", and the next check thaws it; one filed after this stop is
                // answered as the stopped lease it finds.
                let _gate = s.reorg_gate.lock().await;
                let back = {
                    let chain = s.chain_read();
                    payments
                        .iter()
                        .all(|(p, _)| standing(&chain, &s.watch, p) != Standing::Off)
                };
                if back {
                    continue;
                }
                tracing::warn!(lease = %lease_id, "payment did not confirm again in time; stopping (payment_reorged)");
                let live = s.ledger.stop_for_reorg(&lease_id)?;
                for (p, st) in &payments {
                    if *st == Standing::Off {
                        s.ledger.settle_payment(p.payment_id, true)?;
                    }
                }
                if live {
                    if let Some(row) = s.ledger.get(&lease_id)? {
                        stop_guest(s, &row);
                    }
                }
            }
            (true, Some(_))
                if matches!(state, LeaseState::Running | LeaseState::PausedUnfunded) =>
            {
                // Frozen while it booted: its boot has since marked it running (and a tick
                // may have run it dry). Paused now, before this tick meters it again.
                tracing::warn!(lease = %lease_id, "a lease frozen while it booted is running; pausing it");
                freeze(s, &lease_id).await?;
            }
            (false, Some(_)) => {
                // A paused guest runs again from its counters as they are now: the pause's
                // memory time is not billed. Unread (its control socket slow or gone), the
                // lease stays frozen, its payments unsettled, until a later check reads
                // them; thawed from the counters of before the pause, the next tick would
                // bill the whole pause as memory time. A VMM that stays silent is stopped
                // as a running one's would be (`control_lost`, its balance kept).
                let reading = if state == LeaseState::PausedReorg {
                    let Some(counters) = usage_of(s, &lease_id).await else {
                        thaw_put_off(s, &lease_id)?;
                        continue;
                    };
                    s.supervisor.reached(&lease_id);
                    Some(counters)
                } else {
                    None
                };
                tracing::info!(lease = %lease_id, "payment back on the best chain; lease thawed");
                if s.ledger.thaw_after_reorg(&lease_id, reading)? {
                    set_guest(s, &lease_id, Request::Resume).await;
                }
                for (p, st) in &payments {
                    if matches!(st, Standing::On(_, conf) if *conf >= settle) {
                        s.ledger.settle_payment(p.payment_id, false)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn control_path(s: &Shared, id: &str) -> Option<PathBuf> {
    s.ledger
        .get(id)
        .ok()
        .flatten()
        .map(|l| PathBuf::from(l.control_path))
}

/// Freezes lease `id` and pauses its guest if it ran. Its control socket's silence is
/// counted afresh from here: a late read from before the freeze says nothing about the VMM
/// its thaw will read, minutes later maybe (see [`thaw_put_off`]).
async fn freeze(s: &Shared, id: &str) -> Result<(), LedgerError> {
    s.supervisor.reached(id);
    if s.ledger.freeze_for_reorg(id)? {
        set_guest(s, id, Request::Pause).await;
    }
    Ok(())
}

/// The guest's counters, if its VMM answers within a tick's read deadline (this check
/// runs inside the tick: a VMM slow to answer must not hold every lease's metering up).
async fn usage_of(s: &Shared, id: &str) -> Option<(u64, u64)> {
    let path = control_path(s, id)?;
    let deadline = crate::scheduler::read_deadline(s.config.tick_ms);
    tokio::time::timeout(deadline, client::usage(&path))
        .await
        .ok()?
        .ok()
        .map(|u| (u.vcpu_total_us, u.uptime_us))
}

/// A frozen lease whose payment is back could not be thawed, its guest's counters unread:
/// tried again at the next check, and, as for a running lease's unanswered reading
/// ([`crate::scheduler::control_silent`]), stopped `control_lost` once its VMM has been
/// silent too long (otherwise it would stay frozen, its room held, for as long as its VMM
/// chose).
fn thaw_put_off(s: &Shared, id: &str) -> Result<(), LedgerError> {
    if let Some(row) = s.ledger.get(id)? {
        crate::scheduler::control_silent(
            s,
            &row,
            "payment back on the best chain, but the guest's counters cannot be read; thaw put off",
        );
    }
    Ok(())
}

async fn set_guest(s: &Shared, id: &str, req: Request) {
    let Some(path) = control_path(s, id) else {
        return;
    };
    let hold = matches!(req, Request::Pause);
    let shape = s
        .ledger
        .get(id)
        .ok()
        .flatten()
        .map(|l| (l.vcpus, l.mem_mib));
    let held = |hold| {
        if let Some((vcpus, mem_mib)) = shape {
            s.supervisor
                .isolation()
                .hold_paused(id, vcpus, mem_mib, hold);
        }
    };
    // Its quota back before it resumes; held once it is asked to pause.
    if !hold {
        held(false);
    }
    if let Err(e) = client::set_state(&path, req).await {
        tracing::warn!(lease = %id, error = %e, "pausing/resuming the guest for a reorg failed");
    }
    if hold {
        held(true);
    }
}
