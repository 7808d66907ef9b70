//! `coinop chain add-headers FILE` with files longer than one request body holds: the CLI
//! splits them into requests that fit the daemon's body limit (and finds a smaller limit
//! from the daemon's 413), reports progress, and running it again adds nothing and fails
//! nothing.

mod common;

use std::process::Output;

use common::cli_process::coinop_async;
use common::Daemon;
use payment::onchain::regtest_fixtures::{header_bytes, RegtestChain};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn tip(d: &Daemon) -> (u64, String) {
    let h = d.call("GET", "/v1/host", None, None).await.json();
    (
        h["chain"]["height"].as_u64().expect("height"),
        h["chain"]["hash"].as_str().expect("hash").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_regtest_headers_go_in_four_requests_and_again_in_none_new() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    // Real regtest blocks (proof of work met, merkle roots of their coinbases), mined here.
    let mut chain = RegtestChain::new();
    chain.mine_empty(5_000, b"cli");
    let text: String = chain
        .headers_after(0)
        .iter()
        .map(|h| format!("{}\n", hex::encode(header_bytes(h))))
        .collect();
    let file = dir.path().join("headers.txt");
    std::fs::write(&file, text).expect("write");
    let path = file.to_str().expect("utf-8");

    let out = coinop_async(&d.socket, &["chain", "add-headers", path], &[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // 1608 headers fit 256 KiB: 1608 + 1608 + 1608 + 176.
    assert!(err.contains("5000 headers in 4 requests"), "{err}");
    assert_eq!(err.matches("coinop: headers ").count(), 4, "{err}");
    assert!(err.contains("headers 1608/5000 sent"), "{err}");
    let want_hash = chain.tip().block_hash().to_string();
    assert!(
        stdout(&out).contains(&format!("added 5000 header(s); tip 5000 {want_hash}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(tip(&d).await, (5_000, want_hash.clone()));

    // Again: every header is known; accepted, none added, same tip.
    let out = coinop_async(&d.socket, &["--json", "chain", "add-headers", path], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["added"], 0, "{v}");
    assert_eq!(v["tip"]["height"], 5000, "{v}");
    assert_eq!(v["tip"]["hash"], want_hash.as_str(), "{v}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_testnet3_headers_fit_a_smaller_daemon_limit_found_from_its_413() {
    // Bitcoin Core's test/functional/data/blockheader_testnet3.hex: 546 main-chain testnet3
    // headers (and two `fork:` lines, left out here); see ../shared/testdata/bitcoin/README.md.
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/testdata/bitcoin/blockheader_testnet3.hex"
    );
    let Ok(text) = std::fs::read_to_string(data) else {
        eprintln!("SKIPPED: {data} not found");
        return;
    };
    let main: String = text
        .lines()
        .filter(|l| !l.starts_with("fork:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(main.lines().count(), 546);
    let dir = common::StateDir::new();
    let file = dir.path().join("testnet3.hex");
    std::fs::write(&file, main).expect("write");
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let master =
        bitcoin::bip32::Xpriv::new_master(bitcoin::NetworkKind::Test, &[3u8; 32]).expect("xpriv");
    let tpub = bitcoin::bip32::Xpub::from_priv(&secp, &master).to_string();
    // 20,000 bytes hold 122 headers a request.
    let d = Daemon::start(
        dir.path(),
        &[
            "--network",
            "testnet",
            // These are testnet3's first headers: before its shipped checkpoint.
            "--chain-start",
            "genesis",
            "--xpub",
            &tpub,
            "--max-body-bytes",
            "20000",
        ],
    )
    .await;
    let out = coinop_async(
        &d.socket,
        &["chain", "add-headers", file.to_str().expect("utf-8")],
        &[],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("(413); sending fewer"), "{err}");
    assert!(err.contains("546 headers in"), "{err}");
    assert_eq!(
        tip(&d).await,
        (
            546,
            "000000002a936ca763904c3c35fce2f3556c559c0214345d31b1bcebf76acb70".to_string()
        )
    );
    d.shutdown().await;
}
