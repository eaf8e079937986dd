//! The ledger's configuration: where state lives, its durability, revocations, audit checkpoints.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

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
    #[serde(default = "crate::clock::secs::<300>", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

fn default_checkpoint_events() -> u64 {
    1000
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { checkpoint_every_events: default_checkpoint_events(), checkpoint_interval: crate::clock::secs::<300>() }
    }
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
    #[serde(default = "crate::clock::secs::<5>", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// How long start-up keeps retrying an unreachable database (default 0s: until it answers).
    #[serde(default, with = "humantime_serde")]
    pub start_timeout: Duration,
}

fn sixteen() -> u32 {
    16
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self { max_connections: sixteen(), acquire_timeout: crate::clock::secs::<5>(), start_timeout: Duration::ZERO }
    }
}

/// The ledger's durability settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// SQLite `synchronous` mode: `full` (default: a record survives power loss before
    /// the token is delivered) or `normal` (survives a process crash, not power loss).
    #[serde(default)]
    pub sync: SyncMode,
    /// Most records written in one group commit (default 1024).
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Refusals anyone can provoke (bad evidence, forged signals) are audited as one
    /// summary per source and reason every this often (default 10s), not one event each.
    #[serde(default = "crate::clock::secs::<10>", with = "humantime_serde")]
    pub refusal_summary_interval: Duration,
}

/// How durable a SQLite group commit is before anything in it is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// It survives power loss.
    #[default]
    Full,
    /// It survives a process crash, not power loss.
    Normal,
}

fn default_batch() -> usize {
    1024
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { sync: SyncMode::Full, batch_max: default_batch(), refusal_summary_interval: crate::clock::secs::<10>() }
    }
}
