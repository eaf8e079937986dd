//! The broker's configuration: token and task lifetimes, audiences, signals, the Workload API.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Who may push Security Event Tokens to `POST /v1/signals`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// SET transmitters (RFC 8935 push), each verified against its own keys.
    #[serde(default)]
    pub senders: Vec<SignalSenderConfig>,
    /// How long a signalled context (a move, a changed attribute) is laid over the
    /// workload's later requests (default 1h: longer than its platform tokens live).
    #[serde(default = "crate::clock::secs::<3600>", with = "humantime_serde")]
    pub context_ttl: Duration,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self { senders: Vec::new(), context_ttl: crate::clock::secs::<3600>() }
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
    #[serde(default = "crate::clock::secs::<3600>", with = "humantime_serde")]
    pub x509_svid_ttl: Duration,
    /// JWT-SVID lifetime unless an entry says otherwise (default 5m).
    #[serde(default = "crate::clock::secs::<300>", with = "humantime_serde")]
    pub jwt_svid_ttl: Duration,
    /// Longest SVID lifetime an entry may ask for (default 24h, at most 7d). Revocations are
    /// kept at least this long, so a revoked SVID never becomes valid again before it expires.
    #[serde(default = "crate::clock::secs::<86400>", with = "humantime_serde")]
    pub max_svid_ttl: Duration,
    /// Lifetime of the SVID CA certificate (default 7d); CA and JWT-SVID key rotate at half of it.
    #[serde(default = "crate::clock::secs::<604800>", with = "humantime_serde")]
    pub ca_ttl: Duration,
    /// Executables larger than this are not hashed, so no `unix:sha256` selector (default 512 MiB).
    #[serde(default = "half_gib")]
    pub max_exe_bytes: u64,
    /// Registration entries defined here (read-only at run time; more through the admin API).
    #[serde(default)]
    pub entries: Vec<crate::attest::config::EntryConfig>,
}

impl Default for WorkloadApiConfig {
    fn default() -> Self {
        Self {
            socket: None,
            x509_svid_ttl: crate::clock::secs::<3600>(),
            jwt_svid_ttl: crate::clock::secs::<300>(),
            max_svid_ttl: crate::clock::secs::<86400>(),
            ca_ttl: crate::clock::secs::<604800>(),
            max_exe_bytes: half_gib(),
            entries: Vec::new(),
        }
    }
}

fn half_gib() -> u64 {
    512 * 1024 * 1024
}

/// Task settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Lifetime when the request names none (default 15m).
    #[serde(default = "crate::clock::secs::<900>", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime a task may ask for (default 8h); longer requests are refused.
    #[serde(default = "crate::clock::secs::<28800>", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Deepest nesting of sub-tasks (default 4; 1 allows no sub-tasks).
    #[serde(default = "four")]
    pub max_depth: u32,
    /// How long a task may wait for approval before it is denied (default 15m).
    #[serde(default = "crate::clock::secs::<900>", with = "humantime_serde")]
    pub approval_timeout: Duration,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            default_ttl: crate::clock::secs::<900>(),
            max_ttl: crate::clock::secs::<28800>(),
            max_depth: 4,
            approval_timeout: crate::clock::secs::<900>(),
        }
    }
}

fn four() -> u32 {
    4
}

/// Token lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// Lifetime when the request names none (default 5m).
    #[serde(default = "crate::clock::secs::<300>", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Upper bound on any token's lifetime (default 1h).
    #[serde(default = "crate::clock::secs::<3600>", with = "humantime_serde")]
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
        Self {
            default_ttl: crate::clock::secs::<300>(),
            max_ttl: crate::clock::secs::<3600>(),
            bound_context: default_bound_context(),
        }
    }
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
