//! The server against lease/openapi.yaml: every documented path+method is routed (not the
//! 404/405 fallback), and documented error answers have the documented shape.

mod common;

use common::Daemon;
use serde_json::Value;

fn spec() -> serde_yaml::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
        .expect("openapi.yaml readable");
    serde_yaml::from_str(&text).expect("openapi.yaml is YAML")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_with_documented_errors() {
    let dir = common::StateDir::new();
    let d = Daemon::start(dir.path(), &[]).await;
    let spec = spec();
    let paths = spec["paths"].as_mapping().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        let path = path.as_str().expect("path string");
        let concrete = path
            .replace("{id}", "lunknown")
            .replace("{keyset_id}", "00unknown")
            .replace("{quote}", "qunknown");
        for (method, op) in item.as_mapping().expect("path item") {
            let method = method.as_str().expect("method").to_uppercase();
            // An empty JSON object: valid JSON, usually missing required fields.
            let body = (method == "POST").then(|| Value::Object(Default::default()));
            let r = d.call(&method, &concrete, Some("wrong"), body).await;
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let unrouted_message = body["error"]["message"]
                .as_str()
                .or(body["detail"].as_str())
                .is_some_and(|m| m.starts_with("no such route"));
            let routed = !(r.status == 405 || (r.status == 404 && unrouted_message));
            assert!(
                routed,
                "{method} {path} is documented but not routed ({})",
                r.text()
            );
            if !(200..300).contains(&r.status) {
                let code = r.status.to_string();
                let documented = op["responses"]
                    .as_mapping()
                    .expect("responses")
                    .keys()
                    .any(|k| k.as_str() == Some(&code));
                assert!(
                    documented,
                    "{method} {path} answered undocumented {code}: {}",
                    r.text()
                );
                let cashu = op["responses"][code.as_str()]["$ref"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("#/components/responses/Cashu"))
                    || op["responses"][code.as_str()]["content"]["application/json"]["schema"]
                        ["$ref"]
                        .as_str()
                        .is_some_and(|r| r.ends_with("/CashuError"));
                if cashu {
                    // NUT-00 `{detail, code}` on the Cashu routes.
                    assert!(
                        body["code"].is_u64() && body["detail"].is_string(),
                        "{method} {path} {code}: Cashu error body shape: {}",
                        r.text()
                    );
                    checked += 1;
                    continue;
                }
                assert!(
                    body["error"]["code"].as_str().is_some_and(|c| c
                        .chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')),
                    "{method} {path} {code}: error body shape: {}",
                    r.text()
                );
                assert!(body["error"]["message"].is_string());
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

    // A path segment that is no UTF-8 once percent-decoded: a 400 in the route's own error
    // shape (coinop's, or NUT-00's on the Cashu routes), not a plain-text answer.
    for (method, path, cashu) in [
        ("GET", "/v1/leases/%FF", false),
        ("POST", "/v1/leases/%FF/stop", false),
        ("GET", "/v1/quotes/%FF", false),
        ("GET", "/v1/keys/%FF", true),
        ("GET", "/v1/mint/quote/onchain/%FF", true),
    ] {
        let body = (method == "POST").then(|| serde_json::json!({}));
        let r = d.call(method, path, Some("wrong"), body).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if cashu {
            assert!(
                body["code"].is_u64() && body["detail"].is_string(),
                "{method} {path}: {}",
                r.text()
            );
        } else {
            assert_eq!(
                body["error"]["code"],
                "bad_request",
                "{method} {path}: {}",
                r.text()
            );
        }
    }
    d.shutdown().await;
}
