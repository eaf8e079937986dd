//! Wire types shared by the Mayfly server, the `mayfly` CLI and SDKs.
//!
//! Everything here is plain data: request and response bodies, the RFC 9457
//! problem document, and the token-type URNs that RFC 8693 clients send.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod problem;
pub use problem::{PROBLEM_TYPE_PREFIX, ProblemKind, UnknownProblemKind};

/// RFC 8693 grant type for token exchange.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type: a JWT (platform identity tokens arrive as this).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type: an OpenID Connect ID token.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// RFC 8693 token type: an OAuth access token (what Mayfly issues).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Mayfly's own token type for one-time join tokens.
pub const TOKEN_TYPE_JOIN_TOKEN: &str = "urn:mayfly:params:oauth:token-type:join-token";
/// Mayfly's token type for task tokens (RFC 8693 `subject_token_type`).
pub const TOKEN_TYPE_TASK: &str = "urn:mayfly:params:oauth:token-type:task";
/// Media type of RFC 9457 problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem document.
///
/// Token-endpoint errors also carry the RFC 6749 §5.2 members `error` and
/// `error_description`, so OAuth client libraries find what they look for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A stable URN naming the kind of problem, e.g. `urn:mayfly:problem:policy-denied`; see [`ProblemKind`].
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short, human-readable summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request. Never contains secret material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// OAuth error code (RFC 6749 §5.2 / RFC 8693 §2.2.2), on OAuth endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// OAuth error description; the same text as `detail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// For policy denials: the ids of the policies that decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

impl Problem {
    /// The kind its `type` names, if it is one of Mayfly's (the field stays a string so a
    /// client reads problems from a newer server whose kinds it does not know yet).
    pub fn kind(&self) -> Option<ProblemKind> {
        ProblemKind::from_type_uri(&self.problem_type)
    }
}

/// `Debug` for a wire type that carries a secret (a token): only the named fields are
/// shown, so a `{:?}` in a log or an error never prints the secret.
macro_rules! debug_without_secrets {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))$(.field(stringify!($field), &self.$field))*.finish_non_exhaustive()
            }
        }
    };
}

/// The RFC 8693 token-exchange request, as the form-encoded body of `POST /v1/token`.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct TokenExchangeRequest {
    /// Must be `urn:ietf:params:oauth:grant-type:token-exchange`.
    #[schema(required = true, value_type = String, pattern = "^urn:ietf:params:oauth:grant-type:token-exchange$")]
    pub grant_type: Option<String>,
    /// The platform identity token (a JWT) or a one-time join token.
    #[schema(required = true, value_type = String, min_length = 1)]
    pub subject_token: Option<String>,
    /// `urn:ietf:params:oauth:token-type:jwt`, `…:id_token` or `urn:mayfly:params:oauth:token-type:join-token`.
    #[schema(required = true, value_type = String, min_length = 1)]
    pub subject_token_type: Option<String>,
    /// The logical name of the service the token is for (this or `resource` is required;
    /// at most 512 bytes without control characters).
    #[schema(min_length = 1, max_length = 512)]
    pub audience: Option<String>,
    /// The URI of the service the token is for (used when `audience` is absent).
    #[schema(min_length = 1, max_length = 512)]
    pub resource: Option<String>,
    /// Space-separated scopes requested.
    pub scope: Option<String>,
    /// Only `urn:ietf:params:oauth:token-type:access_token` (the default) is issued.
    pub requested_token_type: Option<String>,
    /// Mayfly extension: the lifetime wanted, in seconds; capped by policy and configuration.
    #[schema(pattern = "^[0-9]{1,19}$")]
    pub requested_lifetime: Option<String>,
    /// Mayfly extension: how many times the token may be used (verified at its resource
    /// server); without it, any number until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9]{1,9}$")]
    pub max_uses: Option<String>,
}

debug_without_secrets!(TokenExchangeRequest {
    grant_type,
    subject_token_type,
    audience,
    resource,
    scope,
    requested_token_type,
    requested_lifetime,
    max_uses
});

