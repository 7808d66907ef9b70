//! Human-readable renderings of the daemon's answers (the default output). Scripts use
//! `--json`, which prints the answer untouched; these texts may change between versions.

use std::fmt::Write;

use serde_json::Value;

use crate::commands::View;

/// msat as a sat amount with three decimals (`12.345 sat`); integer maths only.
pub fn sat(msat: &Value) -> String {
    match msat.as_u64() {
        Some(m) => format!("{}.{:03} sat", m / 1000, m % 1000),
        None => "?".to_string(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// One answer as text.
pub fn render(view: View, v: &Value) -> String {
    match view {
        View::Host => host(v),
        View::Quote => quote(v),
        View::Created => created(v),
        View::Lease | View::Topup => lease(v),
        View::Stopped => stopped(v),
        View::Leases => leases(v),
        View::Headers => format!(
            "added {} header(s){}; tip {} {}",
            s(&v["added"]),
            if v["reorg"] == Value::Bool(true) {
                " (reorg)"
            } else {
                ""
            },
            s(&v["tip"]["height"]),
            s(&v["tip"]["hash"])
        ),
        View::Text => s(v),
    }
}

fn host(v: &Value) -> String {
    let c = &v["capacity"];
    let p = &v["prices"];
    let mut out = format!(
        "network    {}\nchain tip  {} {}\nconfirms   {}\ncapacity   {}/{} vCPUs free, {}/{} MiB free\n\
         prices     {} msat per vCPU-second, {} msat per GiB-second\ntick       {} ms, grace {} s\nimages    ",
        s(&v["network"]),
        s(&v["chain"]["height"]),
        s(&v["chain"]["hash"]),
        s(&v["min_conf"]),
        s(&c["vcpus_free"]),
        s(&c["vcpus_total"]),
        s(&c["mib_free"]),
        s(&c["mib_total"]),
        s(&p["vcpu_msat_per_s"]),
        s(&p["gib_msat_per_s"]),
        s(&v["tick_ms"]),
        s(&v["grace_s"]),
    );
    for i in v["images"].as_array().into_iter().flatten() {
        let _ = write!(out, " {}", s(&i["name"]));
    }
    out
}

fn quote(v: &Value) -> String {
    format!(
        "quote {}: pay {} ({} msat) to {}\n{}\nexpires at {} (unix s)",
        s(&v["quote_id"]),
        sat(&v["amount_msat"]),
        s(&v["amount_msat"]),
        s(&v["address"]),
        s(&v["bip21"]),
        s(&v["expires_at"])
    )
}

fn boot_line(b: &Value) -> String {
    if !b.is_object() {
        return "boot       -".to_string();
    }
    format!(
        "boot       guest ready {} µs after the request (payment {}, ledger {}, spawned {}, vCPUs {})",
        s(&b["guest_ready_us"]),
        s(&b["payment_verified_us"]),
        s(&b["ledger_committed_us"]),
        s(&b["vmm_spawned_us"]),
        s(&b["vcpus_started_us"])
    )
}

/// How to reach the guest, when it has a network.
fn network_line(n: &Value) -> String {
    if !n.is_object() {
        return String::new();
    }
    format!(
        "\nnetwork    guest {}/{} via {}; ssh -p {} root@{}",
        s(&n["guest_ip"]),
        s(&n["prefix_len"]),
        s(&n["host_ip"]),
        s(&n["ssh"]["port"]),
        s(&n["ssh"]["host"])
    )
}

fn created(v: &Value) -> String {
    let mut out = format!(
        "lease      {}\ntoken      {}   (shown once: keep it)\nstate      {}\nbalance    {}\n{}{}",
        s(&v["lease_id"]),
        s(&v["token"]),
        s(&v["state"]),
        sat(&v["balance_msat"]),
        boot_line(&v["boot"]),
        network_line(&v["network"])
    );
    if v["recovered"] == Value::Bool(true) {
        out.push_str(
            "\nrecovered  this payment had already made the lease: the token above replaces \
             any earlier one",
        );
    }
    out
}

fn lease(v: &Value) -> String {
    let mut out = format!(
        "lease      {}\nstate      {}{}\nsize       {} vCPU, {} MiB, image {}\nbalance    {} (about {} s left at full use)\nused       {} µs vCPU, {} MiB·µs memory; debited {}\n{}",
        s(&v["lease_id"]),
        s(&v["state"]),
        match &v["stop_reason"] {
            Value::String(r) => format!(" ({r})"),
            _ => String::new(),
        },
        s(&v["vcpus"]),
        s(&v["mem_mib"]),
        s(&v["image"]),
        sat(&v["balance_msat"]),
        s(&v["estimated_remaining_s"]),
        s(&v["used"]["vcpu_us"]),
        s(&v["used"]["mem_mib_us"]),
        sat(&v["debited_msat"]),
        boot_line(&v["boot"]),
    );
    out.push_str(&network_line(&v["network"]));
    if v["refunded_msat"].is_u64() {
        let _ = write!(
            out,
            "\nrefunded   {} (+ {} kept by the host as sub-sat residual)",
            sat(&v["refunded_msat"]),
            sat(&v["residual_msat"])
        );
    }
    if v["resumed"] == Value::Bool(true) {
        out.push_str("\nresumed    the guest runs again");
    }
    out
}

fn stopped(v: &Value) -> String {
    let mut out = format!(
        "state      {}\nrefund     {} ({} msat; {} kept by the host as sub-sat residual)",
        s(&v["state"]),
        sat(&v["refund_msat"]),
        s(&v["refund_msat"]),
        sat(&v["residual_msat"])
    );
    match v["signatures"].as_array() {
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
                s(&v["change_outputs_needed"])
            );
        }
    }
    out
}

fn leases(v: &Value) -> String {
    let mut out = format!(
        "{:<20} {:<16} {:>5} {:>8} {:>16} {:<18}",
        "LEASE", "STATE", "VCPUS", "MEM_MIB", "BALANCE", "STOP_REASON"
    );
    for l in v["leases"].as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "\n{:<20} {:<16} {:>5} {:>8} {:>16} {:<18}",
            s(&l["lease_id"]),
            s(&l["state"]),
            s(&l["vcpus"]),
            s(&l["mem_mib"]),
            sat(&l["balance_msat"]),
            s(&l["stop_reason"])
        );
    }
    out
}

