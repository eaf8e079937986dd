//! The HTTP API: OAuth token exchange, discovery, admin endpoints, health.

mod admin;
mod checkpoints;
mod credentials;
mod discovery;
pub mod error;
mod introspect;
pub mod metrics;
mod openapi;
mod records;
mod signals;
mod tasks;
mod token;
mod workload;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::broker::Broker;
use crate::govern::Revocations;
use crate::keys::{Kek, KeyRing, SigningAlg};
use crate::ledger::Store;
use crate::verify::TokenVerifier;
pub use error::ApiError;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers need.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

/// The parts behind [`AppState`].
pub struct AppInner {
    /// The flow.
    pub broker: Arc<Broker>,
    /// Signing keys.
    pub keys: Arc<KeyRing>,
    /// The key-encryption key.
    pub kek: Arc<Kek>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// `iss` of issued tokens and base of discovery URLs.
    pub issuer_url: String,
    /// The trust domain of issued SPIFFE IDs.
    pub trust_domain: String,
    /// Algorithm of new signing keys.
    pub signing_alg: SigningAlg,
    /// How long a retired key stays published, in seconds.
    pub key_publish_secs: i64,
    /// Revocations in force and their feed.
    pub revocations: Arc<Revocations>,
    /// Verifies Mayfly's own tokens.
    pub verifier: TokenVerifier,
    /// Checks DPoP proofs at the token endpoint.
    pub dpop: mayfly_verify::DpopVerifier,
    /// Admin-token hashes seen valid recently (saves a storage read per admin call).
    pub admin_cache: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Turns true when the server is shutting down.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Whether this replica runs background work.
    pub leadership: crate::govern::Leadership,
    /// Who may push Security Event Tokens.
    pub signal_senders: Arc<Vec<crate::govern::signals::SignalSender>>,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(inner: AppInner) -> Self {
        Self { inner: Arc::new(inner) }
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/token", post(token::exchange))
        .route("/v1/tasks", post(tasks::start).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::show).delete(tasks::end))
        .route("/v1/tasks/{id}/attest", post(tasks::attest))
        .route("/v1/tasks/{id}/approve", post(tasks::approve))
        .route("/v1/tasks/{id}/deny", post(tasks::deny))
        .route("/v1/credentials/leases", get(credentials::list))
        .route("/v1/credentials/leases/{id}", axum::routing::delete(credentials::revoke))
        .route("/v1/credentials/leases/{id}/renew", post(credentials::renew))
        .route("/v1/credentials/{database}/{role}", post(credentials::issue))
        .route("/v1/join-tokens", post(admin::create_join_token))
        .route("/v1/keys", get(admin::list_keys))
        .route("/v1/keys/rotate", post(admin::rotate_keys))
        .route("/v1/entries", get(workload::list_entries).post(workload::create_entry))
        .route("/v1/entries/{id}", get(workload::show_entry).delete(workload::delete_entry))
        .route("/v1/bundle", get(workload::bundle))
        .route("/v1/svid-authorities/rotate", post(workload::rotate_authorities))
        .route("/v1/introspect", post(introspect::introspect))
        .route("/v1/signals", post(signals::receive))
        .route("/v1/revocations", get(introspect::feed).post(records::revoke))
        .route("/v1/revocations/stream", get(introspect::stream))
        .route("/v1/leases", get(records::leases))
        .route("/v1/audit", get(records::audit))
        .route("/v1/audit/verify", get(records::audit_verify))
        .route("/v1/audit/checkpoints", get(checkpoints::list))
        .route("/v1/audit/checkpoints/latest", get(checkpoints::latest))
        .route("/v1/audit/keys", get(checkpoints::keys))
        .route("/metrics", get(metrics::render))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/.well-known/jwks.json", get(discovery::jwks))
        .route("/.well-known/openid-configuration", get(discovery::openid_configuration))
        .route("/.well-known/oauth-authorization-server", get(discovery::openid_configuration))
        .route("/healthz", get(discovery::healthz))
        .route("/readyz", get(discovery::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path().chars().take(200).collect::<String>()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The request body, or the problem that explains why it could not be read.
pub(crate) fn read_body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|rej| {
        if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::bad_request("invalid-request", "the request body could not be read")
        }
    })
}

/// Query parameters, or a problem naming the one that did not parse.
pub(crate) fn read_query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query.map(|q| q.0).map_err(|rej| ApiError::bad_request("invalid-request", rej.body_text()))
}

/// Hex SHA-256 of an admin token; only hashes are stored.
pub fn admin_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks `Authorization: Bearer <admin token>`.
/// Records an admin action in the audit trail; a failure is a 503 (the action is done, its record is not).
pub(crate) async fn audit_admin(
    state: &AppState,
    kind: &str,
    subject: Option<String>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    state.broker.ledger().audit(crate::ledger::AuditEvent::new(kind, subject, detail)).await.map_err(ApiError::storage)
}

pub(crate) async fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized("an admin token is required (Authorization: Bearer <admin token>)".into())
    })?;
    check_admin(state, token).await
}

/// The token of `Authorization: Bearer <token>`, when present and plausible in size.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
}

pub(crate) async fn check_admin(state: &AppState, token: &str) -> Result<(), ApiError> {
    if token.len() > 512 {
        return Err(ApiError::Unauthorized("the admin token is not valid".into()));
    }
    let hash = admin_token_hash(token);
    if admin_cached(state, &hash) {
        return Ok(());
    }
    match state.store.admin_token_exists(&hash).await {
        Ok(true) => {
            if let Ok(mut c) = state.admin_cache.lock() {
                c.insert(hash, std::time::Instant::now());
            }
            Ok(())
        }
        Ok(false) => Err(ApiError::Unauthorized("the admin token is not valid".into())),
        Err(e) => {
            tracing::error!(error = %e, "admin token lookup failed");
            Err(ApiError::Unavailable("storage is unavailable".into()))
        }
    }
}

/// How long a verified admin token is trusted without a storage read.
const ADMIN_CACHE_SECS: u64 = 30;

fn admin_cached(state: &AppState, hash: &str) -> bool {
    state
        .admin_cache
        .lock()
        .map(|c| c.get(hash).is_some_and(|t| t.elapsed().as_secs() < ADMIN_CACHE_SECS))
        .unwrap_or(false)
}

/// The audience a Mayfly token needs to call introspection and the revocation feed.
pub const VERIFIER_AUDIENCE: &str = "urn:mayfly:introspect";

/// Checks that the caller may introspect and read the revocation feed: an admin token,
/// or a live Mayfly token for the audience [`VERIFIER_AUDIENCE`].
pub(crate) async fn require_verifier(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized(format!(
            "send Authorization: Bearer with an admin token or a Mayfly token for audience {VERIFIER_AUDIENCE}"
        ))
    })?;
    if bearer.starts_with(crate::server::ADMIN_TOKEN_PREFIX) {
        return check_admin(state, bearer).await;
    }
    state
        .verifier
        .verify(bearer, Some(VERIFIER_AUDIENCE), crate::clock::now_unix())
        .map(|_| ())
        .map_err(|e| ApiError::Unauthorized(format!("caller token: {e}")))
}
