//! The server's TOML configuration. `examples/mayfly.toml` documents every field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The TOML did not parse or has unknown fields.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The trust domain every issued SPIFFE ID belongs to, e.g. `prod.example`.
    pub trust_domain: String,
    /// Where generated files live (admin token, dev files), and the SQLite ledger by default.
    pub data_dir: PathBuf,
    /// Where state lives: `sqlite` (the default: `mayfly.db` in `data_dir`) or a
    /// `postgres://user:password@host/db` URL that several replicas share.
    #[serde(default)]
    pub storage: Option<StorageUrl>,
    /// An environment variable holding the storage URL instead (keeps a password out of the file).
    #[serde(default)]
    pub storage_env: Option<String>,
    /// Connection settings for PostgreSQL storage.
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// The issuer URL (`iss`) of Mayfly's tokens and the base of discovery documents.
    /// Default: `http(s)://<listen addr>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Listener settings.
    pub listen: ListenConfig,
    /// Key-encryption key and signing algorithm.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Token lifetimes.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Per-audience overrides of lifetimes and the scopes that may be asked for.
    #[serde(default)]
    pub audiences: Vec<AudienceConfig>,
    /// Where Cedar policies come from.
    pub policy: PolicyConfig,
    /// The ledger's durability settings.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// One-time join tokens.
    #[serde(default)]
    pub join_tokens: JoinTokensConfig,
    /// Attestors.
    #[serde(default)]
    pub attest: AttestConfig,
    /// Task lifetimes, nesting and approval.
    #[serde(default)]
    pub tasks: TasksConfig,
    /// DPoP proofs at the token endpoint (RFC 9449).
    #[serde(default)]
    pub dpop: DpopConfig,
    /// Databases Mayfly creates short-lived users on (PostgreSQL, MySQL/MariaDB, Redis).
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    /// The SPIFFE Workload API on a unix socket (off unless `socket` is set).
    #[serde(default)]
    pub workload_api: WorkloadApiConfig,
    /// Context-change signals (`POST /v1/signals`).
    #[serde(default)]
    pub signals: SignalsConfig,
    /// The revocation feed.
    #[serde(default)]
    pub revocations: RevocationsConfig,
    /// The audit trail's signed checkpoints.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// The revocation feed's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationsConfig {
    /// Most revocation event streams (`/v1/revocations/stream`) open at once (default 1024);
    /// past it a new subscriber gets 503 and polls the feed instead.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Most streams one verifier (one `sub`) may hold open (default 8).
    #[serde(default = "default_streams_per_subject")]
    pub max_streams_per_subject: usize,
    /// How far past its commit a revocation reaches (subject, prefix, audience, all):
    /// what a replica that has not applied it yet issues meanwhile is still covered.
    /// Default 0 on SQLite (one node), 5s on a shared store.
    #[serde(default, with = "humantime_serde")]
    pub propagation_margin: Option<Duration>,
}

fn default_streams_per_subject() -> usize {
    8
}

fn default_max_streams() -> usize {
    1024
}

impl Default for RevocationsConfig {
    fn default() -> Self {
        Self {
            max_streams: default_max_streams(),
            max_streams_per_subject: default_streams_per_subject(),
            propagation_margin: None,
        }
    }
}

/// Signed checkpoints of the audit chain's head (see `checkpoints`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A checkpoint once this many events were appended since the last one (default 1000).
    #[serde(default = "default_checkpoint_events")]
    pub checkpoint_every_events: u64,
    /// A checkpoint once this long has passed since the last one, if the chain moved (default 5m).
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

fn default_checkpoint_events() -> u64 {
    1000
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { checkpoint_every_events: default_checkpoint_events(), checkpoint_interval: five_minutes() }
    }
}

/// Who may push Security Event Tokens to `POST /v1/signals`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// SET transmitters (RFC 8935 push), each verified against its own keys.
    #[serde(default)]
    pub senders: Vec<SignalSenderConfig>,
    /// How long a signalled context (a move, a changed attribute) is laid over the
    /// workload's later requests (default 1h: longer than its platform tokens live).
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub context_ttl: Duration,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self { senders: Vec::new(), context_ttl: one_hour() }
    }
}

