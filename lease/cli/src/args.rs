//! `coinop`'s flags and subcommands (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::HELP;

// Every subcommand enum below is `#[command(defer = true)]`: clap then builds a subcommand's
// arguments only when that subcommand is the one invoked (or its help is asked for), not
// the whole tree at every start. The tree is most of the code `coinop` runs before it
// sends a request (`coinop --version`: ~31,000 distinct instructions without, ~17,000
// with; a `lease create`: ~69,000 and ~57,000, counted by valgrind), and a tenant's
// `lease create` is on the way from payment to a running guest: natively that is well
// under a millisecond, but in the nested lab, where every new instruction is translated
// by QEMU, it was tens of ms of the create's start.

#[derive(Debug, Parser)]
#[command(
    name = "coinop",
    version,
    about = "coinop: client for coinopd (operators and provisioning scripts)",
    long_about = "coinop: client for coinopd, over its Unix socket.\n\
                  Human-readable output by default; --json prints the daemon's JSON exactly \
                  as it answered (one document per call) for scripts.",
    after_help = HELP
)]
pub struct Cli {
    /// coinopd's socket.
    #[arg(
        long,
        env = "COINOP_SOCKET",
        default_value = "/run/coinop/coinop.sock",
        global = true
    )]
    pub socket: PathBuf,
    /// Print the daemon's JSON answer exactly as received (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each of the daemon's answers before giving up (exit 3).
    #[arg(
        long,
        env = "COINOP_TIMEOUT",
        value_name = "SECS",
        default_value_t = crate::client::DEFAULT_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    pub timeout: u64,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Cmd {
    /// Host info: network, chain tip, capacity, prices, images.
    Host,
    /// Price a lease and get a fresh address to pay.
    Quote {
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        mem_mib: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        image: Option<String>,
    },
    /// Lease commands: create, show, topup, stop, console.
    Lease {
        #[command(subcommand)]
        cmd: LeaseCmd,
    },
    /// Every lease, without tokens (operator).
    Leases,
    /// Chain commands (operator).
    Chain {
        #[command(subcommand)]
        cmd: ChainCmd,
    },
    /// The mint's keysets (operator).
    Keysets {
        #[command(subcommand)]
        cmd: KeysetsCmd,
    },
    /// Demo helpers for regtest.
    Regtest {
        #[command(subcommand)]
        cmd: RegtestCmd,
    },
    /// The tenant's credit wallet (Cashu notes in a local file).
    Wallet {
        #[command(subcommand)]
        cmd: WalletCmd,
        #[command(flatten)]
        wallet: WalletArg,
    },
}

/// Where the tenant's wallet file is.
#[derive(Debug, Clone, Args)]
pub struct WalletArg {
    /// The wallet file (created on first use, mode 0600; a seeded wallet keeps its phrase
    /// beside it in <name>.seed, 0600) [default: ~/.coinop/wallet.json].
    #[arg(
        long = "wallet",
        env = "COINOP_WALLET",
        value_name = "FILE",
        global = true
    )]
    pub path: Option<PathBuf>,
    /// The mint URL written into the tokens the wallet sends (other wallets reach the mint
    /// there) [default: http+unix://<the socket, percent-encoded>].
    #[arg(long, env = "COINOP_MINT_URL", value_name = "URL", global = true)]
    pub mint_url: Option<String>,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum WalletCmd {
    /// How much credit the wallet holds.
    Balance,
    /// Mint credit paid on the daemon's regtest chain (demo: mines the payment in-process).
    Mint {
        /// sat to mint.
        #[arg(long)]
        amount: u64,
    },
    /// Take notes worth exactly AMOUNT sat out of the wallet (swapping at the mint first
    /// when no notes add up to it, so the change stays) and print them as a `payment` for
    /// `lease create --payment -` or `lease topup --payment -`. They are kept in the outbox.
    Pay {
        /// sat to pay.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        amount: u64,
    },
    /// Print a Cashu token worth exactly AMOUNT sat (`cashuB`, V4) for another wallet
    /// (swapping at the mint first when no notes add up to it). The token is kept in the
    /// wallet's outbox until `wallet check` sees it claimed.
    Send {
        /// sat to send.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        amount: u64,
        /// Print a V3 `cashuA` token instead (for wallets that read nothing newer).
        #[arg(long)]
        v3: bool,
    },
    /// Swap a Cashu token (cashuA or cashuB) of this mint into the wallet, checking its
    /// DLEQ proofs. Safe to repeat: a token received before is reported, not refused.
    Receive {
        /// The token itself, a file holding it, or `-` for stdin.
        #[arg(value_name = "TOKEN|FILE|-")]
        token: String,
    },
    /// Make the wallet deterministic (NUT-13): with --seed, a new 12-word seed phrase is
    /// made, kept beside the wallet (<name>.seed, 0600) and printed once; write it down,
    /// `wallet restore` brings the notes back from it. Notes made before stay as they are.
    Init {
        /// Make a seed phrase (without it, init only creates the wallet file).
        #[arg(long)]
        seed: bool,
    },
    /// Restore a wallet from its NUT-13 seed phrase: the mint gives back its signatures on
    /// the phrase's outputs (NUT-09), spent notes are dropped (NUT-07), and the wallet
    /// becomes deterministic with that phrase.
    Restore {
        /// The file holding the 12 or 24 words, or `-` for stdin.
        #[arg(long, value_name = "FILE|-", default_value = "-")]
        seed_phrase: String,
    },
    /// Tokens and payments sent that `wallet check` has not seen claimed yet (receive one
    /// back with `wallet receive` if it never reached anyone).
    Outbox,
    /// Ask the mint (NUT-07) which held notes are spent and which sent tokens were
    /// claimed, and forget those.
    Check,
    /// Give up a swap that stays unsettled because its inputs were spent by another
    /// request (a received token whose sender spent it twice). The mint is asked once more
    /// first: signatures it holds on the swap's outputs settle it, and an input still
    /// pending keeps it. Its inputs still unspent come back when they were this wallet's.
    /// Only for a swap you know nobody will answer for.
    DropSwap {
        /// The swap's name, as the "swap NAME is not settled" note gives it.
        batch: String,
    },
}

