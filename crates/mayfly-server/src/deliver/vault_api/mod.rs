//! The Vault-compatible HTTP API: the part of Vault's API that runtime issuance uses, with
//! Vault's paths, bodies and error shapes, on its own listener (`[vault_api] listen`).
//!
//! Nothing here mints, decides or records: a login starts a Mayfly task (its token is the
//! `client_token`, its id the `accessor`), database credentials, renewals, identity tokens
//! and revocations are the broker's use cases, called as the native API calls them. A
//! Vault token is therefore revoked by every Mayfly selector, and what it obtained dies
//! with it, as Vault's token tree does.

pub mod config;
mod database;
mod login;
mod pki;
mod sys;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::broker::BrokerError;
use crate::deliver::http::{ApiError, AppState};
pub use config::VaultApiConfig;

/// Everything the handlers need: the HTTP API's state and this API's configuration.
#[derive(Clone)]
pub struct VaultState {
    app: AppState,
    cfg: Arc<VaultApiConfig>,
}

/// Builds the router of the Vault-compatible listener.
pub fn router(app: AppState, cfg: Arc<VaultApiConfig>) -> Router {
    let state = VaultState { app, cfg };
    Router::new()
        .route("/v1/auth/token/lookup-self", get(login::lookup_self).post(login::lookup_self))
        .route("/v1/auth/token/renew-self", post(login::renew_self).put(login::renew_self))
        .route("/v1/auth/token/revoke-self", post(login::revoke_self).put(login::revoke_self))
        .route("/v1/auth/token/revoke-accessor", post(login::revoke_accessor).put(login::revoke_accessor))
        .route("/v1/auth/{*rest}", post(login::login).put(login::login))
        .route("/v1/sys/health", get(sys::health).head(sys::health))
        .route("/v1/sys/seal-status", get(sys::seal_status))
        .route("/v1/sys/mounts", get(sys::mounts))
        .route("/v1/sys/auth", get(sys::auth_mounts))
        .route("/v1/sys/internal/ui/mounts/{*path}", get(sys::ui_mount))
        .route("/v1/sys/capabilities-self", post(sys::capabilities_self).put(sys::capabilities_self))
        .route("/v1/sys/leases/lookup", post(database::lookup_lease).put(database::lookup_lease))
        .route("/v1/sys/leases/renew", post(database::renew_lease).put(database::renew_lease))
        .route("/v1/sys/renew", post(database::renew_lease).put(database::renew_lease))
        .route("/v1/sys/leases/revoke", post(database::revoke_lease).put(database::revoke_lease))
        .route("/v1/sys/leases/revoke-prefix/{*prefix}", post(database::revoke_prefix).put(database::revoke_prefix))
        .route("/v1/identity/oidc/token/{name}", get(database::identity_token))
        .route("/v1/{*path}", any(database::secrets_or_unknown))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(crate::deliver::http::MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(errors_in_vault_shape))
        .with_state(state)
}

/// Rejections made before a handler runs (a body over the limit, a path that is not
/// UTF-8) come as plain text: they are reshaped into `{"errors": [...]}` here, once.
async fn errors_in_vault_shape(resp: Response) -> Response {
    let is_json =
        resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status().as_u16() < 400 || is_json {
        return resp;
    }
    let status = resp.status();
    let text = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if message.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { message };
    VaultError::new(status, message).into_response()
}

/// An error in Vault's shape: a status and `{"errors": [...]}`.
#[derive(Debug)]
pub struct VaultError {
    status: StatusCode,
    errors: Vec<String>,
}

impl VaultError {
    /// An error with one message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, errors: vec![message.into()] }
    }

    /// 400 with a message, as Vault answers a bad request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403 `permission denied`, with why as a second message.
    pub fn permission_denied(why: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, errors: vec!["permission denied".into(), why.into()] }
    }
}

impl From<ApiError> for VaultError {
    // The one mapping of Mayfly's errors (status and safe detail, as the native API shows
    // them) into Vault's shape. Vault answers a bad or missing token with 403.
    fn from(e: ApiError) -> Self {
        let (status, problem) = e.problem();
        let detail = problem.detail.unwrap_or(problem.title);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => VaultError::permission_denied(detail),
            status => VaultError::new(status, detail),
        }
    }
}

