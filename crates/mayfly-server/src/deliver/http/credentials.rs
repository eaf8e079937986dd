//! Dynamic database credentials: issue, renew, revoke, list.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use mayfly_proto::ProblemKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::json_body_required;
use super::problems::{AdminAuth, BadQuery, JsonBody, Unavailable};
use super::{ApiError, AppState, require_admin};
use crate::broker::db_credentials::DbCredentialParams;
use crate::deliver::listener::PeerInfo;
use crate::ledger::{DbLease, DbLeaseState};

/// Body of a request for a database credential (or a renewal).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DbCredentialRequest {
    /// The caller's evidence type (a platform JWT, a join token, a task token).
    #[schema(min_length = 1)]
    pub subject_token_type: String,
    /// The caller's evidence.
    #[schema(min_length = 1)]
    pub subject_token: String,
    /// Lease lifetime wanted, in seconds (default: the role's; above its maximum is refused).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for DbCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredential")
            .field("lease", &self.lease)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for DbCredentialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredentialRequest")
            .field("subject_token_type", &self.subject_token_type)
            .field("ttl_seconds", &self.ttl_seconds)
            .finish_non_exhaustive()
    }
}

/// Where to connect.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionHints {
    /// `postgres`, `mysql` or `redis`.
    pub kind: String,
    /// Host.
    pub host: String,
    /// Port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Database name, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// A lease as the API shows it (never the password).
