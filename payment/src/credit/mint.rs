//! The mint: signs blinded outputs against payments, swaps notes, reports their state,
//! redeems them for lease balance, signs change and hands out again the signatures of
//! outputs it signed (NUT-09 restore). Every operation validates its whole request before
//! it touches any state, so a rejected request changes nothing. Spending a note costs the
//! keysets' NUT-02 `input_fee_ppk` per input (0 unless the operator sets one).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bitcoin::secp256k1::PublicKey;

use super::amount::{checked_sum, split};
use super::bdhke::{sign_blinded, verify_with_y};
use super::curve::{parse_point, point_hex};
use super::dleq::prove_with_public;
use super::error::CreditError;
use super::hash_to_curve::secret_to_curve;
use super::keyset::{Keyset, UNIT_SAT};
use super::keyset_store::{KeysetRecord, KeysetState, KeysetStore};
use super::nut_types::*;
use super::receipt;
use crate::spent_set::{KeyKind, SignedOutput, SpendKey, SpendState, SpentSet, SpentSetError};

/// Bounds on one request, so no request can make the mint do unbounded work.
#[derive(Clone, Debug)]
pub struct MintLimits {
    pub max_inputs: usize,
    pub max_outputs: usize,
    /// Longest accepted proof secret, in bytes (standard secrets are 64 hex characters).
    pub max_secret_len: usize,
    /// Range of one mint operation's amount, in sat.
    pub min_mint_sat: u64,
    pub max_mint_sat: u64,
}

impl Default for MintLimits {
    fn default() -> Self {
        MintLimits {
            max_inputs: 1000,
            max_outputs: 1000,
            max_secret_len: 512,
            min_mint_sat: 1,
            max_mint_sat: 100_000_000,
        }
    }
}

/// Inputs that passed every check but are not yet claimed: what the daemon claims in its
/// own ledger transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedInputs {
    /// One `CreditY` key per input, in input order.
    pub keys: Vec<SpendKey>,
    pub amount_sat: u64,
    /// The NUT-02 fee for spending these inputs, in sat.
    pub fee_sat: u64,
}

impl ValidatedInputs {
    /// What the inputs pay, net of their fee, in msat (1 sat = 1000 msat).
    pub fn amount_msat(&self) -> Result<u64, CreditError> {
        let net = self.amount_sat.checked_sub(self.fee_sat).ok_or({
            CreditError::UnbalancedWithFee {
                inputs: self.amount_sat,
                fee: self.fee_sat,
                outputs: 0,
            }
        })?;
        net.checked_mul(1000).ok_or(CreditError::AmountOutOfRange {
            what: "inputs in msat",
            amount: net,
            min: 0,
            max: u64::MAX / 1000,
        })
    }
}

/// The NUT-02 fee of spending `inputs` notes at `input_fee_ppk` each: the sum rounded up to
/// a whole sat.
pub fn input_fee_sat(inputs: usize, input_fee_ppk: u64) -> u64 {
    (inputs as u64).saturating_mul(input_fee_ppk).div_ceil(1000)
}

/// An output that passed validation, with the keyset that will sign it.
struct CheckedOutput {
    keyset: Arc<Keyset>,
    amount: u64,
    b_: PublicKey,
}

/// How errors name a keyset list that is not the state dir's file.
const EXTERNAL_LIST: &str = "(keyset list of the fleet store)";

/// The keysets in memory: one snapshot is used for a whole request, so a rotation in the
/// middle of it can't mix keysets.
struct KeyRing {
    active: Arc<Keyset>,
    by_id: HashMap<String, (Arc<Keyset>, KeysetState)>,
    /// In rotation order.
    order: Vec<String>,
    /// The list the ring was derived from, to tell whether a new list changes it.
    records: Vec<KeysetRecord>,
}

