//! Admin endpoints (bearer admin token): join tokens, admin tokens and signing keys.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use mayfly_proto::ProblemKind;
use mayfly_proto::{
    AdminTokenInfo, CreateAdminTokenRequest, CreateAdminTokenResponse, CreateJoinTokenRequest, CreateJoinTokenResponse,
    SigningKeyInfo,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::problems::{AdminAuth, BadQuery, JsonBody};
use super::{AdminCaller, ApiError, AppState, audit_admin, require_admin};
use crate::ledger::StoredAdminToken;

/// Parses an optional JSON body: empty, or JSON `null` (the document's optional bodies
/// are nullable), means defaults.
pub(crate) fn json_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = super::read_body(body)?;
    if body.is_empty() {
        return Ok(T::default());
    }
    if body.trim_ascii() == b"null" {
        check_json_type(headers)?;
        return Ok(T::default());
    }
    parse_json(headers, &body)
}

/// Parses a required JSON body.
pub(crate) fn json_body_required<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = super::read_body(body)?;
    if body.is_empty() {
        return Err(ApiError::bad_request(ProblemKind::InvalidRequest, "this endpoint needs a JSON body"));
    }
    parse_json(headers, &body)
}

fn check_json_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType("this endpoint takes application/json".into()));
    }
    Ok(())
}

fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    check_json_type(headers)?;
    // Every body is a JSON object; serde would also read a struct from an array of its
    // fields (`[600, "node/a"]`), which the document does not allow.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request(ProblemKind::InvalidJson, "invalid JSON body: the body is a JSON object"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(ProblemKind::InvalidJson, format!("invalid JSON body: {e}")))
}

/// Creates a one-time join token.
#[utoipa::path(
    post, path = "/v1/join-tokens", tag = "admin", security(("admin_token" = [])),
    request_body(content = CreateJoinTokenRequest, content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 201, description = "Created; the token is shown only now", body = CreateJoinTokenResponse),
        (status = 400, description = "Bad TTL or SPIFFE path", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_join_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, [(header::HeaderName, &'static str); 1], Json<CreateJoinTokenResponse>), ApiError> {
    require_admin(&state, &headers).await?;
    // The document requires a body (`{}` takes the defaults); a missing one is refused, not guessed.
    let req: CreateJoinTokenRequest = json_body_required(&headers, body)?;
    // `""` or `/` would name the bare trust domain, which is no workload's ID.
    if req.spiffe_path.as_deref().is_some_and(|p| p.trim_start_matches('/').is_empty()) {
        return Err(ApiError::bad_request(
            ProblemKind::InvalidRequest,
            "spiffe_path needs at least one segment, e.g. node/build-01 (or leave it out)",
        ));
    }
    let created = state.broker.attestors().join_tokens().create(req.ttl_seconds, req.spiffe_path.as_deref()).await?;
    let detail = json!({"join_token_id": created.id, "expires_at": created.expires_at});
    audit_admin(&state, "admin.join_token.created", Some(created.spiffe_id.clone()), detail).await?;
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(created)))
}

fn admin_token_info(row: &StoredAdminToken) -> AdminTokenInfo {
    AdminTokenInfo {
        id: row.id.clone(),
        name: row.name.clone(),
        created_at: row.created_at,
        last_used_at: row.last_used_at,
    }
}

/// What an admin-token audit event says: which token, and which token acted (never a secret or a hash).
fn admin_token_detail(row: &StoredAdminToken, by: &AdminCaller) -> serde_json::Value {
    json!({"admin_token_id": row.id, "name": row.name, "by": by.id, "by_name": by.name})
}

/// Creates a named admin token; the token is in this answer only.
#[utoipa::path(
    post, path = "/v1/admin-tokens", tag = "admin", security(("admin_token" = [])),
    request_body(content = CreateAdminTokenRequest, content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 201, description = "Created; the token is shown only now", body = CreateAdminTokenResponse),
        (status = 400, description = "Bad name", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A token with that name exists", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_admin_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, [(header::HeaderName, &'static str); 1], Json<CreateAdminTokenResponse>), ApiError> {
    let caller = require_admin(&state, &headers).await?;
    let req: CreateAdminTokenRequest = json_body_required(&headers, body)?;
    let created = state.broker.create_admin_token(&req.name).await?;
    audit_admin(&state, "admin.admin_token.created", None, admin_token_detail(&created.row, &caller)).await?;
    let body = CreateAdminTokenResponse { info: admin_token_info(&created.row), token: created.token };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)))
}

/// Lists the admin tokens (names and ids; never a token or its hash).
#[utoipa::path(
    get, path = "/v1/admin-tokens", tag = "admin", security(("admin_token" = [])),
    responses(
        AdminAuth,
        (status = 200, description = "Admin tokens, oldest first", body = Vec<AdminTokenInfo>),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_admin_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<AdminTokenInfo>>, ApiError> {
    require_admin(&state, &headers).await?;
    let rows = state.broker.admin_tokens().await?;
    Ok(Json(rows.iter().map(admin_token_info).collect()))
}

/// Revokes an admin token: refused from the next request on, on every replica. The
/// last remaining token cannot be revoked (create another first).
#[utoipa::path(
    delete, path = "/v1/admin-tokens/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "The token's id, as listed")),
    responses(
        AdminAuth,
        (status = 200, description = "Revoked", body = AdminTokenInfo),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No token has this id", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "It is the last admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_admin_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<AdminTokenInfo>, ApiError> {
    let caller = require_admin(&state, &headers).await?;
    let removed = state.broker.revoke_admin_token(&id).await?;
    audit_admin(&state, "admin.admin_token.revoked", None, admin_token_detail(&removed, &caller)).await?;
    Ok(Json(admin_token_info(&removed)))
}

/// Lists the published signing keys.
#[utoipa::path(
    get, path = "/v1/keys", tag = "admin", security(("admin_token" = [])),
    responses(
        AdminAuth,
        (status = 200, description = "Published keys", body = Vec<SigningKeyInfo>),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<SigningKeyInfo>>, ApiError> {
    require_admin(&state, &headers).await?;
    Ok(Json(state.keys.infos()))
}

/// Which signing profile to rotate.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RotateQuery {
    /// The profile (default: `default`, the key that signs access tokens of unclaimed audiences).
    #[param(min_length = 1, max_length = 64)]
    pub profile: Option<String>,
}

/// Rotates a profile's signing key: the new key is published at once and signs after the
/// profile's `rotation_lead` (at once by default); the old one stays in the JWKS until its
/// tokens expire.
#[utoipa::path(
    post, path = "/v1/keys/rotate", tag = "admin", security(("admin_token" = [])),
    params(RotateQuery),
    responses(
        AdminAuth, BadQuery,
        (status = 200, description = "The new key", body = SigningKeyInfo),
        (status = 404, description = "No such profile", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many keys are published already", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RotateQuery>, QueryRejection>,
) -> Result<Json<SigningKeyInfo>, ApiError> {
    require_admin(&state, &headers).await?;
    let q = super::read_query(query)?;
    let profile = q.profile.as_deref().unwrap_or(crate::keys::DEFAULT_PROFILE);
    let old = state.keys.active_for(profile).map(|k| k.kid().to_owned());
    let info = state.broker.rotate_signing_key(&state.keys, &state.kek, profile, state.key_publish_secs).await?;
    let detail = json!({"profile": profile, "new_kid": info.kid, "retired_kid": old,
        "activates_at": info.activates_at, "published_for_seconds": state.key_publish_secs});
    audit_admin(&state, "admin.keys.rotated", None, detail).await?;
    Ok(Json(info))
}
