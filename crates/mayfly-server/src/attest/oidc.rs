//! OIDC/JWT attestor: verifies platform identity tokens (Kubernetes service-account
//! tokens, GitHub Actions OIDC tokens, any issuer with a JWKS) and maps their
//! claims to a SPIFFE ID.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use super::{AttestError, WorkloadIdentity, template};
use crate::attest::config::OidcIssuerConfig;
use crate::attest::config::OidcPreset;
use crate::clock::now_unix;
use crate::token_cache::TokenCache;

const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
const GITHUB_JWKS: &str = "https://token.actions.githubusercontent.com/.well-known/jwks";
/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most verified tokens remembered per issuer.
const VERIFIED_CACHE_ENTRIES: usize = 10_000;

/// Returns the unverified `iss` of a JWT, only to choose which attestor verifies it.
pub fn peek_issuer(token: &str) -> Result<String, AttestError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AttestError::Malformed("a JWT has three dot-separated parts".into()));
    };
    let bytes = B64.decode(payload).map_err(|_| AttestError::Malformed("payload is not base64url".into()))?;
    // A struct would also take a JSON array; the claims are an object (RFC 7519 §7.2).
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(AttestError::Malformed("payload is not a JSON object".into()));
    }
    // Only `iss` is read; the other claims are skipped, not built (verification parses them).
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: Option<Value>,
    }
    let claims: Peek =
        serde_json::from_slice(&bytes).map_err(|_| AttestError::Malformed("payload is not a JSON object".into()))?;
    match claims.iss {
        Some(Value::String(s)) => Ok(s),
        _ => Err(AttestError::BadClaim("iss".into())),
    }
}

/// Keys by `kid`, with the JWK's own `alg` when it names one.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    /// Keys without a `kid`: usable only when the set has exactly one key.
    anonymous: Vec<(DecodingKey, Option<Algorithm>)>,
}

impl KeySet {
    fn parse(doc: &[u8]) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(doc).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = v.get("keys").and_then(Value::as_array).ok_or("JWKS has no \"keys\" array")?;
        let mut set = KeySet::default();
        for k in keys {
            // Symmetric keys never verify platform tokens: accepting one would let
            // anyone who can read the JWKS forge tokens.
            if k.get("kty").and_then(Value::as_str) == Some("oct") {
                continue;
            }
            if k.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, (key, alg));
                }
                None => set.anonymous.push((key, alg)),
            }
        }
        if set.by_kid.is_empty() && set.anonymous.is_empty() {
            return Err("JWKS holds no usable signature keys".into());
        }
        Ok(set)
    }

    fn find(&self, kid: Option<&str>) -> Option<&(DecodingKey, Option<Algorithm>)> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.by_kid.len() + self.anonymous.len() == 1 => {
                self.anonymous.first().or_else(|| self.by_kid.values().next())
            }
            None => None,
        }
    }
}

enum JwksSource {
    Static,
    Remote { url: String, client: reqwest::Client, cache_ttl: Duration, min_refresh: Duration },
}

struct CachedKeys {
    keys: Arc<KeySet>,
    fetched_at: Option<Instant>,
}

/// One configured OIDC issuer.
pub struct OidcAttestor {
    name: String,
    issuer: String,
    preset: OidcPreset,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    template: String,
    claim_segments: template::ClaimSegments,
    trust_domain: String,
    leeway: u64,
    source: JwksSource,
    cache: RwLock<CachedKeys>,
    /// Serialises fetches (one in flight) and remembers when the last one started.
    fetch_gate: Mutex<Option<Instant>>,
    /// Tokens already verified, by SHA-256, until their `exp`: a workload presents the
    /// same platform token many times during its life, and re-verifying an RSA
    /// signature each time is the largest cost of an exchange. Cleared whenever the
    /// key set changes, so a key removed from the JWKS stops vouching at once.
    verified: TokenCache<(WorkloadIdentity, i64)>,
    /// Longest a remembered verification is trusted, whatever the token's `exp`.
    verified_ttl: i64,
}

impl std::fmt::Debug for OidcAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAttestor").field("name", &self.name).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

/// Why an issuer's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("attest.oidc {name:?}: {reason}")]
pub struct OidcConfigError {
    name: String,
    reason: String,
}

