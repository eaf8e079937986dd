//! `<mount>/creds/<role>`, `sys/leases/*` and `identity/oidc/token/<name>`: the broker's
//! database credentials, leases and access tokens, in Vault's shapes.

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{VaultCaller, VaultError, VaultState, body, caller, envelope, left, login_task, not_served, with_token};
use crate::broker::db_credentials::DbCredentialParams;
use crate::broker::{BrokerError, ExchangeParams};
use crate::deliver::listener::PeerInfo;
use crate::ledger::{DbLease, DbLeaseState};

/// `GET|POST <database mount>/creds/<role>`, the PKI mount's paths; any other path under `/v1/` is not served.
pub(super) async fn secrets_or_unknown(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    method: Method,
    headers: HeaderMap,
    Path(path): Path<String>,
    bytes: Bytes,
) -> Result<Response, VaultError> {
    if let Some(rest) = state.cfg.pki_rest(&path) {
        return super::pki::serve(&state, &peer, &method, &headers, rest, &bytes).await;
    }
    let Some(role) = state.cfg.creds_role_name(&path) else {
        return Err(not_served(&format!("/v1/{path}")));
    };
    if !matches!(method, Method::GET | Method::POST | Method::PUT) {
        return Err(VaultError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not supported on {path:?}")));
    }
    let VaultCaller::Login(token) = caller(&state, &headers).await? else {
        return Err(VaultError::permission_denied(
            "an admin token holds no workload identity: database credentials go to logged-in workloads",
        ));
    };
    let mapped = state.cfg.database_role(role).ok_or_else(|| {
        VaultError::bad_request(format!("unknown role: {}", role.chars().take(128).collect::<String>()))
    })?;
    let params = DbCredentialParams {
        database: mapped.database.clone(),
        role: mapped.role.clone(),
        subject_token_type: mayfly_proto::TOKEN_TYPE_TASK.to_owned(),
        subject_token: token,
        ttl_seconds: None,
        source_ip: peer.addr.ip(),
    };
    // Its own task: a client that hangs up must not cancel issuance between creating the
    // user and recording it active.
    let broker = state.app.broker.clone();
    let issued = tokio::spawn(async move { broker.issue_db_credential(params).await })
        .await
        .map_err(|e| VaultError::new(StatusCode::SERVICE_UNAVAILABLE, format!("issuance was interrupted: {e}")))?
        .map_err(with_token)?;
    let lease = &issued.lease;
    let lease_id = vault_lease_id(&state, &mapped.name, &lease.id);
    let data = json!({"username": lease.username, "password": issued.password});
    Ok(envelope(Some((&lease_id, left(lease.expires_at), renewable(lease))), data, Value::Null, Vec::new()))
}

fn vault_lease_id(state: &VaultState, role: &str, id: &str) -> String {
    format!("{}/creds/{role}/{id}", state.cfg.database_mount)
}

fn renewable(lease: &DbLease) -> bool {
    lease.state == DbLeaseState::Active && lease.expires_at < lease.max_expires_at
}

/// The Mayfly lease a Vault lease id names: its prefix must be the role the lease is of.
async fn lease_of(state: &VaultState, lease_id: &str) -> Result<DbLease, VaultError> {
    let invalid = || VaultError::bad_request("lease not found");
    let (prefix, id) = lease_id.rsplit_once('/').ok_or_else(invalid)?;
    let role = state.cfg.creds_role_name(prefix).and_then(|r| state.cfg.database_role(r)).ok_or_else(invalid)?;
    let lease = state.app.broker.db_lease(id).await.map_err(|e| match e {
        BrokerError::NotFound(_) => invalid(),
        other => other.into(),
    })?;
    if lease.issuer != role.database || lease.role != role.role {
        return Err(invalid());
    }
    Ok(lease)
}

/// Who acts on a lease, authenticated before the lease is read (so a caller without a
/// valid token cannot tell existing lease ids from made-up ones): an admin, or a login
/// (the task it attests to).
enum LeaseActor {
    Admin,
    Login { token: String, task: String },
}

async fn lease_actor(state: &VaultState, headers: &HeaderMap, peer: &PeerInfo) -> Result<LeaseActor, VaultError> {
    Ok(match caller(state, headers).await? {
        VaultCaller::Admin => LeaseActor::Admin,
        VaultCaller::Login(token) => {
            let task = login_task(state, &token, peer).await?.id;
            LeaseActor::Login { token, task }
        }
    })
}

impl LeaseActor {
    /// The actor's name for the audit trail, if it may act on the lease: an admin, or the
    /// login the lease was issued under (others are told it does not exist).
    fn on(&self, state: &VaultState, lease: &DbLease) -> Result<String, VaultError> {
        match self {
            LeaseActor::Admin => Ok("admin".to_owned()),
            LeaseActor::Login { task, .. } if lease.task_id.as_deref() == Some(task.as_str()) => {
                Ok(format!("spiffe://{}/task/{task}", state.app.trust_domain))
            }
            LeaseActor::Login { .. } => Err(VaultError::bad_request("lease not found")),
        }
    }
}

#[derive(Deserialize)]
struct LeaseBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    increment: Option<Value>,
}

