//! Dynamic database credentials: a user created at the moment of use, dropped at
//! expiry or revocation with its sessions. One module per database kind.

pub mod config;
pub mod mysql;
pub mod postgres;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::issue::db::config::DatabaseRoleConfig;
use crate::issue::db::config::{DatabaseConfig, DatabaseKind};
use crate::keys::Kek;

/// How long one database operation may take before it counts as failed.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a database operation failed. Messages never contain a password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached.
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    /// The database refused a statement.
    #[error("the database refused: {0}")]
    Refused(String),
    /// Configuration is unusable (bad URL, missing variable).
    #[error("{0}")]
    Config(String),
}

/// A user to create.
#[derive(Clone, Copy)]
pub struct NewUser<'a> {
    /// Username.
    pub name: &'a str,
    /// Password. Secret.
    pub password: &'a str,
    /// Expiry, RFC 3339 (PostgreSQL `VALID UNTIL`).
    pub expiration: &'a str,
    /// The role's settings.
    pub role: &'a DatabaseRoleConfig,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for NewUser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("name", &self.name)
            .field("expiration", &self.expiration)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What each kind of database does.
#[async_trait]
pub trait DbDriver: Send + Sync + 'static {
    /// Longest username the database accepts.
    fn max_username_len(&self) -> usize;
    /// Creates the user with the role's statements. On error nothing may be left: the
    /// caller drops the user afterwards anyway.
    async fn create(&self, user: &NewUser<'_>) -> Result<(), DbError>;
    /// Ends the user's sessions and drops it. A user that does not exist is success.
    async fn drop_user(&self, username: &str) -> Result<(), DbError>;
    /// Moves the user's expiry, where the database has one.
    async fn renew(&self, username: &str, expiration: &str) -> Result<(), DbError>;
    /// Users whose name starts with `prefix`.
    async fn users_with_prefix(&self, prefix: &str) -> Result<Vec<String>, DbError>;
}

/// One configured database and its driver.
pub struct Database {
    /// Its configuration.
    pub config: DatabaseConfig,
    /// Its driver.
    pub driver: Arc<dyn DbDriver>,
    /// Host and port for clients.
    pub host: String,
    /// Port for clients.
    pub port: Option<u16>,
    /// Database name for clients, where there is one.
    pub database: Option<String>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("name", &self.config.name).field("kind", &self.config.kind).finish()
    }
}

impl Database {
    /// A role by name.
    pub fn role(&self, name: &str) -> Option<&DatabaseRoleConfig> {
        self.config.roles.iter().find(|r| r.name == name)
    }

    /// A new username: the prefix, the role (shortened), and a random part, within the
    /// database's limit. Lowercase letters, digits and '_' only, so it needs no quoting.
    pub fn new_username(&self, role: &str) -> String {
        let random = crate::ids::random_hex(6);
        let role: String =
            role.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        let room = self.driver.max_username_len().saturating_sub(self.config.username_prefix.len() + 1 + random.len());
        let role: String = role.chars().take(room.min(16)).collect();
        format!("{}{role}_{random}", self.config.username_prefix)
    }
}

/// Whether a username has the shape of the ones Mayfly makes (`[a-z0-9_]`, see
/// `new_username`). Others that merely share the prefix are not Mayfly's to drop, and
/// their names cannot be trusted inside a statement.
pub fn is_own_username(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A high-entropy password (32 random bytes, base64url: no quoting needed anywhere).
pub fn new_password() -> String {
    crate::ids::random_b64(32)
}

/// Fills `{{name}}`, `{{password}}` and `{{expiration}}` in a statement.
pub fn render(template: &str, user: &NewUser<'_>) -> String {
    template
        .replace("{{name}}", user.name)
        .replace("{{password}}", user.password)
        .replace("{{expiration}}", user.expiration)
}

/// Classifies a SQL driver error: transport problems are an unreachable database
/// (retried), everything else a refusal. A password the database echoed is hidden.
pub fn sql_error(e: sqlx::Error, secret: &str) -> DbError {
    match e {
        sqlx::Error::Database(d) => DbError::Refused(scrub(d.message(), secret)),
        e @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed) => DbError::Unreachable(scrub(&e.to_string(), secret)),
        other => DbError::Refused(scrub(&other.to_string(), secret)),
    }
}

