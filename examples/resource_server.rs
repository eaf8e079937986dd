//! A resource server that accepts only Mayfly tokens, with `mayfly-verify`.
//!
//! Tokens are verified offline against the broker's JWKS; DPoP-bound tokens need a
//! fresh proof by their key; revoked tokens are refused as soon as the revocation
//! feed delivers them.
//!
//! ```sh
//! cargo run --bin mayfly -- server --dev            # in one terminal
//! MAYFLY_URL=http://127.0.0.1:8270 MAYFLY_VERIFIER_TOKEN=<admin token> \
//!   cargo run -p mayfly-verify --example resource_server
//! # then, with a token for https://api.example:
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8280/hello
//! ```
//! `MAYFLY_VERIFIER_TOKEN` may also be a Mayfly token for the audience
//! `urn:mayfly:introspect:<this server's audience>` (resource servers are workloads too).

use axum::Extension;
use axum::routing::get;
use mayfly_verify::{Binding, RequireMayflyToken, Verified, Verifier, VerifierConfig};

async fn hello(Extension(v): Extension<Verified>) -> String {
    let binding = match &v.binding {
        Binding::None => "a bearer token".to_owned(),
        Binding::Dpop(jkt) => format!("a DPoP-bound token (key {jkt})"),
        Binding::Certificate(x5t) => format!("a certificate-bound token ({x5t})"),
    };
    let task = v.claims.task_id.as_deref().map(|t| format!(", task {t}")).unwrap_or_default();
    format!("hello {}: you came with {binding}{task}, scope {:?}\n", v.claims.sub, v.claims.scope.unwrap_or_default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = std::env::var("MAYFLY_URL").unwrap_or_else(|_| "http://127.0.0.1:8270".into());
    let audience = std::env::var("AUDIENCE").unwrap_or_else(|_| "https://api.example".into());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8280".into());
    let mut cfg = VerifierConfig::new(broker, audience);
    cfg.public_url = Some(format!("http://{listen}"));
    cfg.feed_credential = std::env::var("MAYFLY_VERIFIER_TOKEN").ok();
    if cfg.feed_credential.is_none() {
        eprintln!("MAYFLY_VERIFIER_TOKEN is not set: revocations will not be followed");
    }
    let verifier = Verifier::new(cfg).await?;
    let app = axum::Router::new().route("/hello", get(hello)).layer(RequireMayflyToken::new(verifier));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("resource server on http://{listen}/hello");
    axum::serve(listener, app).await?;
    Ok(())
}