/// What a human must not miss in an error answer beyond its code and message: a failed boot
/// still created a lease (its id, token and where the money is).
pub fn error_details(v: &Value) -> Option<String> {
    let id = v["lease_id"].as_str()?;
    Some(format!(
        "lease      {id}\ntoken      {}   (keep it: the balance is refundable with it)\nstate      {} ({})\nrefund     {} {}",
        s(&v["token"]),
        s(&v["state"]),
        s(&v["stop_reason"]),
        s(&v["refund"]["kind"]),
        sat(&v["refund"]["refund_msat"])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sat_has_three_decimals() {
        assert_eq!(sat(&json!(12_345)), "12.345 sat");
        assert_eq!(sat(&json!(7)), "0.007 sat");
        assert_eq!(sat(&Value::Null), "?");
    }

    #[test]
    fn created_shows_id_token_and_boot() {
        let t = render(
            View::Created,
            &json!({"lease_id": "l1", "token": "tok", "state": "running",
                    "balance_msat": 3000, "boot": {"guest_ready_us": 4321}}),
        );
        assert!(
            t.contains("l1") && t.contains("tok") && t.contains("3.000 sat"),
            "{t}"
        );
        assert!(t.contains("4321"), "{t}");
        assert!(!t.contains("recovered"), "{t}");
        let r = render(
            View::Created,
            &json!({"lease_id": "l1", "token": "tok2", "state": "running", "recovered": true,
                    "balance_msat": 3000, "boot": {}}),
        );
        assert!(r.contains("tok2") && r.contains("recovered"), "{r}");
    }

    #[test]
    fn created_shows_how_to_reach_the_guest() {
        let text = created(&json!({"lease_id": "L", "token": "T", "state": "running",
            "balance_msat": 3000, "boot": {"guest_ready_us": 1},
            "network": {"guest_ip": "10.213.0.2", "host_ip": "10.213.0.1", "prefix_len": 30,
                        "ssh": {"host": "h.example", "port": 22000}}}));
        assert!(
            text.contains(
                "network    guest 10.213.0.2/30 via 10.213.0.1; ssh -p 22000 root@h.example"
            ),
            "{text}"
        );
        assert!(!created(&json!({"boot": {}})).contains("network"));
    }

    #[test]
    fn a_failed_boot_keeps_the_token_visible() {
        let d = error_details(&json!({"error": {"code": "boot_failed", "message": "x"},
            "lease_id": "l2", "token": "tok2", "state": "stopped", "stop_reason": "boot_failed",
            "refund": {"kind": "kept", "refund_msat": 5000}}))
        .expect("details");
        assert!(
            d.contains("l2") && d.contains("tok2") && d.contains("5.000 sat"),
            "{d}"
        );
        assert!(error_details(&json!({"error": {"code": "x"}})).is_none());
    }
}
