//! `coinop`, the operator and provisioning CLI: a thin client of coinopd's API over its Unix
//! socket. Prints the daemon's JSON (pretty by default, one line with `--json`).
//! Exit codes: 0 success, 1 the daemon refused (its error is printed), 2 usage or local
//! errors (bad file, cannot connect).

use std::io::Read;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lease::client::{Client, Reply};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "coinop", version, about = "client for coinopd")]
struct Cli {
    /// coinopd's socket.
    #[arg(
        long,
        env = "COINOP_SOCKET",
        default_value = "/run/coinop/coinop.sock",
        global = true
    )]
    socket: PathBuf,
    /// Print compact JSON (for scripts) instead of pretty JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    /// Lease commands.
    Lease {
        #[command(subcommand)]
        cmd: LeaseCmd,
    },
    /// Every lease (operator).
    Leases,
    /// Chain commands (operator).
    Chain {
        #[command(subcommand)]
        cmd: ChainCmd,
    },
    /// Demo helpers for regtest.
    Regtest {
        #[command(subcommand)]
        cmd: RegtestCmd,
    },
}

#[derive(Subcommand)]
enum LeaseCmd {
    /// Create a lease; the payment JSON (`{"onchain":{...}}` or `{"credit":{...}}`) comes
    /// from FILE or `-` (stdin).
    Create {
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        mem_mib: u64,
        #[arg(long, default_value = "testguest")]
        image: String,
        #[arg(long)]
        cmdline: Option<String>,
        #[arg(long)]
        payment: String,
    },
    Show {
        id: String,
        #[arg(long, env = "COINOP_TOKEN")]
        token: String,
    },
    /// Add a payment (FILE or `-`) to a lease; wakes a lease paused for lack of funds.
    Topup {
        id: String,
        #[arg(long, env = "COINOP_TOKEN")]
        token: String,
        #[arg(long)]
        payment: String,
    },
    /// Stop a lease; with --outputs FILE (a JSON array of blinded messages) the unused
    /// balance comes back as blind signatures.
    Stop {
        id: String,
        #[arg(long, env = "COINOP_TOKEN")]
        token: String,
        #[arg(long)]
        outputs: Option<String>,
    },
    /// The guest's serial console so far.
    Console {
        id: String,
        #[arg(long, env = "COINOP_TOKEN")]
        token: String,
    },
}

#[derive(Subcommand)]
enum ChainCmd {
    /// Push block headers: FILE holds hex headers, one per line (or a JSON array).
    PushHeaders { file: String },
}

#[derive(Subcommand)]
enum RegtestCmd {
    /// Pay a quote on the daemon's regtest chain (mines blocks in-process, pushes their
    /// headers) and print the `payment` JSON for `lease create --payment -`.
    Pay {
        #[arg(long)]
        quote_id: String,
    },
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("coinop: {msg}");
    std::process::exit(2);
}

fn read_input(name: &str) -> String {
    let mut s = String::new();
    let r = if name == "-" {
        std::io::stdin().read_to_string(&mut s).map(|_| ())
    } else {
        std::fs::read_to_string(name).map(|t| s = t)
    };
    if let Err(e) = r {
        fail(format!("reading {name}: {e}"));
    }
    s
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&read_input(name))
        .unwrap_or_else(|e| fail(format!("{name} is not JSON: {e}")))
}

fn print(v: &Value, compact: bool) {
    let text = if compact {
        v.to_string()
    } else {
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    };
    println!("{text}");
}

/// Prints a reply; a non-2xx reply prints the daemon's error on stderr and exits 1.
fn finish(r: Reply, compact: bool, raw_text: bool) {
    if !(200..300).contains(&r.status) {
        let v = r.json();
        let code = v["error"]["code"].as_str().unwrap_or("?");
        let msg = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| r.text());
        eprintln!("coinop: HTTP {} {code}: {msg}", r.status);
        if v.as_object().is_some_and(|o| o.len() > 1) {
            print(&v, compact);
        }
        std::process::exit(1);
    }
    if raw_text {
        print!("{}", r.text());
    } else {
        print(&r.json(), compact);
    }
}

async fn run(cli: Cli) {
    let c = Client::new(&cli.socket);
    let body = |v: Value| Some(serde_json::to_vec(&v).unwrap_or_default());
    let result = match cli.cmd {
        Cmd::Host => c.call("GET", "/v1/host", None, None).await,
        Cmd::Quote {
            vcpus,
            mem_mib,
            seconds,
            image,
        } => {
            let mut q = json!({"vcpus": vcpus, "mem_mib": mem_mib, "seconds": seconds});
            if let Some(i) = image {
                q["image"] = json!(i);
            }
            c.call("POST", "/v1/quotes", None, body(q)).await
        }
        Cmd::Leases => c.call("GET", "/v1/leases", None, None).await,
        Cmd::Lease { cmd } => match cmd {
            LeaseCmd::Create {
                vcpus,
                mem_mib,
                image,
                cmdline,
                payment,
            } => {
                let mut q = json!({"vcpus": vcpus, "mem_mib": mem_mib, "image": image,
                                   "payment": read_json(&payment)});
                if let Some(cl) = cmdline {
                    q["cmdline"] = json!(cl);
                }
                c.call("POST", "/v1/leases", None, body(q)).await
            }
            LeaseCmd::Show { id, token } => {
                c.call("GET", &format!("/v1/leases/{id}"), Some(&token), None)
                    .await
            }
            LeaseCmd::Topup { id, token, payment } => {
                let q = json!({"payment": read_json(&payment)});
                c.call(
                    "POST",
                    &format!("/v1/leases/{id}/topup"),
                    Some(&token),
                    body(q),
                )
                .await
            }
            LeaseCmd::Stop { id, token, outputs } => {
                let q = match outputs {
                    Some(f) => json!({"outputs": read_json(&f)}),
                    None => json!({}),
                };
                c.call(
                    "POST",
                    &format!("/v1/leases/{id}/stop"),
                    Some(&token),
                    body(q),
                )
                .await
            }
            LeaseCmd::Console { id, token } => {
                match c
                    .call(
                        "GET",
                        &format!("/v1/leases/{id}/console"),
                        Some(&token),
                        None,
                    )
                    .await
                {
                    Ok(r) => return finish(r, cli.json, true),
                    Err(e) => fail(e),
                }
            }
        },
        Cmd::Chain {
            cmd: ChainCmd::PushHeaders { file },
        } => {
            let text = read_input(&file);
            let headers: Vec<String> = match serde_json::from_str::<Vec<String>>(&text) {
                Ok(h) => h,
                Err(_) => text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
            };
            c.call(
                "POST",
                "/v1/chain/headers",
                None,
                body(json!({"headers": headers})),
            )
            .await
        }
        Cmd::Regtest {
            cmd: RegtestCmd::Pay { quote_id },
        } => match lease::regtest_pay::pay_quote(&c, &quote_id).await {
            Ok(p) => return print(&p, cli.json),
            Err(e) => {
                eprintln!("coinop: {e}");
                std::process::exit(1);
            }
        },
    };
    match result {
        Ok(r) => finish(r, cli.json, false),
        Err(e) => fail(e),
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("runtime: {e}")));
    rt.block_on(run(cli));
}
