// cashu-ts (a wallet nobody here wrote) against coinopd, over its Unix socket. Driven by
// lease/daemon/tests/cashu_wallets.rs: reads its input from the JSON file named by
// COINOP_CASHU_INPUT, finds cashu-ts and undici under COINOP_CASHU_TS_DIR (installed by
// scripts/lib/cashu_wallets.sh), checks what it can with node:assert and prints what it
// saw as one JSON line for the Rust test to check against the daemon.
//
// Modes: "roundtrip" (keys, receive with DLEQ required, check state, Cashu error codes,
// NUT-09 restore from the seed), "fees" (a mint charging input_fee_ppk), and NUT-30
// on-chain minting in two steps around the payment the Rust side makes: "nut30_quote"
// then "nut30_mint".

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const input = JSON.parse(readFileSync(process.env.COINOP_CASHU_INPUT, 'utf8'));
const dir = process.env.COINOP_CASHU_TS_DIR;
const load = (rel) => import(pathToFileURL(`${dir}/node_modules/${rel}`).href);

// Every request cashu-ts makes goes to coinopd's socket: undici's fetch with an Agent
// that connects there, in place of the global fetch cashu-ts calls. One connection per
// request: cashu-ts derives hundreds of deterministic outputs synchronously before a
// restore, and a pooled connection that coinopd closed as idle meanwhile (its header
// timeout) would only be noticed by the failing write of the next POST.
const undiciModule = await load('undici/index.js');
const undici = undiciModule.default ?? undiciModule;
const agents = [];
globalThis.fetch = (url, init = {}) => {
  const agent = new undici.Agent({ connect: { socketPath: input.socket } });
  agents.push(agent);
  return undici.fetch(url, { ...init, dispatcher: agent });
};
const cashu = await load('@cashu/cashu-ts/lib/cashu-ts.es.js');

const MINT_URL = 'http://coinop.localhost';
const seed = Uint8Array.from(Buffer.from(input.seed_hex, 'hex'));
const sat = (proofs) => proofs.reduce((n, p) => n + cashu.Amount.from(p.amount).toNumber(), 0);
const plain = (proofs) =>
  proofs.map((p) => ({
    amount: cashu.Amount.from(p.amount).toNumber(),
    id: p.id,
    secret: p.secret,
    C: p.C,
  }));

// The Cashu error code a call fails with, as cashu-ts reports it (its MintOperationError
// from the mint's NUT-00 body); anything else is a failure of the test.
async function cashuCode(what, call) {
  try {
    await call();
  } catch (e) {
    assert.ok(cashu.isMintOperationError(e), `${what}: not a mint operation error: ${e}`);
    return { code: e.code, detail: e.message };
  }
  assert.fail(`${what}: succeeded, expected a Cashu error`);
}

async function newWallet() {
  const wallet = new cashu.Wallet(new cashu.Mint(MINT_URL), { unit: 'sat', bip39seed: seed });
  await wallet.loadMint();
  return wallet;
}

async function states(wallet, proofs) {
  return (await wallet.checkProofsStates(proofs)).map((s) => s.state);
}

async function roundtrip() {
  const out = {};
  const wallet = await newWallet();
  const mint = wallet.mint;

  // NUT-01/02/06 as the wallet loads them.
  const keysets = (await mint.getKeySets()).keysets;
  out.keysets = keysets.map((k) => ({ id: k.id, active: k.active, input_fee_ppk: k.input_fee_ppk ?? null }));
  out.keys = (await mint.getKeys()).keysets.map((k) => ({ id: k.id, active: k.active }));
  out.wallet_keyset = wallet.keysetId;
  out.nuts = Object.keys((await mint.getInfo()).nuts).sort();

  // coinop-minted notes, received (swapped) with their DLEQ proofs required.
  const received = await wallet.receive(input.proofs, { requireDleq: true });
  out.received_sat = sat(received);
  out.received_have_dleq = received.every((p) => p.dleq !== undefined);
  out.original_states = await states(wallet, input.proofs);
  out.received_states = await states(wallet, received);

  // Cashu errors as cashu-ts sees them.
  out.spent_again = await cashuCode('receive spent notes', () => wallet.receive(input.proofs));
  out.unknown_keyset = await cashuCode('keys of an unknown keyset', () =>
    mint.getKeys('00ffffffffffffff'),
  );
  // A wallet restored from the seed that does not ask the mint (counters from 0 again)
  // makes the outputs it made before: refused, and its inputs stay unspent.
  const naive = await newWallet();
  out.reused_outputs = await cashuCode('outputs signed before', () => naive.receive(input.more_proofs));
  out.more_states_after_refusal = await states(wallet, input.more_proofs);

  // NUT-09/13: a wallet restored from the seed finds its notes, then goes on without any
  // collision once its counter is past them.
  const restoredWallet = await newWallet();
  const restored = await restoredWallet.batchRestore();
  const restoredStates = await states(restoredWallet, restored.proofs);
  const unspent = restored.proofs.filter((_, i) => restoredStates[i] === 'UNSPENT');
  out.restored_count = restored.proofs.length;
  out.restored_unspent_sat = sat(unspent);
  out.restored_secrets_match = unspent.map((p) => p.secret).sort().join() ===
    received.map((p) => p.secret).sort().join();
  out.last_counter = restored.lastCounterWithSignature;
  await restoredWallet.counters.advanceToAtLeast(restoredWallet.keysetId, restored.lastCounterWithSignature + 1);
  const more = await restoredWallet.receive(input.more_proofs, { requireDleq: true });
  out.more_received_sat = sat(more);
  out.more_states = await states(restoredWallet, input.more_proofs);
  // Everything the restored wallet holds, for the Rust side to check with the daemon.
  out.held = plain([...unspent, ...more]);
  return out;
}

