//! The HTTP API: OAuth token exchange, discovery, admin endpoints, health.

mod admin;
mod checkpoints;
mod clouds;
mod credentials;
mod discovery;
pub mod error;
mod introspect;
pub mod metrics;
mod openapi;
mod problems;
mod proxy;
mod records;
mod signals;
mod tasks;
mod token;
mod workload;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, header};
use axum::routing::get;
use mayfly_proto::ProblemKind;

use crate::broker::Broker;
use crate::keys::{Kek, KeyRing};
use crate::ledger::Revocations;
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
    /// `iss` of issued tokens and base of discovery URLs.
    pub issuer_url: String,
    /// The trust domain of issued SPIFFE IDs.
    pub trust_domain: String,
    /// How long a retired key stays published, in seconds.
    pub key_publish_secs: i64,
    /// Revocations in force and their feed.
    pub revocations: Arc<Revocations>,
    /// Verifies Mayfly's own tokens.
    pub verifier: TokenVerifier,
    /// Checks DPoP proofs at the token endpoint (shared with the broker, which spends them).
    pub dpop: Arc<mayfly_verify::DpopVerifier>,
    /// Checks DPoP proofs that come with Mayfly tokens presented to Mayfly's own endpoints.
    pub resource_dpop: mayfly_verify::DpopVerifier,
    /// Open revocation streams (bounded).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Open revocation streams per verifier (`sub`), and the most one may hold.
    pub streams_per_subject: Arc<crate::deliver::quota::Quota<String>>,
    /// Turns true when the server is shutting down.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Whether this replica runs background work.
    pub leadership: crate::govern::Leadership,
    /// Who may push Security Event Tokens.
    pub signal_senders: Arc<Vec<crate::broker::signals::SignalSender>>,
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

/// Every documented route, each once: the router and the OpenAPI document are both made
/// from this list, so a handler cannot be served undocumented (or documented unserved).
pub(crate) fn api() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(token::exchange))
        .routes(routes!(tasks::start, tasks::list))
        .routes(routes!(tasks::show, tasks::end))
        .routes(routes!(tasks::attest))
        .routes(routes!(tasks::approve))
        .routes(routes!(tasks::deny))
        .routes(routes!(credentials::list))
        .routes(routes!(credentials::revoke))
        .routes(routes!(credentials::renew))
        .routes(routes!(credentials::issue))
        .routes(routes!(clouds::token))
        .routes(routes!(clouds::aws_credentials))
        .routes(routes!(clouds::list))
        .routes(routes!(proxy::upstreams))
        .routes(routes!(proxy::decide))
        .routes(routes!(admin::create_join_token))
        .routes(routes!(admin::list_admin_tokens, admin::create_admin_token))
        .routes(routes!(admin::revoke_admin_token))
        .routes(routes!(admin::list_keys))
        .routes(routes!(admin::rotate_keys))
        .routes(routes!(workload::list_entries, workload::create_entry))
        .routes(routes!(workload::show_entry, workload::delete_entry))
        .routes(routes!(workload::bundle))
        .routes(routes!(workload::rotate_authorities))
        .routes(routes!(introspect::introspect))
        .routes(routes!(signals::receive))
        .routes(routes!(introspect::feed, records::revoke))
        .routes(routes!(introspect::stream))
        .routes(routes!(records::lift))
        .routes(routes!(records::leases))
        .routes(routes!(records::audit))
        .routes(routes!(records::audit_verify))
        .routes(routes!(checkpoints::list))
        .routes(routes!(checkpoints::latest))
        .routes(routes!(checkpoints::keys))
        .routes(routes!(discovery::jwks))
        .routes(routes!(discovery::openid_configuration))
        .routes(routes!(discovery::healthz))
        .routes(routes!(discovery::readyz))
}

