//! Admin views of the audit chain's signed checkpoints, and the keys that verify them.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use mayfly_proto::ProblemKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::problems::{AdminAuth, BadQuery};
use super::{ApiError, AppState, require_admin};
use crate::ledger::StoredCheckpoint;

const MAX_LIST: i64 = 1000;

/// One signed checkpoint of the audit chain's head.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditCheckpoint {
    /// The sequence number of the event it anchors.
    pub seq: i64,
    /// That event's hash.
    pub hash: String,
    /// When it was signed (Unix seconds).
    pub iat: i64,
    /// The signing key (RFC 7638 thumbprint).
    pub kid: String,
    /// The checkpoint: a compact JWS, `typ` `mayfly-audit-checkpoint+jwt`, claims `iss`, `seq`, `hash`, `iat`.
    pub checkpoint: String,
}

impl From<StoredCheckpoint> for AuditCheckpoint {
    fn from(r: StoredCheckpoint) -> Self {
        Self { seq: r.seq, hash: r.hash, iat: r.created_at, kid: r.kid, checkpoint: r.jws }
    }
}

/// Checkpoint pages.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckpointQuery {
    /// Checkpoints of events after this sequence number.
    after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Lists the audit chain's signed checkpoints, oldest first.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints", tag = "ledger", security(("admin_token" = [])), params(CheckpointQuery),
    responses(
        AdminAuth, BadQuery,
        (status = 200, description = "Checkpoints in chain order", body = Vec<AuditCheckpoint>),
        (status = 400, description = "A bad limit", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<CheckpointQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditCheckpoint>>, ApiError> {
    require_admin(&state, &headers).await?;
    let q = super::read_query(query)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(ProblemKind::InvalidRequest, format!("limit is 1 to {MAX_LIST}")));
    }
    let rows =
        state.broker.audit_checkpoints_after(q.after.unwrap_or(0).max(0), limit).await.map_err(ApiError::storage)?;
    Ok(Json(rows.into_iter().map(AuditCheckpoint::from).collect()))
}

/// The latest signed checkpoint: the one to export.
#[utoipa::path(
    get, path = "/v1/audit/checkpoints/latest", tag = "ledger", security(("admin_token" = [])),
    responses(
        AdminAuth,
        (status = 200, description = "The latest checkpoint", body = AuditCheckpoint),
        (status = 404, description = "None written yet", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn latest(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<AuditCheckpoint>, ApiError> {
    require_admin(&state, &headers).await?;
    match state.broker.latest_audit_checkpoint().await.map_err(ApiError::storage)? {
        Some(r) => Ok(Json(r.into())),
        None => Err(ApiError::NotFound(
            "no audit checkpoint has been written yet: the leader writes one once the chain has events \
             (audit.checkpoint_every_events, audit.checkpoint_interval)"
                .into(),
        )),
    }
}

/// The public keys of every signing key in storage, published or retired: what verifies
/// checkpoints older than the JWKS remembers.
#[utoipa::path(
    get, path = "/v1/audit/keys", tag = "ledger", security(("admin_token" = [])),
    responses(AdminAuth, (status = 200, description = "JWK Set of every stored signing key", content_type = "application/json"))
)]
pub async fn keys(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&state, &headers).await?;
    Ok(Json(serde_json::json!({ "keys": stored_keys(&state).await? })))
}

/// Every stored signing key's public JWK, opened under the KEK.
pub(crate) async fn stored_keys(state: &AppState) -> Result<Vec<serde_json::Value>, ApiError> {
    state.broker.stored_public_keys(&state.kek).await.map_err(|e| match e {
        crate::keys::KeyRingError::Ledger(e) => ApiError::storage(e),
        other => {
            tracing::error!(error = %other, "stored signing keys cannot be opened");
            ApiError::Unavailable("the stored signing keys cannot be opened".into())
        }
    })
}
