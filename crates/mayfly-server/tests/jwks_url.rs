//! An issuer's JWKS fetched from a URL: cached, refreshed on an unknown `kid`
//! (rate-limited), and a clear 503 when it cannot be fetched.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::get;
use mayfly_testkit::*;
use serde_json::{Value, json};
use tokio::sync::RwLock;

struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    doc: Arc<RwLock<Option<Value>>>,
}

async fn jwks_server(initial: Option<Value>) -> JwksServer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let doc = Arc::new(RwLock::new(initial));
    let (f, d) = (fetches.clone(), doc.clone());
    let app = axum::Router::new().route(
        "/jwks",
        get(move || {
            let (f, d) = (f.clone(), d.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                match d.read().await.clone() {
                    Some(v) => (axum::http::StatusCode::OK, v.to_string()),
                    None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down".to_owned()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    JwksServer { url, fetches, doc }
}

/// The test policies, and the Kubernetes issuer's keys at `url` (fetched again at most once a second).
fn url_issuer(url: &str) -> TestConfig {
    TestConfig::new().policies(TEST_POLICIES).toml(&format!(
        r#"
[[attest.oidc]]
name = "k8s"
preset = "kubernetes"
issuer = "{K8S_ISSUER}"
jwks_url = "{url}"
audiences = ["{MAYFLY_AUDIENCE}"]
jwks_refresh_min_interval = "1s"
"#
    ))
}

/// `jwks` with every `kid` suffixed, to stand for a rotated key set.
fn renamed(jwks: Value, suffix: &str) -> Value {
    let keys: Vec<Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let mut k = k.clone();
            k["kid"] = json!(format!("{}{suffix}", k["kid"].as_str().unwrap()));
            k
        })
        .collect();
    json!({ "keys": keys })
}

#[tokio::test]
async fn jwks_is_cached_and_refreshed_on_rotation_with_rate_limit() {
    let k8s = TestIssuer::new(K8S_ISSUER);
    let jwks = jwks_server(Some(k8s.jwks())).await;
    let srv = TestServer::start_with(url_issuer(&jwks.url)).await;

    let first = k8s.k8s_token("prod", "web");
    for _ in 0..10 {
        assert_eq!(srv.exchange_jwt(&first, "https://api.test").await.status(), 200);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "one fetch serves many tokens");

    // Unknown kids do not make Mayfly hammer the issuer.
    for i in 0..20 {
        let t = k8s.sign_with("RS256", json!({"kid": format!("junk-{i}")}), &k8s.k8s_claims("prod", "web"));
        assert_problem(srv.exchange_jwt(&t, "https://api.test").await, 400, "unknown-signing-key").await;
    }
    assert!(jwks.fetches.load(Ordering::SeqCst) <= 2, "rate-limited: {}", jwks.fetches.load(Ordering::SeqCst));

    // The issuer rotates: a token with the new kid is accepted after the next allowed refresh.
    let rotated = TestIssuer::new(K8S_ISSUER);
    *jwks.doc.write().await = Some(renamed(rotated.jwks(), "-2"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let t = rotated.sign_with("RS256", json!({"kid": "rsa-1-2"}), &rotated.k8s_claims("prod", "web"));
    assert_eq!(srv.exchange_jwt(&t, "https://api.test").await.status(), 200);
    // The old key left the JWKS: a token it signed, verified (and remembered) before,
    // no longer vouches for anyone.
    assert_problem(srv.exchange_jwt(&first, "https://api.test").await, 400, "unknown-signing-key").await;
    srv.stop().await;
}

#[tokio::test]
async fn unreachable_jwks_is_a_503() {
    let k8s = TestIssuer::new(K8S_ISSUER);
    let jwks = jwks_server(None).await;
    let srv = TestServer::start_with(url_issuer(&jwks.url)).await;
    let body = assert_problem(
        srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await,
        503,
        "jwks-unavailable",
    )
    .await;
    assert_eq!(body["error"], "temporarily_unavailable");
    // Once the issuer is back (and the rate limit allows), tokens verify.
    *jwks.doc.write().await = Some(k8s.jwks());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await.status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn a_jwks_url_in_clear_off_loopback_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = url_issuer("http://jwks.example/keys").write(dir.path());
    let err = mayfly_server::config::Config::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("jwks_url") && err.contains("https://") && err.contains("\"k8s\""), "{err}");
}

#[tokio::test]
async fn a_redirecting_jwks_url_is_not_followed() {
    let k8s = TestIssuer::new(K8S_ISSUER);
    // The configured URL answers 302 to another URL that holds the keys the tokens are signed
    // with: following it would let whoever controls the first URL choose the keys.
    let target = jwks_server(Some(k8s.jwks())).await;
    let location = target.url.clone();
    let app = axum::Router::new().route(
        "/jwks",
        get(move || {
            let location = location.clone();
            async move { (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, location)], "") }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let srv = TestServer::start_with(url_issuer(&url)).await;
    assert_problem(srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await, 503, "jwks-unavailable")
        .await;
    assert_eq!(target.fetches.load(Ordering::SeqCst), 0, "the redirect was not followed");
    srv.stop().await;
}
