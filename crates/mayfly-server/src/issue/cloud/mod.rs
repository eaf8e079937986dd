//! Cloud federation tokens: Mayfly as the OpenID Connect issuer that AWS, Google Cloud and
//! Azure trust. A token is an ordinary JWT (`typ: JWT`) for one cloud profile, signed by a
//! signing profile whose algorithm that cloud accepts, and checked at issuance against the
//! cloud's documented limits so that the cloud never receives a token it would refuse.

pub mod aws_sts;
pub mod config;

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

pub use config::{CloudConfig, CloudKind, CloudTarget};

use super::jwt::Header;
use super::{IssueError, IssuedToken};
use crate::keys::config::KeysConfig;
use crate::keys::{SigningAlg, SigningKey};

/// Why cloud profiles do not fit the rest of the configuration.
pub type CloudSetupError = String;

/// The algorithms each cloud accepts from an external OIDC issuer. None accepts EdDSA;
/// Azure documents RS256 only (and refuses ES256, AADSTS5002738).
pub fn accepts(kind: CloudKind, alg: SigningAlg) -> bool {
    match kind {
        CloudKind::Aws | CloudKind::Gcp => matches!(alg, SigningAlg::Rs256 | SigningAlg::Es256),
        CloudKind::Azure => alg == SigningAlg::Rs256,
    }
}

/// The longest `sub` each cloud takes: Google maps it to `google.subject` (at most 127
/// bytes); Azure matches it exactly against a federated credential's subject (at most
/// 600 characters); AWS documents no limit, IAM condition values stop at 1,024 bytes.
fn max_subject_bytes(kind: CloudKind) -> usize {
    match kind {
        CloudKind::Gcp => 127,
        CloudKind::Azure => 600,
        CloudKind::Aws => 1024,
    }
}

/// The configured cloud profiles, checked against the signing profiles and the issuer URL.
#[derive(Debug, Clone, Default)]
pub struct CloudProfiles {
    by_name: HashMap<String, CloudConfig>,
    issuer_url: String,
}

impl CloudProfiles {
    /// Checks each profile: a unique name, a signing profile that exists and whose algorithm
    /// the cloud accepts, and an `issuer` the clouds take (`https://`, no query or fragment;
    /// for AWS no port either).
    pub fn new(clouds: &[CloudConfig], keys: &KeysConfig, public_url: Option<&str>) -> Result<Self, CloudSetupError> {
        let mut by_name = HashMap::new();
        let issuer_url = public_url.map(|u| u.trim_end_matches('/').to_owned()).unwrap_or_default();
        for c in clouds {
            let what = format!("clouds[{:?}]", c.name);
            let kind = c.target.kind();
            let Some(profile) = keys.profile(&c.signing_profile) else {
                return Err(format!(
                    "{what}: signing_profile {:?} is not in [[keys.profiles]]; add one with algorithm = \"RS256\"",
                    c.signing_profile
                ));
            };
            if !accepts(kind, profile.spec.alg()) {
                return Err(format!(
                    "{what}: signing profile {:?} signs {}, which {} does not accept (use {})",
                    profile.name,
                    profile.spec.alg().as_str(),
                    kind.as_str(),
                    if kind == CloudKind::Azure { "RS256" } else { "RS256 or ES256" }
                ));
            }
            check_issuer(&what, kind, public_url)?;
            // Tokens carry no profile name: two profiles of one cloud with one audience would
            // mint tokens each other's roles accept (a dev token assuming the prod role).
            if let Some(other) =
                by_name.values().find(|o: &&CloudConfig| o.target.kind() == kind && o.audience == c.audience)
            {
                return Err(format!(
                    "{what}: cloud profile {:?} is also {} with audience {:?}, so a token for one would be \
                     accepted wherever the other is; give each its own audience (e.g. audience = \"mayfly:{}\", \
                     added to the cloud's allowed audiences)",
                    other.name,
                    kind.as_str(),
                    c.audience,
                    c.name
                ));
            }
            if let Some(p) = keys.profiles.iter().find(|p| p.audiences.contains(&c.audience)) {
                return Err(format!(
                    "{what}: signing profile {:?} lists the cloud's audience {:?} among its access-token audiences; \
                     cloud tokens are issued only through the cloud profile",
                    p.name, c.audience
                ));
            }
            if by_name.insert(c.name.clone(), c.clone()).is_some() {
                return Err(format!("{what}: two cloud profiles have this name"));
            }
        }
        Ok(Self { by_name, issuer_url })
    }

