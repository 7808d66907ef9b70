//! The `coinop` command line: arguments, how each command maps onto one API call, and how
//! the answer is shown (human text by default, the daemon's JSON byte for byte with
//! `--json`). Exit codes are part of the interface: see [`exit`].

use coinop_proto::requests::{
    CreateRequest, CreditPayment, PaymentBody, QuoteRequest, StopRequest, TopupRequest,
};
use payment::credit::nut_types::{BlindedMessage, OnchainPayment};
use serde::Serialize;

use crate::args::{ChainCmd, Cli, Cmd, KeysetsCmd, LeaseCmd, PaymentArgs, RegtestCmd};
use crate::client::{Client, Reply};
use crate::exit::{note, print_line, print_raw, Exit};
use crate::{create_retry, header_upload, human, input, regtest_pay, wallet_cli};

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
    Keysets,
    /// The body is text (the console): shown as is in both modes.
    Text,
}

/// One API call the command line asked for, its body already encoded from the API's
/// request types.
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Vec<u8>>,
    pub view: View,
}

/// A request or payment as JSON text. The API's types always encode (string keys only);
/// the error is there so that a future type that cannot is a message, not a panic.
pub(crate) fn encode(body: &impl Serialize) -> Result<Vec<u8>, Exit> {
    serde_json::to_vec(body).map_err(|e| Exit::usage(format!("cannot encode the request: {e}")))
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

    fn post(path: impl Into<String>, body: &impl Serialize, view: View) -> Result<Call, Exit> {
        Ok(Call {
            method: "POST",
            path: path.into(),
            token: None,
            body: Some(encode(body)?),
            view,
        })
    }

    fn with_token(mut self, token: String) -> Call {
        self.token = Some(token);
        self
    }
}

/// Turns a lease or top-up's payment flags into the API's `payment` object.
fn payment(p: &PaymentArgs) -> Result<PaymentBody, Exit> {
    if let Some(name) = &p.payment {
        return input::read_json(
            name,
            "a payment object ({\"onchain\": {...}} or {\"credit\": {\"proofs\": [...]}})",
        );
    }
    if let Some(name) = &p.credit {
        return Ok(PaymentBody::Credit(CreditPayment {
            proofs: input::read_proofs(name)?,
        }));
    }
    match (&p.tx, &p.proof, &p.quote_id) {
        (Some(tx), Some(proof), Some(quote)) => Ok(PaymentBody::Onchain(OnchainPayment {
            quote_id: quote.clone(),
            tx_hex: input::read_hex("--tx", tx)?,
            proof_hex: input::read_hex("--proof", proof)?,
        })),
        (None, None, Some(quote)) => Ok(PaymentBody::Onchain(OnchainPayment {
            quote_id: quote.clone(),
            tx_hex: String::new(),
            proof_hex: String::new(),
        })),
        // clap enforces the group; this is the message if it ever lets one through.
        _ => Err(Exit::usage(
            "a payment needs --payment FILE, --credit FILE, --quote-id alone, or --tx, --proof \
             and --quote-id",
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
            let q = QuoteRequest {
                vcpus,
                mem_mib,
                seconds,
                image,
            };
            Call::post("/v1/quotes", &q, View::Quote)?
        }
        Cmd::Leases => Call::get("/v1/leases", View::Leases),
        Cmd::Keysets {
            cmd: KeysetsCmd::Rotate,
        } => Call {
            method: "POST",
            path: "/v1/keysets/rotate".into(),
            token: None,
            body: None,
            view: View::Keysets,
        },
        Cmd::Lease { cmd } => lease_call(cmd)?,
        Cmd::Regtest { .. } | Cmd::Wallet { .. } | Cmd::Chain { .. } => {
            return Err(Exit::usage(
                "regtest, wallet and chain commands are not a single API call",
            ))
        }
    })
}

/// `--ssh-key`: the key itself, or `@FILE` (e.g. `@~/.ssh/id_ed25519.pub`).
fn read_ssh_key(arg: &str) -> Result<String, Exit> {
    match arg.strip_prefix('@') {
        Some(path) => input::read_path(std::path::Path::new(path))
            .map(|t| t.trim().to_string())
            .map_err(|e| Exit::usage(format!("--ssh-key: {}", e.message))),
        None => Ok(arg.to_string()),
    }
}

/// The create a `lease create` command line asks for, without its recovery key (which
/// [`create_retry`] adds).
fn create_request(
    vcpus: u32,
    mem_mib: u64,
    image: String,
    cmdline: Option<String>,
    ssh_key: Option<String>,
    pay: &PaymentArgs,
) -> Result<CreateRequest, Exit> {
    let payment = payment(pay)?;
    Ok(CreateRequest {
        vcpus,
        mem_mib,
        image,
        cmdline,
        ssh_key: ssh_key.as_deref().map(read_ssh_key).transpose()?,
        payment,
        outputs: None,
        recovery_key: None,
    })
}

/// `POST /v1/leases` with `req`.
pub(crate) fn create_call(req: &CreateRequest) -> Result<Call, Exit> {
    Call::post("/v1/leases", req, View::Created)
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
        } => create_call(&create_request(
            vcpus, mem_mib, image, cmdline, ssh_key, &pay,
        )?)?,
        LeaseCmd::Show { id, token } => {
            Call::get(format!("/v1/leases/{id}"), View::Lease).with_token(token.token)
        }
        LeaseCmd::Topup { id, token, pay } => Call::post(
            format!("/v1/leases/{id}/topup"),
            &TopupRequest {
                payment: payment(&pay)?,
            },
            View::Topup,
        )?
        .with_token(token.token),
        LeaseCmd::Stop {
            id, token, outputs, ..
        } => {
            let outputs = match outputs {
                Some(f) => Some(input::read_json::<Vec<BlindedMessage>>(
                    &f,
                    "a JSON array of blinded messages",
                )?),
                None => None,
            };
            Call::post(
                format!("/v1/leases/{id}/stop"),
                &StopRequest { outputs },
                View::Stopped,
            )?
            .with_token(token.token)
        }
        LeaseCmd::Console { id, token } => {
            Call::get(format!("/v1/leases/{id}/console"), View::Text).with_token(token.token)
        }
    })
}

