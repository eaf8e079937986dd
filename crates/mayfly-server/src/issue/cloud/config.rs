//! `[[clouds]]`: the cloud profiles Mayfly mints federation tokens for. Shapes are checked
//! when the file loads; the rules that need the rest of the config (the signing profile's
//! algorithm, `public_url`) when the server starts ([`super::CloudProfiles::new`]).

use std::time::Duration;

use serde::Deserialize;

/// One cloud profile, checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "CloudFile")]
pub struct CloudConfig {
    /// The profile's name, as `mayfly exec --cloud NAME` and Cedar's `Mayfly::Cloud::"NAME"` name it.
    pub name: String,
    /// The `[[keys.profiles]]` entry that signs its tokens.
    pub signing_profile: String,
    /// The token's lifetime: `mayfly exec` renews it.
    pub token_ttl: Duration,
    /// The `aud` the cloud expects.
    pub audience: String,
    /// What the cloud needs.
    pub target: CloudTarget,
}

/// What each cloud needs beside the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudTarget {
    /// AWS IAM OIDC provider + `AssumeRoleWithWebIdentity`.
    Aws {
        /// `arn:aws:iam::<account>:role/<name>`.
        role_arn: String,
        /// Lifetime of the AWS credentials Mayfly gets from STS.
        session_duration: Duration,
        /// `AWS_REGION` for the command.
        region: Option<String>,
        /// The STS endpoint Mayfly calls itself.
        sts_endpoint: String,
    },
    /// Google Cloud Workload Identity Federation.
    Gcp {
        /// The project's number.
        project_number: String,
        /// The workload identity pool id.
        pool: String,
        /// The pool's provider id.
        provider: String,
        /// A service account to impersonate.
        service_account: Option<String>,
        /// Google's STS token endpoint.
        token_url: String,
        /// The IAM Credentials API's base, for impersonation.
        iam_credentials_url: String,
    },
    /// Azure (Entra ID) federated identity credentials.
    Azure {
        /// The tenant (GUID).
        tenant_id: String,
        /// The application's or managed identity's client id (GUID).
        client_id: String,
        /// The authority host.
        authority_host: String,
    },
}

/// The clouds Mayfly federates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudKind {
    /// Amazon Web Services.
    Aws,
    /// Google Cloud.
    Gcp,
    /// Microsoft Azure.
    Azure,
}

impl CloudKind {
    /// Its name in the config and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudKind::Aws => "aws",
            CloudKind::Gcp => "gcp",
            CloudKind::Azure => "azure",
        }
    }
}

impl CloudTarget {
    /// Which cloud.
    pub fn kind(&self) -> CloudKind {
        match self {
            CloudTarget::Aws { .. } => CloudKind::Aws,
            CloudTarget::Gcp { .. } => CloudKind::Gcp,
            CloudTarget::Azure { .. } => CloudKind::Azure,
        }
    }
}

/// `[[clouds]]` as written: every kind's settings, sorted out by `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudFile {
    name: String,
    kind: CloudKind,
    signing_profile: String,
    #[serde(default, with = "humantime_serde")]
    token_ttl: Option<Duration>,
    #[serde(default)]
    audience: Option<String>,
    // aws
    #[serde(default)]
    role_arn: Option<String>,
    #[serde(default, with = "humantime_serde")]
    session_duration: Option<Duration>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    sts_endpoint: Option<String>,
    // gcp
    #[serde(default)]
    project_number: Option<String>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    iam_credentials_url: Option<String>,
    // azure
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    authority_host: Option<String>,
}