    /// Whether an access-token audience is one a cloud would take as a federation token's:
    /// a configured profile's, or a cloud's well-known one. Such tokens are issued only
    /// through a cloud profile (its policy action, subject rules and task limits), never by
    /// the ordinary exchange.
    pub fn is_cloud_audience(&self, audience: &str) -> bool {
        let a = audience.trim_end_matches('/').to_ascii_lowercase();
        self.by_name.values().any(|c| c.audience.eq_ignore_ascii_case(audience))
            || a == "sts.amazonaws.com"
            || a.starts_with("api://azureadtokenexchange")
            || a.starts_with("//iam.googleapis.com/")
            || a.starts_with("https://iam.googleapis.com/")
    }

    /// The longest lifetime of any profile's tokens, in seconds: retired keys stay published that long.
    pub fn longest_token_ttl_secs(&self) -> i64 {
        self.by_name.values().map(|c| i64::try_from(c.token_ttl.as_secs()).unwrap_or(0)).max().unwrap_or(0)
    }

    /// A profile by name.
    pub fn get(&self, name: &str) -> Option<&CloudConfig> {
        self.by_name.get(name)
    }

    /// Every profile, by name.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The `iss` of cloud tokens.
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// Mints a token for `profile`, signed by `key`, after checking it against the cloud's rules.
    pub fn mint(&self, key: &SigningKey, req: &CloudTokenRequest<'_>) -> Result<IssuedToken, CloudTokenError> {
        let kind = req.profile.target.kind();
        if !accepts(kind, key.alg()) {
            // The signing profile's key changed kind since start-up (a rotation with another algorithm).
            return Err(CloudTokenError::Algorithm { profile: req.profile.name.clone(), alg: key.alg().as_str() });
        }
        let max = max_subject_bytes(kind);
        if req.subject.len() > max {
            return Err(CloudTokenError::SubjectTooLong { cloud: kind.as_str(), length: req.subject.len(), max });
        }
        let jti = crate::ids::time_ordered_id();
        let expires_at = req.now + req.ttl_seconds;
        let header = Header { alg: key.alg().as_str(), typ: "JWT", kid: key.kid() };
        let claims = Claims {
            iss: &self.issuer_url,
            sub: req.subject,
            aud: &req.profile.audience,
            iat: req.now,
            nbf: req.now,
            exp: expires_at,
            jti: &jti,
            task_id: req.task_id,
        };
        let token = key
            .sign_compact(
                &serde_json::to_vec(&header).map_err(IssueError::from)?,
                &serde_json::to_vec(&claims).map_err(IssueError::from)?,
            )
            .map_err(IssueError::from)?;
        Ok(IssuedToken { token, jti, issued_at: req.now, expires_at, kid: key.kid().to_owned(), scope: String::new() })
    }
}

fn check_issuer(what: &str, kind: CloudKind, public_url: Option<&str>) -> Result<(), CloudSetupError> {
    let Some(url) = public_url else {
        return Err(format!(
            "{what}: set public_url to the https:// address the cloud fetches the discovery document and JWKS from"
        ));
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{what}: public_url {url:?} is not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("{what}: the clouds only trust an https:// issuer; public_url is {url:?}"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{what}: public_url must not have a query or fragment"));
    }
    if kind == CloudKind::Aws && parsed.port().is_some() {
        return Err(format!("{what}: AWS refuses an issuer URL with a port; public_url is {url:?}"));
    }
    Ok(())
}

/// What a cloud token is minted for.
#[derive(Debug, Clone, Copy)]
pub struct CloudTokenRequest<'a> {
    /// The profile.
    pub profile: &'a CloudConfig,
    /// `sub`: the workload's SPIFFE ID (for a task, the workload that started it).
    pub subject: &'a str,
    /// `iat`.
    pub now: i64,
    /// Lifetime in seconds.
    pub ttl_seconds: i64,
    /// The task it is issued under.
    pub task_id: Option<&'a str>,
}

