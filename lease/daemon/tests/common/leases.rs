//! The lease steps most daemon tests take: create a lease and expect it granted, stop it
//! and expect the refund answer, and a create that an injected fault cuts off.

use std::os::unix::process::ExitStatusExt;

use coinop_cli::client::Reply;
use serde_json::{json, Value};

use super::Daemon;

/// A lease the daemon granted: its id, its bearer token and the whole 201 answer.
pub struct CreatedLease {
    pub id: String,
    pub token: String,
    pub reply: Value,
}

/// The body of a create for a 1 vCPU, 64 MiB test guest running `cmdline`.
pub fn testguest_body(cmdline: &str, payment: Value) -> Value {
    json!({"vcpus": 1, "mem_mib": 64, "image": "testguest", "cmdline": cmdline,
           "payment": payment})
}

/// A credit payment made of `proofs`.
pub fn credit_payment(proofs: &impl serde::Serialize) -> Value {
    json!({"credit": {"proofs": proofs}})
}

impl Daemon {
    /// The lease's console so far, through the tenant's route.
    pub async fn console(&self, lease: &CreatedLease) -> String {
        let r = self
            .call(
                "GET",
                &format!("/v1/leases/{}/console", lease.id),
                Some(&lease.token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }

    /// POST /v1/leases with `body`; asserts a 201 and takes the id and token from it.
    pub async fn create_lease(&self, body: Value) -> CreatedLease {
        let r = self.call("POST", "/v1/leases", None, Some(body)).await;
        assert_eq!(r.status, 201, "create lease: {}", r.text());
        let reply = r.json();
        CreatedLease {
            id: reply["lease_id"].as_str().expect("lease_id").to_string(),
            token: reply["token"].as_str().expect("token").to_string(),
            reply,
        }
    }

    /// POST /v1/leases/{id}/stop with no body; asserts a 200 and returns the answer.
    pub async fn stop_lease(&self, id: &str, token: &str) -> Reply {
        let s = self
            .call("POST", &format!("/v1/leases/{id}/stop"), Some(token), None)
            .await;
        assert_eq!(s.status, 200, "stop lease {id}: {}", s.text());
        s
    }

    /// Creates a lease on a daemon whose injected fault aborts it before it answers; asserts
    /// no answer came and that the process died of SIGABRT.
    pub async fn create_into_crash(self, body: &Value) {
        let r = self
            .client
            .call(
                "POST",
                "/v1/leases",
                None,
                Some(serde_json::to_vec(body).expect("a Value serializes")),
            )
            .await;
        assert!(r.is_err(), "coinopd answered despite the fault: {r:?}");
        let status = self.wait_crash().await;
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    }
}
