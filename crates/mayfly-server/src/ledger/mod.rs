//! The ledger: everything Mayfly must remember — signing keys, join tokens,
//! issued credentials and the hash-chained audit trail.
//!
//! Domain code talks to the [`Store`] trait only; [`sqlite::SqliteStore`] is the
//! embedded default. Issuance records go through the [`Ledger`] writer, which
//! batches concurrent writes into one transaction (group commit).

pub mod audit;
pub mod config;
pub mod guards;
pub mod postgres;
pub mod revocations;
mod sql;
pub mod sqlite;
mod writer;

pub use audit::{AuditEvent, ChainedAuditEvent};
pub use guards::Guard;
pub use revocations::{Revocation, RevocationIndex, RevocationKind, Revocations, RevokeError};
pub use writer::{Batch, Ledger};

use async_trait::async_trait;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database answered with an error or could not be reached.
    #[error("storage error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("storage migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The ledger writer has stopped (the server is shutting down).
    #[error("the ledger writer is not running")]
    WriterGone,
    /// A write was attempted that would break an invariant.
    #[error("storage conflict: {0}")]
    Conflict(String),
    /// A guarded write found that what it depended on had changed ([`Guard`]); it wrote nothing.
    #[error("{0}")]
    Changed(String),
}

/// A signing key as stored: its private part sealed under the KEK.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSigningKey {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// JOSE algorithm.
    pub alg: String,
    /// PKCS#8, sealed with AES-256-GCM under the KEK.
    pub sealed_private_key: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// When it stopped signing.
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS.
    pub published_until: Option<i64>,
    /// The signing profile it belongs to (`default` for the main key).
    pub profile: String,
    /// When it starts signing, if later than `created_at` (pre-published keys).
    pub activates_at: Option<i64>,
}

/// One generation of SVID authorities as stored: the X.509 CA and the JWT-SVID key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSvidAuthority {
    /// Generation id.
    pub id: String,
    /// The CA certificate, DER.
    pub ca_cert: Vec<u8>,
    /// The CA's PKCS#8 key, sealed under the KEK.
    pub sealed_ca_key: Vec<u8>,
    /// The JWT-SVID signing key (PKCS#8), sealed under the KEK.
    pub sealed_jwt_key: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// When the CA certificate expires.
    pub not_after: i64,
    /// When it stopped signing.
    pub retired_at: Option<i64>,
    /// When it leaves the bundles.
    pub published_until: Option<i64>,
}

/// A registration entry made through the admin API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEntry {
    /// Entry id.
    pub id: String,
    /// JSON of the `mayfly_proto::EntrySpec`.
    pub spec: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// An admin token as stored: only its hash, never the token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredAdminToken {
    /// Non-secret id, for listing and revocation.
    pub id: String,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// Unique name the operator gave it.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of its last use, recorded at most about once a minute.
    pub last_used_at: Option<i64>,
}

/// The outcome of removing an admin token.
#[derive(Debug, Clone)]
pub enum AdminTokenRemoval {
    /// Removed; it authenticates nothing from now on.
    Removed(StoredAdminToken),
    /// No token has that id.
    NotFound,
    /// It is the only token left: removing it would lock every operator out.
    LastOne,
}

/// What signals said about a workload's context, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSubjectContext {
    /// The SPIFFE ID.
    pub subject: String,
    /// JSON object of attribute → value.
    pub attributes: String,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds; ignored after this.
    pub expires_at: i64,
}

impl StoredSubjectContext {
    /// The stored attributes, parsed; an error means the row is not the JSON object it should be.
    pub fn attribute_map(&self) -> Result<std::collections::BTreeMap<String, String>, serde_json::Error> {
        serde_json::from_str(&self.attributes)
    }
}

/// A signed checkpoint of the audit chain's head, as stored. The JWS is the checkpoint;
/// `seq`, `hash` and `kid` repeat what it says, for lookups, and are never trusted alone.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredCheckpoint {
    /// The sequence number of the event it anchors.
    pub seq: i64,
    /// That event's hash.
    pub hash: String,
    /// When it was signed (Unix seconds; its `iat`).
    pub created_at: i64,
    /// The signing key's id.
    pub kid: String,
    /// The compact JWS (`typ: mayfly-audit-checkpoint+jwt`).
    pub jws: String,
}

