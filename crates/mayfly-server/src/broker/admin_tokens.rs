//! Admin tokens: the bearer secrets of the admin API. Several may exist, each with a
//! unique name and a non-secret id to list and revoke it by. Only SHA-256 hashes are
//! stored, and every admin call reads the store (no cache): a revoked token fails on
//! the very next request, on every replica sharing the store.

use sha2::{Digest, Sha256};

use crate::ledger::{AdminTokenRemoval, LedgerError, Store, StoredAdminToken};

/// What every admin token starts with (so a handler can tell it from a JWT).
pub const TOKEN_PREFIX: &str = "mfa_";
/// Longest name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest string worth hashing as a presented token (a real one is 47 characters).
const MAX_TOKEN_LEN: usize = 512;
/// How stale `last_used_at` may get before a use writes it again: a write per admin
/// call would put one on every introspection made with an admin token.
const TOUCH_EVERY_SECS: i64 = 60;

/// Why an admin-token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The name is empty, too long, or uses characters outside the safe set.
    #[error("{0}")]
    InvalidName(String),
    /// Another token has that name.
    #[error("an admin token named {0:?} already exists")]
    NameTaken(String),
    /// No token has that id.
    #[error("no admin token has id {0:?}")]
    NotFound(String),
    /// It is the only one left; revoking it would lock every operator out.
    #[error("admin token {0} is the last one: create another before revoking it")]
    LastOne(String),
    /// Storage failed.
    #[error(transparent)]
    Ledger(LedgerError),
}

/// A new admin token: its record, and the token itself, shown once.
#[derive(Clone)]
pub struct CreatedAdminToken {
    /// What is stored.
    pub row: StoredAdminToken,
    /// The secret. Never stored, logged or audited.
    pub token: String,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for CreatedAdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedAdminToken").field("row", &self.row).finish_non_exhaustive()
    }
}

/// Hex SHA-256 of an admin token; only hashes are stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh admin token: the prefix and 256 random bits.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", crate::ids::random_b64(32))
}

/// Checks a name: 1 to 64 characters of `A-Z a-z 0-9 . _ -` (safe in a table, a log line and a URL).
pub fn check_name(name: &str) -> Result<(), AdminTokenError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(AdminTokenError::InvalidName(format!("a name is 1 to {MAX_NAME_LEN} characters")));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(AdminTokenError::InvalidName("a name uses only letters, digits, '.', '_' and '-'".into()));
    }
    Ok(())
}

/// The stored record for a new token named `name`.
pub fn new_row(token: &str, name: &str, now: i64) -> StoredAdminToken {
    StoredAdminToken {
        id: crate::ids::random_hex(8),
        token_hash: token_hash(token),
        name: name.to_owned(),
        created_at: now,
        last_used_at: None,
    }
}

/// Creates a named admin token.
pub async fn create(store: &dyn Store, name: &str, now: i64) -> Result<CreatedAdminToken, AdminTokenError> {
    check_name(name)?;
    let token = new_token();
    let row = new_row(&token, name, now);
    match store.insert_admin_token(&row).await {
        Ok(()) => Ok(CreatedAdminToken { row, token }),
        Err(LedgerError::Conflict(_)) => Err(AdminTokenError::NameTaken(name.to_owned())),
        Err(e) => Err(AdminTokenError::Ledger(e)),
    }
}

/// The token a presented secret is, if it is a live admin token: one indexed read, and
/// now and then a write of its last use (a failed write does not refuse the caller).
pub async fn authenticate(store: &dyn Store, token: &str, now: i64) -> Result<Option<StoredAdminToken>, LedgerError> {
    if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let Some(mut row) = store.admin_token_by_hash(&token_hash(token)).await? else {
        return Ok(None);
    };
    if row.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY_SECS) {
        match store.touch_admin_token(&row.id, now).await {
            Ok(()) => row.last_used_at = Some(now),
            Err(e) => tracing::warn!(error = %e, token_id = %row.id, "recording an admin token's use failed"),
        }
    }
    Ok(Some(row))
}

/// Every admin token, oldest first.
pub async fn list(store: &dyn Store) -> Result<Vec<StoredAdminToken>, AdminTokenError> {
    store.admin_tokens().await.map_err(AdminTokenError::Ledger)
}

