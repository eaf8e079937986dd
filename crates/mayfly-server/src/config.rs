//! The server's TOML configuration. `examples/mayfly.toml` documents every field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

// Each section lives beside the module that uses it; this file composes them.
pub use crate::attest::config::{
    AttestConfig, EntryConfig, JoinTokensConfig, OidcIssuerConfig, OidcPreset, check_jwks_url,
};
pub use crate::authorize::config::PolicyConfig;
pub use crate::broker::config::{
    AudienceConfig, SignalSenderConfig, SignalsConfig, TasksConfig, TokensConfig, WorkloadApiConfig,
};
pub use crate::broker::proxy::config::ProxyConfig;
pub use crate::deliver::config::{DpopConfig, ListenConfig};
pub use crate::deliver::vault_api::config::VaultApiConfig;
pub use crate::issue::cloud::config::CloudConfig;
pub use crate::issue::db::config::{DatabaseConfig, DatabaseRoleConfig};
pub use crate::keys::config::KeysConfig;
pub use crate::ledger::config::{
    AuditConfig, LedgerConfig, PostgresConfig, RevocationsConfig, Storage, StorageUrl, SyncMode,
};

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
    /// Cloud profiles: AWS, Google Cloud and Azure accept Mayfly's tokens for them.
    #[serde(default)]
    pub clouds: Vec<CloudConfig>,
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
    /// The Vault-compatible HTTP API (off unless `listen` is set).
    #[serde(default)]
    pub vault_api: VaultApiConfig,
    /// Upstreams of the credential-injecting proxy (`mayfly proxy`).
    #[serde(default)]
    pub proxy: ProxyConfig,
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
        let kek_file = match &mut self.keys.kek {
            Some(crate::keys::KekSource::File(p)) => Some(p),
            _ => None,
        };
        for p in [&mut self.listen.tls_cert, &mut self.listen.tls_key, &mut self.listen.client_ca]
            .into_iter()
            .flatten()
            .chain(kek_file)
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
        for u in &mut self.proxy.upstreams {
            if let Some(p) = &mut u.ca_file {
                fix(p);
            }
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
        // Cloud profiles against the signing profiles and the issuer URL the clouds fetch.
        crate::issue::cloud::CloudProfiles::new(&self.clouds, &self.keys, self.public_url.as_deref())
            .map_err(ConfigError::Invalid)?;
        let elsewhere = crate::deliver::vault_api::config::ConfiguredElsewhere {
            oidc_attestors: self.attest.oidc.iter().map(|o| o.name.as_str()).collect(),
            database_roles: self
                .databases
                .iter()
                .flat_map(|d| d.roles.iter().map(move |r| (d.name.as_str(), r.name.as_str())))
                .collect(),
            task_max_ttl: self.tasks.max_ttl,
            tls: self.listen.tls_cert.is_some(),
            plaintext_allowed: self.listen.dangerously_allow_plaintext,
        };
        self.vault_api.validate(&elsewhere).map_err(ConfigError::Invalid)?;
        self.proxy.validate().map_err(ConfigError::Invalid)?;
        for db in &self.databases {
            let name_ok = |n: &str| {
                !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !name_ok(&db.name) || db.roles.iter().any(|r| !name_ok(&r.name)) {
                return bad(format!("databases {:?}: names use letters, digits, '-' and '_'", db.name));
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
    use super::{Config, check_jwks_url};

    /// The smallest configuration that validates.
    const BASE: &str = "trust_domain = \"td.example\"\ndata_dir = \"/tmp/mayfly-config-test\"\n\
        [listen]\naddr = \"127.0.0.1:8270\"\n[policy]\ndir = \"/tmp\"\n";

    /// The base with `extra` added: top-level keys before its tables, tables after.
    fn parse(extra: &str) -> Result<Config, String> {
        let text = if extra.starts_with('[') { format!("{BASE}{extra}") } else { format!("{extra}\n{BASE}") };
        let cfg: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate().map(|()| cfg).map_err(|e| e.to_string())
    }

    /// Every rule of `validate()` (and of the typed sections) refuses with a message that
    /// names the setting and what it should be.
    #[test]
    fn each_rule_refuses_with_a_message_that_says_what_to_do() {
        assert!(parse("").is_ok(), "the base configuration validates: {:?}", parse(""));
        let cases: &[(&str, &str)] = &[
            ("[tokens]\ndefault_ttl = \"2h\"\nmax_ttl = \"1h\"", "tokens.default_ttl must be at most tokens.max_ttl"),
            ("[tasks]\ndefault_ttl = \"9h\"", "tasks.default_ttl must be at most tasks.max_ttl"),
            ("[tasks]\nmax_depth = 0", "tasks.max_depth must be between 1 and 16"),
            ("[tasks]\nmax_depth = 17", "tasks.max_depth must be between 1 and 16"),
            ("[tasks]\napproval_timeout = \"0s\"", "tasks.approval_timeout must be above zero"),
            ("[workload_api]\nmax_svid_ttl = \"8d\"", "workload_api.max_svid_ttl is between 1s and 7d"),
            (
                "[workload_api]\nx509_svid_ttl = \"2d\"",
                "x509_svid_ttl and jwt_svid_ttl are between 1s and max_svid_ttl",
            ),
            ("[workload_api]\nca_ttl = \"1d\"", "workload_api.ca_ttl must be at least twice max_svid_ttl"),
            ("[workload_api]\nsocket = \"relative.sock\"", "workload_api.socket must be an absolute path"),
            ("[postgres]\nmax_connections = 1", "postgres.max_connections must be at least 2"),
            ("[audit]\ncheckpoint_every_events = 0", "audit.checkpoint_every_events must be at least 1"),
            ("[audit]\ncheckpoint_interval = \"10ms\"", "audit.checkpoint_interval must be at least 100ms"),
            ("[ledger]\nbatch_max = 0", "ledger.batch_max must be at least 1"),
            ("[ledger]\nsync = \"sometimes\"", "unknown variant `sometimes`, expected `full` or `normal`"),
            ("[keys]\nalgorithm = \"RS512\"", "keys.algorithm \"RS512\": use EdDSA, ES256 or RS256"),
            ("[keys]\nkek_file = \"k\"\nkek_env = \"K\"", "set one of kek_file and kek_env, not both"),
            ("storage = \"sqlite\"\nstorage_env = \"X\"", "set storage or storage_env, not both"),
            ("storage = \"mysql://x\"", "storage"),
            (
                "[[audiences]]\nname = \"a\"\ndefault_ttl = \"2h\"\nmax_ttl = \"1h\"",
                "audience \"a\": default_ttl is above max_ttl",
            ),
            (
                "[vault_api]\nlisten = \"127.0.0.1:0\"\n[[vault_api.auth]]\nmount = \"jwt\"\nmethod = \"jwt\"\n\
                 [[vault_api.auth.roles]]\nname = \"app\"\nattestor = \"nope\"",
                "no [[attest.oidc]] named \"nope\"",
            ),
            (
                "[vault_api]\nlisten = \"127.0.0.1:0\"\n[[vault_api.database_roles]]\nname = \"a\"\ndatabase = \"x\"\nrole = \"y\"",
                "no database \"x\" with role \"y\"",
            ),
            (
                "[vault_api]\nlisten = \"0.0.0.0:8200\"",
                "vault_api.listen 0.0.0.0:8200 is not loopback and there is no TLS",
            ),
            ("[vault_api]\nlisten = \"127.0.0.1:0\"\ndatabase_mount = \"sys\"", "vault_api.database_mount \"sys\""),
            (
                "[vault_api]\nlisten = \"127.0.0.1:0\"\n[[vault_api.pki_roles]]\nname = \"w\"\nallowed_domains = [\"*.x\"]",
                "allowed_domains of DNS names",
            ),
        ];
        for (extra, expected) in cases {
            let got = parse(extra).err().unwrap_or_default();
            assert!(got.contains(expected), "{extra:?}: expected {expected:?} in {got:?}");
        }
        // Rules on the listener and the issuers, which the base does not set.
        let listen =
            |line: &str| BASE.replace("addr = \"127.0.0.1:8270\"", &format!("addr = \"127.0.0.1:8270\"\n{line}"));
        let listener_cases: &[(&str, &str)] = &[
            ("header_read_timeout = \"10ms\"", "listen.header_read_timeout is between 100ms and 1h"),
            ("idle_timeout = \"2h\"", "listen.idle_timeout is between 100ms and 1h"),
            ("max_connections = 0", "listen.max_connections is between 1 and 1048576"),
            ("max_connections_per_ip = 0", "listen.max_connections_per_ip is at least 1"),
            ("max_header_bytes = 1024", "listen.max_header_bytes is between 8192 and 1048576"),
            ("max_headers = 2", "listen.max_headers is between 8 and 1000"),
            ("tls_cert = \"c.pem\"", "listen.tls_cert and listen.tls_key go together"),
            ("client_ca = \"ca.pem\"", "listen.client_ca needs TLS"),
        ];
        for (line, expected) in listener_cases {
            let got = toml::from_str::<Config>(&listen(line))
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()));
            let got = got.err().unwrap_or_default();
            assert!(got.contains(expected), "{line:?}: expected {expected:?} in {got:?}");
        }
        let public = BASE.replace("127.0.0.1:8270", "0.0.0.0:8270");
        let got = toml::from_str::<Config>(&public).unwrap().validate().unwrap_err().to_string();
        assert!(got.contains("not a loopback address and TLS is not configured"), "{got}");
        let bad_td = BASE.replace("td.example", "Bad Domain");
        assert!(
            toml::from_str::<Config>(&bad_td).unwrap().validate().unwrap_err().to_string().contains("trust_domain")
        );
        let oidc = |body: &str| format!("{BASE}[[attest.oidc]]\nname = \"i\"\nissuer = \"https://i\"\n{body}");
        let oidc_cases: &[(String, &str)] = &[
            (oidc("audiences = []\njwks_file = \"k\""), "list at least one accepted audience"),
            (
                oidc("audiences = [\"m\"]\njwks_file = \"k\"\njwks_url = \"https://i/k\""),
                "set jwks_url or jwks_file, not both",
            ),
            (oidc("audiences = [\"m\"]\njwks_url = \"http://i.example/k\""), "use https://"),
            (
                format!(
                    "{}\n[[attest.oidc]]\nname = \"i\"\nissuer = \"https://j\"\naudiences = [\"m\"]\njwks_file = \"k\"",
                    oidc("audiences = [\"m\"]\njwks_file = \"k\"")
                ),
                "attest.oidc name \"i\" is used twice",
            ),
        ];
        for (text, expected) in oidc_cases {
            let got = toml::from_str::<Config>(text).unwrap().validate().unwrap_err().to_string();
            assert!(got.contains(expected), "expected {expected:?} in {got:?}");
        }
    }

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