/// Marks a statement as safe to send unparameterised: role statements come from the
/// operator's configuration, and the only values filled in are Mayfly's own usernames
/// (`[a-z0-9_]`), base64url passwords and RFC 3339 times, none of which can close a quote.
pub fn audited(statement: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(statement)
}

/// Hides a password that a database echoed in an error message.
pub fn scrub(message: &str, secret: &str) -> String {
    if secret.is_empty() { message.to_owned() } else { message.replace(secret, "[redacted]") }
}

/// Seals an admin URL under the key-encryption key (base64, for `url_sealed`).
pub fn seal_url(kek: &Kek, url: &str) -> Result<String, crate::keys::KeyError> {
    crate::keys::sealed::DATABASE_ADMIN_URL.seal(kek, url)
}

/// Every configured database, by name.
#[derive(Debug, Default)]
pub struct Databases {
    by_name: HashMap<String, Arc<Database>>,
}

impl Databases {
    /// Builds drivers from configuration (connections are opened on first use); a sealed
    /// admin URL is opened with the key-encryption key.
    pub fn from_config(configs: &[DatabaseConfig], kek: &Kek) -> Result<Self, DbError> {
        let mut by_name = HashMap::new();
        for cfg in configs {
            let url = cfg
                .admin_url
                .open(kek, &crate::keys::sealed::DATABASE_ADMIN_URL)
                .map_err(|e| DbError::Config(format!("databases {:?}: {e}", cfg.name)))?;
            let parsed = reqwest::Url::parse(&url)
                .map_err(|e| DbError::Config(format!("databases {:?}: the URL does not parse: {e}", cfg.name)))?;
            let driver: Arc<dyn DbDriver> = match cfg.kind {
                DatabaseKind::Postgres => Arc::new(postgres::Postgres::new(&url, cfg.scram_iterations)?),
                DatabaseKind::Mysql => Arc::new(mysql::MySql::new(&url)?),
                DatabaseKind::Redis => Arc::new(redis::Redis::new(&url)?),
            };
            let database = parsed.path().trim_start_matches('/');
            let (host, port) = match &cfg.client_host {
                Some(h) => match h.rsplit_once(':') {
                    Some((host, port)) => (host.to_owned(), port.parse().ok()),
                    None => (h.clone(), parsed.port()),
                },
                None => (parsed.host_str().unwrap_or("localhost").to_owned(), parsed.port()),
            };
            let db = Database {
                config: cfg.clone(),
                driver,
                host,
                port,
                database: (!database.is_empty() && cfg.kind != DatabaseKind::Redis).then(|| database.to_owned()),
            };
            by_name.insert(cfg.name.clone(), Arc::new(db));
        }
        Ok(Self { by_name })
    }

    /// A database by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Database>> {
        self.by_name.get(name)
    }

    /// All of them.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Database>> {
        self.by_name.values()
    }
}

/// Runs `f` with the operation timeout; a timeout is an unreachable database.
pub async fn timed<T>(f: impl std::future::Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    tokio::time::timeout(OPERATION_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(DbError::Unreachable(format!("no answer within {OPERATION_TIMEOUT:?}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_user_debug_hides_the_password() {
        let role: DatabaseRoleConfig = serde_json::from_value(serde_json::json!({"name": "reader"})).expect("role");
        let user = NewUser { name: "mf_reader_1", password: "s3cret-password", expiration: "2030-01-01", role: &role };
        let shown = format!("{user:?}");
        assert!(!shown.contains("s3cret-password"), "{shown}");
        assert!(shown.contains("mf_reader_1"), "{shown}");
    }
}
