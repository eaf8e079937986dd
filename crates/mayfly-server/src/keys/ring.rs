//! The key ring: the active signing key plus every retired key still published
//! in the JWKS, swapped atomically on rotation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mayfly_proto::SigningKeyInfo;

use super::{Kek, KeyError, SigningAlg, SigningKey};
use crate::ledger::{LedgerError, Store, StoredSigningKey};

/// A key and how long it stays in the JWKS.
#[derive(Debug, Clone)]
struct PublishedKey {
    key: Arc<SigningKey>,
    created_at: i64,
    published_until: Option<i64>,
}

#[derive(Debug)]
struct RingState {
    active: Arc<SigningKey>,
    keys: Vec<PublishedKey>,
}

/// The signing keys in use. Reads are lock-free.
#[derive(Debug)]
pub struct KeyRing {
    state: ArcSwap<RingState>,
}

/// Why the key ring could not be loaded or rotated.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    /// Keys could not be opened or generated.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Storage failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl KeyRing {
    /// Loads the stored keys (opening them with the KEK), creating the first key if there is none.
    pub async fn load_or_create(store: &dyn Store, kek: &Kek, alg: SigningAlg) -> Result<Self, KeyRingError> {
        let now = crate::clock::now_unix();
        let stored = store.signing_keys().await?;
        if stored.is_empty() {
            let (key, row) = new_stored_key(kek, alg, now)?;
            match store.insert_signing_key(&row).await {
                Ok(()) => {
                    let key = Arc::new(key);
                    let keys =
                        vec![PublishedKey { key: key.clone(), created_at: row.created_at, published_until: None }];
                    return Ok(Self { state: ArcSwap::from_pointee(RingState { active: key, keys }) });
                }
                // Another replica stored the first key a moment earlier (only one may be
                // active): use that one.
                Err(e) => match open_rows(kek, &store.signing_keys().await?, now, &[])? {
                    Some(state) => return Ok(Self { state: ArcSwap::from_pointee(state) }),
                    None => return Err(e.into()),
                },
            }
        }
        match open_rows(kek, &stored, now, &[])? {
            Some(state) => Ok(Self { state: ArcSwap::from_pointee(state) }),
            None => {
                Err(KeyError::Corrupt { kid: "-".into(), reason: "no active signing key in storage".into() }.into())
            }
        }
    }

    /// Re-reads the stored keys (another replica may have rotated them); returns whether
    /// anything changed. Keys already open are reused, not decrypted again.
    pub async fn reload(&self, store: &dyn Store, kek: &Kek) -> Result<bool, KeyRingError> {
        let now = crate::clock::now_unix();
        let current = self.state.load_full();
        let Some(next) = open_rows(kek, &store.signing_keys().await?, now, &current.keys)? else {
            return Ok(false);
        };
        let view = |s: &RingState| {
            (
                s.active.kid().to_owned(),
                s.keys.iter().map(|k| (k.key.kid().to_owned(), k.published_until)).collect::<Vec<_>>(),
            )
        };
        if view(&next) == view(&current) {
            return Ok(false);
        }
        tracing::info!(active = %next.active.kid(), "signing keys changed in storage; reloaded");
        self.state.store(Arc::new(next));
        Ok(true)
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> Arc<SigningKey> {
        self.state.load().active.clone()
    }

    /// A published key by id (active or retired but still within its publication window).
    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        let now = crate::clock::now_unix();
        self.state
            .load()
            .keys
            .iter()
            .find(|k| k.key.kid() == kid && k.published_until.is_none_or(|t| t > now))
            .map(|k| k.key.clone())
    }

    /// The RFC 7517 JWK Set of every published key.
    pub fn jwks(&self) -> serde_json::Value {
        let now = crate::clock::now_unix();
        let keys: Vec<_> = self
            .state
            .load()
            .keys
            .iter()
            .filter(|k| k.published_until.is_none_or(|t| t > now))
            .map(|k| k.key.public_jwk().clone())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The published keys, for the admin API.
    pub fn infos(&self) -> Vec<SigningKeyInfo> {
        let state = self.state.load();
        state
            .keys
            .iter()
            .map(|k| SigningKeyInfo {
                kid: k.key.kid().to_owned(),
                alg: k.key.alg().as_str().to_owned(),
                active: Arc::ptr_eq(&k.key, &state.active),
                created_at: k.created_at,
                published_until: k.published_until,
            })
            .collect()
    }

    /// Rotates: a new key signs from now on; the old one stays published for
    /// `publish_for_secs`, long enough for every token it signed to expire.
    pub async fn rotate(
        &self,
        store: &dyn Store,
        kek: &Kek,
        alg: SigningAlg,
        publish_for_secs: i64,
    ) -> Result<SigningKeyInfo, KeyRingError> {
        let now = crate::clock::now_unix();
        let (key, row) = new_stored_key(kek, alg, now)?;
        let old = self.active();
        let published_until = now + publish_for_secs;
        store.rotate_signing_key(&row, old.kid(), now, published_until).await?;
        let key = Arc::new(key);
        let state = self.state.load();
        let mut keys: Vec<PublishedKey> = state
            .keys
            .iter()
            .filter(|k| k.published_until.is_none_or(|t| t > now))
            .cloned()
            .map(|mut k| {
                if Arc::ptr_eq(&k.key, &old) {
                    k.published_until = Some(published_until);
                }
                k
            })
            .collect();
        keys.push(PublishedKey { key: key.clone(), created_at: now, published_until: None });
        self.state.store(Arc::new(RingState { active: key.clone(), keys }));
        Ok(SigningKeyInfo {
            kid: key.kid().to_owned(),
            alg: alg.as_str().to_owned(),
            active: true,
            created_at: now,
            published_until: None,
        })
    }
}

