//! Secrets a config file names (a database's admin URL, a proxy upstream's key): sealed
//! under the key-encryption key, read from an environment variable, or written plainly.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Kek, KeyError};

/// One use of sealed secrets: what binds a sealed value to it (it opens for that use
/// only), the config field that holds it, and the command that seals it.
#[derive(Debug, Clone, Copy)]
pub struct SealedUse {
    context: &'static [u8],
    field: &'static str,
    tool: &'static str,
}

/// A database's admin connection URL (`url_sealed`, `url_env`, `url`).
pub const DATABASE_ADMIN_URL: SealedUse =
    SealedUse { context: b"mayfly:database-admin-url", field: "url", tool: "mayfly databases seal-url" };

/// A proxy upstream's secret (`secret_sealed`, `secret_env`, `secret`).
pub const PROXY_UPSTREAM_SECRET: SealedUse =
    SealedUse { context: b"mayfly:proxy-upstream-secret", field: "secret", tool: "mayfly proxy seal" };

impl SealedUse {
    /// Seals `text` for this use (base64, for `<field>_sealed`).
    pub fn seal(&self, kek: &Kek, text: &str) -> Result<String, KeyError> {
        Ok(STANDARD.encode(kek.seal(self.context, text.as_bytes())?))
    }

    /// `<field>_sealed, <field>_env and <field>`, for messages.
    pub fn choices(&self) -> String {
        format!("{0}_sealed, {0}_env and {0}", self.field)
    }
}

/// Where a secret comes from: exactly one source.
#[derive(Clone)]
pub enum SecretSource {
    /// Sealed under the key-encryption key (`<field>_sealed`, base64): encrypted at rest.
    Sealed(String),
    /// Read from this environment variable at start (`<field>_env`).
    Env(String),
    /// Written in the config file (`<field>`): it never prints.
    Plain(String),
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Sealed(_) => f.write_str("Sealed([sealed])"),
            SecretSource::Env(var) => f.debug_tuple("Env").field(var).finish(),
            SecretSource::Plain(_) => f.write_str("Plain([redacted])"),
        }
    }
}

impl SecretSource {
    /// The source among the three fields a table offers: `Ok(None)` when none is set,
    /// `Err(())` when more than one is.
    #[allow(clippy::result_unit_err)]
    pub fn one_of(sealed: Option<String>, env: Option<String>, plain: Option<String>) -> Result<Option<Self>, ()> {
        match (sealed, env, plain) {
            (Some(s), None, None) => Ok(Some(SecretSource::Sealed(s))),
            (None, Some(v), None) => Ok(Some(SecretSource::Env(v))),
            (None, None, Some(p)) => Ok(Some(SecretSource::Plain(p))),
            (None, None, None) => Ok(None),
            _ => Err(()),
        }
    }

    /// The secret itself; a sealed one is opened for `use_` only.
    pub fn open(&self, kek: &Kek, use_: &SealedUse) -> Result<String, String> {
        match self {
            SecretSource::Plain(s) => Ok(s.clone()),
            SecretSource::Env(var) => std::env::var(var).map_err(|_| format!("environment variable {var} is not set")),
            SecretSource::Sealed(sealed) => {
                let field = use_.field;
                let bytes = STANDARD
                    .decode(sealed.trim())
                    .map_err(|_| format!("{field}_sealed is not base64 (paste the output of `{}`)", use_.tool))?;
                let plain = kek.open(use_.context, &bytes).map_err(|_| {
                    format!(
                        "{field}_sealed cannot be opened with this key-encryption key (sealed under another one, or altered)"
                    )
                })?;
                String::from_utf8(plain).map_err(|_| format!("{field}_sealed does not hold text"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_use_and_under_its_key() {
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let sealed = PROXY_UPSTREAM_SECRET.seal(&kek, "sk_live_123").unwrap();
        let source = SecretSource::Sealed(sealed.clone());
        assert_eq!(source.open(&kek, &PROXY_UPSTREAM_SECRET).unwrap(), "sk_live_123");
        let other = Kek::from_bytes(&[8u8; 32]).unwrap();
        assert!(source.open(&other, &PROXY_UPSTREAM_SECRET).unwrap_err().contains("cannot be opened"));
        let err = source.open(&kek, &DATABASE_ADMIN_URL).unwrap_err();
        assert!(err.starts_with("url_sealed cannot be opened"), "a proxy secret is not a database URL: {err}");
        let db = SecretSource::Sealed(DATABASE_ADMIN_URL.seal(&kek, "postgres://a:b@h/d").unwrap());
        assert!(db.open(&kek, &PROXY_UPSTREAM_SECRET).is_err(), "a database URL is not an upstream secret");
        let garbage = SecretSource::Sealed("!!".into()).open(&kek, &DATABASE_ADMIN_URL).unwrap_err();
        assert!(garbage.contains("mayfly databases seal-url"), "{garbage}");
        assert!(!format!("{:?}", SecretSource::Plain("hunter2".into())).contains("hunter2"));
        assert!(!format!("{:?}", source).contains(&sealed));
    }

    #[test]
    fn one_source_at_most() {
        let s = || Some("x".to_owned());
        assert!(matches!(SecretSource::one_of(None, s(), None), Ok(Some(SecretSource::Env(_)))));
        assert!(matches!(SecretSource::one_of(None, None, None), Ok(None)));
        assert!(SecretSource::one_of(s(), None, s()).is_err());
        assert_eq!(DATABASE_ADMIN_URL.choices(), "url_sealed, url_env and url");
    }
}
