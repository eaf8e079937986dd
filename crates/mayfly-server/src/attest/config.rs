//! Attestation's configuration: OIDC issuers, join tokens, evidence age, registration entries.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// A registration entry in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    /// A stable id (default: derived from the entry's contents).
    #[serde(default)]
    pub id: Option<String>,
    /// The SPIFFE ID granted.
    pub spiffe_id: String,
    /// Selectors that must all match, e.g. `["unix:uid:1000", "unix:path:/usr/bin/api"]`.
    pub selectors: Vec<String>,
    /// Guidance for workloads given several SVIDs.
    #[serde(default)]
    pub hint: Option<String>,
    /// DNS names added to the X.509-SVID.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// X.509-SVID lifetime for this entry.
    #[serde(default, with = "humantime_serde")]
    pub x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime for this entry.
    #[serde(default, with = "humantime_serde")]
    pub jwt_svid_ttl: Option<Duration>,
    /// Extra Cedar principal tags.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl EntryConfig {
    /// Its id (if named) and its definition in the API's terms.
    pub fn to_spec(&self) -> (Option<String>, mayfly_proto::EntrySpec) {
        let spec = mayfly_proto::EntrySpec {
            spiffe_id: self.spiffe_id.clone(),
            selectors: self.selectors.clone(),
            hint: self.hint.clone(),
            dns_names: self.dns_names.clone(),
            x509_svid_ttl: self.x509_svid_ttl.map(|d| d.as_secs()),
            jwt_svid_ttl: self.jwt_svid_ttl.map(|d| d.as_secs()),
            attributes: self.attributes.clone(),
        };
        (self.id.clone(), spec)
    }
}

/// One-time join tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokensConfig {
    /// Lifetime when none is asked for (default 10m).
    #[serde(default = "crate::clock::secs::<600>", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime an admin may ask for (default 24h).
    #[serde(default = "crate::clock::secs::<86400>", with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for JoinTokensConfig {
    fn default() -> Self {
        Self { default_ttl: crate::clock::secs::<600>(), max_ttl: crate::clock::secs::<86400>() }
    }
}

/// Attestors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestConfig {
    /// OIDC/JWT issuers whose tokens Mayfly accepts as identity evidence.
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// Evidence older than this (a platform token's `iat`, a join token's creation) is
    /// refused, and subject revocations are kept at least this long: a stolen token
    /// cannot outlive the revocation that refuses it. Default 24h.
    #[serde(default = "crate::clock::secs::<86400>", with = "humantime_serde")]
    pub max_evidence_age: Duration,
}

impl Default for AttestConfig {
    fn default() -> Self {
        Self { oidc: Vec::new(), max_evidence_age: crate::clock::secs::<86400>() }
    }
}

/// Presets fill in claim mapping (and, for GitHub, the issuer and JWKS URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OidcPreset {
    /// Any issuer: every claim becomes an attribute.
    Generic,
    /// Kubernetes projected service-account tokens.
    Kubernetes,
    /// GitHub Actions OIDC tokens.
    Github,
}

/// One OIDC/JWT issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// A short name, used in audit records and the `attestor` attribute.
    pub name: String,
    /// Claim mapping preset (default `generic`).
    #[serde(default = "default_preset")]
    pub preset: OidcPreset,
    /// The exact `iss` value. Optional for the `github` preset.
    #[serde(default)]
    pub issuer: Option<String>,
    /// JWKS URL; fetched, cached and refreshed on an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// JWKS file; read at start.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// `aud` values accepted (at least one).
    pub audiences: Vec<String>,
    /// Allowed algorithms (default RS256, ES256, EdDSA). `none` and HMAC are refused.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Template for the SPIFFE ID path, with `{attribute}` placeholders.
    #[serde(default)]
    pub spiffe_id_template: Option<String>,
    /// A claim value that does not fit in one path segment (it has `/`, say) is `refuse`d
    /// (the default; the `github` preset `escape`s, since refs hold `/`) or `escape`d.
    #[serde(default)]
    pub claim_segments: Option<crate::attest::template::ClaimSegments>,
    /// Clock-skew allowance for `exp`/`nbf` (default 30s).
    #[serde(default = "crate::clock::secs::<30>", with = "humantime_serde")]
    pub leeway: Duration,
    /// How long a fetched JWKS is used before it is fetched again (default 10m).
    #[serde(default = "crate::clock::secs::<600>", with = "humantime_serde")]
    pub jwks_cache_ttl: Duration,
    /// Least time between two fetches caused by unknown `kid`s (default 30s).
    #[serde(default = "crate::clock::secs::<30>", with = "humantime_serde")]
    pub jwks_refresh_min_interval: Duration,
}

/// Whether keys may be fetched from this JWKS URL: `https://`, or `http://` to a loopback
/// host (127.0.0.0/8, ::1, localhost: a sidecar or a test issuer). Keys fetched in clear
/// over a network could be swapped on the way, and whoever swaps them mints identities.
pub fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    // The URL parser has normalised the host: IPv4 in dotted form, IPv6 in brackets, names in lower case.
    let loopback = parsed.host_str().is_some_and(|h| {
        h == "localhost"
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("use https:// (http:// only to a loopback address: 127.0.0.0/8, ::1, localhost)".into()),
    }
}

fn default_preset() -> OidcPreset {
    OidcPreset::Generic
}