/// The RFC 8693 §2.2.1 token-exchange response.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenExchangeResponse {
    /// The issued RFC 9068 JWT access token.
    pub access_token: String,
    /// Always `urn:ietf:params:oauth:token-type:access_token`.
    pub issued_token_type: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The scopes granted, space-separated, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

debug_without_secrets!(TokenExchangeResponse { issued_token_type, token_type, expires_in, scope });

/// Body of `POST /v1/join-tokens` (admin).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateJoinTokenRequest {
    /// Lifetime in seconds (default 600, at most `join_tokens.max_ttl`: 86400 unless configured).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: Option<u64>,
    /// The SPIFFE ID path the redeemer gets, e.g. `node/build-01`: segments of
    /// `A-Z a-z 0-9 . _ -`, none `.` or `..`, not under `task/` or `agent/`;
    /// default `join/<token id>`.
    #[serde(default)]
    #[schema(
        pattern = r"^/*(?:[A-Za-z0-9._-]{3,}|[A-Za-z0-9_-][A-Za-z0-9._-]?|\.[A-Za-z0-9_-])(?:/(?:[A-Za-z0-9._-]{3,}|[A-Za-z0-9_-][A-Za-z0-9._-]?|\.[A-Za-z0-9_-]))*$"
    )]
    pub spiffe_path: Option<String>,
}

/// A freshly created join token. The token itself is shown once and stored only as a hash.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateJoinTokenResponse {
    /// Non-secret identifier of the token, for audit and listing.
    pub id: String,
    /// The one-time token; exchange it with subject_token_type `urn:mayfly:params:oauth:token-type:join-token`.
    pub token: String,
    /// The SPIFFE ID its redeemer gets.
    pub spiffe_id: String,
    /// Unix time (seconds) after which it can no longer be redeemed.
    pub expires_at: i64,
}

debug_without_secrets!(CreateJoinTokenResponse { id, spiffe_id, expires_at });

/// Body of `POST /v1/admin-tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminTokenRequest {
    /// A unique name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, e.g. `ci-deployer`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
}

/// An admin token as the admin API lists it: never the token, never its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AdminTokenInfo {
    /// Non-secret id, to revoke it by.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// Unix time it was created.
    pub created_at: i64,
    /// Unix time it was last used (recorded at most about once a minute); absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

/// A freshly created admin token. The token itself is shown once and stored only as a hash.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateAdminTokenResponse {
    /// Its record.
    #[serde(flatten)]
    pub info: AdminTokenInfo,
    /// The admin token (`mfa_…`): send it as `Authorization: Bearer`.
    pub token: String,
}

debug_without_secrets!(CreateAdminTokenResponse { info });

/// A public signing key as the admin API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyInfo {
    /// The key id (`kid`).
    pub kid: String,
    /// JOSE algorithm: `EdDSA`, `ES256` or `RS256`.
    pub alg: String,
    /// Whether this key signs new tokens (of its profile).
    pub active: bool,
    /// Unix time the key was created.
    pub created_at: i64,
    /// Unix time after which the key leaves the JWKS (set once it is retired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_until: Option<i64>,
    /// The signing profile (`default`, or a configured one such as an RS256 profile for the clouds).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Unix time a pre-published key starts signing (absent: it signed from its creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activates_at: Option<i64>,
}

fn default_profile() -> String {
    "default".into()
}