/// One SET transmitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSenderConfig {
    /// Name in audit records.
    pub name: String,
    /// The `iss` of its SETs.
    pub issuer: String,
    /// The `aud` its SETs must carry (this receiver).
    pub audience: String,
    /// Its public keys, a JWK Set file.
    pub jwks_file: PathBuf,
    /// Signature algorithms accepted from it (default RS256, ES256, EdDSA; never none or HMAC).
    #[serde(default = "default_set_algorithms")]
    pub algorithms: Vec<String>,
    /// The SPIFFE IDs it may signal about: this ID and everything below it (default: the
    /// whole trust domain). Signals about anything else, tasks included, are refused.
    #[serde(default)]
    pub subject_prefix: Option<String>,
}

fn default_set_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

/// The SPIFFE Workload API: where it listens, SVID lifetimes, registration entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadApiConfig {
    /// Unix socket path; workloads find it through `SPIFFE_ENDPOINT_SOCKET=unix://<path>`.
    /// Unset: the Workload API is off.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// X.509-SVID lifetime unless an entry says otherwise (default 1h); rotated at half-life.
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub x509_svid_ttl: Duration,
    /// JWT-SVID lifetime unless an entry says otherwise (default 5m).
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub jwt_svid_ttl: Duration,
    /// Longest SVID lifetime an entry may ask for (default 24h, at most 7d). Revocations are
    /// kept at least this long, so a revoked SVID never becomes valid again before it expires.
    #[serde(default = "one_day", with = "humantime_serde")]
    pub max_svid_ttl: Duration,
    /// Lifetime of the SVID CA certificate (default 7d); CA and JWT-SVID key rotate at half of it.
    #[serde(default = "seven_days", with = "humantime_serde")]
    pub ca_ttl: Duration,
    /// Executables larger than this are not hashed, so no `unix:sha256` selector (default 512 MiB).
    #[serde(default = "half_gib")]
    pub max_exe_bytes: u64,
    /// Registration entries defined here (read-only at run time; more through the admin API).
    #[serde(default)]
    pub entries: Vec<EntryConfig>,
}

impl Default for WorkloadApiConfig {
    fn default() -> Self {
        Self {
            socket: None,
            x509_svid_ttl: one_hour(),
            jwt_svid_ttl: five_minutes(),
            max_svid_ttl: one_day(),
            ca_ttl: seven_days(),
            max_exe_bytes: half_gib(),
            entries: Vec::new(),
        }
    }
}

/// A registration entry in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// A stable id (default: derived from the entry's contents).
    #[serde(default)]
    pub id: Option<String>,
    /// The SPIFFE ID granted.
    pub spiffe_id: String,
    /// Selectors that must all match, e.g. `["unix:uid:1000", "unix:path:/usr/bin/api"]`.
    pub selectors: Vec<String>,
    /// Guidance for workloads given several SVIDs.
    #[serde(default)]
    pub hint: Option<String>,
    /// DNS names added to the X.509-SVID.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// X.509-SVID lifetime for this entry.
    #[serde(default, with = "humantime_serde")]
    pub x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime for this entry.
    #[serde(default, with = "humantime_serde")]
    pub jwt_svid_ttl: Option<Duration>,
    /// Extra Cedar principal tags.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl EntryConfig {
    /// Its id (if named) and its definition in the API's terms.
    pub fn to_spec(&self) -> (Option<String>, mayfly_proto::EntrySpec) {
        let spec = mayfly_proto::EntrySpec {
            spiffe_id: self.spiffe_id.clone(),
            selectors: self.selectors.clone(),
            hint: self.hint.clone(),
            dns_names: self.dns_names.clone(),
            x509_svid_ttl: self.x509_svid_ttl.map(|d| d.as_secs()),
            jwt_svid_ttl: self.jwt_svid_ttl.map(|d| d.as_secs()),
            attributes: self.attributes.clone(),
        };
        (self.id.clone(), spec)
    }
}

fn seven_days() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn half_gib() -> u64 {
    512 * 1024 * 1024
}