/// Why a cloud token was not minted.
#[derive(Debug, thiserror::Error)]
pub enum CloudTokenError {
    /// The subject is longer than the cloud takes.
    #[error("the subject is {length} bytes; {cloud} takes at most {max}")]
    SubjectTooLong {
        /// Which cloud.
        cloud: &'static str,
        /// The subject's length.
        length: usize,
        /// The cloud's limit.
        max: usize,
    },
    /// The signing key's algorithm is not one the cloud accepts.
    #[error("cloud profile {profile:?}: its signing key is {alg}, which this cloud does not accept")]
    Algorithm {
        /// The profile.
        profile: String,
        /// The key's algorithm.
        alg: &'static str,
    },
    /// Signing failed.
    #[error(transparent)]
    Issue(#[from] IssueError),
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
}

/// An AWS role session name (`[\w+=,.@-]{2,64}`) for a task id or a SPIFFE ID: characters
/// outside the set become `-`, and the end is kept (the most specific part).
pub fn aws_session_name(from: &str) -> String {
    let cleaned: String =
        from.chars().map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' }).collect();
    let trimmed = cleaned.trim_matches('-');
    let tail: String = trimmed.chars().rev().take(64).collect::<Vec<_>>().into_iter().rev().collect();
    if tail.len() < 2 { format!("mayfly-{tail}") } else { tail }
}

/// Token lifetime for a profile, within what the caller may have (a task's end).
pub fn token_lifetime(profile: &CloudConfig, until: Option<i64>, now: i64) -> i64 {
    let ttl = i64::try_from(profile.token_ttl.as_secs()).unwrap_or(600);
    match until {
        Some(end) => ttl.min(end - now).max(1),
        None => ttl,
    }
}

impl CloudConfig {
    /// What a command needs beside the token, for the cloud's own SDK.
    pub fn setup(&self, session_name: &str) -> mayfly_proto::CloudSetup {
        use mayfly_proto::CloudSetup;
        match &self.target {
            CloudTarget::Aws { role_arn, region, .. } => CloudSetup::Aws {
                role_arn: role_arn.clone(),
                session_name: session_name.to_owned(),
                region: region.clone(),
            },
            CloudTarget::Gcp { token_url, service_account, iam_credentials_url, .. } => CloudSetup::Gcp {
                audience: self.audience.clone(),
                token_url: token_url.clone(),
                service_account_impersonation_url: service_account
                    .as_ref()
                    .map(|sa| format!("{iam_credentials_url}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken")),
            },
            CloudTarget::Azure { tenant_id, client_id, authority_host } => CloudSetup::Azure {
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                authority_host: authority_host.clone(),
            },
        }
    }

    /// The kind-specific settings, for `mayfly clouds setup`.
    pub fn settings(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            m.insert(k.to_owned(), v.to_owned());
        };
        match &self.target {
            CloudTarget::Aws { role_arn, session_duration, region, sts_endpoint } => {
                put("role_arn", role_arn);
                put("session_duration_seconds", &session_duration.as_secs().to_string());
                put("sts_endpoint", sts_endpoint);
                if let Some(r) = region {
                    put("region", r);
                }
            }
            CloudTarget::Gcp { project_number, pool, provider, service_account, token_url, .. } => {
                put("project_number", project_number);
                put("pool", pool);
                put("provider", provider);
                put("token_url", token_url);
                if let Some(sa) = service_account {
                    put("service_account", sa);
                }
            }
            CloudTarget::Azure { tenant_id, client_id, authority_host } => {
                put("tenant_id", tenant_id);
                put("client_id", client_id);
                put("authority_host", authority_host);
            }
        }
        m
    }
}