/// A Workload API registration entry: local processes whose attested selectors
/// include all of `selectors` get `spiffe_id` from the SPIFFE Workload API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// The SPIFFE ID the matching workloads get, e.g. `spiffe://prod.example/billing/api`.
    pub spiffe_id: String,
    /// Selectors that must all match the caller, e.g. `unix:uid:1000`, `unix:path:/usr/bin/api`,
    /// `unix:sha256:<hex>`, `unix:user:svc`, `unix:gid:100`, `unix:group:svc`.
    pub selectors: Vec<String>,
    /// Guidance for a workload given several SVIDs (e.g. `internal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// DNS names added to the X.509-SVID beside its SPIFFE ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// X.509-SVID lifetime in seconds (default: `workload_api.x509_svid_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_svid_ttl: Option<u64>,
    /// JWT-SVID lifetime in seconds (default: `workload_api.jwt_svid_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_svid_ttl: Option<u64>,
    /// Extra facts for Cedar: principal tags beside the attested ones (which win on a clash).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// A registration entry as the admin API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntryInfo {
    /// Its id.
    pub id: String,
    /// What it grants.
    #[serde(flatten)]
    pub spec: EntrySpec,
    /// `config` (from the config file, read-only here) or `api`.
    pub source: String,
    /// Unix time it was created (the server's start for config entries).
    pub created_at: i64,
}

/// Answer of `GET /v1/entries`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntryList {
    /// Every entry, config entries first.
    pub entries: Vec<EntryInfo>,
}

/// Answer of `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is not ready.
    pub status: String,
    /// `/readyz` only: the storage backend (`sqlite`, `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// `/readyz` only: whether this replica runs background work (always true on SQLite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
}

/// Body of `POST /v1/revocations` (admin): exactly one selector.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// One credential by `jti` (or lease id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Every credential of this SPIFFE ID issued until now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Every credential of this SPIFFE ID or any below it (path-segment boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// Every credential for this audience issued until now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Every credential issued under this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Every credential issued at or before this Unix time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
    /// Every credential issued until now. Must be explicit: an empty selector is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Also refuse every new issuance the selector covers (`subject`, `subject_prefix`,
    /// `audience` or `all`) until the block is lifted, or for `block_seconds`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
    /// With `block`: how long the block lasts, in seconds (default: until lifted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_seconds: Option<u64>,
    /// Why (kept in the audit trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Body of `POST /v1/revocations/lift` (admin): ends the blocks on exactly one selector
/// (`subject`, `subject_prefix`, `audience` or `all`). What was revoked stays revoked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LiftRequest {
    /// The SPIFFE ID whose block ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The SPIFFE ID prefix whose block ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    /// The audience whose block ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The block on all issuance ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Why (kept in the audit trail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// RFC 7662 introspection response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IntrospectionResponse {
    /// Whether the token is valid, unexpired and not revoked.
    pub active: bool,
    /// Granted scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// OAuth client (the workload's SPIFFE ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `Bearer` (or `DPoP` for bound tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Expiry, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Subject (SPIFFE ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Confirmation (binding), when the token is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Value>,
    /// The task it was issued under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// RFC 8693 actor chain, for tokens issued under a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub act: Option<serde_json::Value>,
}

/// A page of the revocation feed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevocationPage {
    /// Entries with cursor greater than `since`, oldest first.
    pub entries: Vec<serde_json::Value>,
    /// Pass as `since` for the next page.
    pub next_cursor: i64,
}

/// Body of `POST /v1/tasks`: an attested workload (or a task, for a sub-task) starts a task.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartTaskRequest {
    /// The caller's evidence type, as in RFC 8693 (`…:task` for a task token, which starts a sub-task).
    #[schema(min_length = 1)]
    pub subject_token_type: String,
    /// The evidence: a platform JWT, a join token or a task token.
    #[schema(min_length = 1)]
    pub subject_token: String,
    /// Why the task exists, e.g. `deploy web@4f2a to prod`: 1 to 256 characters, not all
    /// blank, without control characters.
    #[schema(min_length = 1, max_length = 256)]
    pub purpose: String,
    /// Space-separated scopes: the most anything issued under the task can get.
    #[serde(default)]
    pub scope: Option<String>,
    /// Audiences the task may get credentials for; empty means any that policy allows.
    /// At most 16, each 1 to 512 bytes without control characters.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub audiences: Vec<String>,
    /// Lifetime in seconds (default 900; above the maximum is refused).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub ttl_seconds: Option<u64>,
    /// The subject the task acts for (RFC 8693 delegation): credentials carry it as `sub`
    /// and the task as `act`. Without an `actor_token`, policy must permit it (`act_for`),
    /// and it cannot be a SPIFFE ID of this trust domain.
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    /// The parent task's id, for a sub-task started with the parent starter's own evidence.
    #[serde(default)]
    pub parent: Option<String>,
    /// RFC 8693 delegation: the caller's own evidence. With it, `subject_token` is the
    /// represented subject's proof (its platform JWT, or a Mayfly access token whose `aud`
    /// is the caller's SPIFFE ID), and the task acts for that subject.
    #[serde(default)]
    pub actor_token: Option<String>,
    /// The type of `actor_token` (a platform JWT or a join token).
    #[serde(default)]
    pub actor_token_type: Option<String>,
}

