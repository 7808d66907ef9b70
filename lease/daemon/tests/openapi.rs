//! The server against lease/openapi.yaml: every documented path+method is routed (not the
//! 404/405 fallback), every error answer's status is one the spec lists for its operation,
//! in the shape it names, and reply bodies carry only the fields their schemas declare,
//! null only where those are nullable.

mod common;

use coinop_cli::client::Reply;
use common::leases::{credit_payment, testguest_body};
use common::{kvm_or_skip, Daemon, Wallet};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

fn spec() -> Yaml {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
        .expect("openapi.yaml readable");
    serde_yaml::from_str(&text).expect("openapi.yaml is YAML")
}

/// The operation `method` (lower case) of the documented path `template`.
fn operation<'a>(spec: &'a Yaml, method: &str, template: &str) -> &'a Yaml {
    let op = &spec["paths"][template][method];
    assert!(op.is_mapping(), "{method} {template} is not documented");
    op
}

/// A response of an operation, through its `$ref` to `components/responses`.
fn response<'a>(spec: &'a Yaml, op: &'a Yaml, status: u16) -> Option<&'a Yaml> {
    let r = op["responses"].get(status.to_string())?;
    Some(match r["$ref"].as_str() {
        Some(name) => {
            let name = name
                .strip_prefix("#/components/responses/")
                .expect("a response ref");
            &spec["components"]["responses"][name]
        }
        None => r,
    })
}

/// The JSON schema of an operation's answer with `status`.
fn response_schema<'a>(spec: &'a Yaml, method: &str, template: &str, status: u16) -> &'a Yaml {
    let op = operation(spec, method, template);
    let r = response(spec, op, status)
        .unwrap_or_else(|| panic!("{method} {template}: {status} not documented"));
    let schema = &r["content"]["application/json"]["schema"];
    assert!(
        schema.is_mapping(),
        "{method} {template} {status}: no JSON schema"
    );
    schema
}

/// Asserts that `r`, an error answer of `method template`, has a status the spec lists for
/// that operation, in the body shape it names there: NUT-00's `{detail, code}` for a
/// `CashuError` schema, coinop's `{"error": {code, message}}` otherwise.
fn assert_documented_error(spec: &Yaml, method: &str, template: &str, r: &Reply) {
    let op = operation(spec, method, template);
    assert!(
        !(200..300).contains(&r.status),
        "{method} {template}: {} is no error: {}",
        r.status,
        r.text()
    );
    let Some(doc) = response(spec, op, r.status) else {
        panic!(
            "{method} {template} answered undocumented {}: {}",
            r.status,
            r.text()
        );
    };
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let cashu = doc["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .is_some_and(|s| s.ends_with("/CashuError"));
    if cashu {
        assert!(
            body["code"].is_u64() && body["detail"].is_string(),
            "{method} {template} {}: Cashu error body shape: {}",
            r.status,
            r.text()
        );
        return;
    }
    assert!(
        body["error"]["code"].as_str().is_some_and(|c| c
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')),
        "{method} {template} {}: error body shape: {}",
        r.status,
        r.text()
    );
    assert!(body["error"]["message"].is_string(), "{}", r.text());
}

/// `schema` and, through `$ref` and `allOf`, every schema it is made of (each one a
/// plain schema: a type, properties, an enum or a oneOf).
fn parts<'a>(spec: &'a Yaml, schema: &'a Yaml, out: &mut Vec<&'a Yaml>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r
            .strip_prefix("#/components/schemas/")
            .expect("a schema ref");
        let target = &spec["components"]["schemas"][name];
        assert!(target.is_mapping(), "dangling {r}");
        return parts(spec, target, out);
    }
    out.push(schema);
    for member in schema["allOf"].as_sequence().into_iter().flatten() {
        parts(spec, member, out);
    }
}

