//! Admin views of the ledger: revoke, list leases, read and verify the audit trail.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use mayfly_proto::ProblemKind;
use mayfly_proto::{LiftRequest, RevokeRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admin::json_body_required;
use super::problems::{AdminAuth, BadQuery, JsonBody};
use super::{ApiError, AppState, require_admin};
use crate::ledger::audit::{Anchor, ChainReport};
use crate::ledger::revocations::CredentialFacts;
use crate::ledger::{AuditFilter, CredentialFilter, Revocation};

const MAX_LIST: i64 = 1000;

/// Latest Unix time (seconds) a query may name: 9999-12-31T23:59:59Z, as the document says.
const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// Revokes by selector. A subject (or prefix) revocation contains the subject: its
/// credentials die, evidence it held from before is refused, its tasks end, its database
/// users are dropped; with `block`, nothing new is issued to it until lifted.
#[utoipa::path(
    post, path = "/v1/revocations", tag = "revocation", security(("admin_token" = [])),
    request_body(content = RevokeRequest, content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 201, description = "Recorded and in force", body = Revocation),
        (status = 400, description = "No selector, several, or a malformed one", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The selector matches no credential; nothing was revoked", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Revocation>), ApiError> {
    require_admin(&state, &headers).await?;
    let req: RevokeRequest = json_body_required(&headers, body)?;
    let rev = state.broker.revoke(&req, "admin").await?;
    Ok((StatusCode::CREATED, Json(rev)))
}

/// Ends the blocks on a selector: new issuance resumes; what was revoked stays revoked.
#[utoipa::path(
    post, path = "/v1/revocations/lift", tag = "revocation", security(("admin_token" = [])),
    request_body(content = LiftRequest, content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 201, description = "The lift, recorded and in force (it is also a feed entry, with `lift: true`)", body = Revocation),
        (status = 400, description = "No selector, several, or a malformed one", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No block on that selector is in force", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn lift(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Revocation>), ApiError> {
    require_admin(&state, &headers).await?;
    let req: LiftRequest = json_body_required(&headers, body)?;
    let rev = state.broker.lift(&req, "admin").await?;
    Ok((StatusCode::CREATED, Json(rev)))
}

/// Lease filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaseQuery {
    /// Exact SPIFFE ID.
    subject: Option<String>,
    /// SPIFFE ID prefix.
    subject_prefix: Option<String>,
    /// Task id.
    task: Option<String>,
    /// Credential kind, e.g. `jwt`.
    kind: Option<String>,
    /// Audience.
    audience: Option<String>,
    /// `active` (default), `expired`, `revoked` or `all`.
    #[param(pattern = "^(active|expired|revoked|all)$")]
    state: Option<String>,
    /// Page after this lease id.
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One lease as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lease {
    /// Lease id (the token's `jti`).
    pub id: String,
    /// Credential kind.
    pub kind: String,
    /// Holder.
    pub subject: String,
    /// Audience.
    pub audience: String,
    /// Scopes.
    pub scope: String,
    /// Task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Issued at (Unix seconds).
    pub issued_at: i64,
    /// Expires at (Unix seconds).
    pub expires_at: i64,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// The selector that revoked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// Keyed fingerprint of the credential.
    pub fingerprint: String,
}

/// Lists leases (issued credentials).
#[utoipa::path(
    get, path = "/v1/leases", tag = "ledger", security(("admin_token" = [])), params(LeaseQuery),
    responses(AdminAuth, BadQuery, (status = 200, description = "Leases ordered by id", body = Vec<Lease>))
)]
pub async fn leases(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LeaseQuery>, QueryRejection>,
) -> Result<Json<Vec<Lease>>, ApiError> {
    require_admin(&state, &headers).await?;
    let q = super::read_query(query)?;
    let now = crate::clock::now_unix();
    let want = q.state.as_deref().unwrap_or("active");
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(ProblemKind::InvalidRequest, format!("limit is 1 to {MAX_LIST}")));
    }
    let (live_at, expired_at) = match want {
        "active" | "revoked" => (Some(now), None),
        "expired" => (None, Some(now)),
        "all" => (None, None),
        other => {
            return Err(ApiError::bad_request(
                ProblemKind::InvalidRequest,
                format!("state {other:?}: use active, expired, revoked or all"),
            ));
        }
    };
    let filter = CredentialFilter {
        subject: q.subject,
        subject_prefix: q.subject_prefix,
        task_id: q.task,
        kind: q.kind,
        audience: q.audience,
        live_at,
        expired_at,
        after: q.after,
        limit,
    };
    // The state is derived after reading (revocation lives in the index, not the rows),
    // so keep reading pages until the page is full or the ledger is exhausted.
    let mut filter = filter;
    let mut leases: Vec<Lease> = Vec::new();
    for _ in 0..MAX_SCAN_PAGES {
        let rows = state.broker.credentials(&filter).await.map_err(ApiError::storage)?;
        let exhausted = (rows.len() as i64) < filter.limit;
        filter.after = rows.last().map(|c| c.jti.clone()).or(filter.after);
        for c in rows {
            let lease = lease_of(&state, c, now);
            if (want == "all" || lease.state == want) && (leases.len() as i64) < limit {
                leases.push(lease);
            }
        }
        if exhausted || leases.len() as i64 >= limit {
            break;
        }
    }
    Ok(Json(leases))
}