debug_without_secrets!(StartTaskRequest {
    subject_token_type,
    purpose,
    scope,
    audiences,
    ttl_seconds,
    on_behalf_of,
    parent,
    actor_token_type
});

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskInfo {
    /// Task id.
    pub id: String,
    /// `spiffe://<trust domain>/task/<id>`.
    pub spiffe_id: String,
    /// `pending`, `active`, `denied`, `ended` or `expired`.
    pub state: String,
    /// Why it exists.
    pub purpose: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Audiences it is limited to (empty: any that policy allows).
    pub audiences: Vec<String>,
    /// The parent task, for a sub-task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// 1 for a task without a parent.
    pub depth: i64,
    /// SPIFFE ID of the workload or parent task that started it.
    pub creator: String,
    /// The subject it acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The RFC 8693 `act` claim its credentials carry.
    #[schema(value_type = Object)]
    pub act: serde_json::Value,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; nothing issued under it outlives this.
    pub expires_at: i64,
    /// A pending task not approved by then is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_deadline: Option<i64>,
    /// Who approved or denied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<i64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    /// Why it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

/// Answer to `POST /v1/tasks`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct StartTaskResponse {
    /// The task.
    pub task: TaskInfo,
    /// The task token: exchange it at `/v1/token` with subject_token_type
    /// `urn:mayfly:params:oauth:token-type:task`. Secret; dies with the task.
    pub task_token: String,
    /// `urn:mayfly:params:oauth:token-type:task`.
    pub task_token_type: String,
    /// Seconds until the task (and its token) expires.
    pub expires_in: u64,
}

debug_without_secrets!(StartTaskResponse { task, task_token_type, expires_in });

/// Body of `POST /v1/tasks/{id}/approve` and `…/deny` from a workload approver
/// (an admin token in `Authorization` needs no body).
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDecisionRequest {
    /// The approver's evidence type.
    #[serde(default)]
    pub subject_token_type: Option<String>,
    /// The approver's evidence.
    #[serde(default)]
    pub subject_token: Option<String>,
}

debug_without_secrets!(TaskDecisionRequest { subject_token_type });

/// Body of `POST /v1/tasks/{id}/attest`: the task's starter presents fresh evidence,
/// so a long-lived holder keeps its task only while its identity still verifies.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskAttestRequest {
    /// The evidence type, as in RFC 8693: a platform JWT (`…:jwt` or `…:id_token`).
    #[schema(min_length = 1)]
    pub subject_token_type: String,
    /// The evidence: the starter's platform JWT as it is now (re-read from its source).
    #[schema(min_length = 1)]
    pub subject_token: String,
}

debug_without_secrets!(TaskAttestRequest { subject_token_type });

/// Body of `DELETE /v1/tasks/{id}` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndTaskRequest {
    /// Why it ends, for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Answer to ending a task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EndTaskResponse {
    /// The task, now ended.
    pub task: TaskInfo,
    /// Ids of the sub-tasks that ended with it.
    pub ended_descendants: Vec<String>,
}

