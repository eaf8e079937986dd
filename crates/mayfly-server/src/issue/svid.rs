//! SPIFFE SVIDs: Mayfly's own X.509 CA (EC P-256) and JWT-SVID key (ES256).
//!
//! Both belong to one *generation* that is created, rotated and retired together.
//! The active generation signs; retired ones stay in the bundles until every SVID
//! they signed has expired. X.509-SVIDs follow the SPIFFE X509-SVID rules (one URI
//! SAN, `cA=false`, key usage `digitalSignature`, EKU server and client auth);
//! JWT-SVIDs the JWT-SVID rules (ES256, `aud` required, only `alg`/`kid`/`typ`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::keys::{Kek, KeyError, SigningAlg, SigningKey};
use crate::ledger::{LedgerError, Store, StoredSvidAuthority};

/// SVIDs are valid from a little before they are minted, for peers whose clocks lag.
const BACKDATE_SECS: i64 = 10;
/// Kept in the bundles this long after the last SVID a retired generation signed expires.
const PUBLISH_MARGIN_SECS: i64 = 60;

/// Why SVID authorities could not be loaded, rotated or used.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// A key could not be generated, sealed or opened.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate could not be built or parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Storage failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Claims could not be encoded.
    #[error("claims could not be encoded: {0}")]
    Encoding(#[from] serde_json::Error),
}

fn cert_err(e: impl std::fmt::Display) -> SvidError {
    SvidError::Certificate(e.to_string())
}

/// Lifetimes of the authorities and of what they sign.
#[derive(Debug, Clone, Copy)]
pub struct SvidLifetimes {
    /// A CA certificate's lifetime; a generation rotates at half of it.
    pub ca_ttl_secs: i64,
    /// The longest SVID any entry may get (bounds how long a retired generation stays published).
    pub max_svid_ttl_secs: i64,
}

/// One generation: a CA and a JWT-SVID key.
struct Generation {
    id: String,
    ca_cert: Vec<u8>,
    ca: Issuer<'static, KeyPair>,
    jwt_key: Arc<SigningKey>,
    created_at: i64,
    not_after: i64,
}

struct State {
    active: Arc<Generation>,
    /// Every generation in the bundles, the active one included, oldest first, with
    /// when it leaves them (set once retired).
    published: Vec<(Arc<Generation>, Option<i64>)>,
}

/// An X.509-SVID fresh from the CA.
#[derive(Clone)]
pub struct MintedX509Svid {
    /// The leaf certificate, DER.
    pub cert: Vec<u8>,
    /// Its private key, PKCS#8 DER. Secret.
    pub key_pkcs8: Vec<u8>,
    /// Hex serial number: the credential's id in the ledger.
    pub serial: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// The generation that signed it.
    pub authority: String,
    /// That generation's CA certificate, DER.
    pub issuer_cert: Vec<u8>,
}

// Hand-written: the private key and the token never reach a log through `{:?}`.
impl std::fmt::Debug for MintedX509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedX509Svid")
            .field("serial", &self.serial)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MintedJwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedJwtSvid")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A JWT-SVID fresh from the signer.
#[derive(Clone)]
pub struct MintedJwtSvid {
    /// The compact JWS. Secret.
    pub token: String,
    /// `jti`.
    pub jti: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// The signing key's id.
    pub kid: String,
}

/// Why a JWT-SVID did not validate. Messages name what was expected.
#[derive(Debug, thiserror::Error)]
pub enum JwtSvidInvalid {
    /// Not a well-formed JWS, or a header SPIFFE does not allow.
    #[error("malformed JWT-SVID: {0}")]
    Malformed(String),
    /// Its `kid` is not among the trust domain's JWT authorities.
    #[error("the JWT-SVID's key {0:?} is not in the trust domain's bundle")]
    UnknownKey(String),
    /// Signature, expiry, audience or subject failed.
    #[error("JWT-SVID is not valid: {0}")]
    Rejected(String),
}

/// The generations still published at `now` (reusing those in `known` instead of opening
/// their keys again) and the active one among them.
#[allow(clippy::type_complexity)]
fn open_published(
    kek: &Kek,
    rows: &[StoredSvidAuthority],
    now: i64,
    known: &[(Arc<Generation>, Option<i64>)],
) -> Result<(Option<Arc<Generation>>, Vec<(Arc<Generation>, Option<i64>)>), SvidError> {
    let mut published = Vec::new();
    let mut active = None;
    for row in rows {
        if !still_published(row.published_until, now) || row.not_after <= now {
            continue;
        }
        let generation = match known.iter().find(|(g, _)| g.id == row.id) {
            Some((g, _)) => g.clone(),
            None => Arc::new(open_generation(kek, row)?),
        };
        if row.retired_at.is_none() {
            active = Some(generation.clone());
        }
        published.push((generation, row.published_until));
    }
    Ok((active, published))
}

