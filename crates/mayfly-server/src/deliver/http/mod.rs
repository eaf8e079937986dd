//! The HTTP API: OAuth token exchange, discovery, admin endpoints, health.

mod admin;
mod discovery;
pub mod error;
mod openapi;
mod token;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::broker::Broker;
use crate::keys::{Kek, KeyRing, SigningAlg};
use crate::ledger::Store;
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
    /// Algorithm of new signing keys.
    pub signing_alg: SigningAlg,
    /// How long a retired key stays published, in seconds.
    pub key_publish_secs: i64,
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
        .route("/v1/join-tokens", post(admin::create_join_token))
        .route("/v1/keys", get(admin::list_keys))
        .route("/v1/keys/rotate", post(admin::rotate_keys))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/.well-known/jwks.json", get(discovery::jwks))
        .route("/.well-known/openid-configuration", get(discovery::openid_configuration))
        .route("/.well-known/oauth-authorization-server", get(discovery::openid_configuration))
        .route("/healthz", get(discovery::healthz))
        .route("/readyz", get(discovery::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path().chars().take(200).collect::<String>()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Hex SHA-256 of an admin token; only hashes are stored.
pub fn admin_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks `Authorization: Bearer <admin token>`.
pub(crate) async fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::Unauthorized("an admin token is required (Authorization: Bearer …)".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 512)
        .ok_or_else(|| ApiError::Unauthorized("use Authorization: Bearer <admin token>".into()))?;
    match state.store.admin_token_exists(&admin_token_hash(token)).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::Unauthorized("the admin token is not valid".into())),
        Err(e) => {
            tracing::error!(error = %e, "admin token lookup failed");
            Err(ApiError::Unavailable("storage is unavailable".into()))
        }
    }
}
