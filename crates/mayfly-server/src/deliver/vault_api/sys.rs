//! `sys/health`, `sys/seal-status`, `sys/mounts`, `sys/auth`, the mount lookup Vault's agent
//! makes before rendering a template, and `sys/capabilities-self` answered from Cedar.

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{VaultCaller, VaultError, VaultState, body, caller, envelope};
use crate::deliver::listener::PeerInfo;

/// The version clients see (Vault clients parse it; Mayfly's own follows the `+`).
fn version() -> String {
    format!("1.15.0+mayfly.{}", env!("CARGO_PKG_VERSION"))
}

/// `GET sys/health`: 200 when storage answers, 503 (as a sealed Vault) when it does not.
/// No token needed, as in Vault.
pub(super) async fn health(State(state): State<VaultState>) -> Response {
    let (_, storage) = state.app.broker.storage_health().await;
    let status = if storage.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "initialized": true,
        "sealed": storage.is_err(),
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": crate::clock::now_unix(),
        "version": version(),
        "cluster_name": "mayfly",
        "cluster_id": "",
    });
    (status, axum::Json(body)).into_response()
}

/// `GET sys/seal-status`: Mayfly has no seal; its keys are sealed under the KEK at start.
pub(super) async fn seal_status() -> Response {
    let body = json!({
        "type": "shamir", "initialized": true, "sealed": false, "t": 1, "n": 1, "progress": 0,
        "nonce": "", "version": version(), "build_date": "", "migration": false,
        "cluster_name": "mayfly", "cluster_id": "", "recovery_seal": false, "storage_type": "mayfly",
    });
    axum::Json(body).into_response()
}

fn mount_entry(kind: &str, description: &str) -> Value {
    json!({
        "type": kind, "description": description, "accessor": format!("{kind}_mayfly"),
        "config": {"default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false},
        "local": false, "seal_wrap": false, "external_entropy_access": false, "options": null, "uuid": "",
    })
}

fn secret_mounts(state: &VaultState) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        format!("{}/", state.cfg.database_mount),
        mount_entry("database", "Mayfly: short-lived database users (PostgreSQL, MySQL/MariaDB, Redis)"),
    );
    m.insert(
        format!("{}/", state.cfg.pki_mount),
        mount_entry("pki", "Mayfly: X.509 certificates from its CA, naming the caller's SPIFFE ID"),
    );
    m.insert("identity/".into(), mount_entry("identity", "Mayfly: access tokens for an audience"));
    m.insert("sys/".into(), mount_entry("system", "system endpoints (health, leases)"));
    m
}

