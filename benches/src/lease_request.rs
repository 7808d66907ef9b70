//! One timed lease request through coinopd, and the stage figures its reply carries
//! (`boot`, µs since the daemon read the request).

use std::time::Instant;

use coinop_cli::client::Client;
use serde_json::Value;

use crate::error::BenchError;
use crate::sample_set::SampleSet;

/// The reply's `boot` keys, in the order the stages happen.
pub const STAGES: [&str; 5] = [
    "payment_verified_us",
    "ledger_committed_us",
    "vmm_spawned_us",
    "vcpus_started_us",
    "guest_ready_us",
];

pub const REPLY_METRIC: &str = "client request→201 reply ms";

pub struct Created {
    pub reply: Value,
    pub latency_ms: f64,
}

/// POSTs /v1/leases and insists on 201: a benchmark of failures would mean nothing.
pub async fn create(client: &Client, body: &Value) -> Result<Created, BenchError> {
    let bytes = body.to_string().into_bytes();
    let t0 = Instant::now();
    let r = client
        .call("POST", "/v1/leases", None, Some(bytes))
        .await
        .map_err(|e| BenchError::Run {
            what: "POST /v1/leases".into(),
            detail: e.to_string(),
        })?;
    let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
    if r.status != 201 {
        return Err(BenchError::Run {
            what: "POST /v1/leases".into(),
            detail: format!("HTTP {}: {}", r.status, r.text()),
        });
    }
    Ok(Created {
        reply: r.json(),
        latency_ms,
    })
}

/// Records the client-side latency and each stage of the reply's `boot` figures.
pub fn record(s: &mut SampleSet, column: &str, c: &Created) {
    s.push(column, REPLY_METRIC, c.latency_ms);
    for stage in STAGES {
        if let Some(us) = c.reply["boot"][stage].as_u64() {
            let name = format!("arrival→{} ms", stage.trim_end_matches("_us"));
            s.push(column, &name, us as f64 / 1e3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_every_stage_the_reply_has() {
        let reply = serde_json::json!({"boot": {"payment_verified_us": 1500,
            "ledger_committed_us": 4000, "vmm_spawned_us": 5000,
            "vcpus_started_us": null, "guest_ready_us": 20000}});
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