/// A database Mayfly issues dynamic credentials for.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Name in `POST /v1/credentials/{name}/{role}` (letters, digits, '-', '_').
    pub name: String,
    /// `postgres`, `mysql` (MySQL and MariaDB) or `redis`.
    pub kind: String,
    /// Environment variable holding the admin connection URL (preferred).
    #[serde(default)]
    pub url_env: Option<String>,
    /// The admin connection URL itself (it holds a password: prefer `url_sealed` or `url_env`).
    #[serde(default)]
    pub url: Option<String>,
    /// The admin connection URL sealed under the key-encryption key, as printed by
    /// `mayfly databases seal-url` (base64): encrypted at rest like the signing keys.
    #[serde(default)]
    pub url_sealed: Option<String>,
    /// Host and port clients should connect to, when not the admin URL's.
    #[serde(default)]
    pub client_host: Option<String>,
    /// Prefix of every user Mayfly creates here; the sweep drops unleased users with it.
    #[serde(default = "default_user_prefix")]
    pub username_prefix: String,
    /// PostgreSQL: the SCRAM-SHA-256 iteration count of the verifier Mayfly computes and
    /// sends in place of the password (`{{password}}`), so the server never hashes it;
    /// 0 sends the password itself (the server hashes it with its own count). A password
    /// of 256 random bits gains nothing from key stretching; clients pay the count at
    /// every login. Raise it to 4096 for a client that insists on RFC 7677's minimum.
    #[serde(default = "default_scram_iterations")]
    pub scram_iterations: u32,
    /// Roles: what a user gets and for how long.
    pub roles: Vec<DatabaseRoleConfig>,
}

/// A role on a database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseRoleConfig {
    /// Name in the URL.
    pub name: String,
    /// Lifetime when the request names none (default 15m).
    #[serde(default = "fifteen_minutes", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime, renewals included (default 1h).
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Statements that create the user, replacing the default; `{{name}}`, `{{password}}`
    /// and `{{expiration}}` are filled in.
    #[serde(default)]
    pub creation: Option<Vec<String>>,
    /// Statements run after creation, e.g. `GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}"`.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Redis: the ACL rules of the user (default `~* +@read`).
    #[serde(default)]
    pub acl: Option<String>,
}

// The admin URL holds a password: it never appears in debug output.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url_env", &self.url_env)
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .field("url_sealed", &self.url_sealed.is_some())
            .field("username_prefix", &self.username_prefix)
            .field("scram_iterations", &self.scram_iterations)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

fn default_user_prefix() -> String {
    "mf_".into()
}

fn default_scram_iterations() -> u32 {
    16
}

/// DPoP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConfig {
    /// How old a proof may be (default 60s); each proof is accepted once within that window.
    #[serde(default = "sixty_seconds", with = "humantime_serde")]
    pub max_age: Duration,
    /// Require a server nonce in proofs (RFC 9449 §8); clients learn it from `DPoP-Nonce`.
    #[serde(default)]
    pub require_nonce: bool,
    /// How often the server nonce changes (default 5m; the previous one stays valid).
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub nonce_period: Duration,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self { max_age: sixty_seconds(), require_nonce: false, nonce_period: five_minutes() }
    }
}

fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}

/// Task settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Lifetime when the request names none (default 15m).
    #[serde(default = "fifteen_minutes", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime a task may ask for (default 8h); longer requests are refused.
    #[serde(default = "eight_hours", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Deepest nesting of sub-tasks (default 4; 1 allows no sub-tasks).
    #[serde(default = "four")]
    pub max_depth: u32,
    /// How long a task may wait for approval before it is denied (default 15m).
    #[serde(default = "fifteen_minutes", with = "humantime_serde")]
    pub approval_timeout: Duration,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            default_ttl: fifteen_minutes(),
            max_ttl: eight_hours(),
            max_depth: 4,
            approval_timeout: fifteen_minutes(),
        }
    }
}

fn fifteen_minutes() -> Duration {
    Duration::from_secs(900)
}
fn eight_hours() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn four() -> u32 {
    4
}

/// Listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address to listen on, e.g. `127.0.0.1:8443`.
    pub addr: SocketAddr,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients may present certificates signed by it.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: reject clients without a certificate.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Serve plain HTTP on a non-loopback address. Tokens then cross the network in clear text.
    #[serde(default)]
    pub dangerously_allow_plaintext: bool,
    /// A connection must complete its TLS handshake, and then send a whole request head, within
    /// this time each (default 10s); an HTTP/1 keep-alive connection waits this long for its next head.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no byte moving either way for this long is
    /// closed (default 60s). A streaming response (the revocation stream) is cut only after
    /// nothing moved for this or 60s, whichever is longer.
    #[serde(default = "sixty_seconds", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest time from a complete request head to the response head, reading the body
    /// included (default 30s); the client then gets 408. Streaming bodies are not cut by it.
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most connections served at once (default 4096); further ones wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections one client address holds at once (default 256): one client cannot
    /// take every slot of `max_connections`. Past it, its new connections are closed at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and header fields) in bytes, HTTP/1 and HTTP/2
    /// (default 32768: room for a 16 KiB bearer token or DPoP proof; 8192 to 1048576).
    /// Larger heads get 431 (HTTP/2 may reset the connection instead).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one request, HTTP/1 and HTTP/2 (default 100). More get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
}

