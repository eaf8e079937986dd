//! `[vault_api]`: the Vault-compatible listener, its login roles and the secrets it maps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// The Vault-compatible HTTP API (off unless `listen` is set).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultApiConfig {
    /// Where it listens, e.g. `127.0.0.1:8200` (Vault clients' `VAULT_ADDR`). It shares the
    /// main listener's TLS settings and limits.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Login methods, each at its mount: `auth/<mount>/login`.
    #[serde(default)]
    pub auth: Vec<VaultAuthMount>,
    /// The mount of the database secrets engine (`<mount>/creds/<role>`; default `database`).
    #[serde(default = "default_database_mount")]
    pub database_mount: String,
    /// Vault database roles, each a Mayfly database and role.
    #[serde(default)]
    pub database_roles: Vec<VaultDatabaseRole>,
    /// `identity/oidc/token/<name>`: roles that hand out a Mayfly access token for an audience.
    #[serde(default)]
    pub identity_roles: Vec<VaultIdentityRole>,
    /// The mount of the PKI secrets engine (`<mount>/issue/<role>`; default `pki`).
    #[serde(default = "default_pki_mount")]
    pub pki_mount: String,
    /// Certificate roles: X.509 certificates from Mayfly's CA.
    #[serde(default)]
    pub pki_roles: Vec<VaultPkiRole>,
}

fn default_pki_mount() -> String {
    "pki".to_owned()
}

/// A certificate role (`<pki mount>/issue/<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultPkiRole {
    /// The role's name (`Mayfly::CertificateRole::"<name>"` in Cedar).
    pub name: String,
    /// Domains the DNS names must be, or be under with `allow_subdomains`.
    pub allowed_domains: Vec<String>,
    /// Whether names below an allowed domain are allowed (default false).
    #[serde(default)]
    pub allow_subdomains: bool,
    /// Longest lifetime, and the default (default 1h, at most 7 days).
    #[serde(default = "crate::clock::secs::<3600>", with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl VaultPkiRole {
    /// The broker's view of the role.
    pub fn certificate_role(&self) -> crate::broker::certificates::CertificateRole {
        crate::broker::certificates::CertificateRole {
            name: self.name.clone(),
            allowed_domains: self
                .allowed_domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            allow_subdomains: self.allow_subdomains,
            max_ttl: self.max_ttl,
        }
    }
}

fn default_database_mount() -> String {
    "database".to_owned()
}

/// A login method at a mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultAuthMount {
    /// The mount path (`jwt`, `kubernetes`, `ci/github`, …).
    pub mount: String,
    /// `jwt` (Vault's JWT/OIDC method) or `kubernetes`: both take `role` and `jwt`, checked by
    /// Mayfly's OIDC attestors.
    pub method: VaultAuthMethod,
    /// The roles a login names.
    #[serde(default)]
    pub roles: Vec<VaultLoginRole>,
}

/// Vault's login methods that Mayfly answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuthMethod {
    /// `auth/<mount>/login` with `role` and `jwt`.
    Jwt,
    /// `auth/<mount>/login` with `role` and `jwt` (a service-account token).
    Kubernetes,
}

impl VaultAuthMethod {
    /// Vault's name of the method (`sys/auth` `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            VaultAuthMethod::Jwt => "jwt",
            VaultAuthMethod::Kubernetes => "kubernetes",
        }
    }
}

/// A login role: who may log in with it and what the token is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultLoginRole {
    /// The name a login's `role` gives.
    pub name: String,
    /// The attestor (an `[[attest.oidc]]` name) that must have verified the JWT: as a Vault
    /// mount trusts one issuer, a role trusts one attestor (required).
    pub attestor: String,
    /// Attested attributes that must hold exactly these values (Vault's `bound_claims`,
    /// `bound_service_account_names`, … expressed on Mayfly's attributes).
    #[serde(default)]
    pub bound_claims: BTreeMap<String, String>,
    /// The token's lifetime (Vault's `token_ttl`, which is also its `token_max_ttl`: a login
    /// token is a Mayfly task token and cannot be extended). Default 15m.
    #[serde(default = "crate::clock::secs::<900>", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Vault policy names: the task's scopes (`principal.scopes` in Cedar).
    #[serde(default)]
    pub token_policies: Vec<String>,
    /// Audiences (and `db:<database>/<role>` targets) the login may use; none: any policy allows.
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// A Vault database role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultDatabaseRole {
    /// The name in `<mount>/creds/<name>`.
    pub name: String,
    /// The Mayfly database (`[[databases]]` name).
    pub database: String,
    /// The role of that database.
    pub role: String,
}

/// An identity token role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultIdentityRole {
    /// The name in `identity/oidc/token/<name>`.
    pub name: String,
    /// The audience of the tokens.
    pub audience: String,
    /// Their lifetime (default: the audience's).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

// At most 100 bytes each, so a login's purpose (`vault login <mount>/<role>`) stays
// within a task's 256 characters.
fn mount_ok(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 100
        && m.split('/').all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
}