/// Whether `value` is what `schema` says. Stricter than OpenAPI's default in one way: an
/// object may carry only the properties its schema declares (through `allOf` too), so a
/// field the server sends and the spec does not name fails here. `Err` says where.
fn conforms(spec: &Yaml, schema: &Yaml, value: &Value, at: &str) -> Result<(), String> {
    let mut all = Vec::new();
    parts(spec, schema, &mut all);
    if value.is_null() {
        // `nullable` on the schema itself or on the wrapper that refers to it.
        return if all.iter().any(|s| s["nullable"].as_bool() == Some(true)) {
            Ok(())
        } else {
            Err(format!("{at}: null where the schema is not nullable"))
        };
    }
    for s in &all {
        if let Some(ty) = s["type"].as_str() {
            let ok = match ty {
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                other => return Err(format!("{at}: unknown type {other}")),
            };
            if !ok {
                return Err(format!("{at}: {value} is not of type {ty}"));
            }
        }
        if let Some(values) = s["enum"].as_sequence() {
            let as_yaml = serde_yaml::to_value(value).map_err(|e| e.to_string())?;
            if !values.contains(&as_yaml) {
                return Err(format!("{at}: {value} is not in its enum"));
            }
        }
        if let Some(branches) = s["oneOf"].as_sequence() {
            let matching = branches
                .iter()
                .filter(|b| conforms(spec, b, value, at).is_ok())
                .count();
            if matching != 1 {
                return Err(format!("{at}: {value} matches {matching} of its oneOf"));
            }
        }
        if let (Some(items), Some(array)) = (s.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                conforms(spec, items, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    let Some(object) = value.as_object() else {
        return Ok(());
    };
    let declared: Vec<&serde_yaml::Mapping> = all
        .iter()
        .filter_map(|s| s["properties"].as_mapping())
        .collect();
    for s in &all {
        for name in s["required"].as_sequence().into_iter().flatten() {
            let name = name.as_str().expect("a required name");
            if !object.contains_key(name) {
                return Err(format!("{at}: required `{name}` missing"));
            }
        }
    }
    // An object schema without properties (`dleq`, or one left to its oneOf) says nothing
    // of the fields.
    if declared.is_empty() {
        return Ok(());
    }
    for (name, field) in object {
        let Some(field_schema) = declared.iter().find_map(|p| p.get(name.as_str())) else {
            return Err(format!("{at}: `{name}` is not in the schema"));
        };
        conforms(spec, field_schema, field, &format!("{at}.{name}"))?;
    }
    Ok(())
}

/// Asserts that `body` is what `method template` documents for `status`.
fn assert_conforms(spec: &Yaml, method: &str, template: &str, status: u16, body: &Value) {
    let schema = response_schema(spec, method, template, status);
    if let Err(e) = conforms(spec, schema, body, "body") {
        panic!("{method} {template} {status}: {e}: {body}");
    }
}

/// The body limit of the daemons here: small, so an over-limit body is cheap to send.
const BODY_LIMIT: &str = "65536";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_with_documented_errors() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--max-body-bytes", BODY_LIMIT]).await;
    let spec = spec();
    let paths = spec["paths"].as_mapping().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        let path = path.as_str().expect("path string");
        let concrete = path
            .replace("{id}", "lunknown")
            .replace("{keyset_id}", "00unknown")
            .replace("{quote}", "qunknown");
        for (method, _) in item.as_mapping().expect("path item") {
            let method = method.as_str().expect("method");
            let upper = method.to_uppercase();
            // An empty JSON object: valid JSON, usually missing required fields.
            let body = (upper == "POST").then(|| Value::Object(Default::default()));
            let r = d.call(&upper, &concrete, Some("wrong"), body).await;
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let unrouted_message = body["error"]["message"]
                .as_str()
                .or(body["detail"].as_str())
                .is_some_and(|m| m.starts_with("no such route"));
            let routed = !(r.status == 405 || (r.status == 404 && unrouted_message));
            assert!(
                routed,
                "{upper} {path} is documented but not routed ({})",
                r.text()
            );
            if !(200..300).contains(&r.status) {
                assert_documented_error(&spec, method, path, &r);
            }
            checked += 1;
        }
    }
    assert!(checked >= 19, "only {checked} operations documented");

    // An unknown route: NUT-00's body under the mint's prefixes (a wallet asking to melt),
    // coinop's elsewhere.
    let r = d.call("POST", "/v1/melt/quote/bolt11", None, None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert!(
        body["code"].is_u64() && body["detail"].is_string(),
        "{}",
        r.text()
    );
    let r = d.call("GET", "/v1/nothing", None, None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "not_found", "{}", r.text());

    // A route asked with a method it does not take: 405 in the route's own shape, as the
    // spec's description and its CashuError schema say (a Cashu wallet reads NUT-00).
    for (method, path, cashu) in [
        ("GET", "/v1/swap", true),
        ("DELETE", "/v1/keys", true),
        ("GET", "/v1/mint/quote/onchain/qunknown/payment", true),
        ("GET", "/v1/keysets/rotate", false),
        ("GET", "/v1/leases/lunknown/stop", false),
        ("PUT", "/v1/host", false),
    ] {
        let r = d.call(method, path, None, None).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if cashu {
            assert!(
                body["code"] == 0 && body["detail"].is_string(),
                "{method} {path}: {}",
                r.text()
            );
        } else {
            assert_eq!(
                body["error"]["code"],
                "method_not_allowed",
                "{method} {path}: {}",
                r.text()
            );
        }
    }

    // A path segment that is no UTF-8 once percent-decoded: a 400 the operation lists, in
    // its own error shape (coinop's, or NUT-00's on the Cashu routes).
    for (method, path, template) in [
        ("get", "/v1/leases/%FF", "/v1/leases/{id}"),
        ("get", "/v1/leases/%FF/console", "/v1/leases/{id}/console"),
        ("post", "/v1/leases/%FF/stop", "/v1/leases/{id}/stop"),
        ("post", "/v1/leases/%FF/topup", "/v1/leases/{id}/topup"),
        ("get", "/v1/quotes/%FF", "/v1/quotes/{id}"),
        ("get", "/v1/keys/%FF", "/v1/keys/{keyset_id}"),
        (
            "get",
            "/v1/mint/quote/onchain/%FF",
            "/v1/mint/quote/onchain/{quote}",
        ),
    ] {
        let upper = method.to_uppercase();
        let body = (method == "post").then(|| json!({}));
        let r = d.call(&upper, path, Some("wrong"), body).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
        assert_documented_error(&spec, method, template, &r);
    }

    // Top-up and stop check the token before they read the body: a caller without it
    // gets 401 whatever it sends (never a 400 or 413 telling that its body was parsed).
    let limit: usize = BODY_LIMIT.parse().expect("a number");
    for what in ["topup", "stop"] {
        let path = format!("/v1/leases/lunknown/{what}");
        let template = format!("/v1/leases/{{id}}/{what}");
        for body in [
            b"{not json".to_vec(),
            br#"{"payment": 5, "outputs": "x"}"#.to_vec(),
            vec![b' '; limit + 1],
        ] {
            let r = d
                .client
                .call("POST", &path, Some("wrong"), Some(body))
                .await
                .expect("daemon answers");
            assert_eq!(r.status, 401, "POST {path}: {}", r.text());
            assert_documented_error(&spec, "post", &template, &r);
        }
    }
    d.shutdown().await;
}

/// The reply types serialised as the daemon sends them, against their schemas: for the
/// shapes a test daemon cannot easily be made to answer (a lease whose create died before
/// its boot, a failed boot's refund, a recovery).
#[test]
fn reply_bodies_match_their_schemas() {
    use coinop_proto::lease_view::Used;
    use coinop_proto::replies::{
        BootFailedResponse, CreateResponse, ErrorDetail, NotBootedYetResponse, RecoveredResponse,
        Refund, StopResponse,
    };
    use coinop_proto::{BootFigures, LeaseState, LeaseView, Msat, StopReason};
    use payment::credit::nut_types::BlindSignature;

    let spec = spec();
    let sig = BlindSignature {
        amount: 2,
        id: "00ad268c4d1f5826".into(),
        c_: "02".repeat(33),
        dleq: None,
    };
    let boot = BootFigures {
        payment_verified_us: 1,
        ledger_committed_us: 2,
        vmm_spawned_us: 3,
        vcpus_started_us: None,
        guest_ready_us: None,
        start: None,
    };
    // A lease whose create died before its guest started: no boot figures, no NIC.
    let never_booted = LeaseView {
        lease_id: "l1".into(),
        state: LeaseState::Stopped,
        stop_reason: Some(StopReason::BootFailed),
        vcpus: 1,
        mem_mib: 64,
        image: "testguest".into(),
        balance_msat: Msat::from_msat(5_500),
        used: Used {
            vcpu_us: 0,
            mem_mib_us: 0,
            cgroup_cpu_us: None,
        },
        estimated_remaining_s: 0,
        stops_at: None,
        debited_msat: Msat::ZERO,
        refunded_msat: None,
        residual_msat: None,
        created_at: 1,
        updated_at: 2,
        boot: None,
        network: None,
    };
    let lease_schema = &spec["components"]["schemas"]["Lease"];
    conforms(&spec, lease_schema, &to_json(&never_booted), "lease").expect("a lease without boot");

    let created = to_json(&CreateResponse {
        lease_id: "l1".into(),
        token: "t".into(),
        token_seq: 1,
        state: LeaseState::Running,
        balance_msat: Msat::from_msat(1_000),
        boot: boot.clone(),
        network: None,
        late: false,
    });
    assert_conforms(&spec, "post", "/v1/leases", 201, &created);
    // No NIC: `network` is null, as GET shows it, not left out.
    assert_eq!(created.get("network"), Some(&Value::Null), "{created}");

    let signed = Refund::Signatures {
        refund_msat: Msat::from_msat(2_000),
        residual_msat: Msat::from_msat(500),
        signatures: vec![sig.clone()],
    };
    let kept = Refund::Kept {
        refund_msat: Msat::from_msat(2_000),
        residual_msat: Msat::from_msat(500),
        how: "POST /v1/leases/l1/stop with outputs".into(),
    };
    for refund in [signed.clone(), kept] {
        let failed = to_json(&BootFailedResponse {
            error: ErrorDetail::new("boot_failed", "the guest did not boot"),
            lease_id: "l1".into(),
            token: "t".into(),
            token_seq: 1,
            state: LeaseState::Stopped,
            stop_reason: StopReason::BootFailed,
            refund,
            boot: boot.clone(),
        });
        assert_conforms(&spec, "post", "/v1/leases", 503, &failed);
    }
    let waiting = to_json(&NotBootedYetResponse {
        error: ErrorDetail::new("host_full", "no room now"),
        lease_id: "l1".into(),
        token: "t".into(),
        token_seq: 2,
        recovered: true,
        state: LeaseState::Stopped,
        stop_reason: StopReason::BootFailed,
    });
    assert_conforms(&spec, "post", "/v1/leases", 503, &waiting);
    let recovered = to_json(&RecoveredResponse {
        lease: never_booted,
        token: "t".into(),
        token_seq: 2,
        recovered: true,
        refund: Some(signed),
    });
    assert_conforms(&spec, "post", "/v1/leases", 200, &recovered);

    for (signatures, refund) in [
        (Some(vec![sig]), None),
        (
            None,
            Some("kept: POST again with that many outputs".to_string()),
        ),
    ] {
        let stopped = to_json(&StopResponse {
            state: LeaseState::Stopped,
            refund_msat: Msat::from_msat(2_000),
            refund_sat: 2,
            residual_msat: Msat::from_msat(500),
            change_outputs_needed: 1,
            signatures,
            refund,
        });
        assert_conforms(&spec, "post", "/v1/leases/{id}/stop", 200, &stopped);
    }
}

/// A reply as the daemon sends it.
fn to_json(reply: &impl serde::Serialize) -> Value {
    serde_json::to_value(reply).expect("a reply serialises")
}

/// A lease's own routes with a token, against the spec: the create's and GET's bodies, and
/// the errors top-up and stop answer for a payment or outputs the mint refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_route_answers_are_documented() {
    if !kvm_or_skip() {
        return;
    }
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &["--max-body-bytes", BODY_LIMIT]).await;
    let spec = spec();
    let proofs = d.mint_credit(64).await;
    let r = d
        .call(
            "POST",
            "/v1/leases",
            None,
            Some(testguest_body("mode=spin:600000", credit_payment(&proofs))),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_conforms(&spec, "post", "/v1/leases", 201, &created);
    // The test guest has no NIC: null, as GET shows it.
    assert_eq!(created.get("network"), Some(&Value::Null), "{created}");
    let id = created["lease_id"].as_str().expect("lease_id");
    let token = created["token"].as_str().expect("token");
    let shown = d
        .call("GET", &format!("/v1/leases/{id}"), Some(token), None)
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_conforms(&spec, "get", "/v1/leases/{id}", 200, &shown.json());

    let topup = format!("/v1/leases/{id}/topup");
    let stop = format!("/v1/leases/{id}/stop");
    let post = async |path: &str, template: &str, body: Vec<u8>, want: u16| {
        let r = d
            .client
            .call("POST", path, Some(token), Some(body))
            .await
            .expect("daemon answers");
        assert_eq!(r.status, want, "POST {path}: {}", r.text());
        assert_documented_error(&spec, "post", template, &r);
    };
    let to_vec = |v: Value| serde_json::to_vec(&v).expect("json");
    let topup_t = "/v1/leases/{id}/topup";
    let stop_t = "/v1/leases/{id}/stop";

    // Top-up: an unknown quote, an unknown keyset, more proofs than the mint takes at once,
    // a body over the limit.
    let onchain = json!({"payment": {"onchain": {"quote_id": "qnope"}}});
    post(&topup, topup_t, to_vec(onchain), 404).await;
    let c = "02".repeat(33);
    let foreign = json!([{"amount": 1, "id": "00ffffffffffffff", "secret": "s", "C": c}]);
    post(
        &topup,
        topup_t,
        to_vec(json!({"payment": {"credit": {"proofs": foreign}}})),
        404,
    )
    .await;
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"amount": 1, "id": "x", "secret": i.to_string(), "C": "c"}))
        .collect();
    post(
        &topup,
        topup_t,
        to_vec(json!({"payment": {"credit": {"proofs": many}}})),
        413,
    )
    .await;
    let limit: usize = BODY_LIMIT.parse().expect("a number");
    post(&topup, topup_t, vec![b' '; limit + 1], 413).await;
    // The lease's own token and a bad body: now the body is read, and is a 400.
    post(&topup, topup_t, b"{not json".to_vec(), 400).await;

    // Stop with outputs the mint will not sign (nothing is refunded): a keyset it does not
    // have, a body over the limit, and after a rotation the keyset that signs no more.
    let wallet = Wallet::new(&d).await;
    let outputs = |id: &str| {
        let blanks = wallet.outputs(&[1; 8]);
        let outs: Vec<Value> = blanks
            .iter()
            .map(|b| json!({"amount": 1, "id": id, "B_": b.msg.b_}))
            .collect();
        to_vec(json!({ "outputs": outs }))
    };
    post(&stop, stop_t, outputs("00ffffffffffffff"), 404).await;
    post(&stop, stop_t, vec![b' '; limit + 1], 413).await;
    let rotated = d.call("POST", "/v1/keysets/rotate", None, None).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    post(&stop, stop_t, outputs(&wallet.keyset_id), 422).await;

    // The lease still runs; a stop without outputs keeps its balance and says how to
    // collect it (`refund`), in the schema.
    let stopped = d.call("POST", &stop, Some(token), None).await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let stopped = stopped.json();
    assert!(stopped["refund"].is_string(), "{stopped}");
    assert_conforms(&spec, "post", "/v1/leases/{id}/stop", 200, &stopped);
    d.shutdown().await;
}