impl ListenConfig {
    /// Plain HTTP on `addr` with every limit at its default.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            require_client_cert: false,
            dangerously_allow_plaintext: false,
            header_read_timeout: ten_seconds(),
            idle_timeout: sixty_seconds(),
            request_timeout: thirty_seconds(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
        }
    }
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections_per_ip() -> usize {
    256
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_headers() -> usize {
    100
}

/// Signing-key settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// File holding the 32-byte key-encryption key (64 hex characters or raw bytes).
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Environment variable holding the key-encryption key as 64 hex characters.
    #[serde(default)]
    pub kek_env: Option<String>,
    /// `EdDSA` (Ed25519, default) or `ES256`.
    #[serde(default = "default_alg")]
    pub algorithm: String,
}

fn default_alg() -> String {
    "EdDSA".into()
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { kek_file: None, kek_env: None, algorithm: default_alg() }
    }
}

/// Token lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// Lifetime when the request names none (default 5m).
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Upper bound on any token's lifetime (default 1h).
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Attested attributes copied into a token's `ctx` claim, when the caller has them,
    /// so a resource server can refuse it from elsewhere (default pod_uid, node_name, run_id).
    #[serde(default = "default_bound_context")]
    pub bound_context: Vec<String>,
}

fn default_bound_context() -> Vec<String> {
    ["pod_uid", "node_name", "run_id"].map(String::from).to_vec()
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self { default_ttl: five_minutes(), max_ttl: one_hour(), bound_context: default_bound_context() }
    }
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

/// Per-audience settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    /// The audience name or resource URI, as clients send it.
    pub name: String,
    /// Lifetime when the request names none.
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    /// Upper bound for this audience (never above `tokens.max_ttl`).
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    /// When set, only these scopes may be requested for this audience.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// When set, tokens for this audience are limited-use: at most this many uses
    /// (a request may ask for fewer, never more).
    #[serde(default)]
    pub max_uses: Option<u32>,
}

/// Where Cedar policies come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.cedar` files, validated against Mayfly's schema at load.
    pub dir: PathBuf,
    /// How often the directory is checked for changes (default 2s). SIGHUP reloads at once.
    #[serde(default = "two_seconds", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn two_seconds() -> Duration {
    Duration::from_secs(2)
}

/// The `storage` setting as written: it may hold a password, so it never prints.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StorageUrl(pub String);

impl std::fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::ledger::postgres::redact_url(&self.0))
    }
}

/// Where state lives, resolved.
#[derive(Clone, PartialEq, Eq)]
pub enum Storage {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas (the URL may hold a password).
    Postgres(String),
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Sqlite(p) => write!(f, "sqlite {}", p.display()),
            Storage::Postgres(url) => write!(f, "{}", crate::ledger::postgres::redact_url(url)),
        }
    }
}

/// Connection settings for PostgreSQL storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Most connections one replica opens (default 16).
    #[serde(default = "sixteen")]
    pub max_connections: u32,
    /// How long a request waits for a connection before it fails with 503 (default 5s).
    #[serde(default = "five_seconds", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long start-up keeps retrying an unreachable database (default 0s: until it answers).
    #[serde(default, with = "humantime_serde")]
    pub start_timeout: Duration,
}

fn sixteen() -> u32 {
    16
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self { max_connections: sixteen(), acquire_timeout: five_seconds(), start_timeout: Duration::ZERO }
    }
}

/// The ledger's durability settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// SQLite `synchronous` mode: `full` (default: a record survives power loss before
    /// the token is delivered) or `normal` (survives a process crash, not power loss).
    #[serde(default = "default_sync")]
    pub sync: String,
    /// Most records written in one group commit (default 1024).
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Refusals anyone can provoke (bad evidence, forged signals) are audited as one
    /// summary per source and reason every this often (default 10s), not one event each.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub refusal_summary_interval: Duration,
}

fn default_sync() -> String {
    "full".into()
}
fn default_batch() -> usize {
    1024
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { sync: default_sync(), batch_max: default_batch(), refusal_summary_interval: ten_seconds() }
    }
}