/// The trust domain's SVID authorities. Reads are lock-free.
pub struct SvidAuthorities {
    trust_domain: String,
    lifetimes: SvidLifetimes,
    state: ArcSwap<State>,
    /// Bumped when the bundles change, so streams push them.
    changed: watch::Sender<u64>,
    rotating: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SvidAuthorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidAuthorities").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl SvidAuthorities {
    /// Loads the stored generations (opening their keys with the KEK), creating the first if there is none.
    pub async fn load_or_create(
        store: &dyn Store,
        kek: &Kek,
        trust_domain: &str,
        lifetimes: SvidLifetimes,
    ) -> Result<Self, SvidError> {
        let now = crate::clock::now_unix();
        let rows = store.svid_authorities().await?;
        let (mut active, mut published) = open_published(kek, &rows, now, &[])?;
        if active.is_none() {
            // The first start, or the active CA expired while the server was down: that
            // one is retired as the new one is stored (only one may be active).
            let expired = rows.iter().find(|r| r.retired_at.is_none()).map(|r| (r.id.as_str(), now, now));
            let (generation, row) = new_generation(kek, trust_domain, lifetimes.ca_ttl_secs, now)?;
            match store.insert_svid_authority(&row, expired).await {
                Ok(()) => {
                    let generation = Arc::new(generation);
                    published.push((generation.clone(), None));
                    active = Some(generation);
                }
                // Another replica created one first (at most one generation is active): use that.
                Err(e) => {
                    (active, published) = open_published(kek, &store.svid_authorities().await?, now, &[])?;
                    if active.is_none() {
                        return Err(e.into());
                    }
                }
            }
        }
        let active =
            active.ok_or_else(|| SvidError::Ledger(LedgerError::Conflict("no active SVID authority".into())))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            lifetimes,
            state: ArcSwap::from_pointee(State { active, published }),
            changed: watch::channel(0).0,
            rotating: tokio::sync::Mutex::new(()),
        })
    }

    /// Re-reads the stored generations (another replica may have rotated them); streams
    /// are told when the bundles change.
    pub async fn reload(&self, store: &dyn Store, kek: &Kek) -> Result<(), SvidError> {
        let now = crate::clock::now_unix();
        let current = self.state.load_full();
        let (active, published) = open_published(kek, &store.svid_authorities().await?, now, &current.published)?;
        let Some(active) = active else { return Ok(()) };
        let ids = |p: &[(Arc<Generation>, Option<i64>)]| p.iter().map(|(g, u)| (g.id.clone(), *u)).collect::<Vec<_>>();
        if active.id != current.active.id || ids(&published) != ids(&current.published) {
            tracing::info!(authority = %active.id, "SVID authorities changed in storage; reloaded");
            self.publish(State { active, published });
        }
        Ok(())
    }

    /// The trust domain's SPIFFE ID, `spiffe://<td>`: the key of the bundle maps.
    pub fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.trust_domain)
    }

    /// Bundle changes as they happen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The X.509 bundle: every published CA certificate, DER, concatenated.
    pub fn x509_bundle(&self) -> Vec<u8> {
        self.x509_authorities().concat()
    }

    /// Every published CA certificate, DER, one by one.
    pub fn x509_authorities(&self) -> Vec<Vec<u8>> {
        let now = crate::clock::now_unix();
        self.published(now).map(|g| g.ca_cert.clone()).collect()
    }

    /// The JWT bundle: a JWK Set of every published JWT-SVID key (`use: jwt-svid`).
    pub fn jwt_bundle(&self) -> Value {
        json!({ "keys": self.jwt_authorities(crate::clock::now_unix()) })
    }

    /// The published JWT-SVID keys as JWKs with `use: jwt-svid`.
    fn jwt_authorities(&self, now: i64) -> Vec<Value> {
        self.published(now)
            .map(|g| {
                let mut jwk = g.jwt_key.public_jwk().clone();
                if let Some(o) = jwk.as_object_mut() {
                    o.insert("use".into(), "jwt-svid".into());
                }
                jwk
            })
            .collect()
    }

    /// The SPIFFE bundle (JWK Set with `x509-svid` and `jwt-svid` keys), as a bundle endpoint serves it.
    pub fn spiffe_bundle(&self, refresh_hint_secs: i64) -> Value {
        let now = crate::clock::now_unix();
        let mut keys: Vec<Value> = self.published(now).filter_map(|g| x509_authority_jwk(&g.ca_cert)).collect();
        keys.extend(self.jwt_authorities(now));
        json!({ "keys": keys, "spiffe_refresh_hint": refresh_hint_secs })
    }

    fn published(&self, now: i64) -> impl Iterator<Item = Arc<Generation>> {
        let state = self.state.load_full();
        let list: Vec<_> =
            state.published.iter().filter(|(_, until)| still_published(*until, now)).map(|(g, _)| g.clone()).collect();
        list.into_iter()
    }

    /// Drops generations whose publication has ended from the bundles; streams are told.
    pub fn prune(&self) {
        let now = crate::clock::now_unix();
        let state = self.state.load_full();
        if state.published.iter().all(|(_, until)| still_published(*until, now)) {
            return;
        }
        let published = state.published.iter().filter(|(_, until)| still_published(*until, now)).cloned().collect();
        self.publish(State { active: state.active.clone(), published });
    }

    /// Swaps the state in and tells the streams.
    fn publish(&self, state: State) {
        self.state.store(Arc::new(state));
        self.changed.send_modify(|v| *v += 1);
    }

    /// When the active generation is due for rotation (half its CA lifetime).
    pub fn rotation_due_at(&self) -> i64 {
        let a = self.state.load().active.clone();
        a.created_at + (a.not_after - a.created_at) / 2
    }

    /// A new generation signs from now on; the old one stays in the bundles until what it signed has expired.
    pub async fn rotate(&self, store: &dyn Store, kek: &Kek) -> Result<String, SvidError> {
        let _guard = self.rotating.lock().await;
        let now = crate::clock::now_unix();
        let (generation, row) = new_generation(kek, &self.trust_domain, self.lifetimes.ca_ttl_secs, now)?;
        let state = self.state.load_full();
        let old = state.active.clone();
        let published_until = (now + self.lifetimes.max_svid_ttl_secs).min(old.not_after) + PUBLISH_MARGIN_SECS;
        store.insert_svid_authority(&row, Some((&old.id, now, published_until))).await?;
        let generation = Arc::new(generation);
        let mut published: Vec<(Arc<Generation>, Option<i64>)> = state
            .published
            .iter()
            .filter(|(_, until)| still_published(*until, now))
            .map(|(g, until)| (g.clone(), if Arc::ptr_eq(g, &old) { Some(published_until) } else { *until }))
            .collect();
        published.push((generation.clone(), None));
        let id = generation.id.clone();
        self.publish(State { active: generation, published });
        tracing::info!(authority = %id, retired = %old.id, "SVID authorities rotated");
        Ok(id)
    }

    /// Mints an X.509-SVID for `spiffe_id` with a fresh P-256 key.
    pub fn mint_x509(
        &self,
        spiffe_id: &str,
        dns_names: &[String],
        ttl_secs: i64,
        now: i64,
    ) -> Result<MintedX509Svid, SvidError> {
        let g = self.state.load().active.clone();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Mayfly");
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(spiffe_id.try_into().map_err(cert_err)?)];
        for name in dns_names {
            sans.push(SanType::DnsName(name.as_str().try_into().map_err(cert_err)?));
        }
        params.subject_alt_names = sans;
        // Explicit cA=false: SPIFFE validators reject a leaf without basicConstraints.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let expires_at = (now + ttl_secs).min(g.not_after);
        params.not_before = timestamp(now - BACKDATE_SECS)?;
        params.not_after = timestamp(expires_at)?;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(&key, &g.ca).map_err(cert_err)?;
        Ok(MintedX509Svid {
            cert: cert.der().to_vec(),
            key_pkcs8: key.serialize_der(),
            serial: hex::encode(serial),
            issued_at: now,
            expires_at,
            authority: g.id.clone(),
            issuer_cert: g.ca_cert.clone(),
        })
    }

    /// Signs a JWT-SVID (ES256, `typ: JWT`) for `spiffe_id` and the audiences.
    pub fn mint_jwt(
        &self,
        spiffe_id: &str,
        audiences: &[String],
        ttl_secs: i64,
        now: i64,
    ) -> Result<MintedJwtSvid, SvidError> {
        let g = self.state.load().active.clone();
        let key = g.jwt_key.clone();
        let jti = crate::ids::time_ordered_id();
        // Never past its generation: a retired key leaves the bundle by then.
        let expires_at = (now + ttl_secs).min(g.not_after);
        let header = json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"});
        let claims = json!({"sub": spiffe_id, "aud": audiences, "exp": expires_at, "iat": now, "jti": jti});
        let token = key.sign_compact(&serde_json::to_vec(&header)?, &serde_json::to_vec(&claims)?)?;
        Ok(MintedJwtSvid { token, jti, issued_at: now, expires_at, kid: key.kid().to_owned() })
    }

    /// Validates a JWT-SVID of this trust domain for `audience`; returns its claims.
    pub fn validate_jwt(&self, token: &str, audience: &str) -> Result<serde_json::Map<String, Value>, JwtSvidInvalid> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let header = jsonwebtoken::decode_header(token).map_err(|e| JwtSvidInvalid::Malformed(e.to_string()))?;
        if header.alg != Algorithm::ES256 {
            return Err(JwtSvidInvalid::Malformed(format!(
                "algorithm {:?} is not this trust domain's (ES256)",
                header.alg
            )));
        }
        if header.typ.as_deref().is_some_and(|t| t != "JWT" && t != "JOSE") {
            return Err(JwtSvidInvalid::Malformed("typ must be JWT or JOSE when present".into()));
        }
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return Err(JwtSvidInvalid::Malformed("only the alg, kid and typ headers are allowed".into()));
        }
        let kid = header.kid.ok_or_else(|| JwtSvidInvalid::Malformed("kid is missing".into()))?;
        let now = crate::clock::now_unix();
        let key = self
            .published(now)
            .find(|g| g.jwt_key.kid() == kid)
            .map(|g| g.jwt_key.clone())
            .ok_or_else(|| JwtSvidInvalid::UnknownKey(kid.clone()))?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk().clone())
            .map_err(|e| JwtSvidInvalid::Malformed(format!("bundle key: {e}")))?;
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| JwtSvidInvalid::Malformed(e.to_string()))?;
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        v.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &decoding, &v)
            .map_err(|e| JwtSvidInvalid::Rejected(e.to_string()))?;
        let sub = data.claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        let in_domain = crate::spiffe::SpiffeId::parse(sub).is_ok_and(|id| id.trust_domain() == self.trust_domain);
        if !in_domain {
            return Err(JwtSvidInvalid::Rejected("sub is not a SPIFFE ID of this trust domain".into()));
        }
        Ok(data.claims)
    }
}