/// A one-time join token as stored (hash only).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JoinTokenRow {
    /// Non-secret id.
    pub id: String,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// SPIFFE ID path its redeemer gets.
    pub spiffe_path: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The result of redeeming a join token.
#[derive(Debug, Clone)]
pub enum RedeemOutcome {
    /// Redeemed now; it cannot be redeemed again.
    Redeemed(JoinTokenRow),
    /// No such token.
    Unknown,
    /// Redeemed before.
    AlreadyUsed,
    /// Past its expiry.
    Expired,
}

/// One issued credential. Never holds the credential itself.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialRecord {
    /// Token id (`jti`) or lease id.
    pub jti: String,
    /// `jwt` for access tokens.
    pub kind: String,
    /// SPIFFE ID of the holder.
    pub subject: String,
    /// Audience.
    pub audience: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The task it was issued under, if any.
    pub task_id: Option<String>,
    /// OAuth client id.
    pub client_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// The signing key.
    pub key_id: String,
    /// Confirmation (`cnf`) as JSON, when bound.
    pub binding: Option<String>,
    /// Keyed HMAC of the credential.
    pub fingerprint: String,
    /// Limited use: how many verifications it allows (counted at introspection).
    pub max_uses: Option<i64>,
    /// The attested context it was issued under ([`IssuanceContext`] as JSON), when a
    /// workload asked: what a context-change signal re-decides it with.
    pub context: Option<String>,
}

/// What a workload proved when it got a credential, kept with the credential (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuanceContext {
    /// Which attestor proved it.
    pub attestor: String,
    /// The attested attributes policy saw.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The caller's address.
    pub source_ip: String,
}

impl IssuanceContext {
    /// An issuance context as stored; `None` if it does not parse.
    pub fn parse(stored: &str) -> Option<Self> {
        serde_json::from_str(stored).ok()
    }

    /// An issuance context as stored (JSON), serialized from borrows: this shape, with no
    /// copy of the attributes (it is written on every issuance).
    pub fn json(
        attestor: &str,
        attributes: &std::collections::BTreeMap<String, String>,
        source_ip: std::net::IpAddr,
    ) -> Option<String> {
        #[derive(serde::Serialize)]
        struct Borrowed<'a> {
            attestor: &'a str,
            attributes: &'a std::collections::BTreeMap<String, String>,
            source_ip: std::net::IpAddr,
        }
        serde_json::to_string(&Borrowed { attestor, attributes, source_ip }).ok()
    }
}

/// Where a task stands. `expired` is derived from the time, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for an approver; nothing can be issued under it.
    Pending,
    /// Credentials can be issued under it.
    Active,
    /// An approver refused it, or its approval deadline passed.
    Denied,
    /// Ended explicitly or with its parent; everything issued under it is revoked.
    Ended,
    /// Its lifetime is over (derived from the time; the upkeep sweep then stores it).
    Expired,
}

impl TaskState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Active => "active",
            TaskState::Denied => "denied",
            TaskState::Ended => "ended",
            TaskState::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TaskState::Pending,
            "active" => TaskState::Active,
            "denied" => TaskState::Denied,
            "ended" => TaskState::Ended,
            "expired" => TaskState::Expired,
            _ => return None,
        })
    }
}

impl TryFrom<String> for TaskState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// A task: a runtime identity for one job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TaskRecord {
    /// Task id; its SPIFFE ID is `spiffe://<td>/task/<id>`.
    pub id: String,
    /// The parent task, for a sub-task.
    pub parent_id: Option<String>,
    /// Ancestor ids then its own, joined by `/`.
    pub path: String,
    /// Nesting depth: 1 without a parent.
    pub depth: i64,
    /// SPIFFE ID of the workload (or parent task) that created it.
    pub creator: String,
    /// The subject it acts for (RFC 8693 delegation), if any.
    pub on_behalf_of: Option<String>,
    /// The `act` claim its credentials carry, as JSON.
    pub actor: String,
    /// The creator's attested attributes, as a JSON object (policy sees them as tags).
    pub attributes: String,
    /// Why it exists, as the creator said.
    pub purpose: String,
    /// Space-separated scopes: the most anything under it can get.
    pub scope: String,
    /// Audiences it may get credentials for, as a JSON array; `None` means any that policy allows.
    pub audiences: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; nothing issued under it outlives this.
    pub expires_at: i64,
    /// The stored state; the state now is [`TaskRecord::state_at`].
    #[sqlx(try_from = "String")]
    pub state: TaskState,
    /// A pending task not approved by then is denied.
    pub approval_deadline: Option<i64>,
    /// Who approved or denied it.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<i64>,
    /// When it ended.
    pub ended_at: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

