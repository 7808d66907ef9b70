//! coinop credit in a Cashu wallet nobody here wrote: cashu-ts (npm `@cashu/cashu-ts`,
//! pinned and installed by scripts/lib/cashu_wallets.sh) talks to coinopd over its Unix
//! socket (lease/daemon/tests/cashu_ts/interop.mjs). It loads the keys (active keysets,
//! fees), receives coinop-minted notes with DLEQ proofs required, checks their state, sees
//! coinop's refusals as Cashu error codes (11001, 11003, 12001), and a wallet restored from
//! the seed recovers its notes through NUT-09 and goes on without a collision; it pays
//! coinopd's NUT-02 input fee, and mints on chain with its own NUT-30 calls (quote locked
//! to its key, state, two signed mints). Then the daemon itself checks what the wallet
//! ended up with.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pay_address, Blank, Daemon};
use payment::credit::nut_types::{BlindSignature, Proof, ProofDleq};
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// cashu-ts's install dir, installing it (cached) if needed; `None` (and a `SKIPPED:`
/// line) when this host cannot have it (no node/npm, no registry).
fn cashu_ts() -> Option<PathBuf> {
    let script = repo_root().join("scripts/lib/cashu_wallets.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("cashu-ts")
        .output()
        .expect("bash runs");
    if !out.status.success() {
        eprintln!(
            "SKIPPED: cashu-ts interop: cannot install cashu-ts: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("node_modules/@cashu/cashu-ts/package.json")
            .exists(),
        "installer said {dir:?}"
    );
    Some(dir)
}

/// Runs the cashu-ts script in `mode` with `input` (plus the daemon's socket); its result.
fn run_cashu_ts(ts_dir: &Path, d: &Daemon, mode: &str, mut input: Value) -> Value {
    input["mode"] = json!(mode);
    input["socket"] = json!(d.socket);
    let input_path = d.dir.join(format!("cashu-ts-{mode}.json"));
    std::fs::write(&input_path, serde_json::to_vec(&input).expect("json")).expect("input file");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cashu_ts/interop.mjs");
    let out = Command::new("node")
        .arg(&script)
        .env("COINOP_CASHU_INPUT", &input_path)
        .env("COINOP_CASHU_TS_DIR", ts_dir)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cashu-ts {mode} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a result line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("result {last:?}: {e}"))
}

/// Notes minted by coinop (an on-chain payment on the daemon's regtest chain), each with
/// its NUT-12 DLEQ proof as a wallet keeps it (`e`, `s` from the mint, `r` its own).
async fn minted_with_dleq(d: &Daemon, amount_sat: u64) -> Vec<Proof> {
    let (body, wallet, blanks) = d.mint_request(amount_sat).await;
    let r = d.call("POST", "/v1/mint/onchain", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sigs: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("signatures");
    let proofs = wallet.unblind(&blanks, &sigs);
    proofs
        .into_iter()
        .zip(sigs.iter().zip(&blanks))
        .map(|(mut p, (s, b)): (Proof, (&BlindSignature, &Blank))| {
            let dleq = s.dleq.as_ref().expect("coinop signs with a DLEQ proof");
            p.dleq = Some(ProofDleq {
                e: dleq.e.clone(),
                s: dleq.s.clone(),
                r: hex::encode(b.r.secret_bytes()),
            });
            p
        })
        .collect()
}

fn ys(proofs: &Value) -> Vec<String> {
    proofs
        .as_array()
        .expect("proofs")
        .iter()
        .map(|p| {
            let secret = p["secret"].as_str().expect("secret");
            let y = payment::credit::hash_to_curve::secret_to_curve(secret).expect("y");
            hex::encode(y.serialize())
        })
        .collect()
}

/// The daemon's own view of `proofs`: their NUT-07 states.
async fn daemon_states(d: &Daemon, proofs: &Value) -> Vec<String> {
    let r = d
        .call(
            "POST",
            "/v1/checkstate",
            None,
            Some(json!({"Ys": ys(proofs)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| s["state"].as_str().expect("state").to_string())
        .collect()
}

fn sum(proofs: &[Proof]) -> u64 {
    proofs.iter().map(|p| p.amount).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cashu_ts_receives_checks_sees_cashu_errors_and_restores_from_its_seed() {
    let Some(ts_dir) = cashu_ts() else { return };
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let proofs = minted_with_dleq(&d, 21).await;
    let more = minted_with_dleq(&d, 13).await;
    let seed = hex::encode([7u8; 32]);
    let out = run_cashu_ts(
        &ts_dir,
        &d,
        "roundtrip",
        json!({"proofs": proofs, "more_proofs": more, "seed_hex": seed}),
    );

    // Keys and keysets as the wallet loaded them.
    let active = d.call("GET", "/v1/keysets", None, None).await.json()["keysets"][0]["id"].clone();
    assert_eq!(
        out["keysets"],
        json!([{"id": active, "active": true, "input_fee_ppk": 0}]),
        "{out}"
    );
    assert_eq!(
        out["keys"],
        json!([{"id": active, "active": true}]),
        "{out}"
    );
    assert_eq!(out["wallet_keyset"], active);
    assert_eq!(out["nuts"], json!(["12", "20", "4", "5", "7", "9"]));

    // The notes went through the wallet, DLEQ-checked, and are the wallet's now.
    assert_eq!(out["received_sat"], sum(&proofs), "{out}");
    assert_eq!(out["received_have_dleq"], true);
    assert_eq!(out["original_states"], json!(vec!["SPENT"; proofs.len()]));
    assert!(out["received_states"]
        .as_array()
        .expect("states")
        .iter()
        .all(|s| s == "UNSPENT"));

    // coinop's refusals, as Cashu codes in cashu-ts's errors.
    assert_eq!(out["spent_again"]["code"], 11001, "{out}");
    assert_eq!(out["unknown_keyset"]["code"], 12001, "{out}");
    assert_eq!(out["reused_outputs"]["code"], 11003, "{out}");
    assert_eq!(
        out["more_states_after_refusal"],
        json!(vec!["UNSPENT"; more.len()]),
        "a refused swap spends nothing"
    );

    // The restored wallet found exactly the notes it had, and received more without loss.
    assert_eq!(out["restored_unspent_sat"], sum(&proofs), "{out}");
    assert_eq!(out["restored_secrets_match"], true, "{out}");
    assert_eq!(out["more_received_sat"], sum(&more), "{out}");
    assert_eq!(out["more_states"], json!(vec!["SPENT"; more.len()]));

    // The daemon agrees: what the wallet holds is worth 34 sat, all unspent, once.
    let held = &out["held"];
    let held_sat: u64 = held
        .as_array()
        .expect("held")
        .iter()
        .map(|p| p["amount"].as_u64().expect("amount"))
        .sum();
    assert_eq!(held_sat, 34);
    assert!(daemon_states(&d, held).await.iter().all(|s| s == "UNSPENT"));
    let mut secrets: Vec<&str> = held
        .as_array()
        .expect("held")
        .iter()
        .map(|p| p["secret"].as_str().expect("secret"))
        .collect();
    secrets.sort_unstable();
    secrets.dedup();
    assert_eq!(
        secrets.len(),
        held.as_array().expect("held").len(),
        "no duplicate note"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cashu_ts_pays_the_input_fee_coinop_advertises() {
    let Some(ts_dir) = cashu_ts() else { return };
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--input-fee-ppk", "400"]).await;
    // 8 + 4 + 1: three notes at 400 ppk cost ceil(1.2) = 2 sat.
    let proofs = minted_with_dleq(&d, 13).await;
    assert_eq!(proofs.len(), 3);
    let out = run_cashu_ts(
        &ts_dir,
        &d,
        "fees",
        json!({"proofs": proofs, "seed_hex": hex::encode([9u8; 32])}),
    );
    assert_eq!(out["keysets"][0]["input_fee_ppk"], 400, "{out}");
    assert_eq!(out["fee_for_inputs"], 2, "{out}");
    assert_eq!(out["received_sat"], 11, "{out}");
    assert!(daemon_states(&d, &out["held"])
        .await
        .iter()
        .all(|s| s == "UNSPENT"));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cashu_ts_mints_on_chain_with_its_own_nut30_calls() {
    let Some(ts_dir) = cashu_ts() else { return };
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let seed = hex::encode([11u8; 32]);
    let q = run_cashu_ts(&ts_dir, &d, "nut30_quote", json!({"seed_hex": seed}));
    let quote = q["quote"].as_str().expect("quote").to_string();
    assert_eq!(q["amount_paid"], 0, "{q}");
    assert_eq!(q["confirmations"], 1, "{q}");

    // Before any payment: nothing to mint. Then two payments to the quote's address, each
    // proved once (the second proof of the first payment credits nothing).
    let address = q["request"].as_str().expect("address");
    let path = format!("/v1/mint/quote/onchain/{quote}/payment");
    let mut paid = 0;
    for sat in [1500u64, 500] {
        let (tx_hex, proof_hex) = pay_address(&d, address, sat).await;
        let body = json!({"tx_hex": tx_hex, "proof_hex": proof_hex});
        for _ in 0..2 {
            let r = d.call("POST", &path, None, Some(body.clone())).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["amount_paid"], paid + sat, "{}", r.text());
        }
        paid += sat;
    }
    // coinop's own mint body cannot take a key-locked quote's payment.
    let m = d
        .call(
            "POST",
            "/v1/mint/onchain",
            None,
            Some(
                json!({"payment": {"quote_id": quote, "tx_hex": "00", "proof_hex": "00"},
                        "outputs": []}),
            ),
        )
        .await;
    assert_eq!(
        (m.status, &m.json()["code"]),
        (400, &json!(20008)),
        "{}",
        m.text()
    );

    let out = run_cashu_ts(
        &ts_dir,
        &d,
        "nut30_mint",
        json!({"seed_hex": seed, "quote": quote, "privkey": q["privkey"], "first_sat": 1200}),
    );
    assert_eq!(
        (&out["amount_paid"], &out["amount_issued"]),
        (&json!(2000), &json!(0))
    );
    assert_eq!(out["wrong_key"]["code"], 20008, "{out}");
    assert_eq!(out["issued_after_first"], 1200, "{out}");
    assert_eq!(out["over_mint"]["code"], 20001, "{out}");
    assert_eq!(out["minted_sat"], 2000, "{out}");
    assert!(daemon_states(&d, &out["held"])
        .await
        .iter()
        .all(|s| s == "UNSPENT"));
    let state = d
        .call(
            "GET",
            &format!("/v1/mint/quote/onchain/{quote}"),
            None,
            None,
        )
        .await
        .json();
    assert_eq!(
        (&state["amount_paid"], &state["amount_issued"]),
        (&json!(2000), &json!(2000))
    );
    d.shutdown().await;
}