/// How a create or top-up pays: exactly one of --payment, --credit, --tx/--proof/--quote-id,
/// or --quote-id alone (the host saw the payment itself).
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = true)]
pub struct PaymentArgs {
    /// The whole `payment` JSON object (`{"onchain":{...}}` or `{"credit":{...}}`) from FILE,
    /// or `-` for stdin.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["credit", "tx", "proof", "quote_id"])]
    pub payment: Option<String>,
    /// Cashu credit: a token (`cashuA…`/`cashuB…`), or FILE (`-` for stdin) holding a token,
    /// a JSON array of proofs or `{"proofs": [...]}`.
    #[arg(long, value_name = "TOKEN|FILE|-", conflicts_with_all = ["tx", "proof", "quote_id"])]
    pub credit: Option<String>,
    /// On-chain: the raw paying transaction, hex (or @FILE).
    #[arg(long, value_name = "HEX", requires_all = ["proof", "quote_id"])]
    pub tx: Option<String>,
    /// On-chain: the `gettxoutproof` output for it, hex (or @FILE).
    #[arg(long, value_name = "HEX", requires_all = ["tx", "quote_id"])]
    pub proof: Option<String>,
    /// On-chain: the quote the transaction pays. Alone (no --tx/--proof): pay by quote id,
    /// from any wallet, once the host has seen the payment in a block from its Bitcoin
    /// peers (`coinopd --bitcoin-peer`).
    #[arg(long, value_name = "Q")]
    pub quote_id: Option<String>,
}