impl OidcAttestor {
    /// Builds an attestor from configuration. A JWKS file is read now; a URL is fetched on first use.
    pub fn from_config(cfg: &OidcIssuerConfig, trust_domain: &str) -> Result<Self, OidcConfigError> {
        let err = |reason: String| OidcConfigError { name: cfg.name.clone(), reason };
        let issuer = match (&cfg.issuer, cfg.preset) {
            (Some(i), _) => i.clone(),
            (None, OidcPreset::Github) => GITHUB_ISSUER.to_owned(),
            (None, _) => return Err(err("issuer is required".into())),
        };
        let default_algs: &[&str] = match cfg.preset {
            OidcPreset::Github => &["RS256"],
            _ => &["RS256", "ES256", "EdDSA"],
        };
        let alg_names: Vec<String> =
            cfg.algorithms.clone().unwrap_or_else(|| default_algs.iter().map(|s| s.to_string()).collect());
        if alg_names.is_empty() {
            return Err(err("algorithms must not be empty".into()));
        }
        let mut algorithms = Vec::new();
        for name in &alg_names {
            let alg: Algorithm = name.parse().map_err(|_| err(format!("unknown algorithm {name:?}")))?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(err(format!(
                    "{name} is an HMAC algorithm; only asymmetric algorithms verify platform tokens"
                )));
            }
            algorithms.push(alg);
        }
        if !cfg.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) || cfg.name.is_empty() {
            return Err(err("name uses letters, digits, '-', '.' and '_' only".into()));
        }
        // The generic default names the issuer, so two issuers' `sub`s cannot collide.
        let template = cfg.spiffe_id_template.clone().unwrap_or_else(|| match cfg.preset {
            OidcPreset::Kubernetes => "ns/{namespace}/sa/{serviceaccount}".to_owned(),
            OidcPreset::Github => "github/{repository_owner}/{repository_name}/{ref_type}/{ref_name}".to_owned(),
            OidcPreset::Generic => format!("oidc/{}/{{sub}}", cfg.name),
        });
        template::check(&template).map_err(err)?;
        let claim_segments = cfg.claim_segments.unwrap_or(match cfg.preset {
            OidcPreset::Github => template::ClaimSegments::Escape,
            _ => template::ClaimSegments::Refuse,
        });
        let jwks_url = cfg.jwks_url.clone().or_else(|| (cfg.preset == OidcPreset::Github).then(|| GITHUB_JWKS.into()));
        let (source, keys) = match (&cfg.jwks_file, jwks_url) {
            (Some(path), _) => {
                let doc = std::fs::read(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
                (JwksSource::Static, Arc::new(KeySet::parse(&doc).map_err(err)?))
            }
            (None, Some(url)) => {
                crate::attest::config::check_jwks_url(&url).map_err(|e| err(format!("jwks_url {url:?}: {e}")))?;
                // A redirect is not followed: the keys come from the URL configured, or not at all.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| err(format!("HTTP client: {e}")))?;
                let src = JwksSource::Remote {
                    url,
                    client,
                    cache_ttl: cfg.jwks_cache_ttl,
                    min_refresh: cfg.jwks_refresh_min_interval,
                };
                (src, Arc::new(KeySet::default()))
            }
            (None, None) => return Err(err("set jwks_url or jwks_file".into())),
        };
        Ok(Self {
            name: cfg.name.clone(),
            issuer,
            preset: cfg.preset,
            audiences: cfg.audiences.clone(),
            algorithms,
            template,
            claim_segments,
            trust_domain: trust_domain.to_owned(),
            leeway: cfg.leeway.as_secs(),
            source,
            cache: RwLock::new(CachedKeys { keys, fetched_at: None }),
            fetch_gate: Mutex::new(None),
            verified: TokenCache::new(VERIFIED_CACHE_ENTRIES),
            verified_ttl: cfg.jwks_cache_ttl.as_secs().max(1) as i64,
        })
    }

    /// The `iss` this attestor accepts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a token (or finds it verified before and unexpired) and maps it to a
    /// workload identity; also returns when the token was minted (its `iat`; without one,
    /// the oldest time possible, so that any revocation of the subject covers it).
    pub async fn attest(&self, token: &str) -> Result<(WorkloadIdentity, i64), AttestError> {
        let now = crate::clock::now_unix();
        if let Some(found) = self.verified.get(token, now) {
            return Ok(found);
        }
        let (identity, exp, minted_at) = self.verify(token).await?;
        let found = (identity, minted_at);
        // Trusted until the token expires or the key set is due for a refresh, whichever is first.
        self.verified.insert(token, found.clone(), exp.min(now + self.verified_ttl), now);
        Ok(found)
    }

    async fn verify(&self, token: &str) -> Result<(WorkloadIdentity, i64, i64), AttestError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // An `alg` the JOSE library does not know (including `none`) fails header parsing.
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => AttestError::AlgorithmNotAllowed {
                alg: raw_header_alg(token).unwrap_or_else(|| "?".into()),
                issuer: self.issuer.clone(),
                allowed: self.allowed_names(),
            },
            _ => AttestError::Malformed("header is not valid".into()),
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AttestError::AlgorithmNotAllowed {
                alg: format!("{:?}", header.alg),
                issuer: self.issuer.clone(),
                allowed: self.allowed_names(),
            });
        }
        let kid = header.kid.as_deref();
        let (key, jwk_alg) = self.key_for(kid).await?;
        if jwk_alg.is_some_and(|a| a != header.alg) {
            return Err(AttestError::BadSignature(self.issuer.clone()));
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v).map_err(|e| self.map_error(e))?;
        let exp = data.claims.get("exp").and_then(Value::as_i64).ok_or_else(|| AttestError::BadClaim("exp".into()))?;
        // When the issuer minted it, by Mayfly's clock: an `iat` in the future cannot move the
        // evidence past a revocation, and the issuer's clock may run ahead of ours by as
        // much as the leeway allows, so the evidence counts as that much older. No `iat`:
        // the oldest time possible (refused as too old).
        let minted_at = data
            .claims
            .get("iat")
            .and_then(Value::as_i64)
            .map_or(i64::MIN, |iat| iat.min(now_unix()).saturating_sub(self.leeway as i64));
        let attributes = self.attributes(&data.claims);
        let spiffe_id = template::render(&self.template, &self.trust_domain, &attributes, self.claim_segments)?;
        Ok((WorkloadIdentity { spiffe_id, attestor: format!("oidc:{}", self.name), attributes }, exp, minted_at))
    }

    fn allowed_names(&self) -> String {
        self.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
    }

    fn map_error(&self, e: jsonwebtoken::errors::Error) -> AttestError {
        match e.kind() {
            ErrorKind::ExpiredSignature => AttestError::Expired,
            ErrorKind::ImmatureSignature => AttestError::NotYetValid,
            ErrorKind::InvalidAudience => {
                AttestError::WrongAudience { issuer: self.issuer.clone(), expected: self.audiences.join(", ") }
            }
            ErrorKind::InvalidIssuer => AttestError::UnknownIssuer(self.issuer.clone()),
            ErrorKind::MissingRequiredClaim(c) => AttestError::BadClaim(c.clone()),
            ErrorKind::InvalidClaimFormat(c) => AttestError::BadClaim(c.clone()),
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => AttestError::BadSignature(self.issuer.clone()),
            ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                AttestError::Malformed("token does not decode".into())
            }
            _ => AttestError::BadSignature(self.issuer.clone()),
        }
    }

    /// Finds the verification key, fetching the JWKS when the cache is stale or the `kid` is unknown.
    async fn key_for(&self, kid: Option<&str>) -> Result<(DecodingKey, Option<Algorithm>), AttestError> {
        let JwksSource::Remote { cache_ttl, min_refresh, .. } = &self.source else {
            let cache = self.cache.read().await;
            return cache.keys.find(kid).cloned().ok_or_else(|| self.unknown_key(kid));
        };
        {
            let cache = self.cache.read().await;
            let fresh = cache.fetched_at.is_some_and(|t| t.elapsed() < *cache_ttl);
            if fresh && let Some(k) = cache.keys.find(kid) {
                return Ok(k.clone());
            }
        }
        self.refresh(*min_refresh).await?;
        let cache = self.cache.read().await;
        if cache.fetched_at.is_none() {
            // Never fetched (the last attempt failed and the retry is rate-limited): an outage, not a bad key.
            return Err(AttestError::JwksUnavailable {
                issuer: self.issuer.clone(),
                reason: "the key set has not been fetched yet".into(),
            });
        }
        cache.keys.find(kid).cloned().ok_or_else(|| self.unknown_key(kid))
    }

    fn unknown_key(&self, kid: Option<&str>) -> AttestError {
        AttestError::UnknownKey {
            kid: kid.map(|k| k.chars().take(100).collect()).unwrap_or_else(|| "(none)".into()),
            issuer: self.issuer.clone(),
        }
    }

    /// Fetches the JWKS unless another fetch ran within `min_refresh`; one fetch at a time.
    /// (A single-flight gate with a minimum interval, not a token bucket: `governor` would add nothing.)
    async fn refresh(&self, min_refresh: Duration) -> Result<(), AttestError> {
        let JwksSource::Remote { url, client, cache_ttl, .. } = &self.source else {
            return Ok(());
        };
        let mut gate = self.fetch_gate.lock().await;
        {
            // Another task may have refreshed while this one waited at the gate.
            let cache = self.cache.read().await;
            if cache.fetched_at.is_some_and(|t| t.elapsed() < min_refresh.min(*cache_ttl)) {
                return Ok(());
            }
        }
        if gate.is_some_and(|t| t.elapsed() < min_refresh) {
            // Rate limit: unknown kids must not let a caller make us hammer the issuer.
            return Ok(());
        }
        *gate = Some(Instant::now());
        match fetch_jwks(client, url).await {
            Ok(keys) => {
                let mut cache = self.cache.write().await;
                cache.keys = Arc::new(keys);
                cache.fetched_at = Some(Instant::now());
                self.verified.clear();
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(issuer = %self.issuer, %reason, "JWKS fetch failed");
                let cache = self.cache.read().await;
                if cache.fetched_at.is_some() {
                    Ok(()) // keep using the last good set
                } else {
                    Err(AttestError::JwksUnavailable { issuer: self.issuer.clone(), reason })
                }
            }
        }
    }

    /// Attested attributes: every scalar claim (nested objects flattened with `.`),
    /// plus the preset's well-known names.
    fn attributes(&self, claims: &Map<String, Value>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        flatten("", claims, &mut out, 0);
        out.remove("exp");
        out.remove("iat");
        out.remove("nbf");
        out.remove("jti");
        if self.preset == OidcPreset::Kubernetes {
            for (name, path) in [
                ("namespace", "kubernetes.io.namespace"),
                ("serviceaccount", "kubernetes.io.serviceaccount.name"),
                ("serviceaccount_uid", "kubernetes.io.serviceaccount.uid"),
                ("pod_name", "kubernetes.io.pod.name"),
                ("pod_uid", "kubernetes.io.pod.uid"),
                ("node_name", "kubernetes.io.node.name"),
                ("node_uid", "kubernetes.io.node.uid"),
            ] {
                if let Some(v) = out.get(path).cloned() {
                    out.insert(name.to_owned(), v);
                }
            }
        }
        if self.preset == OidcPreset::Github {
            // `acme/app` and `refs/heads/main` split into the parts a path segment can hold.
            let name = out.get("repository").and_then(|r| r.split_once('/')).map(|(_, n)| n.to_owned());
            if let Some(n) = name {
                out.insert("repository_name".to_owned(), n);
            }
            let short = out.get("ref").map(|r| {
                r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")).unwrap_or(r).to_owned()
            });
            if let Some(r) = short {
                out.insert("ref_name".to_owned(), r);
            }
        }
        out
    }
}

