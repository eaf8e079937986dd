//! Admin endpoints (bearer admin token): join tokens and signing keys.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use mayfly_proto::{CreateJoinTokenRequest, CreateJoinTokenResponse, SigningKeyInfo};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{ApiError, AppState, audit_admin, require_admin};

/// Parses an optional JSON body: empty means defaults.
pub(crate) fn json_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = super::read_body(body)?;
    if body.is_empty() {
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
        return Err(ApiError::bad_request("invalid-request", "this endpoint needs a JSON body"));
    }
    parse_json(headers, &body)
}

fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType("this endpoint takes application/json".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid-json", format!("invalid JSON body: {e}")))
}

/// Creates a one-time join token.
#[utoipa::path(
    post, path = "/v1/join-tokens", tag = "admin", security(("admin_token" = [])),
    request_body(content = CreateJoinTokenRequest, content_type = "application/json"),
    responses(
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
    let req: CreateJoinTokenRequest = json_body(&headers, body)?;
    let created = state.broker.attestors().join_tokens().create(req.ttl_seconds, req.spiffe_path.as_deref()).await?;
    let detail = json!({"join_token_id": created.id, "expires_at": created.expires_at});
    audit_admin(&state, "admin.join_token.created", Some(created.spiffe_id.clone()), detail).await?;
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(created)))
}

/// Lists the published signing keys.
#[utoipa::path(
    get, path = "/v1/keys", tag = "admin", security(("admin_token" = [])),
    responses(
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

/// Rotates the signing key: the new key signs at once; the old one stays in the JWKS until its tokens expire.
#[utoipa::path(
    post, path = "/v1/keys/rotate", tag = "admin", security(("admin_token" = [])),
    responses(
        (status = 200, description = "The new active key", body = SigningKeyInfo),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_keys(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<SigningKeyInfo>, ApiError> {
    require_admin(&state, &headers).await?;
    let old = state.keys.active().kid().to_owned();
    let info = state.keys.rotate(state.store.as_ref(), &state.kek, state.signing_alg, state.key_publish_secs).await?;
    let detail = json!({"new_kid": info.kid, "retired_kid": old, "published_for_seconds": state.key_publish_secs});
    audit_admin(&state, "admin.keys.rotated", None, detail).await?;
    Ok(Json(info))
}
