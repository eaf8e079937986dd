//! The OpenAPI document tells the truth about the router: every route the server serves is
//! documented with its method, and every documented operation is served, but for the few
//! named below on purpose. The documented routes are mounted from their own annotations
//! (utoipa-axum), so the only routes that could escape the document are the router's own
//! `.route(…)` calls, read from its source (axum cannot list them); each documented
//! operation is then called on a running server, which must route it (not the fallback).

use std::collections::BTreeSet;

use mayfly_testkit::*;
use serde_json::Value;

/// Served and deliberately not in the document, each with its reason.
const UNDOCUMENTED: &[(&str, &str, &str)] = &[
    ("get", "/metrics", "Prometheus' text format for a scraper on a private address, not part of the API"),
    ("get", "/v1/openapi.json", "the document itself"),
    (
        "get",
        "/.well-known/oauth-authorization-server",
        "RFC 8414's name for the metadata documented once, at /.well-known/openid-configuration",
    ),
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `(method, path)` of every `.route(path, method_router)` in the `router` function.
fn routed() -> BTreeSet<(String, String)> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/deliver/http/mod.rs");
    let source = std::fs::read_to_string(file).unwrap();
    let start = source.find("pub fn router(").expect("the router function");
    let end = start + source[start..].find(".fallback(").expect("the router's fallback");
    let mut routes = BTreeSet::new();
    for call in source[start..end].split(".route(").skip(1) {
        let path = call.split('"').nth(1).expect("a literal path").to_owned();
        // The method router: `get(h)`, `get(h).post(h2)`, `axum::routing::delete(h)` ...
        let handlers = call.split_once(',').expect("a method router").1;
        for word in handlers.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if METHODS.contains(&word) {
                routes.insert((word.to_owned(), path.clone()));
            }
        }
    }
    routes
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let ops = item.as_object().expect("a path item");
            ops.keys().filter(|m| METHODS.contains(&m.as_str())).map(move |m| (m.clone(), path.clone()))
        })
        .collect()
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_with_its_method_and_nothing_else_is() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let srv = TestServer::start(&k8s, &gh).await;
    let doc: Value = srv.http.get(format!("{}/v1/openapi.json", srv.url)).send().await.unwrap().json().await.unwrap();
    let documented = documented(&doc);
    assert!(documented.len() >= 30, "the document lists the API: {documented:?}");
    let routed = routed();
    let exempt: BTreeSet<(String, String)> =
        UNDOCUMENTED.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    // Mounted by hand, outside the document: only the named exemptions, each still served
    // and still undocumented.
    assert_eq!(routed, exempt, "routes mounted outside the OpenAPI list");
    for r in &exempt {
        assert!(!documented.contains(r), "stale exemption {r:?}: it is documented");
    }
    // Every documented operation is routed: the fallback answers `no route` (404) or
    // `method-not-allowed` (405); a handler answers anything else, or a 404 of its own.
    for (method, path) in &documented {
        let concrete =
            path.split('/').map(|seg| if seg.starts_with('{') { "x" } else { seg }).collect::<Vec<_>>().join("/");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = srv.http.request(method.clone(), format!("{}{concrete}", srv.url)).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path} is documented but not served: {body}");
        assert!(!(status == 404 && body.contains("no route for")), "{method} {path} is documented but not served");
    }
    srv.stop().await;
}