/// One-time join tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokensConfig {
    /// Lifetime when none is asked for (default 10m).
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime an admin may ask for (default 24h).
    #[serde(default = "one_day", with = "humantime_serde")]
    pub max_ttl: Duration,
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}
fn one_day() -> Duration {
    Duration::from_secs(86400)
}

impl Default for JoinTokensConfig {
    fn default() -> Self {
        Self { default_ttl: ten_minutes(), max_ttl: one_day() }
    }
}

/// Attestors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestConfig {
    /// OIDC/JWT issuers whose tokens Mayfly accepts as identity evidence.
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// Evidence older than this (a platform token's `iat`, a join token's creation) is
    /// refused, and subject revocations are kept at least this long: a stolen token
    /// cannot outlive the revocation that refuses it. Default 24h.
    #[serde(default = "one_day", with = "humantime_serde")]
    pub max_evidence_age: Duration,
}

impl Default for AttestConfig {
    fn default() -> Self {
        Self { oidc: Vec::new(), max_evidence_age: one_day() }
    }
}

/// Presets fill in claim mapping (and, for GitHub, the issuer and JWKS URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OidcPreset {
    /// Any issuer: every claim becomes an attribute.
    Generic,
    /// Kubernetes projected service-account tokens.
    Kubernetes,
    /// GitHub Actions OIDC tokens.
    Github,
}

/// One OIDC/JWT issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// A short name, used in audit records and the `attestor` attribute.
    pub name: String,
    /// Claim mapping preset (default `generic`).
    #[serde(default = "default_preset")]
    pub preset: OidcPreset,
    /// The exact `iss` value. Optional for the `github` preset.
    #[serde(default)]
    pub issuer: Option<String>,
    /// JWKS URL; fetched, cached and refreshed on an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// JWKS file; read at start.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// `aud` values accepted (at least one).
    pub audiences: Vec<String>,
    /// Allowed algorithms (default RS256, ES256, EdDSA). `none` and HMAC are refused.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Template for the SPIFFE ID path, with `{attribute}` placeholders.
    #[serde(default)]
    pub spiffe_id_template: Option<String>,
    /// A claim value that does not fit in one path segment (it has `/`, say) is `refuse`d
    /// (the default; the `github` preset `escape`s, since refs hold `/`) or `escape`d.
    #[serde(default)]
    pub claim_segments: Option<crate::attest::template::ClaimSegments>,
    /// Clock-skew allowance for `exp`/`nbf` (default 30s).
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub leeway: Duration,
    /// How long a fetched JWKS is used before it is fetched again (default 10m).
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    pub jwks_cache_ttl: Duration,
    /// Least time between two fetches caused by unknown `kid`s (default 30s).
    #[serde(default = "thirty_seconds", with = "humantime_serde")]
    pub jwks_refresh_min_interval: Duration,
}

/// Whether keys may be fetched from this JWKS URL: `https://`, or `http://` to a loopback
/// host (127.0.0.0/8, ::1, localhost: a sidecar or a test issuer). Keys fetched in clear
/// over a network could be swapped on the way, and whoever swaps them mints identities.
pub fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    // The URL parser has normalised the host: IPv4 in dotted form, IPv6 in brackets, names in lower case.
    let loopback = parsed.host_str().is_some_and(|h| {
        h == "localhost"
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("use https:// (http:// only to a loopback address: 127.0.0.0/8, ::1, localhost)".into()),
    }
}