/// Builds the router: the documented API, plus what is not part of the API document
/// (Prometheus metrics, the document itself, RFC 8414's alias of the discovery document).
pub fn router(state: AppState) -> Router {
    let (api, _) = api().split_for_parts();
    api.route("/metrics", get(metrics::render))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/.well-known/oauth-authorization-server", get(discovery::openid_configuration))
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
            ApiError::bad_request(ProblemKind::InvalidRequest, "the request body could not be read")
        }
    })
}

/// Query parameters, or a problem naming the one that did not parse.
pub(crate) fn read_query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query.map(|q| q.0).map_err(|rej| ApiError::bad_request(ProblemKind::InvalidRequest, rej.body_text()))
}

/// Records an admin action in the audit trail; a failure is a 503 (the action is done, its record is not).
pub(crate) async fn audit_admin(
    state: &AppState,
    kind: &str,
    subject: Option<String>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    state.broker.ledger().audit(crate::ledger::AuditEvent::new(kind, subject, detail)).await.map_err(ApiError::storage)
}

/// Checks `Authorization: Bearer <admin token>`; answers which token it is.
pub(crate) async fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<AdminCaller, ApiError> {
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

/// The admin token a request was authenticated with (never the secret).
pub(crate) type AdminCaller = crate::ledger::StoredAdminToken;

/// Checks an admin token against the store on every call: no cache, so a revoked token
/// is refused from the next request on, on every replica.
pub(crate) async fn check_admin(state: &AppState, token: &str) -> Result<AdminCaller, ApiError> {
    match state.broker.authenticate_admin(token).await {
        Ok(Some(caller)) => Ok(caller),
        Ok(None) => Err(ApiError::Unauthorized("the admin token is not valid".into())),
        Err(e) => {
            tracing::error!(error = %e, "admin token lookup failed");
            Err(ApiError::StorageUnavailable)
        }
    }
}

/// The audience a Mayfly token needs to call introspection and the revocation feed. A
/// verifier token for `urn:mayfly:introspect:<audience>` introspects tokens issued for
/// `<audience>` only; one for the bare `urn:mayfly:introspect` reads the feed only.
pub const VERIFIER_AUDIENCE: &str = "urn:mayfly:introspect";

/// Who called a verifier endpoint.
#[derive(Debug, Clone)]
pub(crate) enum VerifierCaller {
    /// An operator's admin token: sees every token, spends no use.
    Admin,
    /// A resource server's verifier token: the audience it verifies for, if it names one.
    Verifier {
        /// `<audience>` of `urn:mayfly:introspect:<audience>`.
        audience: Option<String>,
        /// The verifier token's own claims (its stream ends with it).
        claims: Box<crate::verify::AccessClaims>,
    },
}

/// A Mayfly token presented to one of Mayfly's own endpoints, checked as a resource
/// server checks it (through `mayfly-verify`): signature, lifetime, revocation, the
/// audience `audience_ok` accepts, its binding (a DPoP proof for this request with `ath`,
/// or the same client certificate) and, for a limited-use token, one use spent.
pub(crate) async fn presented_token(
    state: &AppState,
    headers: &HeaderMap,
    peer: &crate::deliver::listener::PeerInfo,
    method: &axum::http::Method,
    path: &str,
    audience_ok: impl Fn(&str) -> bool,
) -> Result<(String, crate::verify::AccessClaims), ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let unauthorized = |e: &dyn std::fmt::Display| ApiError::Unauthorized(format!("caller token: {e}"));
    let (dpop_scheme, token) = mayfly_verify::split_authorization(authorization).map_err(|e| unauthorized(&e))?;
    if token.len() > 16 * 1024 {
        return Err(unauthorized(&"longer than 16 KiB"));
    }
    let now = crate::clock::now_unix();
    let claims = state.verifier.verify(token, None, now).map_err(|e| unauthorized(&e))?;
    if !audience_ok(&claims.aud) {
        return Err(unauthorized(&crate::verify::VerifyError::WrongAudience));
    }
    honour_binding(state, headers, peer, method, path, (dpop_scheme, token), &claims).await?;
    Ok((token.to_owned(), claims))
}

