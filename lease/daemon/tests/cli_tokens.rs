//! Cashu tokens between `coinop` wallets through a real coinopd: `wallet send` prints a
//! token worth exactly the amount (swapping for change when needed), `wallet receive` takes
//! it in once (a retry is answered, a second wallet is refused as already spent), tokens of
//! another mint or with a forged DLEQ are refused, `wallet pay` pays exactly, and lease
//! create/top-up take a token as `--credit`.

mod common;

use std::path::Path;
use std::process::Output;

use common::cli_process::{coinop_async, lease_create_args};
use common::{kvm_or_skip, Daemon};
use payment::credit::token::Token;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `coinop` with `wallet` as its wallet file.
async fn with_wallet(socket: &Path, wallet: &Path, args: &[&str]) -> Output {
    coinop_async(socket, args, &[("COINOP_WALLET", wallet)]).await
}

/// `--json` output of a command that must succeed.
async fn json(socket: &Path, wallet: &Path, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let o = with_wallet(socket, wallet, &full).await;
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

async fn balance(socket: &Path, wallet: &Path) -> u64 {
    json(socket, wallet, &["wallet", "balance"]).await["balance_sat"]
        .as_u64()
        .expect("balance_sat")
}

/// `wallet send`: the token printed on stdout.
async fn send(socket: &Path, wallet: &Path, extra: &[&str]) -> String {
    let mut args = vec!["wallet", "send"];
    args.extend_from_slice(extra);
    let o = with_wallet(socket, wallet, &args).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    String::from_utf8(o.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_go_between_two_wallets_with_the_change_kept() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let s = d.socket.clone();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    json(&s, &a, &["wallet", "mint", "--amount", "300"]).await;

    // 300 = 256 + 32 + 8 + 4: no notes add up to 100, so A swaps and keeps 200.
    let token = send(&s, &a, &["--amount", "100"]).await;
    assert!(token.starts_with("cashuB"), "{token}");
    let t = Token::decode(&token).expect("a valid V4 token");
    assert_eq!(t.amount().expect("sum"), 100);
    assert!(t.proofs.iter().all(|p| p.dleq.is_some()), "DLEQ travels");
    assert_eq!(balance(&s, &a).await, 200);
    let outbox = json(&s, &a, &["wallet", "outbox"]).await;
    assert_eq!(outbox[0]["token"], token.as_str());
    assert_eq!(outbox[0]["amount_sat"], 100);

    // B receives it, from the argument; again (a retry) is answered, not refused.
    let got = json(&s, &b, &["wallet", "receive", &token]).await;
    assert_eq!(got["received_sat"], 100);
    assert_eq!(got["already_received"], false);
    let file = dir.path().join("token.txt");
    std::fs::write(&file, format!("{token}\n")).expect("write");
    let again = json(
        &s,
        &b,
        &["wallet", "receive", file.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(again["already_received"], true);
    assert_eq!(balance(&s, &b).await, 100);

    // A cannot take its token back once B has it: the mint says spent; A keeps 200.
    let late = with_wallet(&s, &a, &["wallet", "receive", &token]).await;
    assert_eq!(late.status.code(), Some(1), "{}", stderr(&late));
    assert!(
        stderr(&late).contains("/v1/swap: HTTP 400: Cashu error 11001"),
        "{}",
        stderr(&late)
    );
    assert_eq!(balance(&s, &a).await, 200);

    // V3 the other way; A's check then sees its 100-sat token claimed.
    let v3 = send(&s, &b, &["--amount", "5", "--v3"]).await;
    assert!(v3.starts_with("cashuA"), "{v3}");
    assert_eq!(
        json(&s, &a, &["wallet", "receive", &v3]).await["received_sat"],
        5
    );
    assert_eq!(balance(&s, &a).await, 205);
    assert_eq!(balance(&s, &b).await, 95);
    let checked = json(&s, &a, &["wallet", "check"]).await;
    assert_eq!(checked["claimed_tokens_dropped"], 1);
    assert_eq!(checked["spent_notes_dropped"], 0);
    assert_eq!(
        json(&s, &a, &["wallet", "outbox"]).await,
        serde_json::json!([])
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_forged_tokens_are_refused_and_change_nothing() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let s = d.socket.clone();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    json(&s, &a, &["wallet", "mint", "--amount", "16"]).await;
    let token = send(&s, &a, &["--amount", "8"]).await;

    // Another mint's keyset: refused before anything is sent to the mint.
    let mut other = Token::decode(&token).expect("token");
    other.mint = "https://mint.example".into();
    for p in &mut other.proofs {
        p.id = "00ffffffffffffff".into();
    }
    let o = with_wallet(
        &s,
        &b,
        &["wallet", "receive", &other.encode_v4().expect("v4")],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not this coinopd's mint"),
        "{}",
        stderr(&o)
    );

    // A DLEQ whose r is not the one the note was blinded with: refused.
    let mut forged = Token::decode(&token).expect("token");
    forged.proofs[0].dleq.as_mut().expect("dleq").r = "01".repeat(32);
    let o = with_wallet(
        &s,
        &b,
        &["wallet", "receive", &forged.encode_v4().expect("v4")],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("DLEQ"), "{}", stderr(&o));

    let o = with_wallet(&s, &b, &["wallet", "receive", "cashuBnot-a-token"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = with_wallet(&s, &a, &["wallet", "send", "--amount", "0"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(balance(&s, &b).await, 0);

    // The real token still works: nothing above spent it.
    assert_eq!(
        json(&s, &b, &["wallet", "receive", &token]).await["received_sat"],
        8
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_spends_exactly_the_amount_and_keeps_the_change() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let s = d.socket.clone();
    let w = dir.path().join("w.json");
    json(&s, &w, &["wallet", "mint", "--amount", "4096"]).await;
    let pay = json(&s, &w, &["wallet", "pay", "--amount", "100"]).await;
    let paid: u64 = pay["credit"]["proofs"]
        .as_array()
        .expect("proofs")
        .iter()
        .map(|p| p["amount"].as_u64().expect("amount"))
        .sum();
    assert_eq!(paid, 100, "a 4096-sat note was swapped, not spent whole");
    assert_eq!(balance(&s, &w).await, 3996);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_create_and_topup_take_a_token() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let s = d.socket.clone();
    let w = dir.path().join("w.json");
    json(&s, &w, &["wallet", "mint", "--amount", "600"]).await;
    let token = send(&s, &w, &["--amount", "300"]).await;
    let create = lease_create_args(&["--cmdline", "mode=echo", "--credit", &token]);
    let lease = json(&s, &w, &create).await;
    assert_eq!(lease["balance_msat"], 300_000);
    let (id, tok) = (
        lease["lease_id"].as_str().expect("id"),
        lease["token"].as_str().expect("token"),
    );
    // A top-up from a file holding a V3 token.
    let v3 = send(&s, &w, &["--amount", "50", "--v3"]).await;
    let file = dir.path().join("topup.token");
    std::fs::write(&file, &v3).expect("write");
    let topup = [
        "lease",
        "topup",
        id,
        "--token",
        tok,
        "--credit",
        file.to_str().expect("utf-8"),
    ];
    let t = json(&s, &w, &topup).await;
    assert!(
        t["balance_msat"].as_u64().expect("balance") > 300_000,
        "{t}"
    );
    assert_eq!(balance(&s, &w).await, 250);
    json(&s, &w, &["lease", "stop", id, "--token", tok]).await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_wallet_is_restored_from_its_phrase_alone() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let s = d.socket.clone();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let init = json(&s, &a, &["wallet", "init", "--seed"]).await;
    let phrase = init["seed_phrase"].as_str().expect("phrase").to_string();
    assert_eq!(phrase.split(' ').count(), 12);
    let seed_file = dir.path().join("a.seed");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&seed_file)
        .expect("seed file")
        .permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);

    // Minted, swapped (send with change), sent and claimed: notes spent and unspent.
    json(&s, &a, &["wallet", "mint", "--amount", "300"]).await;
    let token = send(&s, &a, &["--amount", "100"]).await;
    json(&s, &b, &["wallet", "receive", &token]).await;
    let held = balance(&s, &a).await;
    assert_eq!(held, 200);

    // The wallet is lost; the phrase (on stdin) brings back exactly the unspent notes.
    std::fs::remove_file(&a).expect("rm wallet");
    std::fs::remove_file(&seed_file).expect("rm seed");
    let phrase_file = dir.path().join("phrase.txt");
    std::fs::write(&phrase_file, format!("{phrase}\n")).expect("write");
    let restore = [
        "wallet",
        "restore",
        "--seed-phrase",
        phrase_file.to_str().expect("utf-8"),
    ];
    let r = json(&s, &a, &restore).await;
    assert_eq!(r["restored_sat"], 200, "{r}");
    assert_eq!(r["balance_sat"], 200);
    assert!(
        r["found"].as_u64().expect("found") > 4,
        "spent ones found too: {r}"
    );
    assert_eq!(balance(&s, &a).await, 200);
    // Restoring again adds nothing (the notes are known).
    assert_eq!(json(&s, &a, &restore).await["restored_sat"], 0);

    // The restored wallet goes on from past its old counters: new outputs never collide
    // with signed ones (the mint would refuse them with 11003).
    let again = send(&s, &a, &["--amount", "99"]).await;
    json(&s, &b, &["wallet", "receive", &again]).await;
    json(&s, &a, &["wallet", "mint", "--amount", "7"]).await;
    assert_eq!(balance(&s, &a).await, 200 - 99 + 7);
    assert_eq!(balance(&s, &b).await, 199);

    // Another phrase restores nothing from this mint, and is refused on a seeded wallet.
    let other = json(
        &s,
        &dir.path().join("c.json"),
        &["wallet", "init", "--seed"],
    )
    .await;
    std::fs::write(&phrase_file, other["seed_phrase"].as_str().expect("phrase")).expect("w");
    let o = with_wallet(&s, &a, &restore).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("different seed phrase"),
        "{}",
        stderr(&o)
    );
    let c = dir.path().join("c2.json");
    assert_eq!(json(&s, &c, &restore).await["restored_sat"], 0);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_input_fee_send_and_receive_pay_it_and_nothing_else_is_lost() {
    let dir = common::StateDir::new();
    // 1000 ppk: each note spent costs 1 sat.
    let d = Daemon::start(dir.path(), &["--input-fee-ppk", "1000"]).await;
    let s = d.socket.clone();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    json(&s, &a, &["wallet", "mint", "--amount", "300"]).await;
    // 100 needs a swap of the 256-sat note (fee 1): 100 out, 155 change kept.
    let token = send(&s, &a, &["--amount", "100"]).await;
    let t = Token::decode(&token).expect("token");
    assert_eq!(t.amount().expect("sum"), 100);
    assert_eq!(balance(&s, &a).await, 300 - 256 + 155);
    // B pays 1 sat for each of the token's notes.
    let got = json(&s, &b, &["wallet", "receive", &token]).await;
    assert_eq!(got["received_sat"], 100 - t.proofs.len() as u64);
    d.shutdown().await;
}

/// The swap an earlier `wallet send` recorded (its reply lost): the request it resends.
fn recorded_swap(wallet: &Path) -> serde_json::Value {
    let w: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wallet).expect("wallet file")).expect("JSON");
    let swap = &w["swaps"][0];
    let batch = swap["batch"].as_str().expect("a swap is recorded");
    let blanks = w["pending"]
        .as_array()
        .expect("pending")
        .iter()
        .find(|p| p[0] == batch)
        .expect("its blanks are kept");
    let outputs: Vec<&serde_json::Value> = blanks[1]
        .as_array()
        .expect("blanks")
        .iter()
        .map(|b| &b["message"])
        .collect();
    serde_json::json!({"inputs": swap["inputs"], "outputs": outputs})
}

/// A swap that committed but whose reply was lost (coinopd killed right after the commit)
/// is resent by the next wallet command after the keyset rotated in between (its blanks
/// name an inactive keyset): the mint answers it again, and the wallet keeps the notes.
/// (A resend the mint refuses although the inputs are spent is restored through NUT-09:
/// the wallet's unit tests, as no daemon path refuses such a resend any more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_swap_resent_after_a_rotation_keeps_its_notes() {
    use coinopd::fault::{point, ENV};
    let dir = common::StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[(ENV, point::SWAP_COMMITTED)]).await;
    let (s, w) = (d.socket.clone(), dir.path().join("w.json"));
    json(&s, &w, &["wallet", "mint", "--amount", "100"]).await;
    // 100 is 64 + 32 + 4: no set of notes makes 3, so the send swaps the 4 first.
    let lost = with_wallet(&s, &w, &["wallet", "send", "--amount", "3"]).await;
    assert_eq!(
        lost.status.code(),
        Some(3),
        "no answer came: {}",
        stderr(&lost)
    );
    assert!(!d.wait_crash().await.success());
    let resend = recorded_swap(&w);

    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let s = d.socket.clone();
    assert_eq!(balance(&s, &w).await, 96, "the swapped note is out");
    let r = d.call("POST", "/v1/keysets/rotate", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The mint answers the resend again (the same signatures: no new money).
    let replay = d.call("POST", "/v1/swap", None, Some(resend)).await;
    assert_eq!(replay.status, 200, "{}", replay.text());

    let checked = json(&s, &w, &["wallet", "check"]).await;
    assert_eq!(checked["balance_sat"], 100, "the swap's notes were kept");
    let file = std::fs::read_to_string(&w).expect("wallet");
    assert!(!file.contains("\"swap-"), "the swap is settled: {file}");
    // The restored notes are good: all 100 sat go out as a token another wallet takes.
    let token = send(&s, &w, &["--amount", "100"]).await;
    let other = dir.path().join("other.json");
    let got = json(&s, &other, &["wallet", "receive", &token]).await;
    assert_eq!(got["received_sat"], 100);
    d.shutdown().await;
}
