//! The key ring: the active signing key plus every retired key still published
//! in the JWKS, swapped atomically on rotation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mayfly_proto::SigningKeyInfo;

use super::{Kek, KeyError, KeySpec, SigningAlg, SigningKey};
use crate::ledger::{LedgerError, Store, StoredSigningKey};

/// The profile every configuration has: it signs access tokens unless another profile
/// claims their audience.
pub const DEFAULT_PROFILE: &str = "default";

/// At most this many keys are published at once, over every profile: AWS reads only
/// about 100 keys of a JWKS, and a short set is fetched and searched faster everywhere.
pub const MAX_PUBLISHED_KEYS: usize = 24;

/// A signing profile: a name, the kind of key it signs with, and how long a new key is
/// published before it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningProfile {
    /// `default`, or the name configured in `[[keys.profiles]]`.
    pub name: String,
    /// Algorithm and key size.
    pub spec: KeySpec,
    /// Seconds between publishing a rotated key and its first signature.
    pub lead_secs: i64,
}

/// A key, when it signs, and how long it stays in the JWKS.
#[derive(Debug, Clone)]
struct PublishedKey {
    key: Arc<SigningKey>,
    profile: String,
    created_at: i64,
    /// Signs from here until `retired_at` (its successor's `activates_at`).
    activates_at: i64,
    /// When it stops signing; `None` while it is the newest key of its profile.
    retired_at: Option<i64>,
    published_until: Option<i64>,
}

impl PublishedKey {
    fn published_at(&self, now: i64) -> bool {
        self.published_until.is_none_or(|t| t > now)
    }

    /// Whether it signs at `now`: within `[activates_at, retired_at)`. Times are whole
    /// seconds, so a key rotated in the second it was created has an empty window.
    fn signs_at(&self, now: i64) -> bool {
        self.activates_at <= now && self.retired_at.is_none_or(|r| r > now) && self.published_at(now)
    }
}

#[derive(Debug)]
struct RingState {
    keys: Vec<PublishedKey>,
}

impl RingState {
    /// The key of `profile` that signs at `now`: the one whose window holds `now`; where
    /// windows overlap (a pending key superseded by one that activates earlier), the
    /// newest key of the profile, then the one that became active last.
    fn active(&self, profile: &str, now: i64) -> Option<&PublishedKey> {
        self.keys
            .iter()
            .filter(|k| k.profile == profile && k.signs_at(now))
            .max_by_key(|k| (k.retired_at.is_none(), k.activates_at, k.created_at))
    }
}

/// The signing keys in use, per profile. Reads are lock-free.
#[derive(Debug)]
pub struct KeyRing {
    profiles: Vec<SigningProfile>,
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
    /// No profile has this name.
    #[error("no signing profile is named {0:?}")]
    UnknownProfile(String),
    /// Publishing one more key would make the JWKS too long.
    #[error(
        "{published} keys are published already (at most {MAX_PUBLISHED_KEYS}): wait until retired keys \
         leave the JWKS (their tokens have expired) before rotating again"
    )]
    TooManyKeys {
        /// Keys published now.
        published: usize,
    },
}