/// A page of `GET /v1/tasks` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    /// Tasks, ordered by id (oldest first).
    pub tasks: Vec<TaskInfo>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// What a revocation selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// One credential by `jti` (or lease id).
    Jti,
    /// Every credential of one SPIFFE ID.
    Subject,
    /// Every credential whose SPIFFE ID is the prefix or below it (path-segment boundary).
    SubjectPrefix,
    /// Every credential for one audience.
    Audience,
    /// Every credential issued under one task.
    Task,
    /// Every credential issued at or before `issued_before`.
    IssuedBefore,
}

impl RevocationKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Subject => "subject",
            RevocationKind::SubjectPrefix => "subject_prefix",
            RevocationKind::Audience => "audience",
            RevocationKind::Task => "task",
            RevocationKind::IssuedBefore => "issued_before",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "jti" => RevocationKind::Jti,
            "subject" => RevocationKind::Subject,
            "subject_prefix" => RevocationKind::SubjectPrefix,
            "audience" => RevocationKind::Audience,
            "task" => RevocationKind::Task,
            "issued_before" => RevocationKind::IssuedBefore,
            _ => return None,
        })
    }
}

/// One revocation, as stored and as the feed serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Revocation {
    /// Feed cursor: strictly increasing.
    pub cursor: i64,
    /// What it selects.
    pub kind: RevocationKind,
    /// The jti, SPIFFE ID, prefix, audience or task id; empty for `issued_before`.
    pub value: String,
    /// Covers credentials (and, for subjects, evidence) issued at or before this Unix
    /// time. Later than `revoked_at` for a block: nothing is issued until then.
    pub issued_before: i64,
    /// When it was made (Unix seconds).
    pub revoked_at: i64,
    /// After this Unix time everything it covers has expired, and the entry may be dropped.
    pub expires_at: i64,
    /// Why, as the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A lift: the blocks on this selector end at `issued_before` (what they revoked
    /// stays revoked). A follower that does not know lifts keeps the block: it fails closed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lift: bool,
}

/// The SPIFFE Workload API (gRPC), generated from `proto/workload.proto`.
#[cfg(feature = "workload-api")]
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod workload {
    tonic::include_proto!("_");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wire types that carry a token never print it through `{:?}`.
    #[test]
    fn debug_never_shows_a_token() {
        let secret = "eyJ-very-secret";
        let shown = [
            format!(
                "{:?}",
                TokenExchangeRequest {
                    subject_token: Some(secret.into()),
                    audience: Some("https://api".into()),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                TokenExchangeResponse {
                    access_token: secret.into(),
                    issued_token_type: TOKEN_TYPE_ACCESS_TOKEN.into(),
                    token_type: "Bearer".into(),
                    expires_in: 300,
                    scope: None,
                }
            ),
            format!(
                "{:?}",
                CreateJoinTokenResponse { id: "j1".into(), token: secret.into(), spiffe_id: "s".into(), expires_at: 1 }
            ),
            format!(
                "{:?}",
                CreateAdminTokenResponse {
                    info: AdminTokenInfo { id: "a1".into(), name: "ci".into(), created_at: 1, last_used_at: None },
                    token: secret.into(),
                }
            ),
            format!(
                "{:?}",
                StartTaskRequest {
                    subject_token: secret.into(),
                    actor_token: Some(secret.into()),
                    purpose: "deploy".into(),
                    ..Default::default()
                }
            ),
            format!("{:?}", TaskDecisionRequest { subject_token: Some(secret.into()), ..Default::default() }),
            format!("{:?}", TaskAttestRequest { subject_token: secret.into(), ..Default::default() }),
        ];
        for s in &shown {
            assert!(!s.contains(secret), "{s}");
        }
        assert!(shown[0].contains("https://api") && shown[4].contains("deploy"), "the rest is shown");
    }
}

/// Body of `POST /v1/clouds/{profile}/token` and `POST /v1/credentials/aws/{profile}`: the
/// caller's evidence (a platform JWT, a join token, or a task token).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudTokenRequest {
    /// The evidence's type (`urn:ietf:params:oauth:token-type:jwt`, a join token's, a task token's).
    #[schema(min_length = 1)]
    pub subject_token_type: String,
    /// The evidence.
    #[schema(min_length = 1)]
    pub subject_token: String,
}
debug_without_secrets!(CloudTokenRequest { subject_token_type });

