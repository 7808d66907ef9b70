//! `coinop wallet …` and `coinop lease stop --change`: the commands that need the tenant's
//! wallet file as well as the daemon, so they are more than one API call each.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::args::WalletCmd;
use crate::client::Client;
use crate::commands::encode;
use crate::exit::{print_raw, Exit, DAEMON_ERROR};
use crate::wallet::{Sent, Wallet, WalletError};
use crate::wallet_commands::{
    check, credit_payment, mint_regtest, receive_token, restore, send_token, stop_with_change,
    Received, Stopped, WalletCmdError,
};
use crate::wallet_seed::Seed;
use crate::{human, input};

/// `wallet balance --json`.
#[derive(Serialize)]
struct Balance {
    balance_sat: u64,
}

/// `wallet mint --json`.
#[derive(Serialize)]
struct Minted {
    minted_sat: u64,
    balance_sat: u64,
}

/// `wallet receive --json`.
#[derive(Serialize)]
struct ReceivedJson {
    received_sat: u64,
    /// The token had been received before; nothing new came in.
    already_received: bool,
    balance_sat: u64,
}

/// `wallet init --json`.
#[derive(Serialize)]
struct Initialised {
    wallet: String,
    seed_file: Option<String>,
    /// Shown once, at creation.
    seed_phrase: Option<String>,
}

/// `wallet check --json`.
#[derive(Serialize)]
struct Checked {
    spent_notes_dropped: usize,
    claimed_tokens_dropped: usize,
    balance_sat: u64,
}

/// The mint URL tokens name when none is given: the socket as an `http+unix` URL (the
/// path percent-encoded into the host part, as HTTP-over-Unix-socket clients write it).
pub fn default_mint_url(socket: &Path) -> String {
    let mut host = String::new();
    for b in socket.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                host.push(char::from(*b))
            }
            _ => host.push_str(&format!("%{b:02X}")),
        }
    }
    format!("http+unix://{host}")
}

/// `$COINOP_WALLET`, else `~/.coinop/wallet.json`.
pub fn default_wallet_path() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".coinop").join("wallet.json")
}

fn open(path: &Path) -> Result<Wallet, Exit> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Exit::usage(format!("creating {}: {e}", dir.display())))?;
    }
    Wallet::open(path).map_err(wallet_exit)
}

fn wallet_exit(e: WalletError) -> Exit {
    Exit::usage(e.to_string())
}

fn cmd_exit(e: WalletCmdError) -> Exit {
    match e {
        WalletCmdError::Client(c) => Exit::from_client(c),
        WalletCmdError::Pay(p) => Exit::from_pay(p),
        WalletCmdError::Wallet(w) => wallet_exit(w),
        // A token that is not one, or not this mint's: the input is wrong.
        e @ (WalletCmdError::Token(_)
        | WalletCmdError::OtherMint { .. }
        | WalletCmdError::Unit(_)
        | WalletCmdError::BelowFee { .. }) => Exit::usage(e.to_string()),
        other => Exit {
            code: DAEMON_ERROR,
            message: other.to_string(),
        },
    }
}