fn name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= 100 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// What the rest of the configuration offers, as `[vault_api]` refers to it (given by
/// `config.rs`, which composes the sections: this module does not import it back).
pub struct ConfiguredElsewhere<'a> {
    /// `[[attest.oidc]]` names.
    pub oidc_attestors: Vec<&'a str>,
    /// `[[databases]]` names with each of their roles.
    pub database_roles: Vec<(&'a str, &'a str)>,
    /// `tasks.max_ttl`.
    pub task_max_ttl: Duration,
    /// Whether `[listen]` has TLS.
    pub tls: bool,
    /// `listen.dangerously_allow_plaintext`.
    pub plaintext_allowed: bool,
}

impl VaultApiConfig {
    /// Checks names, duplicates and references to the rest of the configuration.
    pub fn validate(&self, cfg: &ConfiguredElsewhere<'_>) -> Result<(), String> {
        if self.listen.is_none() {
            return Ok(());
        }
        if let Some(addr) = self.listen
            && !cfg.tls
            && !addr.ip().is_loopback()
            && !cfg.plaintext_allowed
        {
            return Err(format!(
                "vault_api.listen {addr} is not loopback and there is no TLS (listen.tls_cert): tokens would cross \
                 the network in clear text"
            ));
        }
        let reserved = ["sys", "auth", "identity", "token", "cubbyhole"];
        if !mount_ok(&self.database_mount) || reserved.contains(&self.database_mount.as_str()) {
            return Err(format!("vault_api.database_mount {:?} is not a usable mount path", self.database_mount));
        }
        let mut mounts = std::collections::BTreeSet::new();
        for a in &self.auth {
            if !mount_ok(&a.mount) || a.mount == "token" || !mounts.insert(a.mount.as_str()) {
                return Err(format!(
                    "vault_api.auth mount {:?}: a path of letters, digits, '-', '_', '.', once",
                    a.mount
                ));
            }
            let mut names = std::collections::BTreeSet::new();
            for r in &a.roles {
                if !name_ok(&r.name) || !names.insert(r.name.as_str()) {
                    return Err(format!("vault_api.auth {:?}: role {:?} is not a unique name", a.mount, r.name));
                }
                if r.token_ttl.is_zero() || r.token_ttl > cfg.task_max_ttl {
                    return Err(format!(
                        "vault_api.auth {:?} role {:?}: token_ttl is between 1s and tasks.max_ttl",
                        a.mount, r.name
                    ));
                }
                if !cfg.oidc_attestors.contains(&r.attestor.as_str()) {
                    return Err(format!(
                        "vault_api.auth {:?} role {:?}: no [[attest.oidc]] named {:?}",
                        a.mount, r.name, r.attestor
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.database_roles {
            if !name_ok(&r.name) || !names.insert(r.name.as_str()) {
                return Err(format!("vault_api.database_roles: {:?} is not a unique name", r.name));
            }
            let known = cfg.database_roles.contains(&(r.database.as_str(), r.role.as_str()));
            if !known {
                return Err(format!(
                    "vault_api.database_roles {:?}: no database {:?} with role {:?}",
                    r.name, r.database, r.role
                ));
            }
        }
        if !mount_ok(&self.pki_mount)
            || reserved.contains(&self.pki_mount.as_str())
            || self.pki_mount == self.database_mount
        {
            return Err(format!("vault_api.pki_mount {:?} is not a usable mount path", self.pki_mount));
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.pki_roles {
            let week = Duration::from_secs(7 * 24 * 3600);
            let domains_ok = !r.allowed_domains.is_empty()
                && r.allowed_domains.iter().all(|d| {
                    !d.is_empty()
                        && d.len() <= 253
                        && d.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
                });
            if !name_ok(&r.name) || !names.insert(r.name.as_str()) || !domains_ok {
                return Err(format!(
                    "vault_api.pki_roles {:?}: a unique name, and allowed_domains of DNS names (no wildcards)",
                    r.name
                ));
            }
            if r.max_ttl.is_zero() || r.max_ttl > week {
                return Err(format!("vault_api.pki_roles {:?}: max_ttl is between 1s and 7d", r.name));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.identity_roles {
            if !name_ok(&r.name) || !names.insert(r.name.as_str()) || r.audience.is_empty() {
                return Err(format!("vault_api.identity_roles: {:?} is not a unique name with an audience", r.name));
            }
        }
        Ok(())
    }

    /// The login role `name` at `mount`, and the mount.
    pub fn login_role(&self, mount: &str, name: &str) -> Option<(&VaultAuthMount, Option<&VaultLoginRole>)> {
        let m = self.auth.iter().find(|a| a.mount == mount)?;
        Some((m, m.roles.iter().find(|r| r.name == name)))
    }

    /// The database role `name`.
    pub fn database_role(&self, name: &str) -> Option<&VaultDatabaseRole> {
        self.database_roles.iter().find(|r| r.name == name)
    }

    /// The role name of a `<database_mount>/creds/<role>` path (one segment, not empty).
    pub fn creds_role_name<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(self.database_mount.as_str())
            .and_then(|r| r.strip_prefix("/creds/"))
            .filter(|r| !r.is_empty() && !r.contains('/'))
    }

    /// What follows `<pki_mount>/` in a path.
    pub fn pki_rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(self.pki_mount.as_str()).and_then(|r| r.strip_prefix('/'))
    }
}