/// The start of every `sys/leases/*` call: who calls, and the body naming a lease.
struct LeaseCall {
    who: LeaseActor,
    body: LeaseBody,
}

impl LeaseCall {
    async fn read(state: &VaultState, headers: &HeaderMap, peer: &PeerInfo, bytes: &Bytes) -> Result<Self, VaultError> {
        let who = lease_actor(state, headers, peer).await?;
        let body: LeaseBody = body(bytes)?;
        let call = Self { who, body };
        call.lease_id()?;
        Ok(call)
    }

    fn lease_id(&self) -> Result<&str, VaultError> {
        self.body
            .lease_id
            .as_deref()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| VaultError::bad_request("missing lease_id"))
    }

    /// The lease, if the caller may act on it, and who the caller is for the ledger.
    async fn lease(&self, state: &VaultState) -> Result<(DbLease, String), VaultError> {
        let lease = lease_of(state, self.lease_id()?).await?;
        let actor = self.who.on(state, &lease)?;
        Ok((lease, actor))
    }
}

/// `PUT sys/leases/lookup`.
pub(super) async fn lookup_lease(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, VaultError> {
    let call = LeaseCall::read(&state, &headers, &peer, &bytes).await?;
    let (lease, _) = call.lease(&state).await?;
    let lease_id = call.lease_id()?;
    let open = lease.state == DbLeaseState::Active;
    let data = json!({
        "id": lease_id,
        "issue_time": crate::clock::rfc3339(lease.created_at),
        "expire_time": crate::clock::rfc3339(lease.expires_at),
        "last_renewal": null,
        "renewable": renewable(&lease),
        "ttl": if open { left(lease.expires_at) } else { 0 },
        "state": lease.state.as_str(),
    });
    Ok(envelope(None, data, Value::Null, Vec::new()))
}

/// `increment` as seconds, or a duration such as `"1h"`.
pub(super) fn increment(v: &Option<Value>) -> Result<Option<u64>, VaultError> {
    let bad = || VaultError::bad_request("increment is seconds or a duration such as \"1h\"");
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().map(Some).map_err(|_| bad()),
        Some(Value::String(s)) => humantime::parse_duration(s).map(|d| Some(d.as_secs())).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
    // Vault treats 0 as "the default increment".
    .map(|i| i.filter(|&s| s > 0))
}

/// `PUT sys/leases/renew` (and the older `sys/renew`): the holder extends its lease within
/// the role's maximum, policy deciding again.
pub(super) async fn renew_lease(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, VaultError> {
    let call = LeaseCall::read(&state, &headers, &peer, &bytes).await?;
    let lease_id = call.lease_id()?;
    let increment = increment(&call.body.increment)?;
    let LeaseActor::Login { token, .. } = &call.who else {
        return Err(VaultError::permission_denied("only the login a lease was issued to renews it"));
    };
    let (lease, _) = call.lease(&state).await?;
    let renewed = state
        .app
        .broker
        .renew_db_lease(&lease.id, mayfly_proto::TOKEN_TYPE_TASK, token, increment, peer.addr.ip())
        .await
        .map_err(|e| match e {
            BrokerError::Conflict(_) => VaultError::bad_request("lease is not renewable"),
            // Not the holder: the same answer as for a lease that does not exist.
            BrokerError::Forbidden(_) => VaultError::bad_request("lease not found"),
            other => with_token(other),
        })?;
    // Capped by the role's maximum or the login's end: said as Vault says it.
    let got = left(renewed.expires_at);
    let mut warnings = Vec::new();
    if let Some(asked) = increment.filter(|&i| i as i64 > got) {
        warnings.push(format!(
            "TTL of \"{asked}s\" exceeded the effective max_ttl of \"{got}s\"; TTL value is capped accordingly"
        ));
    }
    Ok(envelope(Some((lease_id, got, renewable(&renewed))), Value::Null, Value::Null, warnings))
}

/// `PUT sys/leases/revoke`: the user is dropped and its sessions ended before the answer.
pub(super) async fn revoke_lease(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, VaultError> {
    let (lease, actor) = LeaseCall::read(&state, &headers, &peer, &bytes).await?.lease(&state).await?;
    if !lease.state.is_open() {
        // Vault's revoke is idempotent: an ended lease is already what was asked.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    match state.app.broker.revoke_db_lease(&lease.id, &actor).await {
        Ok(_) | Err(BrokerError::Conflict(_)) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}

/// `PUT sys/leases/revoke-prefix/<prefix>` (admin): one Mayfly revocation per database
/// role the prefix covers, whatever the number of leases; the reaper drops the users.
pub(super) async fn revoke_prefix(
    State(state): State<VaultState>,
    headers: HeaderMap,
    Path(prefix): Path<String>,
) -> Result<Response, VaultError> {
    if !matches!(caller(&state, &headers).await?, VaultCaller::Admin) {
        return Err(VaultError::permission_denied("revoke-prefix takes an admin token"));
    }
    let prefix = prefix.trim_matches('/');
    let mount = state.cfg.database_mount.as_str();
    let under_mount = prefix == mount || prefix.strip_prefix(mount).is_some_and(|r| r.starts_with('/'));
    if !under_mount {
        return Err(VaultError::bad_request(format!(
            "Mayfly revokes prefixes of {mount}/ leases only; revoke logins by accessor (or with `mayfly revoke`)"
        )));
    }
    let rest = prefix[mount.len()..].trim_start_matches('/');
    let unknown = || {
        VaultError::bad_request(format!(
            "{prefix:?} names no database role: give {mount}, {mount}/creds, {mount}/creds/<role> or a lease id"
        ))
    };
    let chosen: Vec<_> = match rest.split('/').collect::<Vec<_>>().as_slice() {
        [""] | ["creds"] => state.cfg.database_roles.iter().collect(),
        ["creds", name] => vec![state.cfg.database_role(name).ok_or_else(unknown)?],
        ["creds", name, id] => {
            let lease = lease_of(&state, &format!("{mount}/creds/{name}/{id}")).await?;
            if lease.state.is_open() {
                match state.app.broker.revoke_db_lease(&lease.id, "admin").await {
                    Ok(_) | Err(BrokerError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        _ => return Err(unknown()),
    };
    let mut targets: Vec<String> = chosen.iter().map(|r| format!("db:{}/{}", r.database, r.role)).collect();
    targets.sort();
    targets.dedup();
    for audience in targets {
        let req = mayfly_proto::RevokeRequest {
            audience: Some(audience),
            reason: Some(format!("vault revoke-prefix {prefix}")),
            ..Default::default()
        };
        state
            .app
            .broker
            .revoke(&req, "admin")
            .await
            .map_err(|e| VaultError::from(crate::deliver::http::ApiError::from(e)))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET identity/oidc/token/<name>`: a Mayfly access token for the role's audience, issued
/// under the login's task (policy `exchange`, the task's limits).
pub(super) async fn identity_token(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, VaultError> {
    let VaultCaller::Login(token) = caller(&state, &headers).await? else {
        return Err(VaultError::permission_denied("an admin token holds no workload identity"));
    };
    let role = state.cfg.identity_roles.iter().find(|r| r.name == name).ok_or_else(|| {
        VaultError::bad_request(format!("role {:?} not found", name.chars().take(128).collect::<String>()))
    })?;
    let issued = state
        .app
        .broker
        .exchange(ExchangeParams {
            subject_token_type: mayfly_proto::TOKEN_TYPE_TASK.to_owned(),
            subject_token: token,
            audience: role.audience.clone(),
            scope: None,
            requested_lifetime: role.ttl.map(|t| t.as_secs()),
            source_ip: peer.addr.ip(),
            confirmation: None,
            dpop_proof: None,
            max_uses: None,
        })
        .await
        .map_err(with_token)?;
    let data = json!({"client_id": role.audience, "token": issued.token, "ttl": issued.expires_at - issued.issued_at});
    Ok(envelope(None, data, Value::Null, Vec::new()))
}
