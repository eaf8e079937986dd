//! The Workload API's administration over HTTP: registration entries (admin), the
//! trust domain's SPIFFE bundle (public), and rotation of the SVID authorities (admin).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mayfly_proto::{EntryInfo, EntryList, EntrySpec};
use serde_json::json;

use super::admin::json_body_required;
use super::problems::{AdminAuth, JsonBody};
use super::{ApiError, AppState, audit_admin, require_admin};

/// How often bundle consumers should refresh, in seconds (`spiffe_refresh_hint`).
const BUNDLE_REFRESH_HINT_SECS: i64 = 300;

/// Lists the registration entries.
#[utoipa::path(
    get, path = "/v1/entries", tag = "workload-api", security(("admin_token" = [])),
    responses(
        AdminAuth,
        (status = 200, description = "Every entry, config-file entries first", body = EntryList),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_entries(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<EntryList>, ApiError> {
    require_admin(&state, &headers).await?;
    let entries = state.broker.entries().list().iter().map(|e| e.info()).collect();
    Ok(Json(EntryList { entries }))
}

/// Creates a registration entry; matching processes get its SPIFFE ID at once.
#[utoipa::path(
    post, path = "/v1/entries", tag = "workload-api", security(("admin_token" = [])),
    request_body(content = EntrySpec, content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 201, description = "Created", body = EntryInfo),
        (status = 400, description = "Malformed entry", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An entry already grants this SPIFFE ID to these selectors", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_entry(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<EntryInfo>), ApiError> {
    require_admin(&state, &headers).await?;
    let spec: EntrySpec = json_body_required(&headers, body)?;
    let entry = state.broker.entries().create(&spec).await.map_err(crate::broker::BrokerError::from)?;
    let info = entry.info();
    let detail = json!({"entry": info.id, "spec": info.spec});
    audit_admin(&state, "admin.entry.created", Some(info.spec.spiffe_id.clone()), detail).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// Shows one registration entry.
#[utoipa::path(
    get, path = "/v1/entries/{id}", tag = "workload-api", security(("admin_token" = [])),
    params(("id" = String, Path, description = "Entry id")),
    responses(
        AdminAuth,
        (status = 200, description = "The entry", body = EntryInfo),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show_entry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<EntryInfo>, ApiError> {
    require_admin(&state, &headers).await?;
    let entry = state.broker.entries().get(&id).ok_or_else(|| ApiError::NotFound(format!("no entry has id {id:?}")))?;
    Ok(Json(entry.info()))
}

/// Deletes a registration entry: Workload API streams drop its SVIDs at once.
#[utoipa::path(
    delete, path = "/v1/entries/{id}", tag = "workload-api", security(("admin_token" = [])),
    params(("id" = String, Path, description = "Entry id")),
    responses(
        AdminAuth,
        (status = 200, description = "Deleted; the entry as it was", body = EntryInfo),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The entry is defined in the config file", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_entry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<EntryInfo>, ApiError> {
    require_admin(&state, &headers).await?;
    let entry = state.broker.entries().delete(&id).await.map_err(crate::broker::BrokerError::from)?;
    let info = entry.info();
    audit_admin(&state, "admin.entry.deleted", Some(info.spec.spiffe_id.clone()), json!({"entry": info.id})).await?;
    Ok(Json(info))
}

/// The trust domain's SPIFFE bundle: a JWK Set of X.509 authorities (`use: x509-svid`,
/// with `x5c`) and JWT authorities (`use: jwt-svid`), as a SPIFFE bundle endpoint serves it.
#[utoipa::path(get, path = "/v1/bundle", tag = "workload-api",
    responses((status = 200, description = "SPIFFE bundle (JWK Set)", content_type = "application/json")))]
pub async fn bundle(State(state): State<AppState>) -> Response {
    let body = serde_json::to_vec(&state.broker.svid_authorities().spiffe_bundle(BUNDLE_REFRESH_HINT_SECS))
        .unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    resp
}

/// Rotates the SVID CA and JWT-SVID key now (they also rotate by themselves at half-life).
#[utoipa::path(
    post, path = "/v1/svid-authorities/rotate", tag = "workload-api", security(("admin_token" = [])),
    responses(
        AdminAuth,
        (status = 200, description = "The new authority's id", body = serde_json::Value),
        (status = 401, description = "Missing or wrong admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_authorities(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&state, &headers).await?;
    let id = state.broker.rotate_svid_authority(&state.kek).await.map_err(ApiError::storage)?;
    audit_admin(&state, "admin.svid_authorities.rotated", None, json!({"authority": id})).await?;
    Ok(Json(json!({ "authority": id })))
}
