//! Signing keys and the key-encryption key (KEK) that seals them at rest.
//!
//! Private keys never touch storage in clear: they are sealed with AES-256-GCM
//! under the KEK, with the key id as associated data so a sealed blob cannot be
//! swapped onto another key's row.

pub mod config;
mod kek;
mod ring;
pub mod sealed;
mod signing;

pub use kek::{Kek, KekSource};
pub use ring::{DEFAULT_PROFILE, KeyRing, KeyRingError, MAX_PUBLISHED_KEYS, SigningProfile, stored_public_keys};
pub use sealed::{SealedUse, SecretSource};
pub use signing::{KeySpec, RsaBits, SigningAlg, SigningKey, jwk_thumbprint};

/// Why keys could not be loaded, sealed or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key-encryption key was configured or found.
    #[error("no key-encryption key: {0}")]
    MissingKek(String),
    /// The KEK is malformed.
    #[error("key-encryption key is malformed: {0}")]
    BadKek(String),
    /// The KEK file is open to its group or to others: whoever can read it can open every sealed key.
    #[error(
        "key-encryption key file {path} is open to group or others (mode {mode:03o}); \
         make it private to the user mayfly runs as: chmod 600 {path}"
    )]
    LooseKekFile {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The KEK does not open what is stored: it is not the key the data directory was created with.
    #[error(
        "the key-encryption key does not match the one this data directory was sealed with; \
         start with the original key (file or environment variable) or restore it"
    )]
    WrongKek,
    /// A stored key is corrupt or of an unknown algorithm.
    #[error("stored signing key {kid} cannot be used: {reason}")]
    Corrupt {
        /// The key id.
        kid: String,
        /// What is wrong.
        reason: String,
    },
    /// The crypto library failed (key generation, sealing).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}
