//! Verifying a request's Mayfly token: signature (JWKS fetched, cached, refreshed on
//! rotation), `typ`, `iss`, `aud`, lifetime, binding (DPoP or client certificate),
//! revocation (from the feed) and limited use (counted by the broker).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::claims::AccessClaims;
use crate::dpop::{DpopError, DpopVerifier, ProofContext, certificate_thumbprint};
use crate::follow::{FeedCredential, RevocationFollower};
use crate::now;
use crate::revocation::RevocationKind;
use crate::token_cache::TokenCache;

/// Clock skew allowed on `nbf`, in seconds.
const LEEWAY_SECS: i64 = 30;
/// Longest token accepted.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most tokens whose signature check is remembered.
const VERIFIED_CACHE_ENTRIES: usize = 100_000;
/// The JWKS is fetched again for an unknown `kid` at most this often.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(5);

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The broker's URL: the `iss` of its tokens and the base of its JWKS and feed.
    pub issuer: String,
    /// This resource server's audience.
    pub audience: String,
    /// This resource server's own URL as clients address it (scheme, host, port), for
    /// DPoP `htu`. Set it in production (behind TLS or a proxy especially): without it
    /// the request's `Host` header and `http` are used. The layer uses the request's
    /// path as it arrives, so mount it where paths are not rewritten (not under `nest`).
    pub public_url: Option<String>,
    /// A bearer credential for the revocation feed and use counting: a Mayfly token for
    /// `urn:mayfly:introspect:<this resource server's audience>` (a verifier introspects
    /// only tokens of its own audience), or an admin token. Without it (or a
    /// `feed_credential_source`) revocations are not followed.
    pub feed_credential: Option<String>,
    /// Where fresh feed credentials come from, asked again whenever the broker refuses
    /// the current one: a verifier token expires (and its stream ends) with
    /// `tokens.max_ttl`, and is revoked with everything else by a revocation of `all`.
    /// Takes precedence over `feed_credential`.
    pub feed_credential_source: Option<crate::follow::CredentialSource>,
    /// With a feed: how long the index may go without hearing from the feed before
    /// tokens are refused (`BrokerUnavailable`, 503) rather than verified against
    /// revocations that may be stale. Default 5 minutes; `None` keeps verifying (fails open).
    pub max_feed_staleness: Option<Duration>,
    /// How old a DPoP proof may be, in seconds.
    pub dpop_max_age_secs: i64,
    /// The HTTP client (add the broker's CA for https).
    pub http: reqwest::Client,
}

impl VerifierConfig {
    /// Defaults for a broker at `issuer` and a resource server for `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            audience: audience.into(),
            public_url: None,
            feed_credential: None,
            feed_credential_source: None,
            max_feed_staleness: Some(Duration::from_secs(300)),
            dpop_max_age_secs: 60,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
        }
    }
}

/// Why a request's token is refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No `Authorization: Bearer` or `DPoP` header.
    #[error("no access token: send Authorization: Bearer <token> or DPoP <token>")]
    Missing,
    /// Not a compact JWS with JSON parts, or too large.
    #[error("the token is malformed")]
    Malformed,
    /// Not `typ: at+jwt`, or an algorithm Mayfly does not sign with.
    #[error("the token is not a Mayfly access token")]
    WrongType,
    /// Signed by no published key, or the signature does not verify.
    #[error("the token signature does not verify")]
    BadSignature,
    /// Another issuer.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// Another audience.
    #[error("the token is for another audience")]
    WrongAudience,
    /// Past `exp`.
    #[error("the token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Revoked (learned from the feed).
    #[error("the token has been revoked ({})", .0.as_str())]
    Revoked(RevocationKind),
    /// A DPoP-bound token without a valid proof, or a bad proof.
    #[error(transparent)]
    Dpop(#[from] DpopError),
    /// A DPoP-bound token sent as a bearer token, or a bound token without its proof.
    #[error("the token is bound to a DPoP key: send Authorization: DPoP <token> with a DPoP proof")]
    DpopRequired,
    /// `Authorization: DPoP` with a token that is not DPoP-bound.
    #[error("the token is not DPoP-bound: send it as Authorization: Bearer")]
    NotDpopBound,
    /// An mTLS-bound token without the matching client certificate.
    #[error("the token is bound to a client certificate that this connection did not present")]
    CertificateMismatch,
    /// Presented from another context than it was issued in (another pod, node, run).
    #[error("the token was issued in another context ({0} differs)")]
    ContextMismatch(String),
    /// A limited-use token that has been used up.
    #[error("the token has been used as many times as it may be")]
    UsedUp,
    /// The broker's keys (or use counter) could not be reached.
    #[error("cannot reach the broker: {0}")]
    BrokerUnavailable(String),
}

