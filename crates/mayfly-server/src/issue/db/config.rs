//! Databases Mayfly creates short-lived users on, and their roles.

use serde::Deserialize;
use std::time::Duration;

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
