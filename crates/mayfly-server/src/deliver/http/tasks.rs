//! Task endpoints: start, show, approve or deny, end, list.
//!
//! Starting a task takes the caller's evidence in the body, like token exchange.
//! Showing and ending take `Authorization: Bearer` with the task's own token (or an
//! ancestor task's) or an admin token. Approving takes an admin token, or a workload
//! approver's evidence in the body.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use mayfly_proto::ProblemKind;
use mayfly_proto::{
    EndTaskRequest, EndTaskResponse, StartTaskRequest, StartTaskResponse, TOKEN_TYPE_TASK, TaskAttestRequest,
    TaskDecisionRequest, TaskInfo, TaskPage,
};
use serde::Deserialize;

use super::admin::{json_body, json_body_required};
use super::problems::{AdminAuth, BadQuery, JsonBody, Unavailable};
use super::{ApiError, AppState, authorization_token, bearer, check_admin, honour_binding, require_admin};
use crate::attest::AttestError;
use crate::broker::queries::TaskSelection;
use crate::broker::tasks::{Approver, StartTaskParams};
use crate::broker::{BrokerError, Conflict, InvalidRequest};
use crate::deliver::listener::PeerInfo;
use crate::ledger::{TaskRecord, TaskState};

const MAX_LIST: i64 = 1000;

/// The API view of a stored task.
pub fn task_info(t: &TaskRecord, trust_domain: &str, now: i64) -> TaskInfo {
    TaskInfo {
        id: t.id.clone(),
        spiffe_id: format!("spiffe://{trust_domain}/task/{}", t.id),
        state: t.state_at(now).as_str().to_owned(),
        purpose: t.purpose.clone(),
        scope: t.scope.clone(),
        audiences: t.audience_list().unwrap_or_default(),
        parent_id: t.parent_id.clone(),
        depth: t.depth,
        creator: t.creator.clone(),
        on_behalf_of: t.on_behalf_of.clone(),
        act: t.actor_json().unwrap_or(serde_json::Value::Null),
        created_at: t.created_at,
        expires_at: t.expires_at,
        approval_deadline: t.approval_deadline,
        decided_by: t.decided_by.clone(),
        decided_at: t.decided_at,
        ended_at: t.ended_at,
        end_reason: t.end_reason.clone(),
    }
}

fn info(state: &AppState, t: &TaskRecord) -> TaskInfo {
    task_info(t, &state.trust_domain, crate::clock::now_unix())
}

/// Task ids are short and URL-safe; anything else names no task.
fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ApiError::NotFound(format!("no task has id {:?}", id.chars().take(64).collect::<String>())));
    }
    Ok(())
}

/// Who is acting on a task through `Authorization: Bearer`.
enum TaskActor {
    Admin,
    Task(String),
}