impl From<BrokerError> for VaultError {
    fn from(e: BrokerError) -> Self {
        ApiError::from(e).into()
    }
}

/// An error written in Vault's shape (the listener's own refusals on this listener).
pub fn render_error(e: ApiError) -> Response {
    VaultError::from(e).into_response()
}

/// A refusal of a call made with a Vault token: a token that does not attest (forged,
/// expired, revoked, its task ended) is Vault's 403 `permission denied`, whatever the reason.
pub(crate) fn with_token(e: BrokerError) -> VaultError {
    match e {
        BrokerError::Attest(a) => VaultError::permission_denied(format!("the client token is not valid: {a}")),
        other => other.into(),
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({ "errors": self.errors }))).into_response();
        resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        resp
    }
}

/// A Vault response envelope around `data` or `auth`.
pub(crate) fn envelope(lease: Option<(&str, i64, bool)>, data: Value, auth: Value, warnings: Vec<String>) -> Response {
    let (lease_id, lease_duration, renewable) = lease.unwrap_or(("", 0, false));
    let body = json!({
        "request_id": crate::ids::time_ordered_id(),
        "lease_id": lease_id,
        "renewable": renewable,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": null,
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
        "auth": auth,
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

/// Who calls: an operator's admin token, or a login's token (a Mayfly task token, not
/// yet verified: the broker call that uses it attests it).
pub(crate) enum VaultCaller {
    /// A Mayfly admin token: may revoke and look up anything, is issued nothing.
    Admin,
    /// A login token. Secret.
    Login(String),
}

/// Longest token accepted in a header.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The token of `X-Vault-Token`, or of `Authorization: Bearer`.
pub(crate) fn presented_token(headers: &HeaderMap) -> Result<&str, VaultError> {
    let missing = || VaultError::permission_denied("missing client token: send X-Vault-Token");
    let token = match headers.get("x-vault-token") {
        Some(v) => v.to_str().map_err(|_| missing())?,
        None => {
            let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(missing)?;
            let (scheme, token) = auth.split_once(' ').ok_or_else(missing)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(missing());
            }
            token
        }
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(missing());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VaultError::permission_denied("the client token is longer than 16 KiB"));
    }
    Ok(token)
}

/// The caller of a request that needs a token.
pub(crate) async fn caller(state: &VaultState, headers: &HeaderMap) -> Result<VaultCaller, VaultError> {
    let token = presented_token(headers)?;
    if token.starts_with(crate::broker::admin_tokens::TOKEN_PREFIX) {
        crate::deliver::http::check_admin(&state.app, token).await?;
        return Ok(VaultCaller::Admin);
    }
    Ok(VaultCaller::Login(token.to_owned()))
}

/// The task behind a login token, attested now (revocation and task state included).
pub(crate) async fn login_task(
    state: &VaultState,
    token: &str,
    peer: &crate::deliver::listener::PeerInfo,
) -> Result<crate::ledger::TaskRecord, VaultError> {
    let now = crate::clock::now_unix();
    match state
        .app
        .broker
        .attest(mayfly_proto::TOKEN_TYPE_TASK, token, peer.addr.ip(), now)
        .await
        .map_err(with_token)?
    {
        crate::broker::Caller::Task(t) => Ok(t.task),
        crate::broker::Caller::Workload(_) => Err(VaultError::permission_denied("not a Mayfly task token")),
    }
}

/// A JSON body, or `{}` when there is none (Vault clients send empty bodies on many calls).
pub(crate) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, VaultError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| VaultError::bad_request(format!("failed to parse JSON input: {e}")))
}

async fn unknown_route(uri: axum::http::Uri) -> VaultError {
    not_served(uri.path())
}

/// 404 for a path Mayfly does not serve, naming it.
pub(crate) fn not_served(path: &str) -> VaultError {
    let route: String = path.trim_start_matches("/v1/").chars().take(200).collect();
    VaultError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no handler for route {route:?}: Mayfly's Vault-compatible API serves logins, database credentials, \
             leases, identity tokens and sys status only (no KV, seal, plugins or namespaces)"
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> VaultError {
    VaultError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not supported on {:?}", uri.path().chars().take(200).collect::<String>()),
    )
}

/// Remaining seconds until `at`, never negative.
pub(crate) fn left(at: i64) -> i64 {
    (at - crate::clock::now_unix()).max(0)
}