/// Longest token lifetime: the token only has to reach the cloud, and `mayfly exec` renews it.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `arn:<partition>:iam::<12 digits>:role/<path/name>`, the name per IAM's rules.
fn is_role_arn(s: &str) -> bool {
    let mut parts = s.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let name = resource.strip_prefix("role/").and_then(|r| r.rsplit('/').next()).unwrap_or("");
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// A pool or provider id: 4 to 32 of a-z, 0-9 and `-`, not starting with `gcp-`.
fn is_gcp_id(s: &str) -> bool {
    (4..=32).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with("gcp-")
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn endpoint(what: &str, url: Option<String>, default: String) -> Result<String, String> {
    let url = url.unwrap_or(default);
    crate::attest::config::check_jwks_url(&url).map_err(|e| format!("{what} {url:?}: {e}"))?;
    Ok(url)
}

impl TryFrom<CloudFile> for CloudConfig {
    type Error = String;

    fn try_from(f: CloudFile) -> Result<Self, String> {
        let what = format!("clouds[{:?}]", f.name);
        if !is_name(&f.name) {
            return Err(format!("{what}: a cloud profile's name is 1 to 64 of a-z, 0-9, - and _"));
        }
        // azure-identity caches the token file's content for 10 minutes: an Azure token must
        // outlive that cache by a margin, so its default is the longest.
        let default_ttl = if f.kind == CloudKind::Azure { 3600 } else { 600 };
        let token_ttl = f.token_ttl.unwrap_or(Duration::from_secs(default_ttl));
        if token_ttl < Duration::from_secs(60) || token_ttl > MAX_TOKEN_TTL {
            return Err(format!("{what}: token_ttl is between 1m and 1h"));
        }
        let kind = f.kind;
        // A setting of another kind is a mistake worth saying: it would be silently ignored.
        let foreign: &[(&str, bool)] = &[
            ("role_arn", f.role_arn.is_some() && kind != CloudKind::Aws),
            ("session_duration", f.session_duration.is_some() && kind != CloudKind::Aws),
            ("region", f.region.is_some() && kind != CloudKind::Aws),
            ("sts_endpoint", f.sts_endpoint.is_some() && kind != CloudKind::Aws),
            ("project_number", f.project_number.is_some() && kind != CloudKind::Gcp),
            ("pool", f.pool.is_some() && kind != CloudKind::Gcp),
            ("provider", f.provider.is_some() && kind != CloudKind::Gcp),
            ("service_account", f.service_account.is_some() && kind != CloudKind::Gcp),
            ("token_url", f.token_url.is_some() && kind != CloudKind::Gcp),
            ("iam_credentials_url", f.iam_credentials_url.is_some() && kind != CloudKind::Gcp),
            ("tenant_id", f.tenant_id.is_some() && kind != CloudKind::Azure),
            ("client_id", f.client_id.is_some() && kind != CloudKind::Azure),
            ("authority_host", f.authority_host.is_some() && kind != CloudKind::Azure),
        ];
        if let Some((setting, _)) = foreign.iter().find(|(_, bad)| *bad) {
            return Err(format!("{what}: {setting} is not a setting of kind = {:?}", kind.as_str()));
        }
        let need = |v: Option<String>, setting: &str| {
            v.ok_or_else(|| format!("{what}: kind = {:?} needs {setting}", kind.as_str()))
        };
        let (target, default_audience) = match kind {
            CloudKind::Aws => {
                let role_arn = need(f.role_arn, "role_arn")?;
                if !is_role_arn(&role_arn) {
                    return Err(format!(
                        "{what}: role_arn {role_arn:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
                    ));
                }
                let session_duration = f.session_duration.unwrap_or(Duration::from_secs(3600));
                if !(900..=43_200).contains(&session_duration.as_secs()) {
                    return Err(format!("{what}: session_duration is between 15m and 12h (AWS STS's limits)"));
                }
                if let Some(r) = &f.region
                    && !is_region(r)
                {
                    return Err(format!("{what}: region {r:?} is not an AWS region name (e.g. eu-west-1)"));
                }
                let default_sts = match &f.region {
                    Some(r) => format!("https://sts.{r}.amazonaws.com"),
                    None => "https://sts.amazonaws.com".to_owned(),
                };
                let sts_endpoint = endpoint(&format!("{what}: sts_endpoint"), f.sts_endpoint, default_sts)?;
                (
                    CloudTarget::Aws { role_arn, session_duration, region: f.region, sts_endpoint },
                    "sts.amazonaws.com".to_owned(),
                )
            }
            CloudKind::Gcp => {
                let project_number = need(f.project_number, "project_number")?;
                if project_number.is_empty()
                    || project_number.len() > 20
                    || !project_number.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(format!("{what}: project_number is the project's number (digits), not its id"));
                }
                let pool = need(f.pool, "pool")?;
                let provider = need(f.provider, "provider")?;
                for (setting, id) in [("pool", &pool), ("provider", &provider)] {
                    if !is_gcp_id(id) {
                        return Err(format!(
                            "{what}: {setting} {id:?} is 4 to 32 of a-z, 0-9 and -, and does not start with gcp-"
                        ));
                    }
                }
                if let Some(sa) = &f.service_account
                    && !sa
                        .split_once('@')
                        .is_some_and(|(user, domain)| !user.is_empty() && domain.ends_with(".gserviceaccount.com"))
                {
                    return Err(format!(
                        "{what}: service_account {sa:?} is a service account's e-mail (…@….iam.gserviceaccount.com)"
                    ));
                }
                let token_url =
                    endpoint(&format!("{what}: token_url"), f.token_url, "https://sts.googleapis.com/v1/token".into())?;
                let iam_credentials_url = endpoint(
                    &format!("{what}: iam_credentials_url"),
                    f.iam_credentials_url,
                    "https://iamcredentials.googleapis.com".into(),
                )?
                .trim_end_matches('/')
                .to_owned();
                let audience = format!(
                    "//iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/{pool}/providers/{provider}"
                );
                (
                    CloudTarget::Gcp {
                        project_number,
                        pool,
                        provider,
                        service_account: f.service_account,
                        token_url,
                        iam_credentials_url,
                    },
                    audience,
                )
            }
            CloudKind::Azure => {
                let tenant_id = need(f.tenant_id, "tenant_id")?;
                let client_id = need(f.client_id, "client_id")?;
                for (setting, id) in [("tenant_id", &tenant_id), ("client_id", &client_id)] {
                    if !is_guid(id) {
                        return Err(format!("{what}: {setting} {id:?} is not a GUID"));
                    }
                }
                let authority_host = endpoint(
                    &format!("{what}: authority_host"),
                    f.authority_host,
                    "https://login.microsoftonline.com/".into(),
                )?;
                (CloudTarget::Azure { tenant_id, client_id, authority_host }, "api://AzureADTokenExchange".to_owned())
            }
        };
        let audience = f.audience.unwrap_or(default_audience);
        if audience.is_empty() || audience.len() > 512 {
            return Err(format!("{what}: audience is 1 to 512 characters"));
        }
        Ok(Self { name: f.name, signing_profile: f.signing_profile, token_ttl, audience, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CloudConfig, String> {
        toml::from_str::<CloudConfig>(text).map_err(|e| e.message().to_owned())
    }

    const AWS: &str = "name = \"prod-aws\"\nkind = \"aws\"\nsigning_profile = \"clouds\"\n\
                       role_arn = \"arn:aws:iam::123456789012:role/deployer\"\n";
    const GCP: &str = "name = \"prod-gcp\"\nkind = \"gcp\"\nsigning_profile = \"clouds\"\n\
                       project_number = \"123456789012\"\npool = \"mayfly-pool\"\nprovider = \"mayfly\"\n";
    const AZURE: &str = "name = \"prod-azure\"\nkind = \"azure\"\nsigning_profile = \"clouds\"\n\
                         tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\n\
                         client_id = \"00000000-1111-2222-3333-444444444444\"\n";

    #[test]
    fn each_kind_gets_its_cloud_defaults() {
        let aws = parse(AWS).unwrap();
        assert_eq!(aws.audience, "sts.amazonaws.com");
        assert!(
            matches!(&aws.target, CloudTarget::Aws { sts_endpoint, .. } if sts_endpoint == "https://sts.amazonaws.com")
        );
        let regional = parse(&format!("{AWS}region = \"eu-west-1\"")).unwrap();
        assert!(
            matches!(&regional.target, CloudTarget::Aws { sts_endpoint, .. } if sts_endpoint == "https://sts.eu-west-1.amazonaws.com")
        );
        let gcp = parse(GCP).unwrap();
        assert_eq!(
            gcp.audience,
            "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/mayfly-pool/providers/mayfly"
        );
        let azure = parse(AZURE).unwrap();
        assert_eq!(azure.audience, "api://AzureADTokenExchange");
        assert_eq!(azure.token_ttl, Duration::from_secs(3600), "outlives azure-identity's 10-minute file cache");
        assert_eq!(gcp.token_ttl, Duration::from_secs(600));
    }

    #[test]
    fn every_rule_has_its_message() {
        let cases = [
            (AWS.replace("prod-aws", "Prod AWS"), "name is 1 to 64"),
            (AWS.replace("role/deployer", "user/deployer"), "is not an IAM role ARN"),
            (AWS.replace("123456789012", "1234"), "is not an IAM role ARN"),
            (format!("{AWS}session_duration = \"5m\""), "session_duration is between 15m and 12h"),
            (format!("{AWS}region = \"Europe\""), "is not an AWS region name"),
            (format!("{AWS}sts_endpoint = \"http://sts.example.com\""), "use https://"),
            (format!("{AWS}pool = \"p\""), "pool is not a setting of kind = \"aws\""),
            (format!("{AWS}token_ttl = \"2h\""), "token_ttl is between 1m and 1h"),
            (AWS.replace("role_arn = \"arn:aws:iam::123456789012:role/deployer\"\n", ""), "needs role_arn"),
            (GCP.replace("123456789012", "my-project"), "project's number (digits)"),
            (GCP.replace("mayfly-pool", "gcp-pool"), "does not start with gcp-"),
            (GCP.replace("provider = \"mayfly\"", "provider = \"ab\""), "provider \"ab\" is 4 to 32"),
            (format!("{GCP}service_account = \"deployer\""), "is a service account's e-mail"),
            (
                AZURE.replace("72f988bf-86f1", "72f988bf86f1"),
                "tenant_id \"72f988bf86f1-41af-91ab-2d7cd011db47\" is not a GUID",
            ),
            (format!("{AZURE}authority_host = \"ftp://login\""), "use https://"),
            (format!("{AZURE}audience = \"\""), "audience is 1 to 512"),
            (format!("{AZURE}colour = \"blue\""), "unknown field `colour`"),
        ];
        for (text, message) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(message), "{text}\n→ {err}");
        }
    }
}