impl KeyRing {
    /// Loads the stored keys (opening them with the KEK), creating each profile's first key
    /// if it has none. A profile whose active key is of another kind than configured (the
    /// operator changed its algorithm) is rotated at once; the old key stays published for
    /// `publish_for_secs`.
    pub async fn load_or_create(
        store: &dyn Store,
        kek: &Kek,
        profiles: Vec<SigningProfile>,
        publish_for_secs: i64,
    ) -> Result<Self, KeyRingError> {
        let now = crate::clock::now_unix();
        let ring = Self { profiles, state: ArcSwap::from_pointee(RingState { keys: Vec::new() }) };
        ring.state.store(Arc::new(open_rows(kek, &store.signing_keys().await?, now, &[])?));
        for profile in &ring.profiles {
            let active = ring.state.load().active(&profile.name, now).map(|k| k.key.alg());
            match active {
                None => {
                    let (_, row) = new_stored_key(kek, profile, now, None)?;
                    // Another replica may have stored the first key a moment earlier (only one
                    // may be active per profile): then the reload below picks that one up.
                    if let Err(e) = store.insert_signing_key(&row).await {
                        tracing::debug!(profile = %profile.name, error = %e, "first key stored by another replica");
                    }
                }
                Some(alg) if alg != profile.spec.alg() => {
                    tracing::warn!(profile = %profile.name, from = alg.as_str(), to = profile.spec.alg().as_str(),
                        "the profile's algorithm changed in the config; rotating its key");
                    if let Err(e) = ring.rotate_now(store, kek, profile, publish_for_secs, 0).await {
                        tracing::debug!(profile = %profile.name, error = %e, "rotated by another replica");
                    }
                }
                Some(_) => {}
            }
            ring.state.store(Arc::new(open_rows(kek, &store.signing_keys().await?, now, &ring.state.load().keys)?));
            if ring.state.load().active(&profile.name, now).is_none() {
                return Err(KeyError::Corrupt {
                    kid: "-".into(),
                    reason: format!("no active signing key for profile {:?} in storage", profile.name),
                }
                .into());
            }
        }
        Ok(ring)
    }

    /// Re-reads the stored keys (another replica may have rotated them); returns whether
    /// anything changed. Keys already open are reused, not decrypted again.
    pub async fn reload(&self, store: &dyn Store, kek: &Kek) -> Result<bool, KeyRingError> {
        let now = crate::clock::now_unix();
        let current = self.state.load_full();
        let next = open_rows(kek, &store.signing_keys().await?, now, &current.keys)?;
        if self.profiles.iter().any(|p| next.active(&p.name, now).is_none()) {
            return Ok(false);
        }
        let view = |s: &RingState| {
            s.keys
                .iter()
                .map(|k| (k.key.kid().to_owned(), k.activates_at, k.retired_at, k.published_until))
                .collect::<Vec<_>>()
        };
        if view(&next) == view(&current) {
            return Ok(false);
        }
        tracing::info!("signing keys changed in storage; reloaded");
        self.state.store(Arc::new(next));
        Ok(true)
    }

    /// The profiles, as configured.
    pub fn profiles(&self) -> &[SigningProfile] {
        &self.profiles
    }

    /// The key that signs new tokens of the default profile.
    pub fn active(&self) -> Arc<SigningKey> {
        self.active_for(DEFAULT_PROFILE).unwrap_or_else(|| {
            // Unreachable after load: every profile has an active key, and one is never
            // dropped from the ring before its successor signs.
            self.state.load().keys.last().map(|k| k.key.clone()).expect("a loaded key ring holds a key")
        })
    }

    /// The key that signs for `profile` now, if the profile exists.
    pub fn active_for(&self, profile: &str) -> Option<Arc<SigningKey>> {
        self.state.load().active(profile, crate::clock::now_unix()).map(|k| k.key.clone())
    }