impl VerifyError {
    /// The HTTP status a resource server answers with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            VerifyError::BrokerUnavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3, RFC 9449 §7.1).
    pub fn www_authenticate(&self) -> String {
        let desc = self.to_string().replace('"', "'");
        match self {
            VerifyError::Missing => r#"Bearer, DPoP algs="ES256 ES384 EdDSA RS256 PS256""#.to_owned(),
            VerifyError::Dpop(e) => format!(r#"DPoP error="{}", error_description="{desc}""#, e.error_code()),
            VerifyError::DpopRequired => format!(r#"DPoP error="invalid_token", error_description="{desc}""#),
            _ => format!(r#"Bearer error="invalid_token", error_description="{desc}""#),
        }
    }
}

/// What a request presented.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `DPoP` header.
    pub dpop: Option<&'a str>,
    /// HTTP method.
    pub method: &'a str,
    /// The URL the client addressed (for DPoP `htu`).
    pub url: &'a str,
    /// The TLS client certificate (DER), when the connection presented one.
    pub client_cert: Option<&'a [u8]>,
}

/// How a verified token was bound to its presenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A bearer token.
    None,
    /// DPoP: the proof's key thumbprint.
    Dpop(String),
    /// mTLS: the certificate thumbprint.
    Certificate(String),
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its claims.
    pub claims: AccessClaims,
    /// Its binding.
    pub binding: Binding,
}

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
}

/// The token of an `Authorization` header, and whether it came with the `DPoP` scheme
/// (`Bearer` otherwise; any other scheme, or none, is [`VerifyError::Missing`]).
pub fn split_authorization(authorization: Option<&str>) -> Result<(bool, &str), VerifyError> {
    let auth = authorization.ok_or(VerifyError::Missing)?;
    let (scheme, token) = auth.split_once(' ').ok_or(VerifyError::Missing)?;
    let token = token.trim();
    let dpop_scheme = scheme.eq_ignore_ascii_case("dpop");
    if (!dpop_scheme && !scheme.eq_ignore_ascii_case("bearer")) || token.is_empty() {
        return Err(VerifyError::Missing);
    }
    Ok((dpop_scheme, token))
}

/// Checks that the presenter of a verified token holds what the token is bound to: for
/// `cnf.jkt`, the `DPoP` scheme and a proof of that key for this request (`htm`, `htu`,
/// `ath`, single use); for `cnf.x5t#S256`, the same client certificate. An unbound token
/// must come as `Bearer`. Shared by resource servers and the broker's own endpoints.
pub fn check_binding(
    claims: &AccessClaims,
    token: &str,
    dpop_scheme: bool,
    req: &Presented<'_>,
    dpop: &DpopVerifier,
    now: i64,
) -> Result<Binding, VerifyError> {
    let cnf = claims.cnf.clone().unwrap_or_default();
    let binding = match (&cnf.jkt, dpop_scheme) {
        (Some(jkt), true) => {
            let proof = req.dpop.ok_or(VerifyError::DpopRequired)?;
            let cx =
                ProofContext { method: req.method, url: req.url, now, access_token: Some(token), bound_jkt: Some(jkt) };
            Binding::Dpop(dpop.verify(proof, &cx)?.jkt)
        }
        (Some(_), false) => return Err(VerifyError::DpopRequired),
        (None, true) => return Err(VerifyError::NotDpopBound),
        (None, false) => Binding::None,
    };
    match (&cnf.x5t_s256, binding) {
        (Some(x5t), b) => {
            let presented = req.client_cert.map(certificate_thumbprint);
            if presented.as_deref() != Some(x5t.as_str()) {
                return Err(VerifyError::CertificateMismatch);
            }
            Ok(if b == Binding::None { Binding::Certificate(x5t.clone()) } else { b })
        }
        (None, b) => Ok(b),
    }
}

/// Verifies Mayfly tokens for one resource server. Cheap to share (`Arc`).
pub struct Verifier {
    cfg: VerifierConfig,
    keys: RwLock<Keys>,
    refresh: tokio::sync::Mutex<()>,
    dpop: DpopVerifier,
    revocations: Arc<RevocationFollower>,
    /// Keys given at construction: never fetched.
    fixed_keys: bool,
    /// Claims of tokens whose signature, issuer and audience were checked, by SHA-256 of
    /// the token: a client presents the same token many times, and the signature check
    /// is the largest cost. Lifetime, revocation and binding are checked every time.
    verified: TokenCache<Arc<AccessClaims>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("issuer", &self.cfg.issuer).field("audience", &self.cfg.audience).finish()
    }
}