fn default_preset() -> OidcPreset {
    OidcPreset::Generic
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    /// Reads and validates a TOML file; relative paths are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_owned(), cause })?;
        let mut cfg: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.policy.dir);
        for p in
            [&mut self.listen.tls_cert, &mut self.listen.tls_key, &mut self.listen.client_ca, &mut self.keys.kek_file]
                .into_iter()
                .flatten()
        {
            fix(p);
        }
        for o in &mut self.attest.oidc {
            if let Some(p) = &mut o.jwks_file {
                fix(p);
            }
        }
        for s in &mut self.signals.senders {
            fix(&mut s.jwks_file);
        }
    }

    /// Checks values that serde cannot: ranges, combinations, names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Err(e) = crate::spiffe::validate_trust_domain(&self.trust_domain) {
            return bad(format!("trust_domain {:?}: {e}", self.trust_domain));
        }
        if self.tokens.default_ttl > self.tokens.max_ttl || self.tokens.max_ttl.is_zero() {
            return bad("tokens.default_ttl must be at most tokens.max_ttl, and max_ttl above zero".into());
        }
        if self.tasks.default_ttl > self.tasks.max_ttl || self.tasks.max_ttl.is_zero() {
            return bad("tasks.default_ttl must be at most tasks.max_ttl, and max_ttl above zero".into());
        }
        if !(1..=16).contains(&self.tasks.max_depth) {
            return bad("tasks.max_depth must be between 1 and 16".into());
        }
        if self.tasks.approval_timeout.is_zero() {
            return bad("tasks.approval_timeout must be above zero".into());
        }
        for db in &self.databases {
            let name_ok = |n: &str| {
                !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !name_ok(&db.name) || db.roles.iter().any(|r| !name_ok(&r.name)) {
                return bad(format!("databases {:?}: names use letters, digits, '-' and '_'", db.name));
            }
            if !matches!(db.kind.as_str(), "postgres" | "mysql" | "redis") {
                return bad(format!("databases {:?}: kind {:?}: use postgres, mysql or redis", db.name, db.kind));
            }
            if [db.url.is_some(), db.url_env.is_some(), db.url_sealed.is_some()].iter().filter(|s| **s).count() != 1 {
                return bad(format!("databases {:?}: set exactly one of url_sealed, url_env and url", db.name));
            }
            let prefix_ok = !db.username_prefix.is_empty()
                && db.username_prefix.len() <= 8
                && db.username_prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !prefix_ok {
                return bad(format!("databases {:?}: username_prefix is 1-8 of a-z, 0-9, '_'", db.name));
            }
            if db.roles.iter().any(|r| r.default_ttl > r.max_ttl || r.max_ttl.is_zero()) {
                return bad(format!("databases {:?}: a role's default_ttl must be at most its max_ttl", db.name));
            }
        }
        let w = &self.workload_api;
        let max_svid = Duration::from_secs(crate::attest::entries::MAX_SVID_TTL_SECS);
        if w.max_svid_ttl.is_zero() || w.max_svid_ttl > max_svid {
            return bad("workload_api.max_svid_ttl is between 1s and 7d".into());
        }
        if w.x509_svid_ttl.is_zero() || w.jwt_svid_ttl.is_zero() || w.x509_svid_ttl.max(w.jwt_svid_ttl) > w.max_svid_ttl
        {
            return bad("workload_api.x509_svid_ttl and jwt_svid_ttl are between 1s and max_svid_ttl".into());
        }
        if w.ca_ttl < w.max_svid_ttl * 2 {
            return bad("workload_api.ca_ttl must be at least twice max_svid_ttl (the CA rotates at half-life)".into());
        }
        if w.socket.as_ref().is_some_and(|p| !p.is_absolute()) {
            return bad("workload_api.socket must be an absolute path".into());
        }
        if !matches!(self.keys.algorithm.as_str(), "EdDSA" | "ES256") {
            return bad(format!("keys.algorithm {:?}: use EdDSA or ES256", self.keys.algorithm));
        }
        if !matches!(self.ledger.sync.as_str(), "full" | "normal") {
            return bad(format!("ledger.sync {:?}: use full or normal", self.ledger.sync));
        }
        if self.storage.is_some() {
            // Also refuses storage together with storage_env.
            self.storage()?;
        }
        if self.postgres.max_connections < 2 {
            return bad("postgres.max_connections must be at least 2 (one listens for other replicas)".into());
        }
        if self.audit.checkpoint_every_events == 0 {
            return bad("audit.checkpoint_every_events must be at least 1".into());
        }
        if self.audit.checkpoint_interval < Duration::from_millis(100) {
            return bad("audit.checkpoint_interval must be at least 100ms".into());
        }
        if self.ledger.batch_max == 0 {
            return bad("ledger.batch_max must be at least 1".into());
        }
        let l = &self.listen;
        let hour = Duration::from_secs(3600);
        for (name, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("idle_timeout", l.idle_timeout),
            ("request_timeout", l.request_timeout),
        ] {
            if d < Duration::from_millis(100) || d > hour {
                return bad(format!("listen.{name} is between 100ms and 1h"));
            }
        }
        if !(1..=1 << 20).contains(&l.max_connections) {
            return bad("listen.max_connections is between 1 and 1048576".into());
        }
        if l.max_connections_per_ip == 0 {
            return bad("listen.max_connections_per_ip is at least 1".into());
        }
        // hyper refuses (panics on) an HTTP/1 buffer below 8 KiB.
        if !(8 * 1024..=1 << 20).contains(&l.max_header_bytes) {
            return bad("listen.max_header_bytes is between 8192 and 1048576".into());
        }
        if !(8..=1000).contains(&l.max_headers) {
            return bad("listen.max_headers is between 8 and 1000".into());
        }
        if self.listen.tls_cert.is_some() != self.listen.tls_key.is_some() {
            return bad("listen.tls_cert and listen.tls_key go together".into());
        }
        if self.listen.client_ca.is_some() && self.listen.tls_cert.is_none() {
            return bad("listen.client_ca needs TLS (listen.tls_cert and listen.tls_key)".into());
        }
        if self.listen.tls_cert.is_none()
            && !self.listen.addr.ip().is_loopback()
            && !self.listen.dangerously_allow_plaintext
        {
            return bad(format!(
                "listen.addr {} is not a loopback address and TLS is not configured: set listen.tls_cert and \
                 listen.tls_key, or set listen.dangerously_allow_plaintext = true if something in front terminates TLS",
                self.listen.addr
            ));
        }
        for a in &self.audiences {
            if let (Some(d), Some(m)) = (a.default_ttl, a.max_ttl)
                && d > m
            {
                return bad(format!("audience {:?}: default_ttl is above max_ttl", a.name));
            }
        }
        let mut names = std::collections::HashSet::new();
        for o in &self.attest.oidc {
            if !names.insert(&o.name) {
                return bad(format!("attest.oidc name {:?} is used twice", o.name));
            }
            if o.audiences.is_empty() {
                return bad(format!("attest.oidc {:?}: list at least one accepted audience", o.name));
            }
            if o.jwks_url.is_some() && o.jwks_file.is_some() {
                return bad(format!("attest.oidc {:?}: set jwks_url or jwks_file, not both", o.name));
            }
            if let Some(url) = &o.jwks_url
                && let Err(e) = check_jwks_url(url)
            {
                return bad(format!("attest.oidc {:?}: jwks_url {url:?}: {e}", o.name));
            }
        }
        Ok(())
    }

    /// The issuer URL of Mayfly's tokens.
    pub fn issuer_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.listen.tls_cert.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", self.listen.addr)
            }
        }
    }

    /// The longest lifetime any token can have: keys stay published at least this long after retirement.
    pub fn longest_token_ttl(&self) -> Duration {
        // A task token lives as long as its task; SVIDs as long as the Workload API allows.
        let svids = if self.workload_api.socket.is_some() { self.workload_api.max_svid_ttl } else { Duration::ZERO };
        self.tokens.max_ttl.max(self.tasks.max_ttl).max(svids)
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("mayfly.db")
    }

    /// Where state lives: `storage` (or the variable `storage_env` names), SQLite by default.
    pub fn storage(&self) -> Result<Storage, ConfigError> {
        let value = match (&self.storage, &self.storage_env) {
            (Some(_), Some(_)) => return Err(ConfigError::Invalid("set storage or storage_env, not both".into())),
            (Some(v), None) => v.0.clone(),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| ConfigError::Invalid(format!("storage_env: the environment variable {var} is not set")))?,
            (None, None) => "sqlite".into(),
        };
        let value = value.trim();
        if value == "sqlite" {
            Ok(Storage::Sqlite(self.database_path()))
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(Storage::Postgres(value.to_owned()))
        } else {
            // Never echo the value: it may be a URL with a password in it.
            Err(ConfigError::Invalid("storage: use \"sqlite\" or a postgres:// URL".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_jwks_url;

    #[test]
    fn jwks_urls_are_https_unless_on_loopback() {
        for ok in [
            "https://issuer.example/keys",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/jwks",
            "http://[::1]:80/jwks",
            "http://LOCALHOST/jwks",
        ] {
            assert!(check_jwks_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://issuer.example/keys",
            "http://10.0.0.1/jwks",
            "http://localhost.evil.example/jwks",
            "http://[::ffff:10.0.0.1]/jwks",
            "ftp://127.0.0.1/jwks",
            "file:///etc/jwks.json",
            "issuer.example/keys",
        ] {
            assert!(check_jwks_url(bad).is_err(), "{bad}");
        }
    }
}
