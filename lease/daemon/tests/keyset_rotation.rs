//! `POST /v1/keysets/rotate` on a single host (no fleet store): the new keyset signs, the
//! old one still redeems and no longer signs, and the rotation survives a restart (it is
//! written to STATE/credit-keysets.json).

mod common;

use common::{Daemon, StateDir, Wallet};
use payment::credit::nut_types::BlindSignature;
use serde_json::json;

const KEYSET_INACTIVE: u64 = 12002;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_rotates_a_single_hosts_keysets() {
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let old_wallet = Wallet::new(&d).await;
    let old_notes = d.mint_credit(100).await;

    let r = d.call("POST", "/v1/keysets/rotate", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    assert_eq!(
        listed,
        d.call("GET", "/v1/keysets", None, None).await.json(),
        "answers the keyset list"
    );
    let new_wallet = Wallet::new(&d).await;
    assert_ne!(new_wallet.keyset_id, old_wallet.keyset_id);
    let keysets = listed["keysets"].as_array().expect("keysets");
    assert_eq!(keysets.len(), 2, "{listed}");
    assert!(keysets
        .iter()
        .any(|k| k["id"] == old_wallet.keyset_id.as_str() && k["active"] == false));

    // Old notes redeem into the new keyset; old-keyset outputs are refused.
    let amounts: Vec<u64> = old_notes.iter().map(|p| p.amount).collect();
    let r = d
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": old_notes, "outputs": old_wallet
                .outputs(&amounts)
                .iter()
                .map(|b| &b.msg)
                .collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], KEYSET_INACTIVE, "{}", r.text());
    let blanks = new_wallet.outputs(&amounts);
    let r = d
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": old_notes,
                        "outputs": blanks.iter().map(|b| &b.msg).collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sigs: Vec<BlindSignature> =
        serde_json::from_value(r.json()["signatures"].clone()).expect("signatures");
    assert!(sigs.iter().all(|s| s.id == new_wallet.keyset_id));

    // Again with the CLI: `coinop keysets rotate` lists the keysets, the newest active.
    let out = common::cli_process::coinop(&d.socket, &["keysets", "rotate"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest = Wallet::new(&d).await.keyset_id;
    assert_ne!(newest, new_wallet.keyset_id);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&newest) && l.contains(" active")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&new_wallet.keyset_id) && l.contains("inactive")),
        "{text}"
    );
    let listed = d.call("GET", "/v1/keysets", None, None).await.json();

    // Kept across a restart.
    d.shutdown().await;
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    assert_eq!(Wallet::new(&d).await.keyset_id, newest);
    assert_eq!(
        d.call("GET", "/v1/keysets", None, None).await.json(),
        listed
    );
}

/// A stop whose refund reply was lost is sent again after the operator rotated the
/// keysets: its change outputs name the keyset that is inactive now, and it gets the same
/// signatures again (its balance was refunded onto them: refusing would lose the change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_repeated_after_a_rotation_gets_the_same_signatures() {
    if !common::kvm_or_skip() {
        return;
    }
    let dir = StateDir::new();
    let d = Daemon::spawn(dir.path(), &[], &[]).await;
    let wallet = Wallet::new(&d).await;
    let proofs = d.mint_credit(20).await;
    let lease = d
        .create_lease(common::leases::testguest_body(
            "mode=idle",
            common::leases::credit_payment(&proofs),
        ))
        .await;
    let blanks = wallet.outputs(&[1; 8]);
    let body = json!({"outputs": blanks.iter().map(|b| &b.msg).collect::<Vec<_>>()});
    let path = format!("/v1/leases/{}/stop", lease.id);
    let first = d
        .call("POST", &path, Some(&lease.token), Some(body.clone()))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());

    let r = d.call("POST", "/v1/keysets/rotate", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let again = d.call("POST", &path, Some(&lease.token), Some(body)).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        again.json()["signatures"],
        first.json()["signatures"],
        "the same notes"
    );
    let sigs: Vec<BlindSignature> =
        serde_json::from_value(again.json()["signatures"].clone()).expect("signatures");
    assert!(!sigs.is_empty() && sigs.iter().all(|s| s.id == wallet.keyset_id));
    d.shutdown().await;
}