/// The second half of [`presented_token`], for a token already verified: the presenter
/// holds what it is bound to, and a limited-use token spends one use.
pub(crate) async fn honour_binding(
    state: &AppState,
    headers: &HeaderMap,
    peer: &crate::deliver::listener::PeerInfo,
    method: &axum::http::Method,
    path: &str,
    (dpop_scheme, token): (bool, &str),
    claims: &crate::verify::AccessClaims,
) -> Result<(), ApiError> {
    let unauthorized = |e: &dyn std::fmt::Display| ApiError::Unauthorized(format!("caller token: {e}"));
    let mut proofs = headers.get_all("dpop").iter();
    let proof = proofs.next().and_then(|v| v.to_str().ok());
    if proofs.next().is_some() {
        return Err(unauthorized(&"send exactly one DPoP header"));
    }
    let url = format!("{}{path}", state.issuer_url);
    let presented = mayfly_verify::Presented {
        authorization: headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        dpop: proof,
        method: method.as_str(),
        url: &url,
        client_cert: peer.client_cert.as_ref().map(|c| c.as_ref()),
    };
    let now = crate::clock::now_unix();
    mayfly_verify::check_binding(claims, token, dpop_scheme, &presented, &state.resource_dpop, now)
        .map_err(|e| unauthorized(&e))?;
    if claims.max_uses.is_some()
        && !state.broker.use_of_limited_token(&claims.jti, true).await.map_err(ApiError::storage)?
    {
        return Err(unauthorized(&crate::verify::VerifyError::UsedUp));
    }
    Ok(())
}

/// The token of `Authorization: Bearer <token>` or `Authorization: DPoP <token>`, and
/// whether it came with the DPoP scheme.
pub(crate) fn authorization_token(headers: &HeaderMap) -> Option<(bool, &str)> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    mayfly_verify::split_authorization(authorization).ok().filter(|(_, t)| t.len() <= 16 * 1024)
}

/// Checks that the caller may introspect and read the revocation feed: an admin token,
/// or a live Mayfly token for [`VERIFIER_AUDIENCE`] (or `…:<audience>`), presented as
/// its binding requires.
pub(crate) async fn require_verifier(
    state: &AppState,
    headers: &HeaderMap,
    peer: &crate::deliver::listener::PeerInfo,
    method: &axum::http::Method,
    path: &str,
) -> Result<VerifierCaller, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Ok((_, token)) = mayfly_verify::split_authorization(authorization) else {
        return Err(ApiError::Unauthorized(format!(
            "send Authorization: Bearer with an admin token, or a Mayfly token for audience \
             {VERIFIER_AUDIENCE}:<your audience> (Bearer, or DPoP with a proof when it is DPoP-bound)"
        )));
    };
    if token.starts_with(crate::broker::admin_tokens::TOKEN_PREFIX) {
        check_admin(state, token).await?;
        return Ok(VerifierCaller::Admin);
    }
    let (_, claims) =
        presented_token(state, headers, peer, method, path, |aud| verifier_audience(aud).is_some()).await?;
    let audience = verifier_audience(&claims.aud).flatten().map(str::to_owned);
    Ok(VerifierCaller::Verifier { audience, claims: Box::new(claims) })
}

/// `Some(None)` for the bare verifier audience, `Some(Some(aud))` for one naming the
/// audience it verifies for, `None` for any other audience.
fn verifier_audience(aud: &str) -> Option<Option<&str>> {
    // A proxy follows the feed to cut what a revocation ends, with the token it already holds.
    if aud == mayfly_proto::PROXY_AUDIENCE {
        return Some(None);
    }
    match aud.strip_prefix(VERIFIER_AUDIENCE)? {
        "" => Some(None),
        rest => rest.strip_prefix(':').filter(|a| !a.is_empty()).map(Some),
    }
}