/// The public keys (JWKs with `kid`, `alg`, `use`) of every signing key in storage,
/// published or not. Retired keys leave the JWKS once their tokens have expired, but
/// what they signed that lives longer (audit checkpoints) must stay verifiable. The KEK
/// vouches for them: a row it does not open is skipped (and logged), and if it opens
/// none of the rows it is the wrong KEK.
pub async fn stored_public_keys(store: &dyn Store, kek: &Kek) -> Result<Vec<serde_json::Value>, KeyRingError> {
    let rows = store.signing_keys().await?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        match open_stored_key(kek, row) {
            Ok(k) => keys.push(k.public_jwk().clone()),
            Err(e) => tracing::warn!(kid = %row.kid, error = %e, "a stored signing key does not open; ignored"),
        }
    }
    if keys.is_empty() && !rows.is_empty() {
        return Err(KeyError::WrongKek.into());
    }
    Ok(keys)
}

/// The keys still published at `now` and the active one, reusing keys in `known`;
/// `None` when no stored key is active.
fn open_rows(
    kek: &Kek,
    rows: &[StoredSigningKey],
    now: i64,
    known: &[PublishedKey],
) -> Result<Option<RingState>, KeyError> {
    let mut keys = Vec::new();
    let mut active = None;
    for row in rows {
        if row.published_until.is_some_and(|t| t <= now) {
            continue;
        }
        let key = match known.iter().find(|k| k.key.kid() == row.kid) {
            Some(k) => k.key.clone(),
            None => Arc::new(open_stored_key(kek, row)?),
        };
        if row.retired_at.is_none() {
            active = Some(key.clone());
        }
        keys.push(PublishedKey { key, created_at: row.created_at, published_until: row.published_until });
    }
    Ok(active.map(|active| RingState { active, keys }))
}

fn new_stored_key(kek: &Kek, alg: SigningAlg, now: i64) -> Result<(SigningKey, StoredSigningKey), KeyError> {
    let (key, pkcs8) = SigningKey::generate(alg)?;
    let sealed = kek.seal(key.kid().as_bytes(), &pkcs8)?;
    let row = StoredSigningKey {
        kid: key.kid().to_owned(),
        alg: alg.as_str().to_owned(),
        sealed_private_key: sealed,
        created_at: now,
        retired_at: None,
        published_until: None,
    };
    Ok((key, row))
}

fn open_stored_key(kek: &Kek, row: &StoredSigningKey) -> Result<SigningKey, KeyError> {
    let alg = SigningAlg::parse(&row.alg)
        .ok_or_else(|| KeyError::Corrupt { kid: row.kid.clone(), reason: format!("unknown algorithm {}", row.alg) })?;
    let pkcs8 = kek.open(row.kid.as_bytes(), &row.sealed_private_key)?;
    let key = SigningKey::from_pkcs8(alg, &pkcs8)
        .map_err(|e| KeyError::Corrupt { kid: row.kid.clone(), reason: e.to_string() })?;
    if key.kid() != row.kid {
        return Err(KeyError::Corrupt { kid: row.kid.clone(), reason: "key does not match its id".into() });
    }
    Ok(key)
}
