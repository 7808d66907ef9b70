//! coinop payments: everything that decides, locally and without a third party, that a
//! tenant has paid, and how much.
//!
//! - [`onchain`]: networks, the host's own header chain, prices and quotes with fresh
//!   addresses from the operator's xpub, and SPV checks of `gettxoutproof` proofs.
//! - [`credit`]: anonymous blind-signed credit (Cashu NUT-00/01/02/03/07/12): keysets, mint,
//!   swap, check state, redeem and change.
//! - [`metering`]: what a tick of guest usage costs, in integer msat with a carried
//!   remainder (the rule quotes and the lease scheduler share).
//! - [`spent_set`]: the one place that remembers what was spent (outpoints and credit
//!   secrets), so nothing is ever counted twice, also under concurrency and after a crash.
//! - [`storage_refusal`]: a refusal of that storage by the disk or a lock (full, failing,
//!   busy), which changed nothing and passes: the one storage error a caller retries.
//! - [`text`]: another party's text with its control characters escaped, for terminals
//!   and logs.

pub mod credit;
pub mod metering;
pub mod onchain;
pub mod spent_set;
pub mod storage_refusal;
pub mod text;