/// An admin token, or a task token of the task or an ancestor (presented as its binding requires).
async fn task_actor(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    peer: &PeerInfo,
    method: &Method,
) -> Result<TaskActor, ApiError> {
    let (dpop_scheme, token) = authorization_token(headers).ok_or_else(|| {
        ApiError::Unauthorized("send Authorization: Bearer with the task's token or an admin token".into())
    })?;
    if token.starts_with(crate::broker::admin_tokens::TOKEN_PREFIX) && !dpop_scheme {
        check_admin(state, token).await?;
        return Ok(TaskActor::Admin);
    }
    match state.broker.task_caller(token, id, peer.addr.ip()).await {
        Ok(t) => {
            honour_task_token(state, headers, peer, method, &format!("/v1/tasks/{id}"), (dpop_scheme, token)).await?;
            Ok(TaskActor::Task(t.spiffe_id.to_string()))
        }
        Err(BrokerError::Attest(AttestError::TaskNotActive(s))) => {
            Err(BrokerError::from(Conflict::TokenTaskOver { state: s }).into())
        }
        Err(BrokerError::Attest(e @ AttestError::Ledger(_))) => Err(BrokerError::Attest(e).into()),
        Err(BrokerError::Attest(e)) => Err(ApiError::Unauthorized(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// A task token that proved its task: its binding and uses, as on every Mayfly endpoint.
async fn honour_task_token(
    state: &AppState,
    headers: &HeaderMap,
    peer: &PeerInfo,
    method: &Method,
    path: &str,
    presented: (bool, &str),
) -> Result<(), ApiError> {
    let claims = state
        .verifier
        .verify(presented.1, Some(crate::attest::task::TASK_TOKEN_AUDIENCE), crate::clock::now_unix())
        .map_err(|e| ApiError::Unauthorized(format!("task token: {e}")))?;
    honour_binding(state, headers, peer, method, path, presented, &claims).await
}

/// Starts a task.
#[utoipa::path(
    post, path = "/v1/tasks", tag = "tasks",
    request_body(content = StartTaskRequest, content_type = "application/json"),
    responses(
        JsonBody, Unavailable,
        (status = 201, description = "Started (state `active`), or waiting for approval (state `pending`)", body = StartTaskResponse),
        (status = 400, description = "Bad evidence, scopes, audiences or lifetime", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Denied by policy, or the parent is not yours", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such parent task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The parent task is not active", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, [(header::HeaderName, &'static str); 1], Json<StartTaskResponse>), ApiError> {
    let req: StartTaskRequest = json_body_required(&headers, body)?;
    let started = state
        .broker
        .start_task(StartTaskParams {
            subject_token_type: req.subject_token_type,
            subject_token: req.subject_token,
            purpose: req.purpose,
            scope: req.scope,
            audiences: req.audiences,
            ttl_seconds: req.ttl_seconds,
            on_behalf_of: req.on_behalf_of,
            parent: req.parent,
            actor: match (req.actor_token_type, req.actor_token) {
                (Some(t), Some(token)) => Some((t, token)),
                (None, None) => None,
                _ => {
                    return Err(BrokerError::from(InvalidRequest::ActorTokenWithoutType).into());
                }
            },
            source_ip: peer.addr.ip(),
            starter: None,
        })
        .await?;
    let body = StartTaskResponse {
        task: info(&state, &started.task),
        expires_in: (started.token.expires_at - started.token.issued_at).max(0) as u64,
        task_token: started.token.token,
        task_token_type: TOKEN_TYPE_TASK.to_owned(),
    };
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)))
}

/// Shows a task.
#[utoipa::path(
    get, path = "/v1/tasks/{id}", tag = "tasks", security(("task_token" = []), ("admin_token" = [])),
    params(("id" = String, Path, description = "Task id")),
    responses(
        AdminAuth,
        (status = 200, description = "The task", body = TaskInfo),
        (status = 401, description = "No valid task or admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Shown with the task's own token: the task has ended, been denied or expired", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    check_id(&id)?;
    task_actor(&state, &headers, &id, &peer, &Method::GET).await?;
    let task = state.broker.task(&id).await?;
    Ok(Json(info(&state, &task)))
}

/// Ends a task and its sub-tasks, revoking everything issued under them.
#[utoipa::path(
    delete, path = "/v1/tasks/{id}", tag = "tasks", security(("task_token" = []), ("admin_token" = [])),
    params(("id" = String, Path, description = "Task id")),
    request_body(content = Option<EndTaskRequest>, content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 200, description = "Ended; its revocations are in force", body = EndTaskResponse),
        (status = 401, description = "No valid task or admin token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already ended, denied or expired", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn end(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EndTaskResponse>, ApiError> {
    check_id(&id)?;
    let actor = match task_actor(&state, &headers, &id, &peer, &Method::DELETE).await? {
        TaskActor::Admin => "admin".to_owned(),
        TaskActor::Task(t) => t,
    };
    let req: EndTaskRequest = json_body(&headers, body)?;
    let ended = state.broker.end_task(&id, &actor, req.reason.as_deref()).await?;
    Ok(Json(EndTaskResponse { task: info(&state, &ended.task), ended_descendants: ended.descendants }))
}

/// Re-attests a task: its starter presents its evidence as it is now.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/attest", tag = "tasks", security(("task_token" = [])),
    params(("id" = String, Path, description = "Task id")),
    request_body(content = TaskAttestRequest, content_type = "application/json"),
    responses(
        JsonBody,
        (status = 200, description = "The evidence still proves the task's starter and policy still allows the task", body = TaskInfo),
        (status = 400, description = "Not a platform JWT, or a sub-task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid task token", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "`task-ended`: the evidence no longer verifies, proves another workload or context, or policy no longer allows the task; the task was ended and everything under it revoked", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The task has already ended or expired", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The evidence could not be checked now (issuer keys out of reach or not yet fetched, clocks apart, storage unavailable); nothing changed", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn attest(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskInfo>, ApiError> {
    check_id(&id)?;
    let (dpop_scheme, token) = authorization_token(&headers)
        .ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer with the task's own token".into()))?;
    let path = format!("/v1/tasks/{id}/attest");
    honour_task_token(&state, &headers, &peer, &Method::POST, &path, (dpop_scheme, token)).await.map_err(|e| {
        // An ended or expired task's token answers as before: the task is over (409).
        match state.verifier.verify(token, None, crate::clock::now_unix()) {
            Err(crate::verify::VerifyError::Revoked(crate::ledger::RevocationKind::Task)) => {
                ApiError::from(BrokerError::from(Conflict::TokenTaskOver { state: TaskState::Ended }))
            }
            Err(crate::verify::VerifyError::Expired) => BrokerError::from(Conflict::TokenTaskExpired).into(),
            _ => e,
        }
    })?;
    let req: TaskAttestRequest = json_body_required(&headers, body)?;
    let task = state
        .broker
        .reattest_task(&id, token, (&req.subject_token_type, &req.subject_token), peer.addr.ip())
        .await
        .map_err(|e| match e {
            BrokerError::Attest(AttestError::TaskNotActive(s)) => {
                BrokerError::from(Conflict::TokenTaskOver { state: s }).into()
            }
            // The task token lives exactly as long as the task.
            BrokerError::Attest(AttestError::Expired) => BrokerError::from(Conflict::TokenTaskExpired).into(),
            BrokerError::Attest(AttestError::TaskToken(e)) => ApiError::Unauthorized(format!("task token: {e}")),
            e => ApiError::from(e),
        })?;
    Ok(Json(info(&state, &task)))
}

/// Approves a pending task.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/approve", tag = "tasks", security(("admin_token" = []), ()),
    params(("id" = String, Path, description = "Task id")),
    request_body(content = Option<TaskDecisionRequest>, description = "A workload approver's evidence; not needed with an admin token", content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 200, description = "Approved: credentials can now be issued under it", body = TaskInfo),
        (status = 401, description = "Neither a valid admin token nor an approver's evidence", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Approving your own task, or denied by policy", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not pending", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn approve(
    state: State<AppState>,
    peer: Extension<PeerInfo>,
    headers: HeaderMap,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskInfo>, ApiError> {
    decide(state, peer, headers, id, body, true).await
}

/// Denies a pending task.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/deny", tag = "tasks", security(("admin_token" = []), ()),
    params(("id" = String, Path, description = "Task id")),
    request_body(content = Option<TaskDecisionRequest>, description = "A workload approver's evidence; not needed with an admin token", content_type = "application/json"),
    responses(
        AdminAuth, JsonBody,
        (status = 200, description = "Denied: nothing can be issued under it", body = TaskInfo),
        (status = 401, description = "Neither a valid admin token nor an approver's evidence", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Deciding on your own task, or denied by policy", body = mayfly_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not pending", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deny(
    state: State<AppState>,
    peer: Extension<PeerInfo>,
    headers: HeaderMap,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TaskInfo>, ApiError> {
    decide(state, peer, headers, id, body, false).await
}

async fn decide(
    State(state): State<AppState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
    approve: bool,
) -> Result<Json<TaskInfo>, ApiError> {
    check_id(&id)?;
    let approver = if bearer(&headers).is_some() {
        require_admin(&state, &headers).await?;
        Approver::Admin
    } else {
        let req: TaskDecisionRequest = json_body(&headers, body)?;
        let (Some(token_type), Some(token)) = (req.subject_token_type, req.subject_token) else {
            return Err(ApiError::Unauthorized(
                "send an admin token (Authorization: Bearer) or the approver's subject_token and subject_token_type"
                    .into(),
            ));
        };
        state.broker.workload_approver(&token_type, &token, peer.addr.ip()).await?
    };
    let task = state.broker.decide_task(&id, approver, approve, peer.addr.ip()).await?;
    Ok(Json(info(&state, &task)))
}

/// Task list filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// `pending`, `active`, `denied`, `ended`, `expired`, `live` (pending or active, the default) or `all`.
    #[param(pattern = "^(pending|active|denied|ended|expired|live|all)$")]
    state: Option<String>,
    /// Only tasks started by this SPIFFE ID.
    creator: Option<String>,
    /// Page after this task id.
    after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Lists tasks (admin).
#[utoipa::path(
    get, path = "/v1/tasks", tag = "tasks", security(("admin_token" = [])), params(TaskQuery),
    responses(
        AdminAuth, BadQuery,
        (status = 200, description = "Tasks ordered by id", body = TaskPage),
        (status = 400, description = "Bad filter", body = mayfly_proto::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    require_admin(&state, &headers).await?;
    let q = super::read_query(query)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad_request(ProblemKind::InvalidRequest, format!("limit is 1 to {MAX_LIST}")));
    }
    let selection = match q.state.as_deref().unwrap_or("live") {
        "live" => TaskSelection::Live,
        "all" => TaskSelection::All,
        other => TaskSelection::In(TaskState::parse(other).ok_or_else(|| {
            ApiError::bad_request(
                ProblemKind::InvalidRequest,
                format!("state {other:?}: use pending, active, denied, ended, expired, live or all"),
            )
        })?),
    };
    let now = crate::clock::now_unix();
    let page = state.broker.list_tasks(selection, q.creator, q.after, limit, now).await.map_err(ApiError::storage)?;
    let tasks = page.tasks.iter().map(|t| info(&state, t)).collect();
    let next_after = page.next_after;
    Ok(Json(TaskPage { tasks, next_after }))
}
