//! `auth/<mount>/login` and `auth/token/*`: a login is a Mayfly task started by the
//! workload's JWT; its task token is the Vault token.

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{VaultCaller, VaultError, VaultState, body, caller, envelope, left, login_task, not_served};
use crate::broker::tasks::{LOGIN_PURPOSE_PREFIX, LOGIN_SCOPE_PREFIX, StartTaskParams, StarterRule};
use crate::deliver::listener::PeerInfo;
use crate::ledger::TaskRecord;

/// The body of a login.
#[derive(Deserialize)]
struct LoginBody {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    jwt: Option<String>,
}

/// The purpose a login's task carries (`principal.purpose` in Cedar): reserved, so no
/// native task can carry it.
fn login_purpose(mount: &str, role: &str) -> String {
    format!("{LOGIN_PURPOSE_PREFIX}{mount}/{role}")
}

/// `POST auth/<mount>/login` with `role` and `jwt`.
pub(super) async fn login(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    Path(rest): Path<String>,
    bytes: Bytes,
) -> Result<Response, VaultError> {
    let path = format!("/v1/auth/{rest}");
    let Some(mount) = rest.strip_suffix("/login") else {
        return Err(not_served(&path));
    };
    let req: LoginBody = body(&bytes)?;
    let role_name = req.role.filter(|r| !r.is_empty()).ok_or_else(|| VaultError::bad_request("missing role"))?;
    let jwt = req.jwt.filter(|j| !j.is_empty()).ok_or_else(|| VaultError::bad_request("missing jwt"))?;
    let (auth_mount, role) = state.cfg.login_role(mount, &role_name).ok_or_else(|| not_served(&path))?;
    let role = role.ok_or_else(|| {
        VaultError::bad_request(format!(
            "role {:?} could not be found",
            role_name.chars().take(128).collect::<String>()
        ))
    })?;
    let started = state
        .app
        .broker
        .start_task(StartTaskParams {
            subject_token_type: mayfly_proto::TOKEN_TYPE_JWT.to_owned(),
            subject_token: jwt,
            purpose: login_purpose(&auth_mount.mount, &role.name),
            // Reserved scopes (`vault:<policy>`): Cedar can trust them as the role's policies.
            scope: (!role.token_policies.is_empty()).then(|| {
                role.token_policies.iter().map(|p| format!("{LOGIN_SCOPE_PREFIX}{p}")).collect::<Vec<_>>().join(" ")
            }),
            audiences: role.audiences.clone(),
            ttl_seconds: Some(role.token_ttl.as_secs()),
            on_behalf_of: None,
            parent: None,
            actor: None,
            source_ip: peer.addr.ip(),
            starter: Some(StarterRule {
                name: format!("vault role {}/{}", auth_mount.mount, role.name),
                // OIDC attestors name themselves `oidc:<name>` on what they attest.
                attestor: Some(format!("oidc:{}", role.attestor)),
                attributes: role.bound_claims.clone(),
            }),
        })
        .await?;
    let task = &started.task;
    let mut warnings = Vec::new();
    if task.state == crate::ledger::TaskState::Pending {
        warnings.push(format!(
            "the login waits for approval (task {}); the token is refused until an approver allows it",
            task.id
        ));
    }
    let auth = auth_body(&started.token.token, task, &auth_mount.mount, &role.name);
    Ok(envelope(None, Value::Null, auth, warnings))
}

/// The `auth` object of a login, and of a renewal (Vault answers both with the same one).
fn auth_body(token: &str, task: &TaskRecord, mount: &str, role: &str) -> Value {
    json!({
        "client_token": token,
        "accessor": task.id,
        "policies": policies(task),
        "token_policies": policies(task),
        "identity_policies": null,
        "metadata": metadata(task, mount, role),
        "lease_duration": left(task.expires_at),
        // A task token cannot be extended: clients (Vault's agent) log in again at about
        // two thirds of its life instead of renewing, and fetch fresh credentials then.
        "renewable": false,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
        "mfa_requirement": null,
        "num_uses": 0,
    })
}

/// The Vault policy names of a task: its reserved scopes, without their prefix.
fn policies(task: &TaskRecord) -> Vec<&str> {
    task.scope.split_whitespace().filter_map(|s| s.strip_prefix(LOGIN_SCOPE_PREFIX)).collect()
}

