//! The `coinop` command line: arguments, how each command maps onto one API call, and how
//! the answer is shown (human text by default, the daemon's JSON byte for byte with
//! `--json`). Exit codes are part of the interface: see [`exit`].

use serde_json::{json, Value};

use crate::args::{ChainCmd, Cli, Cmd, LeaseCmd, PaymentArgs, RegtestCmd};
use crate::client::{Client, Reply};
use crate::exit::Exit;
use crate::{create_retry, human, input, wallet_cli};

/// How a successful reply is shown.
#[derive(Debug, Clone, Copy)]
pub enum View {
    Host,
    Quote,
    Created,
    Lease,
    Topup,
    Stopped,
    Leases,
    Headers,
    /// The body is text (the console): shown as is in both modes.
    Text,
}

/// One API call the command line asked for.
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Value>,
    pub view: View,
}

impl Call {
    fn get(path: impl Into<String>, view: View) -> Call {
        Call {
            method: "GET",
            path: path.into(),
            token: None,
            body: None,
            view,
        }
    }

    fn post(path: impl Into<String>, body: Value, view: View) -> Call {
        Call {
            method: "POST",
            path: path.into(),
            token: None,
            body: Some(body),
            view,
        }
    }

    fn with_token(mut self, token: String) -> Call {
        self.token = Some(token);
        self
    }
}

/// Turns a lease or top-up's payment flags into the API's `payment` object.
fn payment(p: &PaymentArgs) -> Result<Value, Exit> {
    if let Some(name) = &p.payment {
        return input::read_json(name);
    }
    if let Some(name) = &p.credit {
        return Ok(json!({"credit": {"proofs": input::read_proofs(name)?}}));
    }
    match (&p.tx, &p.proof, &p.quote_id) {
        (Some(tx), Some(proof), Some(quote)) => Ok(json!({"onchain": {
            "quote_id": quote,
            "tx_hex": input::read_hex("--tx", tx)?,
            "proof_hex": input::read_hex("--proof", proof)?,
        }})),
        // clap enforces the group; this is the message if it ever lets one through.
        _ => Err(Exit::usage(
            "a payment needs --payment FILE, --credit FILE, or --tx, --proof and --quote-id",
        )),
    }
}

/// The API call for a command (local input is read and checked here).
pub fn call_for(cmd: Cmd) -> Result<Call, Exit> {
    Ok(match cmd {
        Cmd::Host => Call::get("/v1/host", View::Host),
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
            Call::post("/v1/quotes", q, View::Quote)
        }
        Cmd::Leases => Call::get("/v1/leases", View::Leases),
        Cmd::Lease { cmd } => lease_call(cmd)?,
        Cmd::Chain {
            cmd: ChainCmd::AddHeaders { file },
        } => Call::post(
            "/v1/chain/headers",
            json!({"headers": input::read_headers(&file)?}),
            View::Headers,
        ),
        Cmd::Regtest { .. } | Cmd::Wallet { .. } => {
            return Err(Exit::usage(
                "regtest and wallet commands are not a single API call",
            ))
        }
    })
}

/// `--ssh-key`: the key itself, or `@FILE` (e.g. `@~/.ssh/id_ed25519.pub`).
fn read_ssh_key(arg: &str) -> Result<String, Exit> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| Exit::usage(format!("--ssh-key @{path}: {e}"))),
        None => Ok(arg.to_string()),
    }
}

fn lease_call(cmd: LeaseCmd) -> Result<Call, Exit> {
    Ok(match cmd {
        LeaseCmd::Create {
            vcpus,
            mem_mib,
            image,
            cmdline,
            ssh_key,
            pay,
            ..
        } => {
            let mut q = json!({"vcpus": vcpus, "mem_mib": mem_mib, "image": image,
                               "payment": payment(&pay)?});
            if let Some(cl) = cmdline {
                q["cmdline"] = json!(cl);
            }
            if let Some(key) = ssh_key {
                q["ssh_key"] = json!(read_ssh_key(&key)?);
            }
            Call::post("/v1/leases", q, View::Created)
        }
        LeaseCmd::Show { id, token } => {
            Call::get(format!("/v1/leases/{id}"), View::Lease).with_token(token.token)
        }
        LeaseCmd::Topup { id, token, pay } => Call::post(
            format!("/v1/leases/{id}/topup"),
            json!({"payment": payment(&pay)?}),
            View::Topup,
        )
        .with_token(token.token),
        LeaseCmd::Stop {
            id, token, outputs, ..
        } => {
            let body = match outputs {
                Some(f) => json!({"outputs": input::read_json(&f)?}),
                None => json!({}),
            };
            Call::post(format!("/v1/leases/{id}/stop"), body, View::Stopped).with_token(token.token)
        }
        LeaseCmd::Console { id, token } => {
            Call::get(format!("/v1/leases/{id}/console"), View::Text).with_token(token.token)
        }
    })
}

pub(crate) async fn send(c: &Client, call: &Call) -> Result<Reply, Exit> {
    let body = call
        .body
        .as_ref()
        .map(|b| serde_json::to_vec(b).unwrap_or_default());
    c.call(call.method, &call.path, call.token.as_deref(), body)
        .await
        .map_err(Exit::from_client)
}

/// Shows a reply; a non-2xx answer becomes exit 1 with the daemon's error code.
pub(crate) fn show(r: &Reply, view: View, json_mode: bool) -> Result<(), Exit> {
    let ok = (200..300).contains(&r.status);
    if json_mode || matches!(view, View::Text) && ok {
        crate::exit::print_raw(&r.body);
    } else if ok {
        println!("{}", human::render(view, &r.json()));
    } else if let Some(extra) = human::error_details(&r.json()) {
        println!("{extra}");
    }
    if ok {
        Ok(())
    } else {
        Err(Exit::daemon(r))
    }
}

/// Runs the parsed command line; the error carries the exit code and its one-line message.
pub async fn run(cli: Cli) -> Result<(), Exit> {
    let c = Client::new(&cli.socket);
    if let Cmd::Regtest {
        cmd: RegtestCmd::Pay { quote_id },
    } = &cli.cmd
    {
        // Not an API answer: the payment object, always JSON so it can be piped.
        let p = crate::regtest_pay::pay_quote(&c, quote_id)
            .await
            .map_err(Exit::from_pay)?;
        println!("{p}");
        return Ok(());
    }
    match &cli.cmd {
        Cmd::Wallet { cmd, wallet } => {
            let path = wallet
                .path
                .clone()
                .unwrap_or_else(wallet_cli::default_wallet_path);
            return wallet_cli::run(&c, cmd, &path, cli.json).await;
        }
        Cmd::Lease {
            cmd:
                LeaseCmd::Stop {
                    id,
                    token,
                    change: true,
                    wallet,
                    ..
                },
        } => {
            let path = wallet
                .path
                .clone()
                .unwrap_or_else(wallet_cli::default_wallet_path);
            return wallet_cli::stop(&c, id, &token.token, &path, cli.json).await;
        }
        Cmd::Lease {
            cmd:
                LeaseCmd::Create {
                    recovery_key_file,
                    retries,
                    ..
                },
        } => {
            let (file, retries) = (recovery_key_file.clone(), *retries);
            let call = call_for(cli.cmd)?;
            return create_retry::run(&c, call, file, retries, cli.json).await;
        }
        _ => {}
    }
    let call = call_for(cli.cmd)?;
    let reply = send(&c, &call).await?;
    show(&reply, call.view, cli.json)
}