/// The lease's bearer token.
#[derive(Debug, Clone, Args)]
pub struct TokenArg {
    /// The token shown at creation.
    #[arg(long, env = "COINOP_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum LeaseCmd {
    /// Create a lease; the payment travels with the request. Safe to repeat: a recovery
    /// key is kept in a file before sending, so if the reply is lost, running the same
    /// command again gets the lease the payment made (with a new token) instead of 409.
    Create {
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        mem_mib: u64,
        #[arg(long, default_value = "testguest")]
        image: String,
        #[arg(long)]
        cmdline: Option<String>,
        /// OpenSSH public key (the text, or @FILE) authorised for root in the guest.
        #[arg(long)]
        ssh_key: Option<String>,
        #[command(flatten)]
        pay: PaymentArgs,
        /// Where this create's recovery key is kept until coinopd answers (created 0600
        /// before sending; reused when it exists)
        /// [default: ~/.coinop/creates/<hash of the payment>.key].
        #[arg(long, value_name = "FILE")]
        recovery_key_file: Option<PathBuf>,
        /// How many times to resend when the reply is lost (1 s apart; at most 1000).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
        retries: u32,
    },
    /// State, balance, usage and boot figures of a lease.
    Show {
        #[arg(value_parser = lease_id)]
        id: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Add a payment to a lease; wakes a lease paused for lack of funds.
    Topup {
        #[arg(value_parser = lease_id)]
        id: String,
        #[command(flatten)]
        token: TokenArg,
        #[command(flatten)]
        pay: PaymentArgs,
    },
    /// Stop a lease; with --outputs FILE (a JSON array of blinded messages) the unused
    /// balance comes back as blind signatures.
    Stop {
        #[arg(value_parser = lease_id)]
        id: String,
        #[command(flatten)]
        token: TokenArg,
        #[arg(long, value_name = "FILE|-", conflicts_with = "change")]
        outputs: Option<String>,
        /// Collect the change into the wallet (makes the blank outputs, unblinds the
        /// signatures, checks their DLEQ proofs).
        #[arg(long)]
        change: bool,
        #[command(flatten)]
        wallet: WalletArg,
    },
    /// The guest's serial console so far (text, also with --json).
    Console {
        #[arg(value_parser = lease_id)]
        id: String,
        #[command(flatten)]
        token: TokenArg,
    },
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum ChainCmd {
    /// Add block headers: FILE (`-` for stdin) holds hex headers, one per line, or a JSON
    /// array of them, oldest first. A long file is sent in as many requests as the daemon's
    /// body limit needs (progress on stderr); headers the daemon has already are skipped, so
    /// running it again is safe.
    #[command(visible_alias = "push-headers")]
    AddHeaders {
        #[arg(value_name = "FILE|-")]
        file: String,
        /// The daemon's body limit (its --max-body-bytes), bytes; a smaller daemon limit is
        /// found from its 413 answers anyway.
        #[arg(long, default_value_t = coinop_proto::requests::DEFAULT_MAX_BODY_BYTES)]
        max_body_bytes: usize,
    },
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum KeysetsCmd {
    /// Make a new keyset the one that signs; the old ones keep accepting notes. On a fleet
    /// (`coinopd --store`) every host of the fleet rotates with it.
    Rotate,
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum RegtestCmd {
    /// Pay a quote on the daemon's regtest chain (mines blocks in-process, adds their
    /// headers) and print the `payment` JSON for `lease create --payment -`.
    Pay {
        #[arg(long)]
        quote_id: String,
    },
}

/// Parses the command line; a usage error is one line (clap's first line, naming the flag).
pub fn parse() -> Result<Cli, crate::exit::Exit> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                let code = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    crate::exit::USAGE
                } else {
                    crate::exit::OK
                };
                crate::exit::Exit {
                    code,
                    message: String::new(),
                }
            }
            _ => {
                // clap's first paragraph says what is wrong and names the flag(s); the
                // tips and usage after it would make the message many lines long.
                let text = e.render().to_string();
                let first: Vec<&str> = text
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                let first = first.join(" ");
                let first = first.trim_start_matches("error: ");
                crate::exit::Exit::usage(format!("{first} (see coinop --help)"))
            }
        }
    })
}

/// A lease id as coinopd makes them (letters, digits, `-` and `_`): it goes into the
/// request's path as it is, where a `/`, `?` or `..` would name another route.
fn lease_id(s: &str) -> Result<String, String> {
    let plain = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        Ok(s.to_string())
    } else {
        Err("not a lease id (letters, digits, - and _, at most 64)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_whole_tree_is_consistent_with_deferred_subcommands() {
        // Builds every deferred subcommand and runs clap's own definition checks on it.
        Cli::command().debug_assert();
    }

    /// `line` split at spaces, as a shell would pass it.
    fn words(line: &str) -> Vec<&str> {
        line.split(' ').collect()
    }

    #[test]
    fn a_deferred_subcommand_parses_its_arguments_and_the_global_ones() {
        let cli = Cli::try_parse_from(words(
            "coinop lease create --vcpus 2 --mem-mib 256 --image srv --credit cashuBx \
             --socket /tmp/s.sock --json",
        ))
        .expect("a valid create");
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/s.sock"));
        let Cmd::Lease {
            cmd:
                LeaseCmd::Create {
                    vcpus,
                    mem_mib,
                    image,
                    pay,
                    retries,
                    ..
                },
        } = cli.cmd
        else {
            panic!("parsed as {:?}", cli.cmd);
        };
        assert_eq!(
            (vcpus, mem_mib, image.as_str(), retries),
            (2, 256, "srv", 3)
        );
        assert_eq!(pay.credit.as_deref(), Some("cashuBx"));
    }

    #[test]
    fn a_deferred_subcommand_still_refuses_what_it_does_not_know() {
        for line in [
            "coinop lease create --vcpus 1 --mem-mib 64 --bogus",
            "coinop lease create --mem-mib 64",
            "coinop wallet pay",
            "coinop lease create --vcpus 1 --mem-mib 64 --retries 1001",
        ] {
            let e = Cli::try_parse_from(words(line)).expect_err("refused");
            assert_ne!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{line}: {e}");
        }
        let help = Cli::try_parse_from(["coinop", "lease", "create", "--help"]).expect_err("help");
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("--recovery-key-file"), "{help}");
    }
}