/// What a command needs to use a cloud token with the cloud's own SDK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CloudSetup {
    /// AWS: the SDKs' web-identity provider (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, …).
    Aws {
        /// `AWS_ROLE_ARN`.
        role_arn: String,
        /// `AWS_ROLE_SESSION_NAME`.
        session_name: String,
        /// `AWS_REGION` / `AWS_DEFAULT_REGION`, when configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
    },
    /// Google Cloud: an `external_account` credential file with a file-sourced subject token.
    Gcp {
        /// The provider's full name, the file's `audience`.
        audience: String,
        /// Google's STS token endpoint, the file's `token_url`.
        token_url: String,
        /// The file's `service_account_impersonation_url`, when a service account is configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_account_impersonation_url: Option<String>,
    },
    /// Azure: the workload identity variables.
    Azure {
        /// `AZURE_TENANT_ID`.
        tenant_id: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_AUTHORITY_HOST`.
        authority_host: String,
    },
}

/// A federation token for one cloud profile.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct CloudTokenResponse {
    /// The cloud profile.
    pub profile: String,
    /// The JWT the cloud exchanges. Secret.
    pub token: String,
    /// Its `jti` (the ledger's id for it).
    pub jti: String,
    /// Its `sub`.
    pub subject: String,
    /// Its `aud`.
    pub audience: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// What the cloud's SDK needs beside the token.
    pub setup: CloudSetup,
}
debug_without_secrets!(CloudTokenResponse { profile, jti, subject, audience, issued_at, expires_at, setup });

/// Temporary AWS credentials Mayfly got from STS for the caller.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct AwsCredentialsResponse {
    /// The cloud profile.
    pub profile: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`. Secret: shown once, never stored.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`. Secret.
    pub session_token: String,
    /// When they expire, RFC 3339 (as STS says).
    pub expiration: String,
    /// The assumed role session.
    pub assumed_role_arn: String,
    /// The `jti` of the web-identity token Mayfly exchanged for them.
    pub jti: String,
}
debug_without_secrets!(AwsCredentialsResponse { profile, access_key_id, expiration, assumed_role_arn, jti });

/// A cloud profile and the values its one-time set-up on the cloud's side needs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CloudProfileInfo {
    /// Its name.
    pub name: String,
    /// `aws`, `gcp` or `azure`.
    pub kind: String,
    /// The issuer the cloud trusts (`public_url`).
    pub issuer: String,
    /// Where the cloud fetches the keys.
    pub jwks_uri: String,
    /// The `aud` of its tokens.
    pub audience: String,
    /// The signing profile and its algorithm.
    pub signing_profile: String,
    /// `RS256` or `ES256`.
    pub algorithm: String,
    /// Token lifetime in seconds.
    pub token_ttl_seconds: u64,
    /// Kind-specific settings (role ARN, pool, tenant, …) as configured.
    pub settings: std::collections::BTreeMap<String, String>,
}

/// The audience of the token a credential-injecting proxy (`mayfly proxy`) presents to
/// `/v1/proxy/*`: who may run a proxy is decided by policy on the exchange for it.
pub const PROXY_AUDIENCE: &str = "urn:mayfly:proxy";
/// The audience of a Mayfly access token a workload gives a proxy as its identity
/// (`Proxy-Authorization: Bearer …`): distinct from [`PROXY_AUDIENCE`], so that holding one
/// never lets a workload ask for decisions (and upstream secrets) itself.
pub const PROXY_CLIENT_AUDIENCE: &str = "urn:mayfly:proxy-client";

/// The `upstream` of a proxy decision for a `CONNECT` tunnel to a host no upstream names
/// (`proxy.tunnel_unmatched`): decided once per connection, as `Mayfly::Upstream::"*"`
/// with method `CONNECT`; nothing is injected.
pub const PROXY_TUNNEL: &str = "*";

/// Body of `POST /v1/proxy/decisions`: one request a workload sent through a proxy, and
/// the workload's evidence (a task token, platform evidence or a join token).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyDecisionRequest {
    /// The workload's evidence type.
    #[schema(min_length = 1)]
    pub subject_token_type: String,
    /// The workload's evidence.
    #[schema(min_length = 1)]
    pub subject_token: String,
    /// The configured upstream the request goes to, or `*` for a tunnel to a host none names.
    #[schema(min_length = 1)]
    pub upstream: String,
    /// The request's method, e.g. `GET`.
    #[schema(min_length = 1)]
    pub method: String,
    /// The host the workload asked for (lower case, without the port).
    #[schema(min_length = 1)]
    pub host: String,
    /// The request's path, percent-decoding not applied.
    #[schema(min_length = 1)]
    pub path: String,
    /// The names of the query's parameters (never their values).
    #[serde(default)]
    pub query_keys: Vec<String>,
    /// The workload's address as the proxy saw it.
    #[serde(default)]
    pub source_ip: Option<String>,
}
debug_without_secrets!(ProxyDecisionRequest { subject_token_type, upstream, method, host, path, query_keys });

/// One header the proxy sets on the way out, replacing whatever the workload sent under that name.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct InjectedHeader {
    /// The header's name.
    pub name: String,
    /// Its value. Secret.
    pub value: String,
}
debug_without_secrets!(InjectedHeader { name });

/// An allowed request: what to inject, and the facts the proxy watches the revocation feed for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProxyDecisionResponse {
    /// Always `allow` (a denial is a 403 problem).
    pub decision: String,
    /// The policies that allowed it.
    pub policies: Vec<String>,
    /// The workload's SPIFFE ID (a task's, under a task).
    pub subject: String,
    /// The task the workload acts under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The `jti` of the Mayfly access token the workload proved itself with, if it did:
    /// a revocation of that token cuts the request too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// When the decision was made (Unix seconds): a revocation of the subject or task at or after it cuts the request.
    pub decided_at: i64,
    /// When the workload's identity ends (its task's end, or its evidence's): the request is cut then.
    pub expires_at: i64,
    /// Headers to set on the upstream request (none for a tunnel).
    pub headers: Vec<InjectedHeader>,
}

/// An upstream as a proxy needs to know it: where it is, never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProxyUpstreamInfo {
    /// Its name (`http://<proxy>/<name>/…` in reverse mode, `Mayfly::Upstream::"<name>"` in policy).
    pub name: String,
    /// Its base URL (scheme, host, port, optional path prefix).
    pub url: String,
    /// Hosts whose requests go to it through the forward proxy (those configured, or else its URL's host; `*.` matches one or more labels).
    pub hosts: Vec<String>,
    /// How the credential is injected: `header`, `basic`, `oauth_client_credentials` or `mayfly_token`.
    pub inject: String,
    /// Headers the proxy removes from the workload's request before injecting.
    pub strip_headers: Vec<String>,
    /// PEM CA certificates the upstream's TLS certificate is checked against (empty: the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Body bytes (both ways) one caller may move to it per minute through one proxy; 0: no limit.
    #[serde(default)]
    pub bytes_per_minute: u64,
    /// Largest request body forwarded, in bytes.
    pub max_request_bytes: u64,
    /// Largest response body passed back, in bytes.
    pub max_response_bytes: u64,
}

/// What `GET /v1/proxy/upstreams` answers: the upstreams and how the proxy treats other hosts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProxyUpstreamsResponse {
    /// The configured upstreams.
    pub upstreams: Vec<ProxyUpstreamInfo>,
    /// `CONNECT` to a host no upstream names: tunnelled untouched (`true`) or refused (`false`, the default).
    pub tunnel_unmatched: bool,
    /// Addresses a tunnel may reach although they are internal (loopback, link-local, private), as CIDRs.
    pub tunnel_internal_allowed: Vec<String>,
}
