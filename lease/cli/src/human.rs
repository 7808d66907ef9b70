//! Human-readable renderings of the daemon's answers (the default output). Scripts use
//! `--json`, which prints the answer untouched; these texts may change between versions.
//!
//! Every answer is read into the API's own types (`coinop_proto`) first. A body that does
//! not read as the type this coinop knows (a newer daemon) is the caller's to show as
//! received: [`render`] says so with an error rather than guessing at fields.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};

use coinop_proto::lease_view::LeaseList;
use coinop_proto::replies::{
    BootFailedResponse, CreateResponse, HeadersResponse, HostView, NotBootedYetResponse,
    QuoteResponse, RecoveredResponse, Refund, StopResponse, TopupResponse,
};
use coinop_proto::{BootFigures, LeaseView, Msat, NetInfo};
use payment::credit::nut_types::KeysetsResponse;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use crate::commands::View;

/// msat as a sat amount with three decimals (`12.345 sat`); integer maths only.
pub fn sat(msat: Msat) -> String {
    let m = msat.msat();
    format!("{}.{:03} sat", m / 1000, m % 1000)
}

/// An amount the daemon may leave out: `?` then.
fn sat_or_unknown(msat: Option<Msat>) -> String {
    msat.map_or_else(|| "?".to_string(), sat)
}

/// A figure the daemon may leave out (`null`): `-` then.
fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(body)
}

/// One successful answer as text, or why its body is not the type `view` expects.
///
/// Every string in it comes from the daemon: control characters (a terminal's escape
/// sequences, which could rewrite what the tenant sees or set its window title) are shown
/// escaped, not sent to the terminal.
pub fn render(view: View, body: &[u8]) -> Result<String, serde_json::Error> {
    Ok(payment::text::printable_lines(&match view {
        View::Host => host(&parse(body)?),
        View::Quote => quote(&parse(body)?),
        View::Created => created(body)?,
        View::Lease => lease(&parse(body)?),
        View::Topup => topup(&parse(body)?),
        View::Stopped => stopped(&parse(body)?),
        View::Leases => leases(&parse(body)?),
        View::Headers => headers(&parse(body)?),
        View::Keysets => keysets(&parse(body)?),
        View::Text => String::from_utf8_lossy(body).into_owned(),
    }))
}

fn host(h: &HostView) -> String {
    let (c, p) = (&h.capacity, &h.prices);
    let mut out = format!(
        "network    {}\nchain tip  {} {}\nconfirms   {}\ncapacity   {}/{} vCPUs free, {}/{} MiB free\n\
         prices     {} msat per vCPU-second, {} msat per GiB-second\ntick       {} ms, grace {} s\nimages    ",
        h.network,
        h.chain.height,
        h.chain.hash,
        h.min_conf,
        c.vcpus_free,
        c.vcpus_total,
        c.mib_free,
        c.mib_total,
        p.vcpu_msat_per_s,
        p.gib_msat_per_s,
        h.tick_ms,
        h.grace_s,
    );
    for i in &h.images {
        let _ = write!(out, " {}", i.name);
    }
    let st = &h.store;
    let _ = write!(out, "\nstore      {}", st.kind);
    if let Some(location) = &st.location {
        let _ = write!(out, " ({location})");
    }
    if let Some(id) = &st.host_id {
        let _ = write!(out, ", host id {id}");
    }
    if !st.ready {
        out.push_str(", NOT READY (money requests refused)");
    }
    out
}

fn quote(q: &QuoteResponse) -> String {
    format!(
        "quote {}: pay {} ({} msat) to {}\n{}\nexpires at {} (unix s)",
        q.quote_id,
        sat(q.amount_msat),
        q.amount_msat.msat(),
        q.address,
        q.bip21,
        q.expires_at
    )
}

fn headers(h: &HeadersResponse) -> String {
    format!(
        "added {} header(s){}; tip {} {}",
        h.added,
        if h.reorg { " (reorg)" } else { "" },
        h.tip.height,
        h.tip.hash
    )
}