pub async fn run(
    c: &Client,
    cmd: &WalletCmd,
    path: &Path,
    mint_url: &str,
    json_mode: bool,
) -> Result<(), Exit> {
    let mut w = open(path)?;
    match cmd {
        WalletCmd::Balance => {
            let sat = w.balance_sat();
            if json_mode {
                print_raw(&encode(&Balance { balance_sat: sat })?);
            } else {
                println!("{sat} sat in {}", path.display());
            }
        }
        WalletCmd::Mint { amount } => {
            let got = mint_regtest(c, &mut w, *amount).await.map_err(cmd_exit)?;
            if json_mode {
                print_raw(&encode(&Minted {
                    minted_sat: got,
                    balance_sat: w.balance_sat(),
                })?);
            } else {
                println!("minted {got} sat; wallet holds {} sat", w.balance_sat());
            }
        }
        WalletCmd::Pay { amount } => {
            // Always JSON: it is meant for `lease create --payment -`.
            let p = credit_payment(c, &mut w, *amount, mint_url)
                .await
                .map_err(cmd_exit)?;
            print_raw(&encode(&p)?);
        }
        WalletCmd::Send { amount, v3 } => {
            // Always the token alone on stdout, so it can be piped or copied.
            let token = send_token(c, &mut w, *amount, mint_url, *v3)
                .await
                .map_err(cmd_exit)?;
            println!("{token}");
        }
        WalletCmd::Receive { token } => {
            let text = input::read_token(token)?;
            let Received { amount_sat, again } =
                receive_token(c, &mut w, &text).await.map_err(cmd_exit)?;
            if json_mode {
                print_raw(&encode(&ReceivedJson {
                    received_sat: amount_sat,
                    already_received: again,
                    balance_sat: w.balance_sat(),
                })?);
            } else if again {
                println!(
                    "this token was received before ({amount_sat} sat); wallet holds {} sat",
                    w.balance_sat()
                );
            } else {
                println!(
                    "received {amount_sat} sat (DLEQ-checked); wallet holds {} sat",
                    w.balance_sat()
                );
            }
        }
        WalletCmd::Init { seed } => {
            let phrase = if *seed {
                Some(w.init_seed().map_err(wallet_exit)?)
            } else {
                None
            };
            w.save_now().map_err(wallet_exit)?;
            let seed_file = w
                .is_deterministic()
                .then(|| crate::wallet_seed::seed_path(path).display().to_string());
            if json_mode {
                print_raw(&encode(&Initialised {
                    wallet: path.display().to_string(),
                    seed_file,
                    seed_phrase: phrase,
                })?);
            } else {
                println!("wallet {}", path.display());
                if let (Some(p), Some(f)) = (phrase, seed_file) {
                    println!("seed phrase (write it down; `coinop wallet restore` needs it):");
                    println!("{p}");
                    println!("kept in {f} (mode 0600)");
                }
            }
        }
        WalletCmd::Restore { seed_phrase } => {
            let text = input::read_text(seed_phrase)?;
            let seed =
                Seed::from_phrase(&text).map_err(|e| Exit::usage(format!("{seed_phrase}: {e}")))?;
            let r = restore(c, &mut w, seed).await.map_err(cmd_exit)?;
            if json_mode {
                print_raw(&encode(&r)?);
            } else {
                println!(
                    "restored {} sat ({} notes signed for this seed, spent ones dropped); \
                     wallet holds {} sat",
                    r.restored_sat, r.found, r.balance_sat
                );
            }
        }
        WalletCmd::Outbox => {
            let sent: &[Sent] = w.outbox();
            if json_mode {
                print_raw(&encode(&sent)?);
            } else {
                for s in sent {
                    println!("{} sat  {}", s.amount_sat, s.token);
                }
            }
        }
        WalletCmd::Check => {
            let (spent, claimed) = check(c, &mut w).await.map_err(cmd_exit)?;
            if json_mode {
                print_raw(&encode(&Checked {
                    spent_notes_dropped: spent,
                    claimed_tokens_dropped: claimed,
                    balance_sat: w.balance_sat(),
                })?);
            } else {
                println!(
                    "{spent} spent notes and {claimed} claimed tokens dropped; wallet holds {} sat",
                    w.balance_sat()
                );
            }
        }
    }
    Ok(())
}

/// `lease stop ID --change`: blanks from the wallet, the stop, the change back into it.
pub async fn stop(
    c: &Client,
    id: &str,
    token: &str,
    path: &Path,
    json_mode: bool,
) -> Result<(), Exit> {
    let mut w = open(path)?;
    let Stopped {
        reply,
        body,
        received_sat,
        resent,
    } = stop_with_change(c, &mut w, id, token)
        .await
        .map_err(cmd_exit)?;
    if resent {
        eprintln!(
            "coinop: sent an earlier stop of {id} again with the change outputs kept in {}",
            path.display()
        );
    }
    if json_mode {
        print_raw(&body);
    } else {
        // The state and refund lines as `lease stop` shows them; the change line differs,
        // since the signatures are already unblinded into the wallet.
        let shown = human::stopped(&reply);
        for line in shown.lines().filter(|l| !l.starts_with("change")) {
            println!("{line}");
        }
        println!(
            "change     {received_sat} sat into {} (DLEQ-checked); wallet holds {} sat",
            path.display(),
            w.balance_sat()
        );
    }
    Ok(())
}
