//! The key-encryption key: loaded from a file or the environment, never stored by Mayfly.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use aws_lc_rs::hmac;

use super::KeyError;

const SEALED_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Where the KEK comes from.
#[derive(Debug, Clone)]
pub enum KekSource {
    /// A file with 64 hex characters (or exactly 32 raw bytes).
    File(PathBuf),
    /// An environment variable with 64 hex characters.
    Env(String),
}

/// The 32-byte key-encryption key.
pub struct Kek {
    aead: RandomizedNonceKey,
    fingerprint_key: hmac::Key,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// Loads the KEK from its source.
    pub fn load(source: &KekSource) -> Result<Self, KeyError> {
        let bytes = match source {
            KekSource::File(path) => {
                let raw = read_private(path)?;
                decode_kek(&raw).map_err(|m| KeyError::BadKek(format!("{}: {m}", path.display())))?
            }
            KekSource::Env(var) => {
                let v = std::env::var(var)
                    .map_err(|_| KeyError::MissingKek(format!("environment variable {var} is not set")))?;
                decode_kek(v.as_bytes()).map_err(|m| KeyError::BadKek(format!("${var}: {m}")))?
            }
        };
        Self::from_bytes(&bytes)
    }

    /// Builds a KEK from 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let aead = RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError::Crypto("aead key"))?;
        // A separate key for keyed fingerprints, derived so that the KEK itself never signs anything.
        let derive = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let fp = hmac::sign(&derive, b"mayfly/fingerprint/v1");
        let fingerprint_key = hmac::Key::new(hmac::HMAC_SHA256, fp.as_ref());
        Ok(Self { aead, fingerprint_key })
    }

    /// Generates a new random KEK and writes it (hex) to `path` with mode 0600.
    pub fn generate_file(path: &Path) -> Result<(), KeyError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Crypto("random"))?;
        crate::fsutil::write_private(path, hex::encode(bytes).as_bytes())
            .map_err(|e| KeyError::MissingKek(format!("cannot write {}: {e}", path.display())))
    }

    /// Seals `plaintext`, binding it to `context` (e.g. the key id).
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut buf = plaintext.to_vec();
        let nonce =
            self.aead.seal_in_place_append_tag(Aad::from(context), &mut buf).map_err(|_| KeyError::Crypto("seal"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Opens what `seal` produced with the same `context`; a wrong KEK gives `WrongKek`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEALED_VERSION {
            return Err(KeyError::WrongKek);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| KeyError::WrongKek)?;
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self.aead.open_in_place(nonce, Aad::from(context), &mut buf).map_err(|_| KeyError::WrongKek)?;
        Ok(plain.to_vec())
    }

    /// A keyed fingerprint (HMAC-SHA-256, hex) of a secret, for audit records: it
    /// identifies a token without revealing it.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        hex::encode(hmac::sign(&self.fingerprint_key, secret).as_ref())
    }
}

/// Reads the KEK file, refusing one that its group or others may read or write (its
/// mode is that of the file opened, so a symlinked file is judged by its target).
fn read_private(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let cannot_read = |e: std::io::Error| KeyError::MissingKek(format!("cannot read {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(cannot_read)?;
    let mode = f.metadata().map_err(cannot_read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LooseKekFile { path: path.display().to_string(), mode });
    }
    let mut raw = Vec::new();
    f.read_to_end(&mut raw).map_err(cannot_read)?;
    Ok(raw)
}

fn decode_kek(raw: &[u8]) -> Result<[u8; 32], String> {
    let trimmed = std::str::from_utf8(raw).map(str::trim).ok();
    if let Some(text) = trimmed
        && text.len() == 64
    {
        let v = hex::decode(text).map_err(|_| "expected 64 hex characters".to_string())?;
        let mut out = [0u8; 32];
        out.copy_from_slice(&v);
        return Ok(out);
    }
    if raw.len() == 32 {
        let mut out = [0u8; 32];
        out.copy_from_slice(raw);
        return Ok(out);
    }
    Err("expected 64 hex characters (32 bytes)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_wrong_key() {
        let a = Kek::from_bytes(&[7u8; 32]).unwrap();
        let b = Kek::from_bytes(&[8u8; 32]).unwrap();
        let sealed = a.seal(b"kid-1", b"secret").unwrap();
        assert_eq!(a.open(b"kid-1", &sealed).unwrap(), b"secret");
        assert!(matches!(b.open(b"kid-1", &sealed), Err(KeyError::WrongKek)));
        assert!(matches!(a.open(b"kid-2", &sealed), Err(KeyError::WrongKek)), "context is bound");
    }

    #[test]
    fn decodes_hex_and_raw() {
        assert_eq!(decode_kek(format!("{}\n", "ab".repeat(32)).as_bytes()).unwrap(), [0xab; 32]);
        assert_eq!(decode_kek(&[1u8; 32]).unwrap(), [1u8; 32]);
        assert!(decode_kek(b"short").is_err());
    }
}
