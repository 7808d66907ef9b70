//! Which `bits` the next header must carry. Mainnet and signet retarget every 2016 blocks with
//! the `bitcoin` crate's [`CompactTarget::from_next_work_required`]; the testnet
//! minimum-difficulty exception, BIP94 and the missing-history bound are written here.

use bitcoin::params::Params;
use bitcoin::{CompactTarget, Target};

use super::header_chain::Entry;
use super::network::RetargetRule;

/// BIP94: the first block of a period may be at most this much older than its parent.
pub const MAX_TIMEWARP_S: u32 = 600;

/// What the next header's bits may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Exactly these bits.
    Exact(CompactTarget),
    /// A retarget whose period's first block lies below the checkpoint: the period's
    /// timespan is unknown, but consensus clamps it to between a quarter and four times the
    /// planned one, so the new target lies between what those two timespans give (`hardest`
    /// and `easiest`, each at most the pow limit). Without this bound a branch forking at
    /// that retarget could drop straight to the pow limit and out-work the real chain
    /// cheaply. This happens once, at the first retarget after a checkpoint that is not at a
    /// period start (all shipped ones); every later retarget is computed exactly.
    Within {
        hardest: CompactTarget,
        easiest: CompactTarget,
    },
    /// Testnets only: the blocks that decide the value lie below the checkpoint and nothing
    /// above it tells the period's difficulty (every block since the checkpoint, and the
    /// checkpoint itself, is a minimum-difficulty exception), so only the network's pow limit
    /// can be enforced. Anyone may mine such blocks on a testnet anyway (20-minute rule).
    UpToPowLimit,
}

impl Expected {
    /// The bits a retarget from `base` may give for any timespan consensus allows: the
    /// timespan is clamped to [planned / 4, planned × 4], so the new target lies between a
    /// quarter of `base`'s and four times it, and at most the pow limit. Both ends are
    /// encoded as Core encodes a result (truncating), and truncation never reorders two
    /// targets, so every honest result decodes to a target between the two ends decoded.
    fn any_timespan(base: CompactTarget, params: &Params) -> Self {
        let base = Target::from_compact(base);
        let limit = params.max_attainable_target;
        // Four times a target above a quarter of the limit is past the limit (and could
        // overflow 256 bits): the limit caps it.
        let easiest = if base > limit.min_transition_threshold() {
            limit
        } else {
            base.max_transition_threshold(params)
        };
        Expected::Within {
            hardest: base.min_transition_threshold().to_compact_lossy(),
            easiest: easiest.to_compact_lossy(),
        }
    }
}

fn interval(params: &Params) -> u32 {
    // 2016 on every network; the crate computes it from timespan/spacing.
    u32::try_from(params.difficulty_adjustment_interval()).unwrap_or(u32::MAX)
}

/// The ancestor of `from` at `height`, if it is not below the chain's first entry.
fn ancestor(entries: &[Entry], mut from: u32, height: u32) -> Option<&Entry> {
    loop {
        let e = entries.get(from as usize)?;
        if e.height == height {
            return Some(e);
        }
        if e.height < height || e.prev == Entry::NO_PREV {
            return None;
        }
        from = e.prev;
    }
}

/// Testnet: the bits of the last block that was not a minimum-difficulty exception, walking
/// back from `from` to the start of its period.
fn last_non_exception_bits(
    entries: &[Entry],
    mut from: u32,
    params: &Params,
    limit: CompactTarget,
) -> Expected {
    let every = interval(params);
    loop {
        let e = &entries[from as usize];
        if e.height % every == 0 || e.bits != limit.to_consensus() {
            return Expected::Exact(CompactTarget::from_consensus(e.bits));
        }
        if e.prev == Entry::NO_PREV {
            return Expected::UpToPowLimit;
        }
        from = e.prev;
    }
}