#[derive(Debug, Serialize, ToSchema)]
pub struct DbLeaseInfo {
    /// Lease id.
    pub lease_id: String,
    /// The configured database.
    pub database: String,
    /// The role.
    pub role: String,
    /// The database user.
    pub username: String,
    /// Who holds it.
    pub subject: String,
    /// The task it was issued under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// `creating`, `active`, `revoking`, `revoked`, `expired` or `failed`.
    #[schema(value_type = String)]
    pub state: DbLeaseState,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Renewals stop here (Unix seconds).
    pub max_expires_at: i64,
    /// Failed drop attempts (while `revoking`).
    pub attempts: i64,
    /// The last database error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the user was dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    /// Why it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

impl From<&DbLease> for DbLeaseInfo {
    fn from(l: &DbLease) -> Self {
        Self {
            lease_id: l.id.clone(),
            database: l.issuer.clone(),
            role: l.role.clone(),
            username: l.username.clone(),
            subject: l.subject.clone(),
            task_id: l.task_id.clone(),
            state: l.state,
            created_at: l.created_at,
            expires_at: l.expires_at,
            max_expires_at: l.max_expires_at,
            attempts: l.attempts,
            last_error: l.last_error.clone(),
            ended_at: l.ended_at,
            end_reason: l.end_reason.clone(),
        }
    }
}

/// A new database credential.
#[derive(Serialize, ToSchema)]
pub struct DbCredential {
    /// The lease.
    #[serde(flatten)]
    pub lease: DbLeaseInfo,
    /// The password: shown once, never stored by Mayfly.
    pub password: String,
    /// Where to connect.
    pub connection: ConnectionHints,
}

/// Issues a database credential: a user created now, dropped at expiry or revocation.
#[utoipa::path(
    post, path = "/v1/credentials/{database}/{role}", tag = "credentials",
    params(("database" = String, Path), ("role" = String, Path)),
    request_body(content = DbCredentialRequest, content_type = "application/json"),
    responses(
        JsonBody,
        (status = 201, description = "Created", body = DbCredential),
        (status = 400, description = "Bad evidence or lifetime", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Denied by policy", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown database or role", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 502, description = "The database refused (nothing is left behind)", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn issue(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path((database, role)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, [(header::HeaderName, &'static str); 1], Json<DbCredential>), ApiError> {
    let req: DbCredentialRequest = json_body_required(&headers, body)?;
    let params = DbCredentialParams {
        database,
        role,
        subject_token_type: req.subject_token_type,
        subject_token: req.subject_token,
        ttl_seconds: req.ttl_seconds,
        source_ip: peer.addr.ip(),
    };
    // Its own task: a client that hangs up must not cancel issuance between creating the
    // user and recording it active (the lease would stay `creating`, out of the reaper's reach).
    let broker = state.broker.clone();
    let issued = tokio::spawn(async move { broker.issue_db_credential(params).await })
        .await
        .map_err(|e| ApiError::Unavailable(format!("issuance was interrupted: {e}")))??;
    let db = &issued.database;
    let body = DbCredential {
        lease: DbLeaseInfo::from(&issued.lease),
        password: issued.password,
        connection: ConnectionHints {
            kind: db.config.kind.as_str().to_owned(),
            host: db.host.clone(),
            port: db.port,
            database: db.database.clone(),
        },
    };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)))
}

/// Renews a lease (its holder), within the role's maximum lifetime.
#[utoipa::path(
    post, path = "/v1/credentials/leases/{id}/renew", tag = "credentials",
    params(("id" = String, Path)),
    request_body(content = DbCredentialRequest, content_type = "application/json"),
    responses(
        JsonBody, Unavailable,
        (status = 200, description = "Renewed", body = DbLeaseInfo),
        (status = 400, description = "Bad evidence or lifetime", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the holder", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such lease", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not active", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn renew(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DbLeaseInfo>, ApiError> {
    let req: DbCredentialRequest = json_body_required(&headers, body)?;
    let lease = state
        .broker
        .renew_db_lease(&id, &req.subject_token_type, &req.subject_token, req.ttl_seconds, peer.addr.ip())
        .await?;
    Ok(Json(DbLeaseInfo::from(&lease)))
}

/// Revokes a lease (admin): its sessions end and its user is dropped.
#[utoipa::path(
    delete, path = "/v1/credentials/leases/{id}", tag = "credentials", security(("admin_token" = [])),
    params(("id" = String, Path)),
    responses(
        AdminAuth,
        (status = 200, description = "Revoked (state revoked), or still being dropped (state revoking, retried)", body = DbLeaseInfo),
        (status = 404, description = "No such lease", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already ended", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DbLeaseInfo>, ApiError> {
    require_admin(&state, &headers).await?;
    let lease = state.broker.revoke_db_lease(&id, "admin").await?;
    Ok(Json(DbLeaseInfo::from(&lease)))
}

/// Lease list filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DbLeaseQuery {
    /// A state, `open` (creating, active or revoking; the default) or `all`.
    #[param(pattern = "^(creating|active|revoking|revoked|expired|failed|open|all)$")]
    state: Option<String>,
    /// Page after this lease id.
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Lists database leases (admin).
#[utoipa::path(
    get, path = "/v1/credentials/leases", tag = "credentials", security(("admin_token" = [])), params(DbLeaseQuery),
    responses(AdminAuth, BadQuery, (status = 200, description = "Leases ordered by id", body = Vec<DbLeaseInfo>))
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<DbLeaseQuery>, QueryRejection>,
) -> Result<Json<Vec<DbLeaseInfo>>, ApiError> {
    require_admin(&state, &headers).await?;
    let q = super::read_query(query)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(ProblemKind::InvalidRequest, "limit is 1 to 1000"));
    }
    let states = match q.state.as_deref().unwrap_or("open") {
        "open" => vec![DbLeaseState::Creating, DbLeaseState::Active, DbLeaseState::Revoking],
        "all" => Vec::new(),
        other => vec![DbLeaseState::parse(other).ok_or_else(|| {
            ApiError::bad_request(
                ProblemKind::InvalidRequest,
                format!("state {other:?}: use a lease state, open or all"),
            )
        })?],
    };
    let leases = state.broker.db_leases(&states, q.after.as_deref(), limit).await.map_err(ApiError::storage)?;
    Ok(Json(leases.iter().map(DbLeaseInfo::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_debug_hides_the_subject_token() {
        let req = DbCredentialRequest {
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            subject_token: "eyJ-subject-secret".into(),
            ttl_seconds: None,
        };
        let shown = format!("{req:?}");
        assert!(!shown.contains("eyJ-subject-secret"), "{shown}");
    }

    #[test]
    fn credential_debug_hides_the_password() {
        let cred = DbCredential {
            lease: DbLeaseInfo::from(&DbLease::example()),
            password: "s3cret-password".into(),
            connection: ConnectionHints { kind: "postgres".into(), host: "db".into(), port: None, database: None },
        };
        let shown = format!("{cred:?}");
        assert!(!shown.contains("s3cret-password"), "{shown}");
        assert!(shown.contains("lease-1"), "{shown}");
    }
}
