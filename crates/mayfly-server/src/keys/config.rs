//! Signing keys' configuration: the key-encryption key and the signing algorithm.

use serde::Deserialize;
use std::path::PathBuf;

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