impl KeyRing {
    /// Derives every keyset of `records` from `seed`; `source` names where the list came
    /// from, for errors.
    fn build(seed: &[u8; 32], records: &[KeysetRecord], source: &str) -> Result<Self, CreditError> {
        let mut by_id = HashMap::new();
        let mut order = Vec::new();
        let mut active = None;
        for record in records {
            let keyset = Arc::new(Keyset::derive(seed, record.counter)?);
            if record.state == KeysetState::Active {
                active = Some(keyset.clone());
            }
            order.push(keyset.id().to_string());
            by_id.insert(keyset.id().to_string(), (keyset, record.state));
        }
        let active = active.ok_or_else(|| CreditError::Store {
            path: source.to_string(),
            reason: "no active keyset".into(),
        })?;
        Ok(KeyRing {
            active,
            by_id,
            order,
            records: records.to_vec(),
        })
    }

    /// The keyset a proof names, if it still accepts inputs.
    fn for_input(&self, id: &str) -> Result<&Arc<Keyset>, CreditError> {
        match self.by_id.get(id) {
            None => Err(CreditError::UnknownKeyset { id: echo_id(id) }),
            Some((_, KeysetState::Retired)) => Err(CreditError::RetiredKeyset { id: echo_id(id) }),
            Some((keyset, _)) => Ok(keyset),
        }
    }

    /// The keyset an output names, which must be the active one.
    fn for_output(&self, id: &str) -> Result<&Arc<Keyset>, CreditError> {
        match self.by_id.get(id) {
            None => Err(CreditError::UnknownKeyset { id: echo_id(id) }),
            Some((keyset, KeysetState::Active)) => Ok(keyset),
            Some(_) => Err(CreditError::InactiveKeyset { id: echo_id(id) }),
        }
    }

    /// Keysets that accept inputs, oldest first.
    fn served(&self) -> impl Iterator<Item = (&Arc<Keyset>, KeysetState)> {
        self.order.iter().filter_map(|id| {
            let (keyset, state) = &self.by_id[id];
            (*state != KeysetState::Retired).then_some((keyset, *state))
        })
    }
}

pub struct Mint {
    /// The keyset list in the state dir; `None` when another store (a fleet's database)
    /// keeps the list and hands it over with [`Mint::adopt_keysets`].
    store: Option<Mutex<KeysetStore>>,
    /// What every keyset is derived from (kept, so that a list handed over can be derived).
    seed: [u8; 32],
    ring: RwLock<Arc<KeyRing>>,
    spent: Arc<dyn SpentSet>,
    limits: MintLimits,
    /// NUT-02 fee per input, in parts per thousand of a sat, of every keyset.
    input_fee_ppk: u64,
    /// Confirmations an on-chain payment needs, as `/v1/info` advertises it (NUT-30).
    onchain_confirmations: Option<u32>,
}

impl Mint {
    /// Opens (or creates) the keyset store in `state_dir` and derives its keysets.
    pub fn open(
        state_dir: &Path,
        spent: Arc<dyn SpentSet>,
        limits: MintLimits,
    ) -> Result<Self, CreditError> {
        let store = KeysetStore::open(state_dir)?;
        let ring = KeyRing::build(
            store.seed(),
            store.records(),
            &store.path().display().to_string(),
        )?;
        Ok(Mint {
            seed: *store.seed(),
            store: Some(Mutex::new(store)),
            ring: RwLock::new(Arc::new(ring)),
            spent,
            limits,
            input_fee_ppk: 0,
            onchain_confirmations: None,
        })
    }

    /// A mint whose keys come from `seed` and whose keyset list is kept elsewhere (a fleet's
    /// database): it starts with `records` and takes later lists through
    /// [`Mint::adopt_keysets`]; [`Mint::rotate`] and [`Mint::retire`] are refused (the
    /// list's keeper rotates). Nothing is written to the state dir.
    pub fn from_seed(
        seed: [u8; 32],
        records: &[KeysetRecord],
        spent: Arc<dyn SpentSet>,
        limits: MintLimits,
    ) -> Result<Self, CreditError> {
        let ring = KeyRing::build(&seed, records, EXTERNAL_LIST)?;
        Ok(Mint {
            store: None,
            seed,
            ring: RwLock::new(Arc::new(ring)),
            spent,
            limits,
            input_fee_ppk: 0,
            onchain_confirmations: None,
        })
    }

    /// The keyset list as it is now, in rotation order.
    pub fn keyset_records(&self) -> Vec<KeysetRecord> {
        self.ring().records.clone()
    }