// The JSON columns stay `String` here, as stored: each caller decides what a malformed
// row means (an error, or a fallback), so these accessors parse and the caller handles it.
impl TaskRecord {
    /// The audiences it is limited to, parsed; `None` means any that policy allows.
    pub fn audience_list(&self) -> Option<Vec<String>> {
        self.audiences.as_deref().map(|a| serde_json::from_str(a).unwrap_or_default())
    }

    /// The stored `act` claim, parsed.
    pub fn actor_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.actor)
    }

    /// The creator's attested attributes, parsed.
    pub fn attribute_map(&self) -> Result<std::collections::BTreeMap<String, String>, serde_json::Error> {
        serde_json::from_str(&self.attributes)
    }

    /// The state at `now`, with lifetime and approval deadline applied.
    pub fn state_at(&self, now: i64) -> TaskState {
        match self.state {
            TaskState::Pending if self.approval_deadline.is_some_and(|d| d <= now) => TaskState::Denied,
            TaskState::Pending | TaskState::Active if self.expires_at <= now => TaskState::Expired,
            s => s,
        }
    }
}

/// Where a database credential stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DbLeaseState {
    /// Recorded; the user is being created.
    Creating,
    /// The user exists and may be used.
    Active,
    /// The user is being dropped (retried until the database confirms).
    Revoking,
    /// Dropped because it was revoked.
    Revoked,
    /// Dropped because its time was up.
    Expired,
    /// Never handed out: creation failed and was undone.
    Failed,
}

impl DbLeaseState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DbLeaseState::Creating => "creating",
            DbLeaseState::Active => "active",
            DbLeaseState::Revoking => "revoking",
            DbLeaseState::Revoked => "revoked",
            DbLeaseState::Expired => "expired",
            DbLeaseState::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => DbLeaseState::Creating,
            "active" => DbLeaseState::Active,
            "revoking" => DbLeaseState::Revoking,
            "revoked" => DbLeaseState::Revoked,
            "expired" => DbLeaseState::Expired,
            "failed" => DbLeaseState::Failed,
            _ => return None,
        })
    }

    /// Whether the database may still hold the user.
    pub fn is_open(self) -> bool {
        matches!(self, DbLeaseState::Creating | DbLeaseState::Active | DbLeaseState::Revoking)
    }
}

impl TryFrom<String> for DbLeaseState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("unknown lease state {s:?}"))
    }
}

/// A dynamic database credential: the user, never its password.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DbLease {
    /// Lease id.
    pub id: String,
    /// The configured database (issuer) name.
    pub issuer: String,
    /// The role on it.
    pub role: String,
    /// The database user.
    pub username: String,
    /// SPIFFE ID (or task subject) it was issued to.
    pub subject: String,
    /// The task it was issued under.
    pub task_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; renewals move it, never past `max_expires_at`.
    pub expires_at: i64,
    /// Unix seconds.
    pub max_expires_at: i64,
    /// Where it stands.
    #[sqlx(try_from = "String")]
    pub state: DbLeaseState,
    /// Failed revocation attempts so far.
    pub attempts: i64,
    /// When to try revoking again.
    pub next_attempt_at: Option<i64>,
    /// The last database error (never a secret).
    pub last_error: Option<String>,
    /// When the user was dropped.
    pub ended_at: Option<i64>,
    /// Why it ends: `expired`, or what revoked it.
    pub end_reason: Option<String>,
    /// The attested context it was issued under ([`IssuanceContext`] as JSON).
    pub context: Option<String>,
}

impl DbLease {
    /// The audience a database lease has for revocation selectors: `db:<database>/<role>`.
    pub fn audience(&self) -> String {
        format!("db:{}/{}", self.issuer, self.role)
    }
}

