//! `coinop wallet …` and `coinop lease stop --change`: the commands that need the tenant's
//! wallet file as well as the daemon, so they are more than one API call each.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::args::WalletCmd;
use crate::client::Client;
use crate::commands::encode;
use crate::exit::{print_raw, Exit, DAEMON_ERROR};
use crate::human;
use crate::wallet::{Wallet, WalletError};
use crate::wallet_commands::{
    credit_payment, mint_regtest, stop_with_change, Stopped, WalletCmdError,
};

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
        other => Exit {
            code: DAEMON_ERROR,
            message: other.to_string(),
        },
    }
}

pub async fn run(c: &Client, cmd: &WalletCmd, path: &Path, json_mode: bool) -> Result<(), Exit> {
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
            let p = credit_payment(&mut w, *amount).map_err(cmd_exit)?;
            print_raw(&encode(&p)?);
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