fn metadata(task: &TaskRecord, mount: &str, role: &str) -> Value {
    json!({"role": role, "mount": mount, "task_id": task.id, "creator": task.creator, "state": task.state.as_str()})
}

/// The mount and role a login's purpose names, when it came from a login.
fn login_of(task: &TaskRecord) -> (String, String) {
    task.purpose
        .strip_prefix(LOGIN_PURPOSE_PREFIX)
        .and_then(|r| r.rsplit_once('/'))
        .map(|(m, r)| (m.to_owned(), r.to_owned()))
        .unwrap_or_else(|| ("token".to_owned(), String::new()))
}

/// `GET auth/token/lookup-self`.
pub(super) async fn lookup_self(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Result<Response, VaultError> {
    let VaultCaller::Login(token) = caller(&state, &headers).await? else {
        return Err(VaultError::bad_request("an admin token is not a Vault token; look up a login's token"));
    };
    let task = login_task(&state, &token, &peer).await?;
    let (mount, role) = login_of(&task);
    let data = json!({
        "accessor": task.id,
        "creation_time": task.created_at,
        "creation_ttl": task.expires_at - task.created_at,
        "display_name": format!("{}-{}", mount.replace('/', "-"), role),
        "entity_id": "",
        "expire_time": crate::clock::rfc3339(task.expires_at),
        "explicit_max_ttl": task.expires_at - task.created_at,
        "id": token,
        "issue_time": crate::clock::rfc3339(task.created_at),
        "meta": metadata(&task, &mount, &role),
        "num_uses": 0,
        "orphan": true,
        "path": format!("auth/{mount}/login"),
        "policies": policies(&task),
        "renewable": false,
        "ttl": left(task.expires_at),
        "type": "service",
    });
    Ok(envelope(None, data, Value::Null, Vec::new()))
}

/// `POST auth/token/renew-self`: a login token is a task token, whose lifetime is its
/// maximum (logins say `renewable: false`); renewing re-checks it (revocation, task
/// state) and answers the time left, with Vault's warning for a capped TTL.
pub(super) async fn renew_self(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Result<Response, VaultError> {
    let VaultCaller::Login(token) = caller(&state, &headers).await? else {
        return Err(VaultError::bad_request("an admin token cannot be renewed"));
    };
    let task = login_task(&state, &token, &peer).await?;
    let ttl = left(task.expires_at);
    let (mount, role) = login_of(&task);
    let auth = auth_body(&token, &task, &mount, &role);
    let warning = format!(
        "TTL of \"{ttl}s\" is the token's max_ttl: a Mayfly login token cannot be extended; TTL value is capped \
         accordingly (log in again before it expires)"
    );
    Ok(envelope(None, Value::Null, auth, vec![warning]))
}

/// `POST auth/token/revoke-self`: ends the login's task, and with it everything issued under it.
pub(super) async fn revoke_self(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Result<Response, VaultError> {
    let VaultCaller::Login(token) = caller(&state, &headers).await? else {
        return Err(VaultError::bad_request("an admin token cannot revoke itself here"));
    };
    let task = login_task(&state, &token, &peer).await?;
    let actor = format!("spiffe://{}/task/{}", state.app.trust_domain, task.id);
    state.app.broker.end_task(&task.id, &actor, Some("vault revoke-self")).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct AccessorBody {
    #[serde(default)]
    accessor: Option<String>,
}

/// `POST auth/token/revoke-accessor`: an admin token ends any login; a login token ends
/// its own or one below it.
pub(super) async fn revoke_accessor(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, VaultError> {
    let who = caller(&state, &headers).await?;
    let req: AccessorBody = body(&bytes)?;
    let accessor = req.accessor.filter(|a| !a.is_empty()).ok_or_else(|| VaultError::bad_request("missing accessor"))?;
    let actor = match who {
        VaultCaller::Admin => "admin".to_owned(),
        VaultCaller::Login(token) => {
            let t = state.app.broker.task_caller(&token, &accessor, peer.addr.ip()).await?;
            t.spiffe_id.to_string()
        }
    };
    // Vault answers an unknown accessor with 400.
    state.app.broker.end_task(&accessor, &actor, Some("vault revoke-accessor")).await.map_err(|e| match e {
        crate::broker::BrokerError::NotFound(_) => VaultError::bad_request("invalid accessor"),
        other => other.into(),
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