/// The bits required of a header at `prev.height + 1` with timestamp `new_time`, built on the
/// entry `prev` (an index into `entries`).
pub fn required_bits(
    rule: RetargetRule,
    params: &Params,
    entries: &[Entry],
    prev: u32,
    new_time: u32,
) -> Expected {
    let last = &entries[prev as usize];
    let last_bits = CompactTarget::from_consensus(last.bits);
    let limit = params.max_attainable_target.to_compact_lossy();
    if rule == RetargetRule::Fixed {
        return Expected::Exact(last_bits);
    }
    let every = interval(params);
    let height = last.height.saturating_add(1);
    if height % every != 0 {
        let min_difficulty_allowed = matches!(
            rule,
            RetargetRule::TestnetMinDifficulty | RetargetRule::Testnet4Bip94
        );
        if !min_difficulty_allowed {
            return Expected::Exact(last_bits);
        }
        let spacing = u32::try_from(params.pow_target_spacing).unwrap_or(u32::MAX);
        if u64::from(new_time) > u64::from(last.time) + 2 * u64::from(spacing) {
            return Expected::Exact(limit);
        }
        return last_non_exception_bits(entries, prev, params, limit);
    }
    let Some(first) = ancestor(entries, prev, height - every) else {
        // The period's first block is below the checkpoint: its time is unknown, so only the
        // factor-of-4 bound around the retarget's base can be checked.
        return match rule {
            // BIP94 retargets from the period's first block's bits, which every block of the
            // period that is not a 20-minute exception carries too.
            RetargetRule::Testnet4Bip94 => {
                match last_non_exception_bits(entries, prev, params, limit) {
                    Expected::Exact(base) => Expected::any_timespan(base, params),
                    other => other,
                }
            }
            _ => Expected::any_timespan(last_bits, params),
        };
    };
    // Core computes this as a signed difference; a negative span clamps to the minimum.
    let timespan = u64::try_from(i64::from(last.time) - i64::from(first.time)).unwrap_or(0);
    let base = if rule == RetargetRule::Testnet4Bip94 {
        // BIP94: start from the period's first block, which can never be a 20-minute
        // exception, so a single late block cannot drag the next period's difficulty down.
        CompactTarget::from_consensus(first.bits)
    } else {
        last_bits
    };
    Expected::Exact(CompactTarget::from_next_work_required(
        base, timespan, params,
    ))
}