/// Whether a generation published until `until` (`None`: no end set) is still in the bundles.
fn still_published(until: Option<i64>, now: i64) -> bool {
    until.is_none_or(|t| t > now)
}

fn timestamp(unix: i64) -> Result<time::OffsetDateTime, SvidError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(cert_err)
}

/// 16 random bytes with the high bit clear: a positive serial of at least 64 random bits.
fn random_serial() -> Vec<u8> {
    let mut serial = crate::ids::random_bytes(16);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial
}

fn new_generation(
    kek: &Kek,
    trust_domain: &str,
    ca_ttl_secs: i64,
    now: i64,
) -> Result<(Generation, StoredSvidAuthority), SvidError> {
    let id = format!("svid_{}", crate::ids::time_ordered_id());
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Mayfly");
    dn.push(DnType::CommonName, format!("Mayfly SVID CA {trust_domain}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into().map_err(cert_err)?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let not_after = now + ca_ttl_secs;
    params.not_before = timestamp(now - BACKDATE_SECS)?;
    params.not_after = timestamp(not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    let cert = params.self_signed(&ca_key).map_err(cert_err)?;
    let (_, jwt_pkcs8) = SigningKey::generate(SigningAlg::Es256)?;
    let row = StoredSvidAuthority {
        id: id.clone(),
        ca_cert: cert.der().to_vec(),
        sealed_ca_key: kek.seal(format!("x509-ca:{id}").as_bytes(), &ca_key.serialize_der())?,
        sealed_jwt_key: kek.seal(format!("jwt-svid:{id}").as_bytes(), &jwt_pkcs8)?,
        created_at: now,
        not_after,
        retired_at: None,
        published_until: None,
    };
    let generation = open_generation(kek, &row)?;
    Ok((generation, row))
}

fn open_generation(kek: &Kek, row: &StoredSvidAuthority) -> Result<Generation, SvidError> {
    let ca_pkcs8 = kek.open(format!("x509-ca:{}", row.id).as_bytes(), &row.sealed_ca_key)?;
    let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(&ca_pkcs8.as_slice().into(), &PKCS_ECDSA_P256_SHA256)
        .map_err(cert_err)?;
    let ca = Issuer::from_ca_cert_der(&row.ca_cert.as_slice().into(), ca_key).map_err(cert_err)?;
    let jwt_pkcs8 = kek.open(format!("jwt-svid:{}", row.id).as_bytes(), &row.sealed_jwt_key)?;
    let jwt_key = Arc::new(SigningKey::from_pkcs8(SigningAlg::Es256, &jwt_pkcs8)?);
    Ok(Generation {
        id: row.id.clone(),
        ca_cert: row.ca_cert.clone(),
        ca,
        jwt_key,
        created_at: row.created_at,
        not_after: row.not_after,
    })
}

/// An `x509-svid` JWK for a CA certificate (`x5c` holds it; SPIFFE bundles carry no `kid` for these).
fn x509_authority_jwk(der: &[u8]) -> Option<Value> {
    use base64::engine::general_purpose::STANDARD;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let spki = cert.public_key();
    let point = spki.subject_public_key.data.as_ref();
    if point.len() != 65 || point[0] != 4 {
        return None;
    }
    Some(json!({
        "kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
        "use": "x509-svid", "x5c": [STANDARD.encode(der)],
    }))
}