/// Pages read at most to fill one page of a derived-state filter.
const MAX_SCAN_PAGES: usize = 50;

fn lease_of(state: &AppState, c: crate::ledger::CredentialRecord, now: i64) -> Lease {
    let revoked_by = state.revocations.revoked_by(&CredentialFacts {
        jti: &c.jti,
        subject: &c.subject,
        audience: &c.audience,
        task_id: c.task_id.as_deref(),
        issued_at: c.issued_at,
    });
    let st = if c.expires_at <= now {
        "expired"
    } else if revoked_by.is_some() {
        "revoked"
    } else {
        "active"
    };
    Lease {
        id: c.jti,
        kind: c.kind,
        subject: c.subject,
        audience: c.audience,
        scope: c.scope,
        task: c.task_id,
        issued_at: c.issued_at,
        expires_at: c.expires_at,
        state: st.to_owned(),
        revoked_by: revoked_by.map(|k| k.as_str().to_owned()),
        fingerprint: c.fingerprint,
    }
}

/// Audit filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events about this subject.
    subject: Option<String>,
    /// Event kind, or a prefix ending in `.` (e.g. `policy.`).
    kind: Option<String>,
    /// Events at or after this Unix time (seconds).
    #[param(minimum = 0, maximum = 253402300799.0)]
    since: Option<i64>,
    /// Events before this Unix time (seconds).
    #[param(minimum = 0, maximum = 253402300799.0)]
    until: Option<i64>,
    /// Events after this sequence number.
    after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    seq: i64,
    ts_ms: i64,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    detail: serde_json::Value,
    prev_hash: String,
    hash: String,
}

/// Reads audit events.
#[utoipa::path(
    get, path = "/v1/audit", tag = "ledger", security(("admin_token" = [])), params(AuditQuery),
    responses(AdminAuth, BadQuery, (status = 200, description = "Events in chain order", body = Vec<AuditEntry>))
)]
pub async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    require_admin(&state, &headers).await?;
    let q = super::read_query(query)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(ProblemKind::InvalidRequest, format!("limit is 1 to {MAX_LIST}")));
    }
    for (name, value) in [("since", q.since), ("until", q.until)] {
        if value.is_some_and(|v| !(0..=MAX_UNIX_SECS).contains(&v)) {
            return Err(ApiError::bad_request(
                ProblemKind::InvalidRequest,
                format!("{name} is a Unix time in seconds, 0 to {MAX_UNIX_SECS}"),
            ));
        }
    }
    let filter = AuditFilter {
        subject: q.subject,
        kind: q.kind,
        since_ms: q.since.map(|s| s.saturating_mul(1000)),
        until_ms: q.until.map(|s| s.saturating_mul(1000)),
        after: q.after.unwrap_or(0).max(0),
        limit,
    };
    let events = state.broker.audit_events(&filter).await.map_err(ApiError::storage)?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| AuditEntry {
                detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::String(e.detail)),
                seq: e.seq,
                ts_ms: e.ts_ms,
                kind: e.kind,
                subject: e.subject,
                prev_hash: e.prev_hash,
                hash: e.hash,
            })
            .collect(),
    ))
}

/// What to check the chain against besides the stored checkpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// With `hash`: the chain must still hold event `seq` with this hash (an exported checkpoint's claims).
    #[param(minimum = 1)]
    seq: Option<i64>,
    /// The hash event `seq` must have (64 lowercase hex digits).
    #[param(pattern = "^[0-9a-f]{64}$")]
    hash: Option<String>,
}

/// Verifies the audit chain: every link, and the latest stored checkpoints (their
/// signatures, and that the chain still passes through the events they anchor); with
/// `seq` and `hash`, an exported checkpoint too.
#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "ledger", security(("admin_token" = [])), params(VerifyQuery),
    responses(
        AdminAuth,
        (status = 200, description = "The chain report", body = ChainReport),
        (status = 400, description = "seq without hash, or a malformed one", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn audit_verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<VerifyQuery>, QueryRejection>,
) -> Result<Json<ChainReport>, ApiError> {
    require_admin(&state, &headers).await?;
    let q = super::read_query(query)?;
    let exported = match (q.seq, q.hash) {
        (None, None) => None,
        (Some(seq), Some(hash))
            if seq >= 1
                && hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Some(Anchor { seq, hash, source: format!("the given checkpoint of event {seq}") })
        }
        _ => {
            return Err(ApiError::bad_request(
                ProblemKind::InvalidRequest,
                "seq (1 or more) and hash (64 lowercase hex digits) go together",
            ));
        }
    };
    let keys = super::checkpoints::stored_keys(&state).await?;
    let report = state.broker.verify_audit_chain(&keys, exported).await.map_err(ApiError::storage)?;
    Ok(Json(report))
}