/// BIP94's time-warp rule: `Err(min_time)` if a header at `height` (a period start) is more
/// than [`MAX_TIMEWARP_S`] older than its parent.
pub fn check_timewarp(
    rule: RetargetRule,
    params: &Params,
    height: u32,
    prev_time: u32,
    new_time: u32,
) -> Result<(), u32> {
    if rule != RetargetRule::Testnet4Bip94 || height % interval(params) != 0 {
        return Ok(());
    }
    let min_time = prev_time.saturating_sub(MAX_TIMEWARP_S);
    if new_time < min_time {
        Err(min_time)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 0x1d00ffff;
    const HARD: u32 = 0x1c0ffff0;

    /// A straight chain from height 0 with the given (time, bits) per block.
    fn chain(blocks: &[(u32, u32)]) -> Vec<Entry> {
        blocks
            .iter()
            .enumerate()
            .map(|(i, &(time, bits))| Entry {
                hash: [0; 32],
                chainwork: 0,
                time,
                bits,
                prev: if i == 0 { Entry::NO_PREV } else { i as u32 - 1 },
                height: i as u32,
            })
            .collect()
    }

    fn period(bits: u32, spacing: u32) -> Vec<(u32, u32)> {
        (0..2016).map(|i| (1_000_000 + i * spacing, bits)).collect()
    }

    #[test]
    fn standard_keeps_bits_inside_a_period() {
        let c = chain(&period(HARD, 600)[..100]);
        assert_eq!(
            required_bits(RetargetRule::Standard, &Params::MAINNET, &c, 99, 2_000_000),
            Expected::Exact(CompactTarget::from_consensus(HARD))
        );
    }

    #[test]
    fn standard_retarget_follows_the_period_timespan() {
        // Blocks twice as fast as planned: the target halves (difficulty doubles).
        let c = chain(&period(HARD, 300));
        let Expected::Exact(bits) =
            required_bits(RetargetRule::Standard, &Params::MAINNET, &c, 2015, 0)
        else {
            panic!("full history is present")
        };
        let old = Target::from_compact(CompactTarget::from_consensus(HARD));
        let new = Target::from_compact(bits);
        assert!(new < old, "faster blocks must make the target smaller");
        // 2015 intervals of 300 s against 1 209 600 s: new = old * 604500 / 1209600.
        let expected = CompactTarget::from_next_work_required(
            CompactTarget::from_consensus(HARD),
            2015 * 300,
            Params::MAINNET,
        );
        assert_eq!(bits, expected);
        assert_ne!(bits.to_consensus(), HARD);
    }

    #[test]
    fn retarget_is_clamped_to_the_pow_limit() {
        // Very slow blocks at the limit stay at the limit.
        let c = chain(&period(LIMIT, 6000));
        assert_eq!(
            required_bits(RetargetRule::Standard, &Params::MAINNET, &c, 2015, 0),
            Expected::Exact(CompactTarget::from_consensus(LIMIT))
        );
    }

    #[test]
    fn testnet_twenty_minute_rule() {
        let mut blocks = period(HARD, 600)[..10].to_vec();
        let c = chain(&blocks);
        let prev_time = c[9].time;
        // 20 min + 1 s after the parent: minimum difficulty is allowed (and required).
        assert_eq!(
            required_bits(
                RetargetRule::TestnetMinDifficulty,
                &Params::TESTNET3,
                &c,
                9,
                prev_time + 1201
            ),
            Expected::Exact(CompactTarget::from_consensus(LIMIT))
        );
        // Exactly 20 min: not yet.
        assert_eq!(
            required_bits(
                RetargetRule::TestnetMinDifficulty,
                &Params::TESTNET3,
                &c,
                9,
                prev_time + 1200
            ),
            Expected::Exact(CompactTarget::from_consensus(HARD))
        );
        // After a min-difficulty block, a prompt block returns to the real difficulty.
        blocks.push((prev_time + 1300, LIMIT));
        let c = chain(&blocks);
        assert_eq!(
            required_bits(
                RetargetRule::Testnet4Bip94,
                &Params::TESTNET4,
                &c,
                10,
                prev_time + 1400
            ),
            Expected::Exact(CompactTarget::from_consensus(HARD))
        );
    }

    #[test]
    fn bip94_retargets_from_the_first_block_not_a_min_difficulty_last_block() {
        let mut blocks = period(HARD, 600);
        // The period's last block is a 20-minute exception at the limit.
        blocks[2015].1 = LIMIT;
        let c = chain(&blocks);
        let timespan = u64::from(c[2015].time - c[0].time);
        let bip94 = required_bits(RetargetRule::Testnet4Bip94, &Params::TESTNET4, &c, 2015, 0);
        let testnet3 = required_bits(
            RetargetRule::TestnetMinDifficulty,
            &Params::TESTNET3,
            &c,
            2015,
            0,
        );
        assert_eq!(
            bip94,
            Expected::Exact(CompactTarget::from_next_work_required(
                CompactTarget::from_consensus(HARD),
                timespan,
                Params::TESTNET4
            ))
        );
        // Testnet3's old rule starts from the exception's (minimum-difficulty) bits.
        assert_eq!(
            testnet3,
            Expected::Exact(CompactTarget::from_next_work_required(
                CompactTarget::from_consensus(LIMIT),
                timespan,
                Params::TESTNET3
            ))
        );
        assert_ne!(bip94, testnet3);
    }

    /// Mainnet's shipped checkpoint: block 840,000, bits 0x17034219, 672 blocks before the
    /// retarget at 840,672 whose period starts at 838,656, below it.
    const MAINNET_840000_BITS: u32 = 0x1703_4219;

    /// A straight chain from height `base` with these bits, 600 s apart.
    fn chain_from(base: u32, len: usize, bits: u32) -> Vec<Entry> {
        let mut c = chain(&period(bits, 600)[..len]);
        for e in &mut c {
            e.height += base;
        }
        c
    }

    #[test]
    fn a_retarget_whose_period_starts_below_the_checkpoint_is_held_to_the_factor_of_four() {
        let c = chain_from(840_000, 672, MAINNET_840000_BITS);
        assert_eq!(c[671].height, 840_671);
        // Worked out by hand, not with the crate: 4 × 0x034219·256^20 = 0x0d0864·256^20;
        // a quarter of it is 0x0d0864·256^18 = 0x00d086(4)·256^21, truncated as Core does.
        assert_eq!(
            required_bits(RetargetRule::Standard, &Params::MAINNET, &c, 671, 0),
            Expected::Within {
                hardest: CompactTarget::from_consensus(0x1700_d086),
                easiest: CompactTarget::from_consensus(0x170d_0864),
            }
        );
        // Testnet3 retargets from the last block's bits as well (checkpoint 2,500,000; the
        // retarget at 2,501,856).
        let c = chain_from(2_500_000, 1856, HARD);
        let Expected::Within { easiest, .. } = required_bits(
            RetargetRule::TestnetMinDifficulty,
            &Params::TESTNET3,
            &c,
            1855,
            0,
        ) else {
            panic!("the period's first block (2,499,840) is below the chain")
        };
        assert_eq!(easiest.to_consensus(), 0x1c3f_ffc0);
        // The bound never goes past the pow limit.
        let c = chain_from(1000, 1016, 0x1c3f_ffff);
        let Expected::Within { easiest, .. } =
            required_bits(RetargetRule::Standard, &Params::MAINNET, &c, 1015, 0)
        else {
            panic!("height 0 is below the chain")
        };
        assert_eq!(easiest.to_consensus(), LIMIT);
    }

    #[test]
    fn bip94_bounds_a_retarget_from_the_periods_regular_bits() {
        // Above a testnet4 checkpoint at 1000, the period's last block is a 20-minute
        // exception: the bound comes from the regular bits before it, not from the limit.
        let mut c = chain_from(1000, 1016, HARD);
        c[1015].bits = LIMIT;
        let Expected::Within { easiest, .. } =
            required_bits(RetargetRule::Testnet4Bip94, &Params::TESTNET4, &c, 1015, 0)
        else {
            panic!("a regular block is above the checkpoint")
        };
        assert_eq!(easiest.to_consensus(), 0x1c3f_ffc0);
        // With nothing but exceptions above the checkpoint, only the limit is known.
        let c = chain_from(1000, 1016, LIMIT);
        assert_eq!(
            required_bits(RetargetRule::Testnet4Bip94, &Params::TESTNET4, &c, 1015, 0),
            Expected::UpToPowLimit
        );
    }

    #[test]
    fn timewarp_rule_only_at_period_start_on_testnet4() {
        let p = &Params::TESTNET4;
        assert_eq!(
            check_timewarp(RetargetRule::Testnet4Bip94, p, 2016, 10_000, 9_400),
            Ok(())
        );
        assert_eq!(
            check_timewarp(RetargetRule::Testnet4Bip94, p, 2016, 10_000, 9_399),
            Err(9_400)
        );
        assert_eq!(
            check_timewarp(RetargetRule::Testnet4Bip94, p, 2017, 10_000, 1),
            Ok(())
        );
        assert_eq!(
            check_timewarp(RetargetRule::Standard, p, 2016, 10_000, 1),
            Ok(())
        );
    }
}