impl Verifier {
    /// Fetches the broker's keys and, with a feed credential, starts following revocations.
    pub async fn new(cfg: VerifierConfig) -> Result<Arc<Self>, VerifyError> {
        let dpop = DpopVerifier::new(cfg.dpop_max_age_secs, 200_000, None);
        let this = Arc::new(Self {
            cfg,
            keys: RwLock::new(Keys { by_kid: HashMap::new(), fetched: None }),
            refresh: tokio::sync::Mutex::new(()),
            dpop,
            revocations: Arc::new(RevocationFollower::default()),
            fixed_keys: false,
            verified: TokenCache::new(VERIFIED_CACHE_ENTRIES),
        });
        this.refresh_keys().await?;
        if let Some(feed) = this.feed() {
            // Caught up before the first request is verified; then followed live.
            this.revocations
                .poll_with(&this.cfg.http, &this.cfg.issuer, &feed)
                .await
                .map_err(|e| VerifyError::BrokerUnavailable(format!("revocation feed: {e}")))?;
            tokio::spawn(this.revocations.clone().run(this.cfg.http.clone(), this.cfg.issuer.clone(), feed));
        }
        Ok(this)
    }

    /// A verifier with a fixed key set: no fetching and no revocation feed (offline
    /// use, tests, benchmarks). An unknown `kid` is refused.
    pub fn from_jwks(cfg: VerifierConfig, set: &JwkSet) -> Arc<Self> {
        let this = Arc::new(Self {
            dpop: DpopVerifier::new(cfg.dpop_max_age_secs, 200_000, None),
            cfg,
            keys: RwLock::new(Keys { by_kid: HashMap::new(), fetched: None }),
            refresh: tokio::sync::Mutex::new(()),
            revocations: Arc::new(RevocationFollower::default()),
            fixed_keys: true,
            verified: TokenCache::new(VERIFIED_CACHE_ENTRIES),
        });
        this.install_keys(set);
        this
    }

    /// How the revocation feed is authenticated, if it is followed.
    fn feed(&self) -> Option<FeedCredential> {
        match (&self.cfg.feed_credential_source, &self.cfg.feed_credential) {
            (Some(source), _) => Some(FeedCredential::Source(source.clone())),
            (None, Some(c)) => Some(FeedCredential::Fixed(c.clone())),
            (None, None) => None,
        }
    }

    /// The revocations followed so far.
    pub fn revocations(&self) -> &RevocationFollower {
        &self.revocations
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.cfg
    }