/// Which tasks to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only tasks created by this SPIFFE ID.
    pub creator: Option<String>,
    /// Only tasks with this stored state.
    pub state: Option<TaskState>,
    /// Only tasks that have not expired by this time.
    pub live_at: Option<i64>,
    /// Keyset pagination: only `id > after`.
    pub after: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// Which credentials to list.
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    /// Exact SPIFFE ID.
    pub subject: Option<String>,
    /// SPIFFE ID prefix: the ID itself or anything below it on a path-segment boundary.
    pub subject_prefix: Option<String>,
    /// Task id.
    pub task_id: Option<String>,
    /// Kind (`jwt`, …).
    pub kind: Option<String>,
    /// Audience.
    pub audience: Option<String>,
    /// Only credentials with `expires_at > live_at`.
    pub live_at: Option<i64>,
    /// Only credentials with `expires_at <= expired_at`.
    pub expired_at: Option<i64>,
    /// Keyset pagination: only `jti > after`.
    pub after: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// Which audit events to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only events about this subject.
    pub subject: Option<String>,
    /// Only events of this kind (exact, or a prefix ending in `.` such as `policy.`).
    pub kind: Option<String>,
    /// Only events at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only events before this time (ms).
    pub until_ms: Option<i64>,
    /// Only events with `seq > after`.
    pub after: i64,
    /// At most this many.
    pub limit: i64,
}

/// A revocation row as stored (the wire type lives in `mayfly-verify`, which knows no SQL).
#[derive(Debug, sqlx::FromRow)]
struct RevocationRow {
    seq: i64,
    kind: String,
    value: String,
    issued_before: i64,
    revoked_at: i64,
    expires_at: i64,
    reason: Option<String>,
    lift: bool,
}

impl TryFrom<RevocationRow> for Revocation {
    type Error = LedgerError;
    fn try_from(r: RevocationRow) -> Result<Self, LedgerError> {
        Ok(Revocation {
            cursor: r.seq,
            kind: RevocationKind::parse(&r.kind)
                .ok_or_else(|| LedgerError::Conflict(format!("unknown revocation kind {:?} in storage", r.kind)))?,
            value: r.value,
            issued_before: r.issued_before,
            revoked_at: r.revoked_at,
            expires_at: r.expires_at,
            reason: r.reason,
            lift: r.lift,
        })
    }
}

/// Converts stored revocation rows, failing on the first unknown kind.
fn revocations_from_rows(rows: Vec<RevocationRow>) -> Result<Vec<Revocation>, LedgerError> {
    rows.into_iter().map(Revocation::try_from).collect()
}

/// Something another replica changed in a shared store, announced so that every replica
/// picks it up at once instead of at its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChange {
    /// New revocations were committed.
    Revocations,
    /// Signing keys were added or rotated.
    SigningKeys,
    /// SVID authorities were added or rotated.
    SvidAuthorities,
    /// Registration entries were created or deleted.
    Entries,
    /// A signal changed a workload's context.
    SubjectContexts,
    /// Notifications may have been missed (the listening connection was lost): refresh everything.
    All,
}

impl StoreChange {
    /// The notification payload.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreChange::Revocations => "revocations",
            StoreChange::SigningKeys => "signing_keys",
            StoreChange::SvidAuthorities => "svid_authorities",
            StoreChange::Entries => "entries",
            StoreChange::SubjectContexts => "subject_contexts",
            StoreChange::All => "all",
        }
    }

    /// Parses a notification payload; unknown payloads mean "refresh everything".
    pub fn parse(s: &str) -> Self {
        match s {
            "revocations" => StoreChange::Revocations,
            "signing_keys" => StoreChange::SigningKeys,
            "svid_authorities" => StoreChange::SvidAuthorities,
            "entries" => StoreChange::Entries,
            "subject_contexts" => StoreChange::SubjectContexts,
            _ => StoreChange::All,
        }
    }

    /// Whether a replica watching for `self` should act on `change`.
    pub fn covered_by(self, change: StoreChange) -> bool {
        change == self || change == StoreChange::All
    }
}

/// One transaction's worth of rows, as the writer hands it to the store.
#[derive(Debug, Default)]
pub struct StoredBatch {
    /// Issued credentials.
    pub credentials: Vec<CredentialRecord>,
    /// Task rows, inserted or replaced.
    pub tasks: Vec<TaskRecord>,
    /// Database lease rows, inserted or replaced.
    pub db_leases: Vec<DbLease>,
    /// Revocations with their cursors.
    pub revocations: Vec<Revocation>,
    /// Chained audit events.
    pub events: Vec<ChainedAuditEvent>,
    /// What must still hold for any of it to be written.
    pub guards: Vec<Guard>,
}

impl StoredBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
            && self.tasks.is_empty()
            && self.db_leases.is_empty()
            && self.revocations.is_empty()
            && self.events.is_empty()
    }
}

