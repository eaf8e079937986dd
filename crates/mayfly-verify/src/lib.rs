//! `mayfly-verify`: for resource servers that accept Mayfly tokens.
//!
//! - [`Verifier`] checks a request's token offline against the broker's JWKS (fetched,
//!   cached, refreshed on rotation): `typ`, `iss`, `aud`, lifetime, and its binding —
//!   a DPoP proof ([`dpop`], RFC 9449, including `ath`) or the TLS client certificate
//!   (RFC 8705). Limited-use tokens are counted by the broker.
//! - [`RevocationFollower`] follows the broker's revocation feed (event stream, polling
//!   while it is down), so a revoked token is refused within about a second.
//! - [`RequireMayflyToken`] is a tower layer (axum: `.layer(...)`) that does all of it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mayfly_verify::{RequireMayflyToken, Verifier, VerifierConfig, Verified};
//! let mut cfg = VerifierConfig::new("https://mayfly.internal:8443", "https://payments.example");
//! cfg.feed_credential = std::env::var("MAYFLY_VERIFIER_TOKEN").ok();
//! let verifier = Verifier::new(cfg).await?;
//! let app: axum::Router = axum::Router::new()
//!     .route("/pay", axum::routing::post(|v: axum::Extension<Verified>| async move { v.claims.sub.clone() }))
//!     .layer(RequireMayflyToken::new(verifier));
//! # let _ = app; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod claims;
pub mod dpop;
pub mod follow;
pub mod layer;
pub mod revocation;
pub mod token_cache;
pub mod verifier;

pub use claims::{AccessClaims, Confirmation};
pub use dpop::{CheckedProof, DpopError, DpopProof, DpopVerifier, NonceSource, ProofContext};
pub use follow::{CredentialSource, FeedCredential, RevocationFollower};
pub use layer::{ClientCertificate, RequireMayflyToken};
pub use verifier::{
    Binding, Presented, Verified, Verifier, VerifierConfig, VerifyError, check_binding, split_authorization,
};

/// Unix seconds now (0 if the clock is before 1970).
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