async function fees() {
  const out = {};
  const wallet = await newWallet();
  out.keysets = (await wallet.mint.getKeySets()).keysets.map((k) => ({
    id: k.id,
    active: k.active,
    input_fee_ppk: k.input_fee_ppk ?? null,
  }));
  out.fee_for_inputs = cashu.Amount.from(wallet.getFeesForProofs(input.proofs)).toNumber();
  const received = await wallet.receive(input.proofs, { requireDleq: true });
  out.received_sat = sat(received);
  out.held = plain(received);
  return out;
}

const hex = (bytes) => Buffer.from(bytes).toString('hex');

async function nut30Quote() {
  const wallet = await newWallet();
  const privkey = hex(cashu.createRandomSecretKey());
  const pubkey = hex(cashu.getPubKeyFromPrivKey(Buffer.from(privkey, 'hex')));
  const quote = await wallet.createMintQuoteOnchain(pubkey);
  const onchain = wallet.getMintInfo().nuts?.['4']?.methods?.find((m) => m.method === 'onchain');
  return {
    quote: quote.quote,
    request: quote.request,
    pubkey: quote.pubkey,
    amount_paid: cashu.Amount.from(quote.amount_paid).toNumber(),
    privkey,
    confirmations: onchain?.options?.confirmations ?? null,
  };
}

async function nut30Mint() {
  const out = {};
  const wallet = await newWallet();
  const quote = await wallet.checkMintQuoteOnchain(input.quote);
  out.amount_paid = cashu.Amount.from(quote.amount_paid).toNumber();
  out.amount_issued = cashu.Amount.from(quote.amount_issued).toNumber();
  const keyset = wallet.getKeyset();
  // Signed by another key (NUT-20): refused.
  const outputs = cashu.OutputData.createRandomData(2, keyset).map((o) => o.blindedMessage);
  const stranger = hex(cashu.createRandomSecretKey());
  out.wrong_key = await cashuCode('mint signed by another key', () =>
    wallet.mint.mintOnchain({
      quote: input.quote,
      outputs,
      signature: cashu.signMintQuote(stranger, input.quote, outputs),
    }),
  );
  // Minting in two parts, as NUT-30 allows.
  const first = await wallet.mintProofsOnchain(input.first_sat, quote, input.privkey);
  const after = await wallet.checkMintQuoteOnchain(input.quote);
  out.issued_after_first = cashu.Amount.from(after.amount_issued).toNumber();
  const rest = out.amount_paid - input.first_sat;
  const second = await wallet.mintProofsOnchain(rest, after, input.privkey);
  // Nothing is left: one more sat is refused by the mint itself.
  const more = cashu.OutputData.createRandomData(1, keyset).map((o) => o.blindedMessage);
  out.over_mint = await cashuCode('mint more than paid', () =>
    wallet.mint.mintOnchain({
      quote: input.quote,
      outputs: more,
      signature: cashu.signMintQuote(input.privkey, input.quote, more),
    }),
  );
  const minted = [...first, ...second];
  out.minted_sat = sat(minted);
  out.states = await states(wallet, minted);
  out.held = plain(minted);
  return out;
}

const modes = { roundtrip, fees, nut30_quote: nut30Quote, nut30_mint: nut30Mint };
assert.ok(modes[input.mode], `unknown mode ${input.mode}`);
const result = await modes[input.mode]();
await Promise.all(agents.map((a) => a.close()));
process.stdout.write(JSON.stringify(result) + '\n');