/// AWS credentials last at least this long (STS's minimum `DurationSeconds`).
pub const AWS_MIN_SESSION: Duration = Duration::from_secs(900);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeySpec, RsaBits};

    fn keys_with(alg: &str) -> KeysConfig {
        toml::from_str(&format!("[[profiles]]\nname = \"clouds\"\nalgorithm = \"{alg}\"")).unwrap()
    }

    fn azure() -> CloudConfig {
        toml::from_str(
            "name = \"az\"\nkind = \"azure\"\nsigning_profile = \"clouds\"\n\
             tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"00000000-1111-2222-3333-444444444444\"",
        )
        .unwrap()
    }

    fn aws() -> CloudConfig {
        toml::from_str(
            "name = \"aw\"\nkind = \"aws\"\nsigning_profile = \"clouds\"\nrole_arn = \"arn:aws:iam::123456789012:role/ci\"",
        )
        .unwrap()
    }

    #[test]
    fn a_cloud_profile_signed_by_an_algorithm_the_cloud_refuses_does_not_start() {
        let https = Some("https://mayfly.example.com");
        let err = CloudProfiles::new(&[azure()], &keys_with("EdDSA"), https).unwrap_err();
        assert!(err.contains("signs EdDSA, which azure does not accept (use RS256)"), "{err}");
        let err = CloudProfiles::new(&[azure()], &keys_with("ES256"), https).unwrap_err();
        assert!(err.contains("signs ES256, which azure does not accept"), "{err}");
        let err = CloudProfiles::new(&[aws()], &keys_with("EdDSA"), https).unwrap_err();
        assert!(err.contains("which aws does not accept (use RS256 or ES256)"), "{err}");
        assert!(CloudProfiles::new(&[aws()], &keys_with("ES256"), https).is_ok());
        assert!(CloudProfiles::new(&[azure(), aws()], &keys_with("RS256"), https).is_ok());
        let missing = CloudProfiles::new(&[aws()], &KeysConfig::default(), https).unwrap_err();
        assert!(missing.contains("is not in [[keys.profiles]]"), "{missing}");
    }

    #[test]
    fn two_profiles_a_token_could_cross_between_are_refused() {
        let k = keys_with("RS256");
        let https = Some("https://mayfly.example.com");
        let mut other = aws();
        other.name = "aw2".into();
        let err = CloudProfiles::new(&[aws(), other.clone()], &k, https).unwrap_err();
        assert!(err.contains("a token for one would be accepted wherever the other is"), "{err}");
        other.audience = "mayfly:aw2".into();
        let p = CloudProfiles::new(&[aws(), other], &k, https).unwrap();
        assert!(p.is_cloud_audience("mayfly:aw2") && p.is_cloud_audience("sts.amazonaws.com"));
        assert!(p.is_cloud_audience("api://AzureADTokenExchange"), "well-known even when not configured");
        assert!(
            p.is_cloud_audience("//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q")
        );
        assert!(!p.is_cloud_audience("https://api.example"));
        let claimed: KeysConfig = toml::from_str(
            "[[profiles]]\nname = \"clouds\"\nalgorithm = \"RS256\"\naudiences = [\"sts.amazonaws.com\"]",
        )
        .unwrap();
        let err = CloudProfiles::new(&[aws()], &claimed, https).unwrap_err();
        assert!(err.contains("among its access-token audiences"), "{err}");
    }

    #[test]
    fn the_issuer_must_be_one_the_clouds_fetch() {
        let k = keys_with("RS256");
        let cases = [
            (None, "set public_url"),
            (Some("http://mayfly.example.com"), "only trust an https:// issuer"),
            (Some("https://mayfly.example.com:8443"), "AWS refuses an issuer URL with a port"),
            (Some("https://mayfly.example.com/?x=1"), "must not have a query or fragment"),
        ];
        for (url, message) in cases {
            let err = CloudProfiles::new(&[aws()], &k, url).unwrap_err();
            assert!(err.contains(message), "{url:?}: {err}");
        }
        // A port is fine for the others.
        assert!(CloudProfiles::new(&[azure()], &k, Some("https://mayfly.example.com:8443")).is_ok());
        let p = CloudProfiles::new(&[azure()], &k, Some("https://mayfly.example.com/")).unwrap();
        assert_eq!(p.issuer_url(), "https://mayfly.example.com", "no trailing slash: Azure matches iss exactly");
    }

    #[test]
    fn a_subject_longer_than_the_cloud_takes_is_refused() {
        let gcp: CloudConfig = toml::from_str(
            "name = \"g\"\nkind = \"gcp\"\nsigning_profile = \"clouds\"\nproject_number = \"1\"\npool = \"pool\"\nprovider = \"prov\"",
        )
        .unwrap();
        let profiles =
            CloudProfiles::new(std::slice::from_ref(&gcp), &keys_with("RS256"), Some("https://m.example")).unwrap();
        let (key, _) = SigningKey::generate(KeySpec::Rs256(RsaBits::Bits2048)).unwrap();
        let long = format!("spiffe://example.org/{}", "a".repeat(120));
        let req =
            CloudTokenRequest { profile: &gcp, subject: &long, now: 1_800_000_000, ttl_seconds: 600, task_id: None };
        let err = profiles.mint(&key, &req).unwrap_err();
        assert!(err.to_string().contains("gcp takes at most 127"), "{err}");
        let ok = CloudTokenRequest { subject: "spiffe://example.org/ci", ..req };
        let token = profiles.mint(&key, &ok).unwrap();
        let header = token.token.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
        )
        .unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": key.kid()}));
        let (ed, _) = SigningKey::generate(KeySpec::EdDsa).unwrap();
        assert!(matches!(profiles.mint(&ed, &ok), Err(CloudTokenError::Algorithm { .. })));
    }

    #[test]
    fn session_names_fit_aws() {
        assert_eq!(aws_session_name("01JD5Q8ZK3"), "01JD5Q8ZK3");
        assert_eq!(
            aws_session_name("spiffe://example.org/ns/ci/sa/deployer"),
            "spiffe---example.org-ns-ci-sa-deployer"
        );
        let long = aws_session_name(&"x/".repeat(100));
        assert!(long.len() <= 64 && long.len() >= 2, "{long}");
        assert_eq!(aws_session_name("é"), "mayfly-");
    }
}