fn flatten(prefix: &str, obj: &Map<String, Value>, out: &mut BTreeMap<String, String>, depth: usize) {
    if depth > 4 {
        return;
    }
    for (k, v) in obj {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::String(s) => {
                out.insert(key, s.clone());
            }
            Value::Number(n) => {
                out.insert(key, n.to_string());
            }
            Value::Bool(b) => {
                out.insert(key, b.to_string());
            }
            Value::Object(inner) => flatten(&key, inner, out, depth + 1),
            Value::Array(items) => {
                let scalars: Vec<String> = items
                    .iter()
                    .filter_map(|i| match i {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect();
                out.insert(key, scalars.join(","));
            }
            Value::Null => {}
        }
    }
}

fn raw_header_alg(token: &str) -> Option<String> {
    let head = token.split('.').next()?;
    let bytes = B64.decode(head).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some(v.get("alg")?.as_str()?.chars().take(20).collect())
}

async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<KeySet, String> {
    let mut resp = client.get(url).send().await.map_err(|e| format!("request failed: {e}"))?;
    if resp.status().is_redirection() {
        return Err(format!("HTTP {}: redirects are not followed; set jwks_url to the final URL", resp.status()));
    }
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading body: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err("JWKS document is larger than 1 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::parse(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        format!("e30.{}.sig", B64.encode(payload))
    }

    #[test]
    fn the_issuer_is_peeked_from_an_object_only() {
        assert_eq!(peek_issuer(&token(r#" {"sub":"a","iss":"https://i","aud":["x"]}"#)).unwrap(), "https://i");
        assert!(matches!(peek_issuer(&token(r#"["https://i"]"#)), Err(AttestError::Malformed(_))));
        assert!(matches!(peek_issuer(&token("not json")), Err(AttestError::Malformed(_))));
        assert!(matches!(peek_issuer(&token(r#"{"iss":7}"#)), Err(AttestError::BadClaim(_))));
        assert!(matches!(peek_issuer(&token(r#"{"sub":"a"}"#)), Err(AttestError::BadClaim(_))));
        assert!(matches!(peek_issuer("a.b"), Err(AttestError::Malformed(_))));
    }
}