    async fn refresh_keys(&self) -> Result<(), VerifyError> {
        let url = format!("{}/.well-known/jwks.json", self.cfg.issuer);
        let set: JwkSet = self
            .cfg
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| VerifyError::BrokerUnavailable(format!("JWKS: {e}")))?
            .json()
            .await
            .map_err(|e| VerifyError::BrokerUnavailable(format!("JWKS: {e}")))?;
        self.install_keys(&set);
        Ok(())
    }

    /// Replaces the keys with the signing keys of `set` (EdDSA, ES256 and RS256, the algorithms Mayfly signs with).
    fn install_keys(&self, set: &JwkSet) {
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk.common.key_algorithm) else { continue };
            let alg = match alg {
                jsonwebtoken::jwk::KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                jsonwebtoken::jwk::KeyAlgorithm::ES256 => Algorithm::ES256,
                jsonwebtoken::jwk::KeyAlgorithm::RS256 => Algorithm::RS256,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                by_kid.insert(kid, (key, alg));
            }
        }
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A key that left the set no longer vouches for anything remembered.
        if keys.by_kid.keys().any(|kid| !by_kid.contains_key(kid)) {
            self.verified.clear();
        }
        *keys = Keys { by_kid, fetched: Some(Instant::now()) };
    }

    fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_kid.get(kid).cloned()
    }

    /// The key for `kid`, refreshing the JWKS (rate-limited) when it is unknown: a rotation.
    async fn key_refreshing(&self, kid: &str) -> Result<(DecodingKey, Algorithm), VerifyError> {
        if let Some(k) = self.key(kid) {
            return Ok(k);
        }
        if self.fixed_keys {
            return Err(VerifyError::BadSignature);
        }
        let _one = self.refresh.lock().await;
        if let Some(k) = self.key(kid) {
            return Ok(k);
        }
        let recent = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fetched
            .is_some_and(|t| t.elapsed() < JWKS_MIN_REFRESH);
        if !recent {
            self.refresh_keys().await?;
        }
        self.key(kid).ok_or(VerifyError::BadSignature)
    }

    /// Verifies a token alone (no binding): signature, `typ`, `iss`, `aud`, lifetime, revocation.
    pub async fn verify_token(&self, token: &str, now: i64) -> Result<AccessClaims, VerifyError> {
        let claims = match self.verified.get(token, now) {
            Some(c) => c,
            None => {
                let c = Arc::new(self.check_signature(token).await?);
                self.verified.insert(token, c.clone(), c.exp, now);
                c
            }
        };
        if claims.exp <= now {
            return Err(VerifyError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
            return Err(VerifyError::NotYetValid);
        }
        // A feed that has not answered for too long may hide revocations: refuse rather
        // than trust a stale index.
        if !self.fixed_keys
            && self.feed().is_some()
            && let Some(bound) = self.cfg.max_feed_staleness
            && self.revocations.synced_ago().is_none_or(|ago| ago > bound)
        {
            return Err(VerifyError::BrokerUnavailable(format!(
                "the revocation feed has not answered for more than {} s",
                bound.as_secs()
            )));
        }
        if let Some(kind) = self.revocations.revoked_by(&claims.facts()) {
            return Err(VerifyError::Revoked(kind));
        }
        Ok(AccessClaims::clone(&claims))
    }

    /// The time-independent part: shape, type, signature, issuer, audience.
    async fn check_signature(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.typ.as_deref().map(str::to_ascii_lowercase).as_deref() != Some("at+jwt") {
            return Err(VerifyError::WrongType);
        }
        let kid = header.kid.ok_or(VerifyError::BadSignature)?;
        let (key, alg) = self.key_refreshing(&kid).await?;
        if alg != header.alg {
            return Err(VerifyError::BadSignature);
        }
        let mut v = Validation::new(alg);
        // Checked with Mayfly's own errors.
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        let claims: AccessClaims = jsonwebtoken::decode(token, &key, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => VerifyError::BadSignature,
                _ => VerifyError::Malformed,
            })?
            .claims;
        if claims.iss != self.cfg.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != self.cfg.audience {
            return Err(VerifyError::WrongAudience);
        }
        Ok(claims)
    }

    /// Verifies a request: its token, and that the presenter holds what the token is bound to.
    pub async fn verify(&self, req: &Presented<'_>) -> Result<Verified, VerifyError> {
        let (dpop_scheme, token) = split_authorization(req.authorization)?;
        let now = now();
        let claims = self.verify_token(token, now).await?;
        let binding = check_binding(&claims, token, dpop_scheme, req, &self.dpop, now)?;
        if claims.max_uses.is_some() {
            self.count_use(token).await?;
        }
        Ok(Verified { claims, binding })
    }

    /// [`Verifier::verify`], and the presenter's current context (what the resource
    /// server knows of its caller, e.g. the pod uid behind the connection) must match the
    /// context the token was issued in.
    pub async fn verify_in_context(
        &self,
        req: &Presented<'_>,
        presenter: &std::collections::BTreeMap<String, String>,
    ) -> Result<Verified, VerifyError> {
        let verified = self.verify(req).await?;
        verified.claims.check_context(presenter).map_err(VerifyError::ContextMismatch)?;
        Ok(verified)
    }

    /// Limited-use tokens are counted by the broker: its introspection answers
    /// `active: false` once the uses are spent.
    async fn count_use(&self, token: &str) -> Result<(), VerifyError> {
        let feed = self.feed().ok_or_else(|| {
            VerifyError::BrokerUnavailable("a limited-use token needs a feed credential to count its use".into())
        })?;
        let cred = self.revocations.credential(&feed, false).await.map_err(VerifyError::BrokerUnavailable)?;
        let url = format!("{}/v1/introspect", self.cfg.issuer);
        let answer: mayfly_proto::IntrospectionResponse = self
            .cfg
            .http
            .post(&url)
            .bearer_auth(cred)
            .form(&[("token", token), ("count_use", "true")])
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| VerifyError::BrokerUnavailable(e.to_string()))?
            .json()
            .await
            .map_err(|e| VerifyError::BrokerUnavailable(e.to_string()))?;
        if answer.active { Ok(()) } else { Err(VerifyError::UsedUp) }
    }
}