/// Revokes an admin token by id: it authenticates nothing from the next request on.
/// The last remaining token cannot be revoked.
pub async fn revoke(store: &dyn Store, id: &str) -> Result<StoredAdminToken, AdminTokenError> {
    match store.remove_admin_token(id).await.map_err(AdminTokenError::Ledger)? {
        AdminTokenRemoval::Removed(row) => Ok(row),
        AdminTokenRemoval::NotFound => Err(AdminTokenError::NotFound(id.chars().take(100).collect())),
        AdminTokenRemoval::LastOne => Err(AdminTokenError::LastOne(id.to_owned())),
    }
}

impl crate::broker::Broker {
    /// Creates a named admin token ([`create`]).
    pub async fn create_admin_token(&self, name: &str) -> Result<CreatedAdminToken, AdminTokenError> {
        create(self.ledger.store().as_ref(), name, crate::clock::now_unix()).await
    }

    /// The live admin token `token` is, if any ([`authenticate`]).
    pub async fn authenticate_admin(&self, token: &str) -> Result<Option<StoredAdminToken>, LedgerError> {
        authenticate(self.ledger.store().as_ref(), token, crate::clock::now_unix()).await
    }

    /// Every admin token, oldest first.
    pub async fn admin_tokens(&self) -> Result<Vec<StoredAdminToken>, AdminTokenError> {
        list(self.ledger.store().as_ref()).await
    }

    /// Revokes an admin token by id ([`revoke`]).
    pub async fn revoke_admin_token(&self, id: &str) -> Result<StoredAdminToken, AdminTokenError> {
        revoke(self.ledger.store().as_ref(), id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sqlite::SqliteStore;

    #[test]
    fn names_are_short_and_safe() {
        for ok in ["ci", "alice.laptop", "deploy-bot_2", &"a".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"a".repeat(65), "with space", "semi;colon", "quote\"", "new\nline", "é", "a/b"] {
            assert!(matches!(check_name(bad), Err(AdminTokenError::InvalidName(_))), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn tokens_are_created_found_by_secret_and_removed_but_never_the_last() {
        let store = SqliteStore::in_memory().await.unwrap();
        let first = create(&store, "first", 100).await.unwrap();
        assert!(first.token.starts_with(TOKEN_PREFIX));
        assert_ne!(first.row.token_hash, first.token);
        assert!(matches!(create(&store, "first", 101).await, Err(AdminTokenError::NameTaken(_))));
        let second = create(&store, "second", 102).await.unwrap();

        let found = authenticate(&store, &second.token, 200).await.unwrap().unwrap();
        assert_eq!((found.id.as_str(), found.last_used_at), (second.row.id.as_str(), Some(200)));
        // Within a minute the use is not written again.
        authenticate(&store, &second.token, 230).await.unwrap().unwrap();
        let listed = list(&store).await.unwrap();
        assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["first", "second"]);
        assert_eq!(listed[1].last_used_at, Some(200));
        assert!(authenticate(&store, "mfa_wrong", 200).await.unwrap().is_none());
        assert!(authenticate(&store, &second.row.token_hash, 200).await.unwrap().is_none(), "the hash is no token");

        assert_eq!(revoke(&store, &second.row.id).await.unwrap().name, "second");
        assert!(authenticate(&store, &second.token, 300).await.unwrap().is_none());
        assert!(matches!(revoke(&store, &second.row.id).await, Err(AdminTokenError::NotFound(_))));
        assert!(matches!(revoke(&store, &first.row.id).await, Err(AdminTokenError::LastOne(_))));
        assert!(authenticate(&store, &first.token, 300).await.unwrap().is_some());
    }

    #[test]
    fn debug_hides_the_token() {
        let created = CreatedAdminToken {
            row: StoredAdminToken {
                id: "id-1".into(),
                token_hash: token_hash("mfa_very-secret"),
                name: "ci".into(),
                created_at: 1,
                last_used_at: None,
            },
            token: "mfa_very-secret".into(),
        };
        let shown = format!("{created:?}");
        assert!(!shown.contains("mfa_very-secret"), "{shown}");
        assert!(shown.contains("id-1"), "{shown}");
    }
}