/// `GET sys/mounts` (any valid token).
pub(super) async fn mounts(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Result<Response, VaultError> {
    authenticated(&state, &headers, &peer).await?;
    Ok(listing(secret_mounts(&state)))
}

/// `GET sys/auth` (any valid token).
pub(super) async fn auth_mounts(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
) -> Result<Response, VaultError> {
    authenticated(&state, &headers, &peer).await?;
    let mut m = Map::new();
    m.insert("token/".into(), mount_entry("token", "token lookup, renewal and revocation"));
    for a in &state.cfg.auth {
        m.insert(format!("{}/", a.mount), mount_entry(a.method.as_str(), "Mayfly: OIDC attestors"));
    }
    Ok(listing(m))
}

/// Vault answers mount listings both at the top level and under `data`.
fn listing(m: Map<String, Value>) -> Response {
    let mut top = m.clone();
    top.insert("request_id".into(), json!(crate::ids::time_ordered_id()));
    top.insert("data".into(), Value::Object(m));
    axum::Json(Value::Object(top)).into_response()
}

/// `GET sys/internal/ui/mounts/<path>`: the mount a path is under (Vault's agent asks it
/// before reading a secret, to tell KV versions apart).
pub(super) async fn ui_mount(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, VaultError> {
    authenticated(&state, &headers, &peer).await?;
    let mounts = secret_mounts(&state);
    let found = mounts.iter().find(|(m, _)| format!("{}/", path.trim_end_matches('/')).starts_with(m.as_str()));
    let Some((mount, entry)) = found else {
        return Err(VaultError::permission_denied(format!(
            "preflight capability check returned 403, please ensure client's policies grant access to path {:?}",
            path.chars().take(200).collect::<String>()
        )));
    };
    let mut data = entry.clone();
    data["path"] = json!(mount);
    Ok(envelope(None, data, Value::Null, Vec::new()))
}

/// A valid token: an admin token, or a login token that attests now.
async fn authenticated(state: &VaultState, headers: &HeaderMap, peer: &PeerInfo) -> Result<VaultCaller, VaultError> {
    let who = caller(state, headers).await?;
    if let VaultCaller::Login(token) = &who {
        super::login_task(state, token, peer).await?;
    }
    Ok(who)
}

#[derive(Deserialize)]
struct CapabilitiesBody {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
}

/// Most paths asked at once.
const MAX_PATHS: usize = 64;

/// `POST sys/capabilities-self`: for each path, what the caller's token may do there. A
/// database role's answer is Cedar's decision on issuing it to this login now.
pub(super) async fn capabilities_self(
    State(state): State<VaultState>,
    Extension(peer): Extension<PeerInfo>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, VaultError> {
    // Attested once for all the paths asked.
    let who = match caller(&state, &headers).await? {
        VaultCaller::Admin => None,
        VaultCaller::Login(token) => {
            let now = crate::clock::now_unix();
            let attested = state.app.broker.attest(mayfly_proto::TOKEN_TYPE_TASK, &token, peer.addr.ip(), now).await;
            Some(attested.map_err(super::with_token)?)
        }
    };
    let req: CapabilitiesBody = body(&bytes)?;
    let mut paths = req.paths;
    paths.extend(req.path);
    if paths.is_empty() || paths.len() > MAX_PATHS {
        return Err(VaultError::bad_request(format!("give 1 to {MAX_PATHS} paths")));
    }
    let mut out = Map::new();
    for path in &paths {
        let caps = capabilities(&state, who.as_ref(), path.trim_start_matches('/'), &peer)?;
        out.insert(path.clone(), json!(caps));
    }
    if paths.len() == 1 {
        out.insert("capabilities".into(), out[&paths[0]].clone());
    }
    let mut top = out.clone();
    top.insert("data".into(), Value::Object(out));
    Ok(axum::Json(Value::Object(top)).into_response())
}

fn capabilities(
    state: &VaultState,
    who: Option<&crate::broker::Caller>,
    path: &str,
    peer: &PeerInfo,
) -> Result<Vec<&'static str>, VaultError> {
    let creds = state.cfg.creds_role_name(path).and_then(|r| state.cfg.database_role(r));
    let pki_role = state
        .cfg
        .pki_rest(path)
        .and_then(|r| r.strip_prefix("issue/"))
        .is_some_and(|r| state.cfg.pki_roles.iter().any(|p| p.name == r));
    let own = ["auth/token/lookup-self", "auth/token/renew-self", "auth/token/revoke-self"];
    let caps = match (who, creds) {
        (Some(login), Some(role)) => {
            let allowed =
                state.app.broker.may_issue_db_credential(login, &role.database, &role.role, peer.addr.ip())?;
            if allowed { vec!["read", "update"] } else { vec!["deny"] }
        }
        (None, Some(_)) => vec!["deny"],
        // Decided at issuance, with the names asked for: the role exists and takes logins.
        (Some(_), None) if pki_role => vec!["update"],
        (Some(_), None) if own.contains(&path) => vec!["read", "update"],
        (_, None) if path.starts_with("sys/leases/") && !path.starts_with("sys/leases/revoke-prefix") => {
            vec!["update"]
        }
        (None, None) if path.starts_with("sys/leases/revoke-prefix") || path == "auth/token/revoke-accessor" => {
            vec!["update", "sudo"]
        }
        (Some(_), None) if path == "auth/token/revoke-accessor" => vec!["update"],
        _ => vec!["deny"],
    };
    Ok(caps)
}