    /// The id of keyset number `counter` of this mint's seed (derived, whether or not it
    /// is in the list): how a fleet checks that a host's seed is the fleet's.
    pub fn derive_keyset_id(&self, counter: u32) -> Result<String, CreditError> {
        Ok(Keyset::derive(&self.seed, counter)?.id().to_string())
    }

    /// Replaces the keyset list (from the store that keeps it) and returns the active id.
    /// The list must have exactly one active keyset; a list equal to the current one
    /// changes nothing. Requests already running finish with the list they started with.
    pub fn adopt_keysets(&self, records: &[KeysetRecord]) -> Result<String, CreditError> {
        let current = self.ring();
        if current.records == records {
            return Ok(current.active.id().to_string());
        }
        let ring = KeyRing::build(&self.seed, records, EXTERNAL_LIST)?;
        let id = ring.active.id().to_string();
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        Ok(id)
    }

    /// Whether every id names a keyset this mint knows (in any state).
    pub fn knows_keysets<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let ring = self.ring();
        ids.into_iter().all(|id| ring.by_id.contains_key(id))
    }

    /// Advertises in `/v1/info` how many confirmations an on-chain payment needs.
    pub fn with_onchain_confirmations(mut self, confirmations: u32) -> Self {
        self.onchain_confirmations = Some(confirmations);
        self
    }

    /// Charges `input_fee_ppk` (NUT-02, parts per thousand of a sat) for every note spent,
    /// in every keyset. The keyset ids (NUT-02 v1) do not commit to the fee.
    pub fn with_input_fee_ppk(mut self, input_fee_ppk: u64) -> Self {
        self.input_fee_ppk = input_fee_ppk;
        self
    }

    pub fn input_fee_ppk(&self) -> u64 {
        self.input_fee_ppk
    }

    pub fn limits(&self) -> &MintLimits {
        &self.limits
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn active_keyset_id(&self) -> String {
        self.ring().active.id().to_string()
    }

    /// Public key of the active keyset for `amount` (what a wallet gets from `/v1/keys`).
    pub fn active_public_key(&self, amount: u64) -> Result<PublicKey, CreditError> {
        Ok(self.ring().active.key_pair("amount", amount)?.1)
    }

    /// Public key of keyset `id` for `amount`.
    pub fn public_key(&self, id: &str, amount: u64) -> Result<PublicKey, CreditError> {
        Ok(self.ring().for_input(id)?.key_pair("amount", amount)?.1)
    }

    /// Starts a new active keyset; the old one keeps accepting inputs. Returns the new id.
    pub fn rotate(&self) -> Result<String, CreditError> {
        let mut store = self.local_store()?;
        store.rotate()?;
        self.reload(&store)
    }

    /// Stops accepting notes of inactive keyset `id`.
    pub fn retire(&self, id: &str) -> Result<(), CreditError> {
        let mut store = self.local_store()?;
        let counter = self.ring().for_input(id)?.counter();
        store.retire(counter)?;
        self.reload(&store).map(|_| ())
    }

    /// The state dir's keyset list, which this mint changes itself.
    fn local_store(&self) -> Result<std::sync::MutexGuard<'_, KeysetStore>, CreditError> {
        let store = self.store.as_ref().ok_or_else(|| CreditError::Store {
            path: EXTERNAL_LIST.into(),
            reason: "the keyset list is kept by the fleet store: rotate through it".into(),
        })?;
        Ok(store.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn reload(&self, store: &KeysetStore) -> Result<String, CreditError> {
        let ring = KeyRing::build(
            store.seed(),
            store.records(),
            &store.path().display().to_string(),
        )?;
        let id = ring.active.id().to_string();
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        Ok(id)
    }

    /// NUT-01 `GET /v1/keys`: the active keyset's keys.
    pub fn keys(&self) -> KeysResponse {
        KeysResponse {
            keysets: vec![self.key_set(&self.ring().active, KeysetState::Active)],
        }
    }

    /// NUT-01 `GET /v1/keys/{id}`: any keyset that still accepts inputs.
    pub fn keys_for(&self, id: &str) -> Result<KeysResponse, CreditError> {
        let ring = self.ring();
        let keyset = ring.for_input(id)?;
        let state = ring.by_id[keyset.id()].1;
        Ok(KeysResponse {
            keysets: vec![self.key_set(keyset, state)],
        })
    }

    /// NUT-02 `GET /v1/keysets`.
    pub fn keysets(&self) -> KeysetsResponse {
        let ring = self.ring();
        KeysetsResponse {
            keysets: ring
                .served()
                .map(|(keyset, state)| KeysetInfo {
                    id: keyset.id().to_string(),
                    unit: UNIT_SAT.to_string(),
                    active: state == KeysetState::Active,
                    input_fee_ppk: self.input_fee_ppk,
                })
                .collect(),
        }
    }

    /// NUT-06 `GET /v1/info`: what this mint supports; the daemon fills in the operator's
    /// name and description.
    pub fn info(
        &self,
        name: Option<String>,
        description: Option<String>,
        time: Option<u64>,
    ) -> MintInfo {
        let supported = |supported| Supported { supported };
        MintInfo {
            name,
            pubkey: None,
            version: Some(format!("coinop/{}", env!("CARGO_PKG_VERSION"))),
            description,
            description_long: None,
            contact: None,
            motd: None,
            icon_url: None,
            urls: None,
            time,
            tos_url: None,
            nuts: Nuts {
                nut04: MethodSettings {
                    methods: vec![MethodSetting {
                        method: "onchain".into(),
                        unit: UNIT_SAT.into(),
                        min_amount: Some(self.limits.min_mint_sat),
                        max_amount: Some(self.limits.max_mint_sat),
                        options: self
                            .onchain_confirmations
                            .map(|n| serde_json::json!({ "confirmations": n })),
                    }],
                    disabled: false,
                },
                nut05: MethodSettings {
                    methods: vec![],
                    disabled: true,
                },
                nut07: supported(true),
                nut09: supported(true),
                nut12: supported(true),
                nut20: supported(true),
            },
        }
    }

    /// Signs `outputs` for an on-chain payment already verified (and its outpoint claimed)
    /// by the caller: their amounts must sum to exactly `paid_amount_sat` (the payment minus
    /// any fee).
    pub fn mint(
        &self,
        paid_amount_sat: u64,
        outputs: &[BlindedMessage],
    ) -> Result<Vec<BlindSignature>, CreditError> {
        let limits = &self.limits;
        if !(limits.min_mint_sat..=limits.max_mint_sat).contains(&paid_amount_sat) {
            return Err(CreditError::AmountOutOfRange {
                what: "mint amount",
                amount: paid_amount_sat,
                min: limits.min_mint_sat,
                max: limits.max_mint_sat,
            });
        }
        let ring = self.ring();
        let outputs = self.check_outputs(&ring, outputs, true)?;
        let total = checked_sum("outputs", outputs.iter().map(|o| o.amount))?;
        if total != paid_amount_sat {
            return Err(CreditError::Unbalanced {
                inputs: paid_amount_sat,
                outputs: total,
            });
        }
        sign_all(&outputs)
    }

    fn key_set(&self, keyset: &Keyset, state: KeysetState) -> KeySet {
        KeySet {
            id: keyset.id().to_string(),
            unit: UNIT_SAT.to_string(),
            active: state == KeysetState::Active,
            input_fee_ppk: self.input_fee_ppk,
            keys: keyset.public_keys_hex(),
        }
    }

    /// NUT-03 swap: inputs become outputs of equal total (less the NUT-02 input fee), all
    /// or nothing. The outputs are signed first (signing changes nothing), then the inputs
    /// are claimed `Spent` together with the swap's [`receipt`] and the signatures in one
    /// durable step, and only then are the signatures handed out. The same swap retried
    /// after its reply was lost (the same inputs and the same outputs) is known by that
    /// receipt and gets the same signatures again: blind signing is deterministic, so these
    /// are the same notes and no new money. Any other use of a spent input fails as already
    /// spent, and any output signed before (by another request) as already signed.
    pub fn swap(&self, request: &SwapRequest) -> Result<SwapResponse, CreditError> {
        let ring = self.ring();
        let (inputs, outputs) = self.check_swap(&ring, request)?;
        let receipt = receipt::receipt(receipt::SWAP, &inputs.keys, &request.outputs);
        // Spent inputs are refused before any signing work, unless this very swap spent them.
        let states = self.spent.states(&inputs.keys)?;
        let taken = inputs.keys.iter().zip(&states).find_map(|(key, state)| {
            state.map(|state| SpentSetError::AlreadyClaimed {
                kind: key.kind,
                key_hex: hex::encode(&key.bytes),
                state,
            })
        });
        if let Some(taken) = taken {
            if !self.spent.spent_with(&inputs.keys, &receipt)? {
                return Err(taken.into());
            }
            return Ok(SwapResponse {
                signatures: sign_all(&outputs)?,
            });
        }
        let signatures = sign_all(&outputs)?;
        let records = signed_records(&request.outputs, &signatures)?;
        match self
            .spent
            .claim_with_receipt(&inputs.keys, "credit swap", &receipt, &records)
        {
            Ok(()) => Ok(SwapResponse { signatures }),
            // An identical request committed in between: its answer is this one.
            Err(SpentSetError::AlreadyClaimed { .. })
                if self.spent.spent_with(&inputs.keys, &receipt)? =>
            {
                Ok(SwapResponse { signatures })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The signatures [`Mint::swap`] would hand out for `request`, with every check of the
    /// request but none against the spent set, and nothing recorded: what a fleet host
    /// reserves in the fleet store before its local swap (signing is deterministic, so the
    /// swap then makes exactly these).
    pub fn swap_signatures(
        &self,
        request: &SwapRequest,
    ) -> Result<Vec<BlindSignature>, CreditError> {
        let ring = self.ring();
        let (_, outputs) = self.check_swap(&ring, request)?;
        sign_all(&outputs)
    }

    /// Every check of a swap request that needs no state: inputs, outputs, balance.
    fn check_swap(
        &self,
        ring: &KeyRing,
        request: &SwapRequest,
    ) -> Result<(ValidatedInputs, Vec<CheckedOutput>), CreditError> {
        let inputs = self.check_inputs(ring, &request.inputs)?;
        let outputs = self.check_outputs(ring, &request.outputs, true)?;
        let out_total = checked_sum("outputs", outputs.iter().map(|o| o.amount))?;
        if inputs.fee_sat == 0 && out_total != inputs.amount_sat {
            return Err(CreditError::Unbalanced {
                inputs: inputs.amount_sat,
                outputs: out_total,
            });
        }
        if inputs.amount_sat.checked_sub(inputs.fee_sat) != Some(out_total) {
            return Err(CreditError::UnbalancedWithFee {
                inputs: inputs.amount_sat,
                fee: inputs.fee_sat,
                outputs: out_total,
            });
        }
        Ok((inputs, outputs))
    }

    /// NUT-07 check state, in request order.
    pub fn check_state(
        &self,
        request: &CheckStateRequest,
    ) -> Result<CheckStateResponse, CreditError> {
        let keys = self.check_state_keys(request)?;
        let states = self.spent.states(&keys)?;
        Ok(Self::check_state_answer(&keys, states))
    }

    /// The spent-set keys a NUT-07 check asks about, in request order, checked.
    pub fn check_state_keys(
        &self,
        request: &CheckStateRequest,
    ) -> Result<Vec<SpendKey>, CreditError> {
        if request.ys.len() > self.limits.max_inputs {
            return Err(CreditError::TooManyInputs {
                count: request.ys.len(),
                max: self.limits.max_inputs,
            });
        }
        request
            .ys
            .iter()
            .map(|y| parse_point("Ys", y).map(|p| credit_key(&p)))
            .collect()
    }

    /// The NUT-07 answer for `keys` given each one's state (in the same order), wherever
    /// it was read.
    pub fn check_state_answer(
        keys: &[SpendKey],
        states: Vec<Option<SpendState>>,
    ) -> CheckStateResponse {
        CheckStateResponse {
            states: keys
                .iter()
                .zip(states)
                .map(|(key, state)| ProofStateEntry {
                    y: hex::encode(&key.bytes),
                    state: match state {
                        None => ProofState::Unspent,
                        Some(SpendState::Pending) => ProofState::Pending,
                        Some(SpendState::Spent) => ProofState::Spent,
                    },
                    witness: None,
                })
                .collect(),
        }
    }

    /// NUT-09 restore: of `request.outputs`, those signed before, each with its signature
    /// as it was handed out, in request order.
    pub fn restore(&self, request: &RestoreRequest) -> Result<RestoreResponse, CreditError> {
        let b_s = self.restore_keys(request)?;
        let found = self.spent.signed_outputs(&b_s)?;
        Ok(Self::restore_answer(request, found))
    }

    /// The `B_`s (33 bytes each) a NUT-09 restore asks about, in request order, checked.
    pub fn restore_keys(&self, request: &RestoreRequest) -> Result<Vec<Vec<u8>>, CreditError> {
        self.check_count(0, request.outputs.len())?;
        request
            .outputs
            .iter()
            .map(|o| parse_point("outputs.B_", &o.b_).map(|p| p.serialize().to_vec()))
            .collect()
    }

    /// The NUT-09 answer to `request` given the signature record found for each of its
    /// outputs (in request order, `None` for one never signed), wherever they were kept.
    pub fn restore_answer(
        request: &RestoreRequest,
        found: Vec<Option<SignedOutput>>,
    ) -> RestoreResponse {
        let mut response = RestoreResponse {
            outputs: Vec::new(),
            signatures: Vec::new(),
        };
        for (asked, record) in request.outputs.iter().zip(found) {
            let Some(record) = record else { continue };
            response.outputs.push(BlindedMessage {
                amount: record.amount,
                id: record.keyset_id.clone(),
                b_: asked.b_.clone(),
            });
            response.signatures.push(BlindSignature {
                amount: record.amount,
                id: record.keyset_id,
                c_: hex::encode(&record.c_),
                dleq: record.dleq.map(|(e, s)| BlindSignatureDleq {
                    e: hex::encode(e),
                    s: hex::encode(s),
                }),
            });
        }
        response
    }

    /// Checks inputs for a lease payment (keysets, amounts, duplicates, signatures) without
    /// claiming them, so the daemon can claim the returned keys inside its own ledger
    /// transaction together with the lease's balance. Does not consult the spent set.
    pub fn validate_inputs(&self, inputs: &[Proof]) -> Result<ValidatedInputs, CreditError> {
        self.check_inputs(&self.ring(), inputs)
    }

    /// Validates `inputs` and marks them spent (durably, through the spent set) in one
    /// step; returns their value in msat. `note` names what they paid for.
    pub fn redeem(&self, inputs: &[Proof], note: &str) -> Result<u64, CreditError> {
        let validated = self.validate_inputs(inputs)?;
        let msat = validated.amount_msat()?;
        self.spent.claim(&validated.keys, SpendState::Spent, note)?;
        Ok(msat)
    }

    /// How many blank outputs `change` needs for `refund_msat`.
    pub fn change_outputs_needed(refund_msat: u64) -> usize {
        (refund_msat / 1000).count_ones() as usize
    }

    /// Signs change worth `floor(refund_msat / 1000)` sat onto the wallet's blank outputs,
    /// NUT-08 style: the mint sets each output's amount (the amounts sent are ignored), one
    /// power of two per output, smallest first; outputs beyond those needed are left
    /// unsigned. Sub-sat remainders cannot be expressed as notes and are not returned.
    pub fn change(
        &self,
        refund_msat: u64,
        outputs: &[BlindedMessage],
    ) -> Result<Vec<BlindSignature>, CreditError> {
        let change_sat = refund_msat / 1000;
        let notes = split(change_sat);
        if notes.is_empty() {
            return Ok(Vec::new());
        }
        if outputs.len() < notes.len() {
            return Err(CreditError::TooFewChangeOutputs {
                change_sat,
                needed: notes.len(),
                given: outputs.len(),
            });
        }
        let ring = self.ring();
        // Only the outputs that get a note: the blanks beyond them are not signed, so
        // nothing about them matters (and a repeat after a rotation finds only these
        // signed before).
        let mut checked = self.check_outputs(&ring, &outputs[..notes.len()], false)?;
        for (output, amount) in checked.iter_mut().zip(notes) {
            output.amount = amount;
        }
        sign_all(&checked)
    }

    fn check_count(&self, inputs: usize, outputs: usize) -> Result<(), CreditError> {
        if inputs > self.limits.max_inputs {
            return Err(CreditError::TooManyInputs {
                count: inputs,
                max: self.limits.max_inputs,
            });
        }
        if outputs > self.limits.max_outputs {
            return Err(CreditError::TooManyOutputs {
                count: outputs,
                max: self.limits.max_outputs,
            });
        }
        Ok(())
    }

    fn check_inputs(
        &self,
        ring: &KeyRing,
        inputs: &[Proof],
    ) -> Result<ValidatedInputs, CreditError> {
        self.check_count(inputs.len(), 0)?;
        if inputs.is_empty() {
            return Err(CreditError::NoInputs);
        }
        // Cheap, structural checks over all inputs first; curve work only afterwards.
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(inputs.len());
        let mut parsed = Vec::with_capacity(inputs.len());
        for (index, proof) in inputs.iter().enumerate() {
            self.check_secret(index, &proof.secret)?;
            if let Some(first) = seen.insert(proof.secret.as_str(), index) {
                return Err(CreditError::DuplicateInputs {
                    first,
                    second: index,
                });
            }
            let keyset = ring.for_input(&proof.id)?;
            let (k, _) = keyset.key_pair("inputs.amount", proof.amount)?;
            parsed.push((k, parse_point("inputs.C", &proof.c)?));
        }
        let amount_sat = checked_sum("inputs", inputs.iter().map(|p| p.amount))?;
        let fee_sat = input_fee_sat(inputs.len(), self.input_fee_ppk);
        let mut keys = Vec::with_capacity(inputs.len());
        for (index, (proof, (k, c))) in inputs.iter().zip(parsed).enumerate() {
            let y = secret_to_curve(&proof.secret)?;
            if !verify_with_y(k, &y, &c) {
                return Err(CreditError::ProofInvalid { index });
            }
            keys.push(credit_key(&y));
        }
        Ok(ValidatedInputs {
            keys,
            amount_sat,
            fee_sat,
        })
    }

    fn check_secret(&self, index: usize, secret: &str) -> Result<(), CreditError> {
        if secret.is_empty() {
            return Err(CreditError::SecretRejected {
                index,
                reason: "empty",
            });
        }
        if secret.len() > self.limits.max_secret_len {
            return Err(CreditError::SecretRejected {
                index,
                reason: "too long",
            });
        }
        // NUT-10 well-known secrets `[kind, {...}]` lock notes to conditions this mint does
        // not enforce; accepting them as plain secrets would let anyone spend locked notes.
        if may_be_nut10(secret) {
            return Err(CreditError::SecretRejected {
                index,
                reason: "NUT-10 spending conditions are not supported",
            });
        }
        Ok(())
    }

    fn check_outputs(
        &self,
        ring: &KeyRing,
        outputs: &[BlindedMessage],
        check_amounts: bool,
    ) -> Result<Vec<CheckedOutput>, CreditError> {
        self.check_count(0, outputs.len())?;
        if outputs.is_empty() {
            return Err(CreditError::NoOutputs);
        }
        let mut seen: HashMap<[u8; 33], usize> = HashMap::with_capacity(outputs.len());
        let mut checked = Vec::with_capacity(outputs.len());
        // Outputs naming a keyset rotated out since (inactive, not retired): see below.
        let mut rotated_out = Vec::new();
        for (index, output) in outputs.iter().enumerate() {
            let keyset = match ring.for_output(&output.id) {
                Ok(keyset) => keyset,
                Err(CreditError::InactiveKeyset { .. }) => {
                    rotated_out.push(index);
                    ring.for_input(&output.id)?
                }
                Err(e) => return Err(e),
            };
            if check_amounts {
                keyset.key_pair("outputs.amount", output.amount)?;
            }
            let b_ = parse_point("outputs.B_", &output.b_)?;
            if let Some(first) = seen.insert(b_.serialize(), index) {
                return Err(CreditError::DuplicateOutputs {
                    first,
                    second: index,
                });
            }
            checked.push(CheckedOutput {
                keyset: keyset.clone(),
                amount: output.amount,
                b_,
            });
        }
        // New outputs are signed with the active keyset only. An output on an older one is
        // taken only if that keyset signed it before, for the same amount: a request whose
        // reply was lost, sent again after a rotation, must get its signatures again (the
        // swap, mint or refund committed, and its inputs are spent). Whether it really is
        // that request is the claim's to say, as for every repeat: an output signed for
        // another request fails it as already signed.
        if !rotated_out.is_empty() {
            let b_s: Vec<Vec<u8>> = rotated_out
                .iter()
                .map(|&i| checked[i].b_.serialize().to_vec())
                .collect();
            let found = self.spent.signed_outputs(&b_s)?;
            for (&i, record) in rotated_out.iter().zip(found) {
                let output = &outputs[i];
                // (Change outputs' amounts are the mint's to set: not compared.)
                let signed_before = record.is_some_and(|r| {
                    r.keyset_id == output.id && (!check_amounts || r.amount == output.amount)
                });
                if !signed_before {
                    return Err(CreditError::InactiveKeyset {
                        id: echo_id(&output.id),
                    });
                }
            }
        }
        Ok(checked)
    }
}

/// A keyset id as quoted back in errors: real ids are 16 characters (66 for NUT-02 v1), so
/// anything longer is cut rather than echoed whole.
fn echo_id(id: &str) -> String {
    id.chars().take(66).collect()
}

/// What the spent set keeps of signatures handed out: each of `signatures` with the `B_`
/// of the output at the same index (outputs beyond the signatures, e.g. unused change
/// blanks, were not signed and are left out). Fails only on hex the mint did not check.
pub fn signed_records(
    outputs: &[BlindedMessage],
    signatures: &[BlindSignature],
) -> Result<Vec<SignedOutput>, CreditError> {
    let bytes = |field: &'static str, value: &str| {
        hex::decode(value).map_err(|_| CreditError::InvalidPoint {
            field,
            value: value.chars().take(80).collect(),
        })
    };
    let scalar = |value: &str| -> Result<[u8; 32], CreditError> {
        hex::decode(value)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| CreditError::InvalidScalar {
                field: "dleq",
                value: value.chars().take(80).collect(),
            })
    };
    outputs
        .iter()
        .zip(signatures)
        .map(|(output, sig)| {
            Ok(SignedOutput {
                b_: bytes("outputs.B_", &output.b_)?,
                keyset_id: sig.id.clone(),
                amount: sig.amount,
                c_: bytes("C_", &sig.c_)?,
                dleq: sig
                    .dleq
                    .as_ref()
                    .map(|d| Ok::<_, CreditError>((scalar(&d.e)?, scalar(&d.s)?)))
                    .transpose()?,
            })
        })
        .collect()
}

/// The spent-set key of a proof: its `Y`, compressed.
pub fn credit_key(y: &PublicKey) -> SpendKey {
    SpendKey {
        kind: KeyKind::CreditY,
        bytes: y.serialize().to_vec(),
    }
}

fn sign_all(outputs: &[CheckedOutput]) -> Result<Vec<BlindSignature>, CreditError> {
    outputs.iter().map(sign_one).collect()
}

fn sign_one(output: &CheckedOutput) -> Result<BlindSignature, CreditError> {
    let (k, big_k) = output.keyset.key_pair("outputs.amount", output.amount)?;
    let c_ = sign_blinded(k, &output.b_)?;
    let dleq = prove_with_public(k, big_k, &output.b_, &c_)?;
    Ok(BlindSignature {
        amount: output.amount,
        id: output.keyset.id().to_string(),
        c_: point_hex(&c_),
        dleq: Some(BlindSignatureDleq {
            e: hex::encode(dleq.e.to_be_bytes()),
            s: hex::encode(dleq.s.secret_bytes()),
        }),
    })
}

/// Whether a wallet could read `secret` as a NUT-10 well-known secret: a JSON array
/// (`[kind, {...}]`), allowing the whitespace JSON allows before it (space, tab, line feed,
/// carriage return: RFC 8259), which every wallet's JSON parser skips. Deliberately wider
/// than a full parse: wallets' parsers differ in leniency (Python's reads `NaN`, for one),
/// so a secret that one of them might take for a lock is refused without asking which;
/// wallets make plain secrets as random hex (NUT-00, NUT-13), never arrays, so none is lost.
fn may_be_nut10(secret: &str) -> bool {
    secret
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('[')
}
