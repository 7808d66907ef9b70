//! One timed lease request through coinopd, and the stage figures its reply carries
//! (`boot`, µs since the daemon read the request).

use std::time::Instant;

use coinop_cli::client::Client;
use coinop_proto::replies::CreateResponse;
use coinop_proto::requests::CreateRequest;
use coinop_proto::BootFigures;

use crate::error::BenchError;
use crate::sample_set::SampleSet;

/// The reply's `boot` figures by name (as the API spells them, without `_us`), in the
/// order the stages happen; `None` for a stage the daemon did not see.
pub fn stages(b: &BootFigures) -> [(&'static str, Option<u64>); 5] {
    [
        ("payment_verified", Some(b.payment_verified_us)),
        ("ledger_committed", Some(b.ledger_committed_us)),
        ("vmm_spawned", Some(b.vmm_spawned_us)),
        ("vcpus_started", b.vcpus_started_us),
        ("guest_ready", b.guest_ready_us),
    ]
}

pub const REPLY_METRIC: &str = "client request→201 reply ms";

pub struct Created {
    pub reply: CreateResponse,
    pub latency_ms: f64,
}

const WHAT: &str = "POST /v1/leases";

fn run_err(detail: impl std::fmt::Display) -> BenchError {
    BenchError::Run {
        what: WHAT.into(),
        detail: detail.to_string(),
    }
}

/// POSTs /v1/leases and insists on 201: a benchmark of failures would mean nothing.
pub async fn create(client: &Client, body: &CreateRequest) -> Result<Created, BenchError> {
    // Encoded before the clock starts: the figure is the daemon's, not serde's.
    let bytes = serde_json::to_vec(body).map_err(|e| run_err(format!("encoding: {e}")))?;
    let t0 = Instant::now();
    let r = client
        .call("POST", "/v1/leases", None, Some(bytes))
        .await
        .map_err(run_err)?;
    let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
    if r.status != 201 {
        return Err(run_err(format!("HTTP {}: {}", r.status, r.text())));
    }
    let reply = r
        .parse()
        .map_err(|e| run_err(format!("reading the 201 ({e}): {}", r.text())))?;
    Ok(Created { reply, latency_ms })
}

/// Records the client-side latency and each stage of the reply's `boot` figures.
pub fn record(s: &mut SampleSet, column: &str, c: &Created) {
    s.push(column, REPLY_METRIC, c.latency_ms);
    for (stage, us) in stages(&c.reply.boot) {
        if let Some(us) = us {
            s.push(column, &format!("arrival→{stage} ms"), us as f64 / 1e3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coinop_proto::{LeaseState, Msat};

    #[test]
    fn records_every_stage_the_reply_has() {
        let reply = CreateResponse {
            lease_id: "l1".into(),
            token: "t".into(),
            token_seq: 1,
            state: LeaseState::Running,
            balance_msat: Msat::from_msat(64_000),
            boot: BootFigures {
                payment_verified_us: 1500,
                ledger_committed_us: 4000,
                vmm_spawned_us: 5000,
                vcpus_started_us: None,
                guest_ready_us: Some(20000),
                start: None,
            },
            network: None,
            late: false,
        };
        let mut s = SampleSet::default();
        record(
            &mut s,
            "credit",
            &Created {
                reply,
                latency_ms: 21.0,
            },
        );
        assert_eq!(s.get("credit", REPLY_METRIC), Some(&[21.0][..]));
        assert_eq!(
            s.get("credit", "arrival→payment_verified ms"),
            Some(&[1.5][..])
        );
        assert_eq!(s.get("credit", "arrival→guest_ready ms"), Some(&[20.0][..]));
        assert_eq!(
            s.get("credit", "arrival→vcpus_started ms"),
            None,
            "null is not zero"
        );
    }
}