/// Storage for everything durable. Implementations must make `append` atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The backend's name (`sqlite`, `postgres`), for health and metrics.
    fn backend(&self) -> &'static str;
    /// Whether other Mayfly processes may write to the same state (several replicas).
    fn is_shared(&self) -> bool {
        false
    }
    /// Changes other replicas made, as they commit; `None` when no one else writes.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<StoreChange>> {
        None
    }
    /// Whether this process runs background work (expiry, reaping, sweeps, rotation) now.
    /// Called every few seconds; a shared store hands it to one replica at a time.
    async fn try_lead(&self) -> Result<bool, LedgerError> {
        Ok(true)
    }
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), LedgerError>;
    /// A value from the key/value meta table.
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, LedgerError>;
    /// Sets a meta value unless it exists; returns whether it was written.
    async fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, LedgerError>;
    /// Removes a meta value; false when there was none.
    async fn meta_delete(&self, key: &str) -> Result<bool, LedgerError>;
    /// Workloads' signalled contexts that have not expired at `now`.
    async fn subject_contexts(&self, now: i64) -> Result<Vec<StoredSubjectContext>, LedgerError>;
    /// Stores (replaces) a workload's signalled context; drops expired ones.
    async fn put_subject_context(&self, row: &StoredSubjectContext) -> Result<(), LedgerError>;

    /// All stored signing keys, oldest first.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, LedgerError>;
    /// Stores a new signing key.
    async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<(), LedgerError>;
    /// Atomically stores `new` and retires `old_kid`.
    async fn rotate_signing_key(
        &self,
        new: &StoredSigningKey,
        old_kid: &str,
        retired_at: i64,
        published_until: i64,
    ) -> Result<(), LedgerError>;

    /// Every stored generation of SVID authorities, oldest first.
    async fn svid_authorities(&self) -> Result<Vec<StoredSvidAuthority>, LedgerError>;
    /// Stores a new generation; with `retire`, atomically retires that active generation
    /// (id, retired_at, published_until).
    async fn insert_svid_authority(
        &self,
        new: &StoredSvidAuthority,
        retire: Option<(&str, i64, i64)>,
    ) -> Result<(), LedgerError>;
    /// Registration entries made through the admin API.
    async fn workload_entries(&self) -> Result<Vec<StoredEntry>, LedgerError>;
    /// Stores a registration entry.
    async fn insert_workload_entry(&self, entry: &StoredEntry) -> Result<(), LedgerError>;
    /// Deletes a registration entry; false when there was none.
    async fn delete_workload_entry(&self, id: &str) -> Result<bool, LedgerError>;
    /// Stores an admin token (its hash); a name or id already taken is a `Conflict`.
    async fn insert_admin_token(&self, row: &StoredAdminToken) -> Result<(), LedgerError>;
    /// The admin token with this hash, if it exists (one indexed read).
    async fn admin_token_by_hash(&self, token_hash: &str) -> Result<Option<StoredAdminToken>, LedgerError>;
    /// Every admin token, oldest first.
    async fn admin_tokens(&self) -> Result<Vec<StoredAdminToken>, LedgerError>;
    /// How many admin tokens exist.
    async fn admin_token_count(&self) -> Result<i64, LedgerError>;
    /// Records that an admin token was used at `now`.
    async fn touch_admin_token(&self, id: &str, now: i64) -> Result<(), LedgerError>;
    /// Removes an admin token by id, unless it is the last one; atomic against
    /// concurrent removals on every replica, so at least one token always remains.
    async fn remove_admin_token(&self, id: &str) -> Result<AdminTokenRemoval, LedgerError>;

    /// Stores a new join token.
    async fn insert_join_token(&self, row: &JoinTokenRow) -> Result<(), LedgerError>;
    /// Marks a join token used, exactly once.
    async fn redeem_join_token(&self, token_hash: &str, now: i64) -> Result<RedeemOutcome, LedgerError>;

    /// The last audit event's sequence number and hash.
    async fn audit_head(&self) -> Result<Option<(i64, String)>, LedgerError>;
    /// Writes credentials, task and lease rows (inserted or replaced), revocations and
    /// chained audit events in one transaction. A shared store may move the events to
    /// the chain's real head and renumber the revocations' cursors (another replica
    /// appended meanwhile); the batch then holds them as stored.
    async fn append(&self, batch: &mut StoredBatch) -> Result<(), LedgerError>;
    /// A database lease by id.
    async fn db_lease(&self, id: &str) -> Result<Option<DbLease>, LedgerError>;
    /// Leases in the given states (all of them when empty), ordered by id, at most `limit` after `after`.
    async fn db_leases(
        &self,
        states: &[DbLeaseState],
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DbLease>, LedgerError>;
    /// A task by id.
    async fn task(&self, id: &str) -> Result<Option<TaskRecord>, LedgerError>;
    /// A task and every task below it (its path prefix), ordered by path.
    async fn task_subtree(&self, path: &str) -> Result<Vec<TaskRecord>, LedgerError>;
    /// Tasks matching a filter, ordered by id.
    async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, LedgerError>;
    /// Pending or active tasks whose lifetime or approval deadline is over at `now`, at most `limit`.
    async fn tasks_due(&self, now: i64, limit: i64) -> Result<Vec<TaskRecord>, LedgerError>;
    /// The highest revocation cursor ever assigned (0 if none), including entries already dropped.
    async fn revocation_head(&self) -> Result<i64, LedgerError>;
    /// Revocations with `cursor > after`, in order, at most `limit`.
    async fn revocations_after(&self, after: i64, limit: i64) -> Result<Vec<Revocation>, LedgerError>;
    /// Drops revocations whose `expires_at` is at or before `now`; returns how many.
    async fn drop_expired_revocations(&self, now: i64) -> Result<u64, LedgerError>;
    /// Ends the blocks stored for one selector at `lifted_at` (what they revoked stays
    /// revoked) and lets them go at `keep_until`, so that no block outlives its lift in
    /// storage. Done before the lift itself is recorded; returns how many rows changed.
    async fn lift_blocks(
        &self,
        kind: RevocationKind,
        value: &str,
        lifted_at: i64,
        keep_until: i64,
    ) -> Result<u64, LedgerError>;
    /// Credentials matching a filter, ordered by `jti`.
    async fn credentials(&self, filter: &CredentialFilter) -> Result<Vec<CredentialRecord>, LedgerError>;
    /// How many credentials of each kind expire in `(after, until]`.
    async fn count_expiring(&self, after: i64, until: i64) -> Result<Vec<(String, i64)>, LedgerError>;
    /// Per kind, the credentials unexpired at `now` (revoked or not): how many, and the
    /// sum of their remaining lifetimes in seconds. Aggregated by the database.
    async fn unexpired_totals(&self, now: i64) -> Result<Vec<(String, i64, i64)>, LedgerError>;
    /// Audit events matching a filter, in chain order.
    async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<ChainedAuditEvent>, LedgerError>;
    /// Audit events with `seq > after`, in order, at most `limit`.
    async fn audit_events_after(&self, after: i64, limit: i64) -> Result<Vec<ChainedAuditEvent>, LedgerError>;
    /// Stores a signed checkpoint of the audit chain; false when one for that `seq` exists.
    async fn insert_audit_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<bool, LedgerError>;
    /// Checkpoints with `seq > after`, in order, at most `limit`.
    async fn audit_checkpoints_after(&self, after: i64, limit: i64) -> Result<Vec<StoredCheckpoint>, LedgerError>;
    /// The `limit` checkpoints with the highest `seq`, highest first.
    async fn latest_audit_checkpoints(&self, limit: i64) -> Result<Vec<StoredCheckpoint>, LedgerError>;
    /// A credential record by `jti`.
    async fn credential(&self, jti: &str) -> Result<Option<CredentialRecord>, LedgerError>;
    /// Counts one use of a limited-use credential; false when its uses are spent (or it has no limit).
    async fn use_credential(&self, jti: &str) -> Result<bool, LedgerError>;
    /// Whether a limited-use credential has uses left, without spending one.
    async fn has_uses_left(&self, jti: &str) -> Result<bool, LedgerError>;
}

#[cfg(test)]
impl DbLease {
    /// A lease for unit tests.
    pub(crate) fn example() -> Self {
        DbLease {
            id: "lease-1".into(),
            issuer: "pg".into(),
            role: "reader".into(),
            username: "mf_reader_1".into(),
            subject: "spiffe://example.org/web".into(),
            task_id: None,
            created_at: 1,
            expires_at: 2,
            max_expires_at: 3,
            state: DbLeaseState::Active,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            ended_at: None,
            end_reason: None,
            context: None,
        }
    }
}
