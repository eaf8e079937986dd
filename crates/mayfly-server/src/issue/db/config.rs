//! Databases Mayfly creates short-lived users on, and their roles.

use serde::Deserialize;
use std::time::Duration;

/// A database Mayfly issues dynamic credentials for.
#[derive(Clone, Deserialize)]
#[serde(try_from = "RawDatabaseConfig")]
pub struct DatabaseConfig {
    /// Name in `POST /v1/credentials/{name}/{role}` (letters, digits, '-', '_').
    pub name: String,
    /// What kind of server it is.
    pub kind: DatabaseKind,
    /// Where the admin connection URL comes from.
    pub admin_url: AdminUrl,
    /// Host and port clients should connect to, when not the admin URL's.
    pub client_host: Option<String>,
    /// Prefix of every user Mayfly creates here; the sweep drops unleased users with it.
    pub username_prefix: String,
    /// PostgreSQL: the SCRAM-SHA-256 iteration count of the verifier Mayfly computes and
    /// sends in place of the password (`{{password}}`), so the server never hashes it; 0
    /// sends the password itself (the server hashes it with its own count).
    pub scram_iterations: u32,
    /// Roles: what a user gets and for how long.
    pub roles: Vec<DatabaseRoleConfig>,
}

/// The kind of database server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
    /// Redis (ACL users).
    Redis,
}

impl DatabaseKind {
    /// The name used in config, policy (`context.kind`), metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgres",
            DatabaseKind::Mysql => "mysql",
            DatabaseKind::Redis => "redis",
        }
    }
}

impl std::fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the admin connection URL comes from: exactly one source per database.
pub type AdminUrl = crate::keys::SecretSource;

/// A `[[databases]]` table as written; [`DatabaseConfig`] is what it means.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabaseConfig {
    name: String,
    /// `postgres`, `mysql` (MySQL and MariaDB) or `redis`.
    kind: DatabaseKind,
    /// Environment variable holding the admin connection URL.
    #[serde(default)]
    url_env: Option<String>,
    /// The admin connection URL itself (it holds a password: prefer `url_sealed` or `url_env`).
    #[serde(default)]
    url: Option<String>,
    /// The admin connection URL sealed under the key-encryption key, as printed by
    /// `mayfly databases seal-url` (base64): encrypted at rest like the signing keys.
    #[serde(default)]
    url_sealed: Option<String>,
    #[serde(default)]
    client_host: Option<String>,
    #[serde(default = "default_user_prefix")]
    username_prefix: String,
    /// 0 sends the password itself (the server hashes it with its own count). A password
    /// of 256 random bits gains nothing from key stretching; clients pay the count at
    /// every login. Raise it to 4096 for a client that insists on RFC 7677's minimum.
    #[serde(default = "default_scram_iterations")]
    scram_iterations: u32,
    roles: Vec<DatabaseRoleConfig>,
}

impl TryFrom<RawDatabaseConfig> for DatabaseConfig {
    type Error = String;

    fn try_from(raw: RawDatabaseConfig) -> Result<Self, String> {
        let choices = crate::keys::sealed::DATABASE_ADMIN_URL.choices();
        let exactly_one = || format!("databases {:?}: set exactly one of {choices}", raw.name);
        let admin_url = AdminUrl::one_of(raw.url_sealed, raw.url_env, raw.url)
            .map_err(|()| exactly_one())?
            .ok_or_else(exactly_one)?;
        Ok(Self {
            name: raw.name,
            kind: raw.kind,
            admin_url,
            client_host: raw.client_host,
            username_prefix: raw.username_prefix,
            scram_iterations: raw.scram_iterations,
            roles: raw.roles,
        })
    }
}

/// A role on a database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseRoleConfig {
    /// Name in the URL.
    pub name: String,
    /// Lifetime when the request names none (default 15m).
    #[serde(default = "crate::clock::secs::<900>", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime, renewals included (default 1h).
    #[serde(default = "crate::clock::secs::<3600>", with = "humantime_serde")]
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

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("admin_url", &self.admin_url)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<DatabaseConfig, String> {
        let text = format!("name = \"pg\"\nkind = \"postgres\"\n{extra}\n[[roles]]\nname = \"r\"\n");
        toml::from_str(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_admin_url_comes_from_exactly_one_source_and_never_prints() {
        let cfg = parse("url = \"postgres://admin:hunter2@db/app\"").unwrap();
        assert!(matches!(cfg.admin_url, AdminUrl::Plain(_)));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2") && shown.contains("[redacted]"), "{shown}");
        assert!(matches!(parse("url_env = \"PG_URL\"").unwrap().admin_url, AdminUrl::Env(v) if v == "PG_URL"));
        let sealed = parse("url_sealed = \"c2VhbGVk\"").unwrap();
        assert!(!format!("{sealed:?}").contains("c2VhbGVk"));
        for two in ["url = \"postgres://x\"\nurl_env = \"E\"", ""] {
            let err = parse(two).unwrap_err();
            assert!(err.contains("set exactly one of url_sealed, url_env and url"), "{err}");
        }
    }

    #[test]
    fn the_kind_is_one_of_the_supported_servers() {
        let text = "name = \"x\"\nkind = \"oracle\"\nurl_env = \"E\"\nroles = []\n";
        let err = toml::from_str::<DatabaseConfig>(text).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("unknown variant `oracle`, expected one of `postgres`, `mysql`, `redis`"), "{err}");
        assert_eq!(DatabaseKind::Mysql.to_string(), "mysql");
    }
}