pub(crate) async fn send(c: &Client, call: &Call) -> Result<Reply, Exit> {
    c.call(
        call.method,
        &call.path,
        call.token.as_deref(),
        call.body.clone(),
    )
    .await
    .map_err(Exit::from_client)
}

/// Writes a reply to stdout as `view` and the mode say: the daemon's body with `--json`,
/// text otherwise (for an error, its details; the one-line message goes to stderr with the
/// exit). An error means the answer did not reach stdout, so a caller holding the only other
/// way back to it (a recovery key) must keep that.
pub(crate) fn print_reply(r: &Reply, view: View, json_mode: bool) -> std::io::Result<()> {
    let ok = (200..300).contains(&r.status);
    if json_mode || matches!(view, View::Text) && ok {
        print_raw(&r.body)
    } else if ok {
        match human::render(view, &r.body) {
            Ok(text) => print_line(&text),
            // A daemon newer than this coinop may answer in a shape it does not know: the
            // answer is still worth seeing (it may hold a token), so it is shown as sent.
            Err(e) => {
                note(&format!(
                    "note: cannot read the answer as a {view:?} reply ({e}); shown as received"
                ));
                print_raw(&r.body)
            }
        }
    } else if let Some(extra) = human::error_details(&r.body) {
        print_line(&extra)
    } else {
        Ok(())
    }
}

/// What a shown reply means for the exit: success for 2xx, else exit 1 with the daemon's
/// error code.
pub(crate) fn outcome(r: &Reply) -> Result<(), Exit> {
    if (200..300).contains(&r.status) {
        Ok(())
    } else {
        Err(Exit::daemon(r))
    }
}

/// Shows a reply; a non-2xx answer becomes exit 1 with the daemon's error code, a 2xx one
/// that cannot be written out exit 4.
pub(crate) fn show(r: &Reply, view: View, json_mode: bool) -> Result<(), Exit> {
    if let Err(e) = print_reply(r, view, json_mode) {
        // A refusal is still told on stderr with its exit 1; only its details were lost.
        outcome(r)?;
        return Err(Exit::output(&e, &lost_answer_note(view, r.status)));
    }
    outcome(r)
}

/// What a tenant whose stdout refused the answer of a `view` command should know: whether
/// anything changed, and how to see it again.
fn lost_answer_note(view: View, status: u16) -> String {
    match view {
        View::Host | View::Lease | View::Leases | View::Text => {
            format!("nothing changed (HTTP {status}): run the same command again")
        }
        View::Quote => format!(
            "the quote was made (HTTP {status}) and its id is lost with the answer: ask for \
             another"
        ),
        View::Created | View::Topup | View::Stopped => format!(
            "the daemon did what was asked (HTTP {status}); `coinop lease show` tells a lease's \
             state"
        ),
        View::Headers => format!(
            "the daemon took the headers (HTTP {status}); `coinop host` shows the chain's tip"
        ),
        View::Keysets => format!(
            "the daemon did what was asked (HTTP {status}); `GET /v1/keysets` lists the \
             keysets"
        ),
    }
}

/// Runs the parsed command line; the error carries the exit code and its one-line message.
pub async fn run(cli: Cli) -> Result<(), Exit> {
    let c = Client::new(&cli.socket).with_timeout(std::time::Duration::from_secs(cli.timeout));
    let json_mode = cli.json;
    match cli.cmd {
        Cmd::Regtest {
            cmd: RegtestCmd::Pay { quote_id },
        } => {
            let p = regtest_pay::pay_quote_onchain(&c, &quote_id)
                .await
                .map_err(Exit::from_pay)?;
            // Not an API answer: the payment object, always JSON so it can be piped.
            let text = encode(&PaymentBody::Onchain(p))?;
            print_raw(&text).map_err(|e| {
                Exit::output(
                    &e,
                    "this demo payment is lost with it (regtest, no real money): run the \
                     command again for another",
                )
            })
        }
        Cmd::Chain {
            cmd:
                ChainCmd::AddHeaders {
                    file,
                    max_body_bytes,
                },
        } => header_upload::add_headers(&c, &file, max_body_bytes, json_mode).await,
        Cmd::Wallet { cmd, wallet } => {
            let path = wallet.path.unwrap_or_else(wallet_cli::default_wallet_path);
            let mint_url = wallet
                .mint_url
                .unwrap_or_else(|| wallet_cli::default_mint_url(&cli.socket));
            wallet_cli::run(&c, &cmd, &path, &mint_url, json_mode).await
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
            let path = wallet.path.unwrap_or_else(wallet_cli::default_wallet_path);
            wallet_cli::stop(&c, &id, &token.token, &path, json_mode).await
        }
        Cmd::Lease {
            cmd:
                LeaseCmd::Create {
                    vcpus,
                    mem_mib,
                    image,
                    cmdline,
                    ssh_key,
                    pay,
                    recovery_key_file,
                    retries,
                },
        } => {
            let req = create_request(vcpus, mem_mib, image, cmdline, ssh_key, &pay)?;
            create_retry::run(&c, req, recovery_key_file, retries, json_mode).await
        }
        cmd => {
            let call = call_for(cmd)?;
            let reply = send(&c, &call).await?;
            show(&reply, call.view, json_mode)
        }
    }
}
