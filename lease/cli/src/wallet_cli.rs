//! `coinop wallet …` and `coinop lease stop --change`: the commands that need the tenant's
//! wallet file as well as the daemon, so they are more than one API call each.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::args::WalletCmd;
use crate::client::Client;
use crate::commands::encode;
use crate::exit::{note, print_raw, Exit, DAEMON_ERROR};
use crate::wallet::{Sent, Wallet, WalletError};
use crate::wallet_commands::{
    check, credit_payment, drop_swap, mint_regtest, receive_token, restore, send_token,
    stop_with_change, Received, Stopped, WalletCmdError,
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
        crate::durable::create_dirs(dir)
            .map_err(|e| Exit::usage(format!("creating {}: {}", e.path.display(), e.source)))?;
    }
    Wallet::open(path).map_err(wallet_exit)
}

fn wallet_exit(e: WalletError) -> Exit {
    match e {
        // The daemon's mint answered with signatures the wallet cannot take: its answer is
        // at fault (exit 1), not the command line.
        WalletError::TooManySignatures { .. }
        | WalletError::TooFewSignatures { .. }
        | WalletError::NotAsked { .. }
        | WalletError::NoKey { .. }
        | WalletError::BadSignature { .. } => Exit {
            code: DAEMON_ERROR,
            message: e.to_string(),
        },
        other => Exit::usage(other.to_string()),
    }
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

/// What was written on stdout: the JSON with `--json`, else the text.
fn json_or_text(json_mode: bool, json: &impl Serialize, text: String) -> Result<Vec<u8>, Exit> {
    if json_mode {
        encode(json)
    } else {
        Ok(text.into_bytes())
    }
}

/// Writes a command's answer; when stdout refuses it, exit 4 saying where what the command
/// did is kept (`again`): the wallet changed already, so the tenant must not think it
/// failed and undo it, nor run it again blindly.
fn answer(body: &[u8], again: &str) -> Result<(), Exit> {
    print_raw(body).map_err(|e| Exit::output(&e, again))
}

/// Said when a command that changed the wallet cannot show what it did.
const IN_WALLET: &str = "it was done: `coinop wallet balance` shows the wallet";
/// Said when notes went out as a token that was not shown.
const IN_OUTBOX: &str = "the notes left the wallet as a token kept in its outbox: \
                         `coinop wallet outbox` shows it, `coinop wallet receive` takes it back";

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
            let body = json_or_text(
                json_mode,
                &Balance { balance_sat: sat },
                format!("{sat} sat in {}", path.display()),
            )?;
            answer(&body, "nothing changed: run it again")?;
        }
        WalletCmd::Mint { amount } => {
            let got = mint_regtest(c, &mut w, *amount).await.map_err(cmd_exit)?;
            let body = json_or_text(
                json_mode,
                &Minted {
                    minted_sat: got,
                    balance_sat: w.balance_sat(),
                },
                format!("minted {got} sat; wallet holds {} sat", w.balance_sat()),
            )?;
            answer(&body, IN_WALLET)?;
        }
        WalletCmd::Pay { amount } => {
            // Always JSON: it is meant for `lease create --payment -`.
            let p = credit_payment(c, &mut w, *amount, mint_url)
                .await
                .map_err(cmd_exit)?;
            answer(&encode(&p)?, IN_OUTBOX)?;
        }
        WalletCmd::Send { amount, v3 } => {
            // Always the token alone on stdout, so it can be piped or copied.
            let token = send_token(c, &mut w, *amount, mint_url, *v3)
                .await
                .map_err(cmd_exit)?;
            answer(token.as_bytes(), IN_OUTBOX)?;
        }
        WalletCmd::Receive { token } => {
            let text = input::read_token(token)?;
            let Received { amount_sat, again } =
                receive_token(c, &mut w, &text).await.map_err(cmd_exit)?;
            let human = if again {
                format!(
                    "this token was received before ({amount_sat} sat); wallet holds {} sat",
                    w.balance_sat()
                )
            } else {
                format!(
                    "received {amount_sat} sat (DLEQ-checked); wallet holds {} sat",
                    w.balance_sat()
                )
            };
            let body = json_or_text(
                json_mode,
                &ReceivedJson {
                    received_sat: amount_sat,
                    already_received: again,
                    balance_sat: w.balance_sat(),
                },
                human,
            )?;
            answer(&body, IN_WALLET)?;
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
            let mut human = format!("wallet {}", path.display());
            if let (Some(p), Some(f)) = (&phrase, &seed_file) {
                human.push_str(&format!(
                    "\nseed phrase (write it down; `coinop wallet restore` needs it):\n{p}\n\
                     kept in {f} (mode 0600)"
                ));
            }
            let again = match &seed_file {
                Some(f) => format!("the wallet is made; its seed phrase is in {f}"),
                None => "the wallet is made".to_string(),
            };
            let body = json_or_text(
                json_mode,
                &Initialised {
                    wallet: path.display().to_string(),
                    seed_file,
                    seed_phrase: phrase,
                },
                human,
            )?;
            answer(&body, &again)?;
        }
        WalletCmd::Restore { seed_phrase } => {
            let text = input::read_text(seed_phrase)?;
            let seed =
                Seed::from_phrase(&text).map_err(|e| Exit::usage(format!("{seed_phrase}: {e}")))?;
            let r = restore(c, &mut w, seed).await.map_err(cmd_exit)?;
            let human = format!(
                "restored {} sat ({} notes signed for this seed, spent ones dropped); \
                 wallet holds {} sat",
                r.restored_sat, r.found, r.balance_sat
            );
            answer(&json_or_text(json_mode, &r, human)?, IN_WALLET)?;
        }
        WalletCmd::Outbox => {
            let sent: &[Sent] = w.outbox();
            let human = sent
                .iter()
                .map(|s| format!("{} sat  {}\n", s.amount_sat, s.token))
                .collect::<String>();
            let body = json_or_text(json_mode, &sent, human)?;
            // No tokens, no lines (as before): the final newline is print_raw's alone.
            if !body.is_empty() {
                answer(&body, "nothing changed: run it again")?;
            }
        }
        WalletCmd::Check => {
            let (spent, claimed) = check(c, &mut w).await.map_err(cmd_exit)?;
            let body = json_or_text(
                json_mode,
                &Checked {
                    spent_notes_dropped: spent,
                    claimed_tokens_dropped: claimed,
                    balance_sat: w.balance_sat(),
                },
                format!(
                    "{spent} spent notes and {claimed} claimed tokens dropped; wallet holds {} sat",
                    w.balance_sat()
                ),
            )?;
            answer(&body, IN_WALLET)?;
        }
        WalletCmd::DropSwap { batch } => {
            let d = drop_swap(c, &mut w, batch).await.map_err(cmd_exit)?;
            let human = if !d.dropped {
                format!(
                    "swap {} was settled after all: {} sat into the wallet; wallet holds {} sat",
                    d.batch,
                    d.settled_sat,
                    w.balance_sat()
                )
            } else {
                format!(
                    "swap {} dropped: {} sat of its inputs spent elsewhere given up, {} sat \
                     back in the wallet; wallet holds {} sat",
                    d.batch,
                    d.given_up_sat,
                    d.returned_sat,
                    w.balance_sat()
                )
            };
            answer(&json_or_text(json_mode, &d, human)?, IN_WALLET)?;
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
        note(&format!(
            "sent an earlier stop of {id} again with the change outputs kept in {}",
            path.display()
        ));
    }
    let body = if json_mode {
        body.to_vec()
    } else {
        // The state and refund lines as `lease stop` shows them; the change line differs,
        // since the signatures are already unblinded into the wallet.
        let shown = human::stopped(&reply);
        let mut text: String = shown
            .lines()
            .filter(|l| !l.starts_with("change"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!(
            "change     {received_sat} sat into {} (DLEQ-checked); wallet holds {} sat",
            path.display(),
            w.balance_sat()
        ));
        text.into_bytes()
    };
    answer(
        &body,
        "the lease is stopped and its change is in the wallet (`coinop wallet balance`)",
    )
}
