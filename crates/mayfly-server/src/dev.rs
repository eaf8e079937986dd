//! `mayfly server --dev`: a ready-to-use broker with no config file.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{
    AttestConfig, Config, JoinTokensConfig, KeysConfig, LedgerConfig, ListenConfig, PolicyConfig, TasksConfig,
    TokensConfig,
};
use crate::keys::Kek;

/// The Workload API socket's file name in a dev data directory.
pub const DEV_WORKLOAD_SOCKET: &str = "workload.sock";

/// Trust domain of dev servers.
pub const DEV_TRUST_DOMAIN: &str = "dev.mayfly.local";

/// The policy a dev server starts with: any workload of the dev trust domain may
/// exchange for any audience, for at most an hour.
pub const DEV_POLICY: &str = r#"// Written by `mayfly server --dev`. Edit it: the server reloads on save.
@id("dev-allow-exchange")
permit (
  principal,
  action == Mayfly::Action::"exchange",
  resource
)
when {
  principal.trust_domain == "dev.mayfly.local" &&
  context.ttl_seconds <= 3600
};

// Any dev workload may start a task for up to 8 hours; a task asking for the
// "admin" scope waits until an approver (`mayfly tasks approve`) lets it run.
@id("dev-start-task")
permit (
  principal,
  action == Mayfly::Action::"start_task",
  resource
)
when {
  principal.trust_domain == "dev.mayfly.local" &&
  context.ttl_seconds <= 28800 &&
  (!resource.scopes.contains("admin") || context.approved)
};

// A dev task may act for people (on_behalf_of "user:…") without their proof. A
// workload of the trust domain is acted for only with its own token (actor_token).
@id("dev-act-for-users")
permit (
  principal,
  action == Mayfly::Action::"act_for",
  resource
)
when {
  principal.trust_domain == "dev.mayfly.local" &&
  resource.name like "user:*"
};

// Local processes with a registration entry (`mayfly entries create`) may fetch
// X.509- and JWT-SVIDs from the Workload API socket, for at most a day.
@id("dev-fetch-svid")
permit (
  principal,
  action == Mayfly::Action::"fetch_svid",
  resource
)
when {
  principal.trust_domain == "dev.mayfly.local" &&
  context.ttl_seconds <= 86400
};

// Dev workloads may approve each other's tasks (never their own).
@id("dev-approve-task")
permit (
  principal,
  action == Mayfly::Action::"approve",
  resource
)
when { principal.trust_domain == "dev.mayfly.local" };
"#;

/// Why the dev data directory could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare dev data directory {dir}: {message}")]
pub struct DevSetupError {
    dir: String,
    message: String,
}

/// Creates the dev data directory (KEK file 0600, policy directory) and returns the config.
pub fn prepare(data_dir: &Path, listen: SocketAddr) -> Result<Config, DevSetupError> {
    let err = |message: String| DevSetupError { dir: data_dir.display().to_string(), message };
    if !listen.ip().is_loopback() {
        return Err(err(format!("dev mode listens on loopback only; {listen} is not a loopback address")));
    }
    crate::fsutil::create_private_dir(data_dir).map_err(|e| err(e.to_string()))?;
    let data_dir = std::fs::canonicalize(data_dir).map_err(|e| err(e.to_string()))?;
    let kek_file = data_dir.join("kek");
    if !kek_file.exists() {
        Kek::generate_file(&kek_file).map_err(|e| err(e.to_string()))?;
    }
    let policy_dir = data_dir.join("policies");
    std::fs::create_dir_all(&policy_dir).map_err(|e| err(e.to_string()))?;
    let policy_file = policy_dir.join("dev.cedar");
    if !policy_file.exists() {
        std::fs::write(&policy_file, DEV_POLICY).map_err(|e| err(e.to_string()))?;
    }
    Ok(Config {
        trust_domain: DEV_TRUST_DOMAIN.into(),
        data_dir: data_dir.clone(),
        storage: None,
        storage_env: None,
        postgres: Default::default(),
        public_url: None,
        listen: ListenConfig::plain(listen),
        keys: KeysConfig { kek: Some(crate::keys::KekSource::File(kek_file)), ..KeysConfig::default() },
        tokens: TokensConfig::default(),
        audiences: Vec::new(),
        policy: PolicyConfig { dir: policy_dir, reload_interval: std::time::Duration::from_secs(2) },
        ledger: LedgerConfig::default(),
        join_tokens: JoinTokensConfig::default(),
        attest: AttestConfig::default(),
        tasks: TasksConfig::default(),
        dpop: Default::default(),
        databases: Vec::new(),
        clouds: Vec::new(),
        workload_api: crate::config::WorkloadApiConfig {
            socket: Some(data_dir.join(DEV_WORKLOAD_SOCKET)),
            ..Default::default()
        },
        signals: Default::default(),
        revocations: Default::default(),
        audit: Default::default(),
        vault_api: Default::default(),
        proxy: Default::default(),
    })
}
