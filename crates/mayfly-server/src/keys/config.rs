//! Signing keys' configuration: the key-encryption key and the signing algorithm.

use std::path::PathBuf;

use serde::Deserialize;

use super::{KekSource, SigningAlg};

/// Signing-key settings. In the file: `kek_file` or `kek_env` (exactly one), `algorithm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "KeysFile")]
pub struct KeysConfig {
    /// Where the key-encryption key comes from; `None` until configured (start-up refuses).
    pub kek: Option<KekSource>,
    /// `EdDSA` (Ed25519, the default) or `ES256`.
    pub algorithm: SigningAlg,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { kek: None, algorithm: SigningAlg::EdDsa }
    }
}

/// `[keys]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    /// File holding the 32-byte key-encryption key (64 hex characters or raw bytes).
    #[serde(default)]
    kek_file: Option<PathBuf>,
    /// Environment variable holding the key-encryption key as 64 hex characters.
    #[serde(default)]
    kek_env: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
}

impl TryFrom<KeysFile> for KeysConfig {
    type Error = String;

    fn try_from(f: KeysFile) -> Result<Self, String> {
        let kek = match (f.kek_file, f.kek_env) {
            (Some(_), Some(_)) => return Err("keys: set one of kek_file and kek_env, not both".into()),
            (Some(path), None) => Some(KekSource::File(path)),
            (None, Some(var)) => Some(KekSource::Env(var)),
            (None, None) => None,
        };
        let algorithm = match f.algorithm.as_deref() {
            None => SigningAlg::EdDsa,
            Some(name) => {
                SigningAlg::parse(name).ok_or_else(|| format!("keys.algorithm {name:?}: use EdDSA or ES256"))?
            }
        };
        Ok(Self { kek, algorithm })
    }
}
