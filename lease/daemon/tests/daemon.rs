//! coinopd end to end on a real Unix socket: host info, quotes, errors, on-chain and credit
//! payments, boots on /dev/kvm, metering down to a pause, top-up, stop with change,
//! double spends, and re-adoption across a daemon restart.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use common::leases::{credit_payment, testguest_body, CreatedLease};
use common::{kvm_or_skip, wait_for, Daemon, Wallet};
use serde_json::{json, Value};

fn assert_error_shape(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_quote_and_error_answers() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--max-body-bytes", "4096"]).await;

    let h = d.call("GET", "/v1/host", None, None).await;
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["network"], "regtest");
    assert_eq!(h["chain"]["height"], 0);
    assert_eq!(h["capacity"]["vcpus_total"], 8);
    assert_eq!(h["images"][0]["name"], "testguest");

    let q = d.quote(2, 512, 60).await;
    // 60 s × (2 × 1000 + 0.5 × 2000) msat/s.
    assert_eq!(q["amount_msat"], 180_000);
    assert_eq!(q["amount_sat"], 180);
    assert!(q["address"]
        .as_str()
        .expect("address")
        .starts_with("bcrt1q"));
    let again = d.quote(2, 512, 60).await;
    assert_ne!(
        again["address"], q["address"],
        "each quote gets a fresh address"
    );

    let bad = d
        .client
        .call("POST", "/v1/quotes", None, Some(b"{not json".to_vec()))
        .await
        .expect("reply");
    assert_eq!(bad.status, 400);
    assert_error_shape(&bad.json(), "bad_json");

    let unknown_field = d
        .call(
            "POST",
            "/v1/quotes",
            None,
            Some(json!({"vcpus": 1, "mem_mib": 1, "seconds": 1, "gpu": 1})),
        )
        .await;
    assert_eq!(unknown_field.status, 400);

    for spec in [
        json!({"vcpus": 0, "mem_mib": 64, "seconds": 1}),
        json!({"vcpus": 1, "mem_mib": 1_000_000, "seconds": 1}),
        json!({"vcpus": 1, "mem_mib": 64, "seconds": 0}),
    ] {
        let r = d.call("POST", "/v1/quotes", None, Some(spec)).await;
        assert_eq!(r.status, 422, "{}", r.text());
        assert_error_shape(&r.json(), "invalid_spec");
    }
    let neg = d
        .call(
            "POST",
            "/v1/quotes",
            None,
            Some(json!({"vcpus": -1, "mem_mib": 64, "seconds": 1})),
        )
        .await;
    assert_eq!(neg.status, 400);

    let huge = d
        .client
        .call("POST", "/v1/leases", None, Some(vec![b' '; 10_000]))
        .await
        .expect("reply");
    assert_eq!(huge.status, 413);
    assert_error_shape(&huge.json(), "body_too_large");

    let nf = d.call("GET", "/v1/nothing", None, None).await;
    assert_eq!(nf.status, 404);
    assert_error_shape(&nf.json(), "not_found");

    let unknown = d.call("GET", "/v1/leases/lnope", Some("00"), None).await;
    assert_eq!(unknown.status, 401);
    let no_token = d.call("GET", "/v1/leases/lnope", None, None).await;
    assert_eq!(no_token.status, 401);
    assert_eq!(unknown.body, no_token.body);

    // The test runs as root: operator endpoints answer.
    let m = d.call("GET", "/metrics", None, None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.text().contains("coinop_boots") || m.text().contains("coinop_"),
        "{}",
        m.text()
    );
    let l = d.call("GET", "/v1/leases", None, None).await;
    assert_eq!(l.status, 200);

    // A non-root peer (nobody) is refused with 403, checked through SO_PEERCRED.
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let out = std::process::Command::new(common::cli_process::coinop_bin())
            .args(["--socket", d.socket.to_str().expect("utf-8"), "leases"])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run coinop as nobody");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("HTTP 403 not_operator"), "{err}");
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_payment_pays_once_even_concurrently() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let payment = d.onchain_payment(5).await;
    let body = json!({"vcpus": 1, "mem_mib": 64, "image": "testguest",
                      "cmdline": "mode=echo", "payment": payment});
    let (a, b) = tokio::join!(
        d.call("POST", "/v1/leases", None, Some(body.clone())),
        d.call("POST", "/v1/leases", None, Some(body.clone()))
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    let winner = if a.status == 409 { &b } else { &a };
    let loser = if a.status == 409 { &a } else { &b };
    assert_eq!(loser.status, 409, "{}", loser.text());
    assert_error_shape(&loser.json(), "already_spent");
    // Without /dev/kvm the winner's boot fails, but it still was the only one to pay.
    assert!(matches!(winner.status, 201 | 503), "{}", winner.text());
    let third = d.call("POST", "/v1/leases", None, Some(body)).await;
    assert_eq!(third.status, 409);

    // Credit: the same proofs in two concurrent requests.
    let proofs = d.mint_credit(8).await;
    let body = json!({"vcpus": 1, "mem_mib": 64, "image": "testguest", "cmdline": "mode=echo",
                      "payment": {"credit": {"proofs": proofs}}});
    let (a, b) = tokio::join!(
        d.call("POST", "/v1/leases", None, Some(body.clone())),
        d.call("POST", "/v1/leases", None, Some(body.clone()))
    );
    let (first, second) = if a.status == 409 { (&b, &a) } else { (&a, &b) };
    assert_eq!(second.status, 409, "{}", second.text());
    assert_error_shape(&second.json(), "already_spent");
    // Without /dev/kvm the winner's boot fails, but it still was the only one to pay.
    assert!(matches!(first.status, 201 | 503), "{}", first.text());
    if kvm_or_skip() {
        assert_eq!(first.status, 201, "{}", first.text());
    }
    let m = d.call("GET", "/metrics", None, None).await.text();
    assert!(
        m.contains(r#"coinop_payments_total{kind="credit",result="already_spent"} 1"#),
        "{m}"
    );
    for r in [winner, first] {
        if r.status == 201 {
            let v = r.json();
            let id = v["lease_id"].as_str().expect("id");
            d.stop_lease(id, v["token"].as_str().expect("token")).await;
        }
    }
    d.shutdown().await;
}

/// A payment that buys a guest under a second cannot hold its room for the host's whole
/// grace (10 minutes here): paused at zero, it is stopped as soon as it has been held as
/// long as it ran, and its room is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_payment_holds_the_host_no_longer_than_it_ran() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--grace-s", "600"]).await;
    let free =
        async || d.call("GET", "/v1/host", None, None).await.json()["capacity"]["mib_free"].clone();
    let idle = free().await;
    // 1 sat: under a second of one spinning vCPU with 64 MiB.
    let proofs = d.mint_credit(1).await;
    let CreatedLease { id, token, .. } = d
        .create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await;
    assert_ne!(free().await, idle, "the lease holds room");
    let path = format!("/v1/leases/{id}");
    wait_for(
        async || d.call("GET", &path, Some(&token), None).await.json()["state"] == "stopped",
        "the stop of a lease that ran dry",
    )
    .await;
    let v = d.call("GET", &path, Some(&token), None).await.json();
    assert_eq!(v["stop_reason"], "balance_exhausted", "{v}");
    assert!(
        v["updated_at"].as_i64().expect("updated_at")
            - v["created_at"].as_i64().expect("created_at")
            < 60,
        "stopped within a minute of its start, not after the 600 s grace: {v}"
    );
    wait_for(async || free().await == idle, "the lease's room free again").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_meter_pause_topup_stop_with_change() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--grace-s", "60"]).await;
    // 3 sat = 3000 msat: about 2.7 s of one spinning vCPU with 64 MiB.
    let proofs = d.mint_credit(3).await;
    let CreatedLease {
        id,
        token,
        reply: v,
    } = d
        .create_lease(testguest_body("mode=spin:600000", credit_payment(&proofs)))
        .await;
    assert_eq!(v["balance_msat"], 3000);
    let boot = &v["boot"];
    for k in [
        "payment_verified_us",
        "ledger_committed_us",
        "vmm_spawned_us",
        "guest_ready_us",
    ] {
        assert!(boot[k].as_u64().is_some(), "boot figure {k}: {boot}");
    }
    // The guest's figure counts from the VMM's own time base (set when coinopd starts the
    // spawn, after the ledger commit); vmm_spawned is when coinopd's spawn call returned,
    // which on a loaded host can come after a test guest that is ready in a few ms.
    let at = |k: &str| boot[k].as_u64().expect("checked above");
    assert!(
        at("guest_ready_us") >= at("ledger_committed_us")
            && at("ledger_committed_us") >= at("payment_verified_us"),
        "boot figures out of order: {boot}"
    );

    let console = d
        .call(
            "GET",
            &format!("/v1/leases/{id}/console"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(console.status, 200);
    assert!(
        console.text().contains("coinop-testguest ready"),
        "{}",
        console.text()
    );

    // Minted before the pause: the lease's grace is only as long as it ran (~3 s).
    let more = d.mint_credit(5).await;
    let path = format!("/v1/leases/{id}");
    assert_eq!(
        d.call("GET", &path, Some(&token), None).await.json()["stops_at"],
        Value::Null,
        "a running lease has no stop deadline"
    );
    wait_for(
        async || {
            d.call("GET", &path, Some(&token), None).await.json()["state"] == "paused_unfunded"
        },
        "pause at zero",
    )
    .await;
    let paused = d.call("GET", &path, Some(&token), None).await.json();
    assert_eq!(paused["balance_msat"], 0);
    assert!(paused["used"]["vcpu_us"].as_u64().expect("vcpu_us") > 0);
    // Held unbilled no longer than it ran: the deadline is within twice the run (its
    // memory time says how long that was) of its start, not the 60 s `--grace-s` after
    // the pause. Its start is the create plus the boot (the reply's guest_ready, and the
    // ledger's mark after it); whole seconds on each end: 3 s of slack.
    let ran_s = paused["used"]["mem_mib_us"].as_u64().expect("mem_mib_us") / 64 / 1_000_000;
    let boot_s = v["boot"]["guest_ready_us"]
        .as_u64()
        .expect("guest_ready_us")
        / 1_000_000
        + 1;
    let stops_at = paused["stops_at"]
        .as_i64()
        .expect("a paused lease's stops_at");
    let created_at = paused["created_at"].as_i64().expect("created_at");
    assert!(
        stops_at - created_at <= (2 * ran_s + boot_s) as i64 + 3,
        "ran {ran_s} s, booted in {boot_s} s: {paused}"
    );

    let t = d
        .call(
            "POST",
            &format!("/v1/leases/{id}/topup"),
            Some(&token),
            Some(json!({"payment": {"credit": {"proofs": more}}})),
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["resumed"], true);
    assert_eq!(t.json()["state"], "running");

    let wallet = Wallet::new(&d).await;
    let blanks = wallet.outputs(&[1; 8]);
    let outputs: Vec<_> = blanks.iter().map(|b| &b.msg).collect();
    let s = d
        .call(
            "POST",
            &format!("/v1/leases/{id}/stop"),
            Some(&token),
            Some(json!({"outputs": outputs})),
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    let sv = s.json();
    assert_eq!(sv["state"], "stopped");
    let refund_sat = sv["refund_sat"].as_u64().expect("refund_sat");
    assert!(refund_sat > 0 && refund_sat <= 5, "{sv}");
    let sigs: Vec<payment::credit::nut_types::BlindSignature> =
        serde_json::from_value(sv["signatures"].clone()).expect("signatures");
    assert_eq!(sigs.iter().map(|s| s.amount).sum::<u64>(), refund_sat);
    let change = wallet.unblind(&blanks, &sigs);

    // The books balance after the whole life: paid = debited + refunded + residual, with
    // the sub-sat residual below one sat and kept on record.
    let done = d.call("GET", &path, Some(&token), None).await.json();
    let debited = done["debited_msat"].as_u64().expect("debited_msat");
    let refunded = done["refunded_msat"].as_u64().expect("refunded_msat");
    let residual = done["residual_msat"].as_u64().expect("residual_msat");
    assert_eq!(done["balance_msat"], 0, "{done}");
    assert_eq!(debited + refunded + residual, 8000, "{done}");
    assert_eq!(refunded, refund_sat * 1000, "{done}");
    assert_eq!(sv["residual_msat"].as_u64(), Some(residual), "{sv}");
    assert!(residual < 1000, "{done}");

    let m = d.call("GET", "/metrics", None, None).await.text();
    for needle in [
        r#"coinop_boots_total{result="ok"} 1"#,
        r#"coinop_boot_latency_us_count 1"#,
        r#"coinop_leases{state="stopped"} 1"#,
        r#"coinop_leases{state="running"} 0"#,
        r#"coinop_payments_total{kind="credit",result="verified"} 2"#,
        &format!("coinop_debited_msat_total {debited}"),
        &format!("coinop_refunded_msat_total {refunded}"),
        &format!("coinop_residual_msat_total {residual}"),
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }

    // The change verifies: the mint swaps it for fresh notes.
    let fresh = wallet.outputs(&change.iter().map(|p| p.amount).collect::<Vec<_>>());
    let sw = d
        .call(
            "POST",
            "/v1/swap",
            None,
            Some(json!({"inputs": change,
            "outputs": fresh.iter().map(|b| &b.msg).collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(sw.status, 200, "{}", sw.text());

    // The same stop again (as after a lost reply): the same signatures, i.e. the same notes,
    // which are spent now; other outputs get nothing.
    let again = d
        .call(
            "POST",
            &format!("/v1/leases/{id}/stop"),
            Some(&token),
            Some(json!({"outputs": outputs})),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["signatures"], sv["signatures"]);
    let other = wallet.outputs(&[1; 8]);
    let other: Vec<_> = other.iter().map(|b| &b.msg).collect();
    let refused = d
        .call(
            "POST",
            &format!("/v1/leases/{id}/stop"),
            Some(&token),
            Some(json!({"outputs": other})),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "already_refunded");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_readopts_running_guest_and_keeps_balance() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let payment = d.onchain_payment(60).await;
    let CreatedLease { id, token, .. } = d.create_lease(testguest_body("mode=echo", payment)).await;
    let path = format!("/v1/leases/{id}");
    wait_for(
        async || {
            d.call("GET", &path, Some(&token), None).await.json()["used"]["mem_mib_us"].as_u64()
                > Some(0)
        },
        "first debit",
    )
    .await;
    d.shutdown().await;
    let before: Value = {
        let ledger = coinopd::ledger::Ledger::open(&dir.path().join("ledger.db")).expect("ledger");
        serde_json::to_value(ledger.get(&id).expect("get").expect("row")).expect("json")
    };

    let d = Daemon::start(dir.path(), &[]).await;
    let after = d.call("GET", &path, Some(&token), None).await.json();
    assert_eq!(after["state"], "running", "{after}");
    assert!(after["balance_msat"].as_u64() <= before["balance_msat"].as_u64());
    let b0 = after["balance_msat"].as_u64().expect("balance");
    wait_for(
        async || {
            d.call("GET", &path, Some(&token), None).await.json()["balance_msat"].as_u64()
                < Some(b0)
        },
        "metering after re-adoption",
    )
    .await;
    let s = d.stop_lease(&id, &token).await;
    assert!(s.json()["refund_msat"].as_u64().expect("refund") > 0);
    d.shutdown().await;
}

/// A tenant's kernel command line reaches its guest through an open file, not the VMM's
/// arguments, which every local user can read in /proc/PID/cmdline; jailed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_command_line_is_not_in_its_vmms_arguments() {
    if !kvm_or_skip() {
        return;
    }
    let jailing: &[&[&str]] = if nix::unistd::geteuid().is_root() {
        &[&[], &["--no-jail"]]
    } else {
        &[&[]]
    };
    for extra in jailing {
        let dir = common::StateDir::new();
        let d = Daemon::start(dir.path(), extra).await;
        let word = format!("coinop.test_word={}", std::process::id());
        let proofs = d.mint_credit(20).await;
        let CreatedLease { id, token, .. } = d
            .create_lease(testguest_body(
                &format!("mode=count {word}"),
                credit_payment(&proofs),
            ))
            .await;
        // The guest got it: it counts, as mode=count says.
        let console = format!("/v1/leases/{id}/console");
        wait_for(
            async || {
                d.call("GET", &console, Some(&token), None)
                    .await
                    .text()
                    .contains("count 1")
            },
            "the guest's count, as its command line asks",
        )
        .await;
        let pid = common::lease_pid::lease_pid(dir.path(), &id);
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the VMM's arguments");
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        assert!(argv.contains("--cmdline-fd"), "{extra:?}: {argv}");
        assert!(
            !argv.contains("mode=count") && !argv.contains(&word),
            "{extra:?}: the tenant's command line is in the VMM's arguments: {argv}"
        );
        d.stop_lease(&id, &token).await;
        d.shutdown().await;
    }
}