    /// A published key by id (active, pre-published, or retired but still within its
    /// publication window).
    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
        let now = crate::clock::now_unix();
        self.state.load().keys.iter().find(|k| k.key.kid() == kid && k.published_at(now)).map(|k| k.key.clone())
    }

    /// The RFC 7517 JWK Set of every published key, of every profile.
    pub fn jwks(&self) -> serde_json::Value {
        let now = crate::clock::now_unix();
        let keys: Vec<_> =
            self.state.load().keys.iter().filter(|k| k.published_at(now)).map(|k| k.key.public_jwk().clone()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// The published keys, for the admin API.
    pub fn infos(&self) -> Vec<SigningKeyInfo> {
        let now = crate::clock::now_unix();
        let state = self.state.load();
        state
            .keys
            .iter()
            .filter(|k| k.published_at(now))
            .map(|k| SigningKeyInfo {
                kid: k.key.kid().to_owned(),
                alg: k.key.alg().as_str().to_owned(),
                active: state.active(&k.profile, now).is_some_and(|a| Arc::ptr_eq(&a.key, &k.key)),
                created_at: k.created_at,
                published_until: k.published_until,
                profile: k.profile.clone(),
                activates_at: (k.activates_at > k.created_at).then_some(k.activates_at),
            })
            .collect()
    }

    /// Rotates `profile`: a new key is published now and signs after the profile's lead
    /// time; the old one stops signing then and stays published `publish_for_secs`
    /// longer, long enough for every token it signed to expire.
    pub async fn rotate(
        &self,
        store: &dyn Store,
        kek: &Kek,
        profile: &str,
        publish_for_secs: i64,
    ) -> Result<SigningKeyInfo, KeyRingError> {
        let profile = self
            .profiles
            .iter()
            .find(|p| p.name == profile)
            .ok_or_else(|| KeyRingError::UnknownProfile(profile.into()))?;
        let now = crate::clock::now_unix();
        let published = self.state.load().keys.iter().filter(|k| k.published_at(now)).count();
        if published >= MAX_PUBLISHED_KEYS {
            return Err(KeyRingError::TooManyKeys { published });
        }
        self.rotate_now(store, kek, profile, publish_for_secs, profile.lead_secs).await
    }

    async fn rotate_now(
        &self,
        store: &dyn Store,
        kek: &Kek,
        profile: &SigningProfile,
        publish_for_secs: i64,
        lead_secs: i64,
    ) -> Result<SigningKeyInfo, KeyRingError> {
        let now = crate::clock::now_unix();
        let activates_at = now + lead_secs.max(0);
        let state = self.state.load_full();
        // The newest key of the profile (the one not retired), even if it is itself still
        // waiting for its turn.
        let old = state
            .keys
            .iter()
            .find(|k| k.profile == profile.name && k.retired_at.is_none())
            .ok_or_else(|| KeyRingError::UnknownProfile(profile.name.clone()))?;
        let (key, row) = new_stored_key(kek, profile, now, (lead_secs > 0).then_some(activates_at))?;
        let published_until = activates_at + publish_for_secs;
        store.rotate_signing_key(&row, old.key.kid(), activates_at, published_until).await?;
        let key = Arc::new(key);
        let mut keys: Vec<PublishedKey> = state
            .keys
            .iter()
            .filter(|k| k.published_at(now))
            .cloned()
            .map(|mut k| {
                if Arc::ptr_eq(&k.key, &old.key) {
                    k.retired_at = Some(activates_at);
                    k.published_until = Some(published_until);
                }
                k
            })
            .collect();
        keys.push(PublishedKey {
            key: key.clone(),
            profile: profile.name.clone(),
            created_at: now,
            activates_at: if lead_secs > 0 { activates_at } else { i64::MIN },
            retired_at: None,
            published_until: None,
        });
        self.state.store(Arc::new(RingState { keys }));
        Ok(SigningKeyInfo {
            kid: key.kid().to_owned(),
            alg: key.alg().as_str().to_owned(),
            active: lead_secs <= 0,
            created_at: now,
            published_until: None,
            profile: profile.name.clone(),
            activates_at: (lead_secs > 0).then_some(activates_at),
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

/// The keys still published at `now`, reusing keys in `known`.
fn open_rows(kek: &Kek, rows: &[StoredSigningKey], now: i64, known: &[PublishedKey]) -> Result<RingState, KeyError> {
    let mut keys = Vec::new();
    for row in rows {
        if row.published_until.is_some_and(|t| t <= now) {
            continue;
        }
        let key = match known.iter().find(|k| k.key.kid() == row.kid) {
            Some(k) => k.key.clone(),
            None => Arc::new(open_stored_key(kek, row)?),
        };
        keys.push(PublishedKey {
            key,
            profile: row.profile.clone(),
            created_at: row.created_at,
            // A key that signed from its creation signs from "always": a replica whose clock
            // is a little behind the one that made it must not find no key at all.
            activates_at: row.activates_at.unwrap_or(i64::MIN),
            retired_at: row.retired_at,
            published_until: row.published_until,
        });
    }
    Ok(RingState { keys })
}

fn new_stored_key(
    kek: &Kek,
    profile: &SigningProfile,
    now: i64,
    activates_at: Option<i64>,
) -> Result<(SigningKey, StoredSigningKey), KeyError> {
    let (key, pkcs8) = SigningKey::generate(profile.spec)?;
    let sealed = kek.seal(key.kid().as_bytes(), &pkcs8)?;
    let row = StoredSigningKey {
        kid: key.kid().to_owned(),
        alg: profile.spec.alg().as_str().to_owned(),
        sealed_private_key: sealed,
        created_at: now,
        retired_at: None,
        published_until: None,
        profile: profile.name.clone(),
        activates_at,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sqlite::SqliteStore;

    fn profiles(lead_secs: i64) -> Vec<SigningProfile> {
        vec![
            SigningProfile { name: DEFAULT_PROFILE.into(), spec: KeySpec::EdDsa, lead_secs: 0 },
            SigningProfile { name: "clouds".into(), spec: KeySpec::Rs256(crate::keys::RsaBits::Bits2048), lead_secs },
        ]
    }

    #[tokio::test]
    async fn a_key_rotated_in_the_second_it_was_made_stops_signing_at_once() {
        // Times are whole seconds: the old and the new key share their second here, and
        // the new one must sign, every time, on this replica and on one that reloads.
        let store = SqliteStore::in_memory().await.unwrap();
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let ring = KeyRing::load_or_create(&store, &kek, profiles(0), 600).await.unwrap();
        let other = KeyRing::load_or_create(&store, &kek, profiles(0), 600).await.unwrap();
        for _ in 0..5 {
            let info = ring.rotate(&store, &kek, DEFAULT_PROFILE, 600).await.unwrap();
            assert_eq!(ring.active().kid(), info.kid);
            other.reload(&store, &kek).await.unwrap();
            assert_eq!(other.active().kid(), info.kid, "a replica that reloads signs with it too");
        }
        assert_eq!(ring.active_for("clouds").unwrap().alg(), SigningAlg::Rs256);
        assert!(ring.active_for("nope").is_none());
    }

    #[tokio::test]
    async fn a_pre_published_key_waits_and_a_superseded_one_never_signs() {
        let store = SqliteStore::in_memory().await.unwrap();
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let ring = KeyRing::load_or_create(&store, &kek, profiles(3600), 600).await.unwrap();
        let first = ring.active_for("clouds").unwrap().kid().to_owned();
        let next = ring.rotate(&store, &kek, "clouds", 600).await.unwrap();
        assert!(!next.active && next.activates_at.is_some());
        assert!(ring.find(&next.kid).is_some(), "published before it signs");
        assert_eq!(ring.active_for("clouds").unwrap().kid(), first, "the old key signs until then");
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 3);
        // Seen from the future: the pending key signs from its time on.
        let state = ring.state.load();
        let later = crate::clock::now_unix() + 3601;
        assert_eq!(state.active("clouds", later).unwrap().key.kid(), next.kid);
    }

    #[tokio::test]
    async fn a_replica_whose_clock_is_behind_still_finds_a_signing_key() {
        let store = SqliteStore::in_memory().await.unwrap();
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let ring = KeyRing::load_or_create(&store, &kek, profiles(0), 600).await.unwrap();
        let info = ring.rotate(&store, &kek, DEFAULT_PROFILE, 600).await.unwrap();
        let other = KeyRing::load_or_create(&store, &kek, profiles(0), 600).await.unwrap();
        // Seen five seconds earlier than the key was made: the new key still signs.
        let behind = crate::clock::now_unix() - 5;
        assert_eq!(other.state.load().active(DEFAULT_PROFILE, behind).unwrap().key.kid(), info.kid);
        assert!(other.state.load().active("clouds", behind).is_some());
    }

    #[tokio::test]
    async fn rotation_stops_at_the_published_key_cap() {
        let store = SqliteStore::in_memory().await.unwrap();
        let kek = Kek::from_bytes(&[7u8; 32]).unwrap();
        let ring = KeyRing::load_or_create(&store, &kek, profiles(0), 600).await.unwrap();
        let mut refused = None;
        for _ in 0..MAX_PUBLISHED_KEYS + 2 {
            if let Err(e) = ring.rotate(&store, &kek, DEFAULT_PROFILE, 600).await {
                refused = Some(e);
                break;
            }
        }
        assert!(matches!(refused, Some(KeyRingError::TooManyKeys { .. })), "{refused:?}");
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), MAX_PUBLISHED_KEYS);
    }
}