fn keysets(k: &KeysetsResponse) -> String {
    k.keysets
        .iter()
        .map(|k| {
            format!(
                "{}  {}  {}  input fee {} ppk",
                k.id,
                k.unit,
                if k.active { "active" } else { "inactive" },
                k.input_fee_ppk
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn boot_line(b: Option<&BootFigures>) -> String {
    let Some(b) = b else {
        return "boot       -".to_string();
    };
    format!(
        "boot       guest ready {} µs after the request (payment {}, ledger {}, spawned {}, vCPUs {})",
        opt(b.guest_ready_us),
        b.payment_verified_us,
        b.ledger_committed_us,
        b.vmm_spawned_us,
        opt(b.vcpus_started_us)
    )
}

/// How to reach the guest, when it has a network, and its SSH host key when the host made
/// it: as a known_hosts line, so the tenant can pin the key before the first connection.
fn network_line(n: Option<&NetInfo>) -> String {
    let Some(n) = n else {
        return String::new();
    };
    let mut out = format!(
        "\nnetwork    guest {}/{} via {}; ssh -p {} root@{}",
        n.guest_ip, n.prefix_len, n.host_ip, n.ssh.port, n.ssh.host
    );
    if let Some(key) = &n.ssh.host_key {
        // known_hosts names a host on another port than 22 as [HOST]:PORT (sshd(8)).
        let host = if n.ssh.port == 22 {
            n.ssh.host.clone()
        } else {
            format!("[{}]:{}", n.ssh.host, n.ssh.port)
        };
        let _ = write!(out, "\nhost key   {host} {key}   (for ~/.ssh/known_hosts)");
    }
    out
}

/// Just enough of a create's answer to tell which one it is.
#[derive(Deserialize)]
struct RecoveredFlag {
    #[serde(default)]
    recovered: bool,
}

/// A create's answer: a first create (201) or, with `recovered: true`, the lease an
/// earlier attempt with the same payment and recovery key made (200).
fn created(body: &[u8]) -> Result<String, serde_json::Error> {
    let RecoveredFlag { recovered } = parse(body)?;
    if !recovered {
        let c: CreateResponse = parse(body)?;
        let mut out = created_lines(
            &c.lease_id,
            &c.token,
            c.state,
            c.balance_msat,
            Some(&c.boot),
            c.network.as_ref(),
        );
        if c.late {
            out.push_str(LATE_LINE);
        }
        return Ok(out);
    }
    let r: RecoveredResponse = parse(body)?;
    let l = &r.lease;
    let mut out = created_lines(
        &l.lease_id,
        &r.token,
        l.state,
        l.balance_msat,
        l.boot.as_ref(),
        l.network.as_ref(),
    );
    out.push_str(
        "\nrecovered  this payment had already made the lease: the token above replaces \
         any earlier one",
    );
    Ok(out)
}

fn created_lines(
    id: &str,
    token: &str,
    state: impl Display,
    balance: Msat,
    boot: Option<&BootFigures>,
    network: Option<&NetInfo>,
) -> String {
    format!(
        "lease      {id}\ntoken      {token}   (shown once: keep it)\nstate      {state}\nbalance    {}\n{}{}",
        sat(balance),
        boot_line(boot),
        network_line(network)
    )
}

/// " (stopped in N s unless topped up)", from the host's deadline and this machine's clock.
fn stops_in(at: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    format!(
        " (stopped in {} s unless topped up)",
        at.saturating_sub(now).max(0)
    )
}

fn lease(l: &LeaseView) -> String {
    let mut out = format!(
        "lease      {}\nstate      {}{}{}\nsize       {} vCPU, {} MiB, image {}\nbalance    {} (about {} s left at full use)\nused       {} µs vCPU, {} MiB·µs memory; debited {}\n{}",
        l.lease_id,
        l.state,
        l.stop_reason.map(|r| format!(" ({r})")).unwrap_or_default(),
        l.stops_at.map(stops_in).unwrap_or_default(),
        l.vcpus,
        l.mem_mib,
        l.image,
        sat(l.balance_msat),
        l.estimated_remaining_s,
        l.used.vcpu_us,
        l.used.mem_mib_us,
        sat(l.debited_msat),
        boot_line(l.boot.as_ref()),
    );
    out.push_str(&network_line(l.network.as_ref()));
    if let Some(refunded) = l.refunded_msat {
        let _ = write!(
            out,
            "\nrefunded   {} (+ {} kept by the host as sub-sat residual)",
            sat(refunded),
            sat_or_unknown(l.residual_msat)
        );
    }
    out
}

fn topup(t: &TopupResponse) -> String {
    let mut out = lease(&t.lease);
    if t.resumed {
        out.push_str("\nresumed    the guest runs again");
    }
    if t.late {
        out.push_str(LATE_LINE);
    }
    out
}

/// Shown for a payment mined after its quote expired.
const LATE_LINE: &str =
    "\nlate       the payment was mined after its quote expired (credited at the quote's price)";

/// A stop's answer (also what `lease stop --change` shows, with its own change line).
pub fn stopped(s: &StopResponse) -> String {
    let mut out = format!(
        "state      {}\nrefund     {} ({} msat; {} kept by the host as sub-sat residual)",
        s.state,
        sat(s.refund_msat),
        s.refund_msat.msat(),
        sat(s.residual_msat)
    );
    match &s.signatures {
        Some(sigs) => {
            let _ = write!(
                out,
                "\nchange     {} blind signature(s): use --json to keep them",
                sigs.len()
            );
        }
        None => {
            let _ = write!(
                out,
                "\nchange     kept on the lease: stop again with --outputs FILE holding {} blinded message(s)",
                s.change_outputs_needed
            );
        }
    }
    out
}

fn leases(v: &LeaseList) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:>5} {:>8} {:>16} {:<18}",
        "LEASE", "STATE", "VCPUS", "MEM_MIB", "BALANCE", "STOP_REASON"
    );
    for l in &v.leases {
        // Display ignores width for these types: pad their text instead.
        let _ = write!(
            out,
            "\n{:<20} {:<16} {:>5} {:>8} {:>16} {:<18}",
            l.lease_id,
            l.state.as_str(),
            l.vcpus,
            l.mem_mib,
            sat(l.balance_msat),
            opt(l.stop_reason)
        );
    }
    out
}

/// What a human must not miss in an error answer beyond its code and message (which
/// stderr has): a failed boot still created a lease, and its id, token and where the money
/// is are shown. `None` when the body says nothing more.
pub fn error_details(body: &[u8]) -> Option<String> {
    // Only a JSON object can say more; any other body is on stderr already.
    let fields: BTreeMap<String, IgnoredAny> = parse(body).ok()?;
    if fields.keys().all(|k| k == "error") {
        return None;
    }
    if let Ok(b) = parse::<BootFailedResponse>(body) {
        let (kind, refund_msat) = match &b.refund {
            Refund::Signatures { refund_msat, .. } => ("signatures", *refund_msat),
            Refund::Kept { refund_msat, .. } => ("kept", *refund_msat),
        };
        return Some(format!(
            "{}\nrefund     {kind} {}",
            lease_kept(&b.lease_id, &b.token, b.state, b.stop_reason),
            sat(refund_msat)
        ));
    }
    if let Ok(n) = parse::<NotBootedYetResponse>(body) {
        return Some(format!(
            "{}\nrefund     kept on the lease: it boots when this command is run again, or \
             comes back with `lease stop --change`",
            lease_kept(&n.lease_id, &n.token, n.state, n.stop_reason)
        ));
    }
    // More than an error, in a shape this coinop does not know (a newer daemon): shown as
    // received, so that nothing in it (a lease id, a token) is hidden.
    Some(String::from_utf8_lossy(body).into_owned())
}

fn lease_kept(id: &str, token: &str, state: impl Display, reason: impl Display) -> String {
    format!(
        "lease      {id}\ntoken      {token}   (keep it: the balance is refundable with it)\nstate      {state} ({reason})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use coinop_proto::lease_view::Used;
    use coinop_proto::network::SshEndpoint;
    use coinop_proto::replies::ErrorDetail;
    use coinop_proto::{LeaseState, StopReason};

    fn bytes(v: &impl serde::Serialize) -> Vec<u8> {
        serde_json::to_vec(v).expect("the API's types encode")
    }

    fn boot(guest_ready_us: Option<u64>) -> BootFigures {
        BootFigures {
            guest_ready_us,
            ..BootFigures::default()
        }
    }

    fn created_reply(token: &str, network: Option<NetInfo>) -> CreateResponse {
        CreateResponse {
            lease_id: "l1".into(),
            token: token.into(),
            token_seq: 1,
            state: LeaseState::Running,
            balance_msat: Msat::from_msat(3000),
            boot: boot(Some(4321)),
            network,
            late: false,
        }
    }

    fn lease_view() -> LeaseView {
        LeaseView {
            lease_id: "l1".into(),
            state: LeaseState::Running,
            stop_reason: None,
            vcpus: 1,
            mem_mib: 64,
            image: "testguest".into(),
            balance_msat: Msat::from_msat(3000),
            used: Used {
                vcpu_us: 10,
                mem_mib_us: 640,
                cgroup_cpu_us: None,
            },
            estimated_remaining_s: 30,
            stops_at: None,
            debited_msat: Msat::ZERO,
            refunded_msat: None,
            residual_msat: None,
            created_at: 1,
            updated_at: 2,
            boot: Some(boot(Some(4321))),
            network: None,
        }
    }

    #[test]
    fn sat_has_three_decimals() {
        assert_eq!(sat(Msat::from_msat(12_345)), "12.345 sat");
        assert_eq!(sat(Msat::from_msat(7)), "0.007 sat");
        assert_eq!(sat_or_unknown(None), "?");
    }

    #[test]
    fn a_paused_lease_says_when_it_stops() {
        let mut l = lease_view();
        let t = lease(&l);
        assert!(!t.contains("unless topped up"), "{t}");
        l.state = coinop_proto::LeaseState::PausedUnfunded;
        l.stops_at = Some(i64::MAX);
        let t = lease(&l);
        assert!(t.contains("paused_unfunded (stopped in "), "{t}");
        l.stops_at = Some(0);
        let t = lease(&l);
        assert!(t.contains("(stopped in 0 s unless topped up)"), "{t}");
    }

    #[test]
    fn created_shows_id_token_and_boot() {
        let t = render(View::Created, &bytes(&created_reply("tok", None))).expect("renders");
        assert!(
            t.contains("l1") && t.contains("tok") && t.contains("3.000 sat"),
            "{t}"
        );
        assert!(t.contains("4321"), "{t}");
        assert!(!t.contains("recovered"), "{t}");
        let recovered = RecoveredResponse {
            lease: lease_view(),
            token: "tok2".into(),
            token_seq: 2,
            recovered: true,
            refund: None,
        };
        let r = render(View::Created, &bytes(&recovered)).expect("renders");
        assert!(r.contains("tok2") && r.contains("recovered"), "{r}");
    }

    #[test]
    fn created_shows_how_to_reach_the_guest() {
        let net = NetInfo {
            guest_ip: [10, 213, 0, 2].into(),
            host_ip: [10, 213, 0, 1].into(),
            prefix_len: 30,
            mac: "02:00:00:00:00:01".into(),
            ssh: SshEndpoint {
                host: "h.example".into(),
                port: 22000,
                host_key: None,
            },
            tap: "cotap0".into(),
            slot: 0,
        };
        let text = render(
            View::Created,
            &bytes(&created_reply("T", Some(net.clone()))),
        )
        .expect("renders");
        assert!(
            text.contains(
                "network    guest 10.213.0.2/30 via 10.213.0.1; ssh -p 22000 root@h.example"
            ),
            "{text}"
        );
        assert!(!text.contains("host key"), "{text}");
        let mut pinned = net;
        pinned.ssh.host_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey".into());
        let text =
            render(View::Created, &bytes(&created_reply("T", Some(pinned)))).expect("renders");
        assert!(
            text.contains(
                "\nhost key   [h.example]:22000 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey   \
                 (for ~/.ssh/known_hosts)"
            ),
            "{text}"
        );
        let without = render(View::Created, &bytes(&created_reply("T", None))).expect("renders");
        assert!(!without.contains("network"), "{without}");
    }

    #[test]
    fn a_lease_shows_its_stop_reason_and_refund() {
        let mut l = lease_view();
        l.state = LeaseState::Stopped;
        l.stop_reason = Some(StopReason::Tenant);
        l.refunded_msat = Some(Msat::from_msat(2000));
        l.residual_msat = Some(Msat::from_msat(500));
        let t = render(View::Lease, &bytes(&l)).expect("renders");
        assert!(t.contains("state      stopped (tenant)"), "{t}");
        assert!(t.contains("refunded   2.000 sat (+ 0.500 sat"), "{t}");
        let topped = TopupResponse {
            lease: lease_view(),
            resumed: true,
            late: false,
        };
        let t = render(View::Topup, &bytes(&topped)).expect("renders");
        assert!(t.contains("resumed    the guest runs again"), "{t}");
        assert!(!t.contains("late"), "{t}");
        let late = TopupResponse {
            late: true,
            ..topped
        };
        let t = render(View::Topup, &bytes(&late)).expect("renders");
        assert!(t.contains("late       the payment was mined after"), "{t}");
    }

    #[test]
    fn a_body_of_another_shape_is_an_error_for_the_caller_to_show_raw() {
        // E.g. a newer daemon that renamed a field: no half-filled text from guesses.
        let newer = br#"{"lease_id": "l1", "tokens": ["t"], "state": "running"}"#;
        assert!(render(View::Created, newer).is_err());
        assert!(render(View::Host, b"not json").is_err());
        assert!(render(View::Stopped, br#"{"state": "exploded"}"#).is_err());
    }

    fn boot_failed() -> BootFailedResponse {
        BootFailedResponse {
            error: ErrorDetail::new("boot_failed", "x"),
            lease_id: "l2".into(),
            token: "tok2".into(),
            token_seq: 1,
            state: LeaseState::Stopped,
            stop_reason: StopReason::BootFailed,
            refund: Refund::Kept {
                refund_msat: Msat::from_msat(5000),
                residual_msat: Msat::ZERO,
                how: "POST /v1/leases/{id}/stop with outputs and the token".into(),
            },
            boot: BootFigures::default(),
        }
    }

    #[test]
    fn a_failed_boot_keeps_the_token_visible() {
        let d = error_details(&bytes(&boot_failed())).expect("details");
        assert!(
            d.contains("l2") && d.contains("tok2") && d.contains("5.000 sat"),
            "{d}"
        );
        assert!(error_details(br#"{"error": {"code": "x", "message": "y"}}"#).is_none());
        assert!(error_details(b"Not Found").is_none());
    }

    #[test]
    fn a_recovered_create_waiting_for_room_keeps_the_token_visible() {
        let n = NotBootedYetResponse {
            error: ErrorDetail::new("host_full", "the lease waits for room to boot"),
            lease_id: "l3".into(),
            token: "tok3".into(),
            token_seq: 2,
            recovered: true,
            state: LeaseState::Stopped,
            stop_reason: StopReason::BootFailed,
        };
        let d = error_details(&bytes(&n)).expect("details");
        assert!(d.contains("l3") && d.contains("tok3"), "{d}");
    }

    #[test]
    fn an_unknown_error_body_with_more_than_its_error_is_shown_raw() {
        let newer = br#"{"error": {"code": "boot_failed", "message": "x"}, "lease_id": "l4",
            "token": "tok4", "refund": {"kind": "teleported"}}"#;
        let d = error_details(newer).expect("shown");
        assert!(d.contains("tok4") && d.contains("teleported"), "{d}");
    }
}
