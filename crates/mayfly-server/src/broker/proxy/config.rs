//! `[proxy]`: the upstreams `mayfly proxy` injects credentials into, and how it treats other hosts.
//!
//! The upstream secrets stay here, with the server: a proxy learns one only for a request
//! policy allowed, and the workload behind the proxy never does.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The `[proxy]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `CONNECT` to a host no upstream names: tunnel it untouched (`true`) or refuse it (default).
    #[serde(default)]
    pub tunnel_unmatched: bool,
    /// Internal addresses (loopback, link-local, private) a tunnel may still reach, as CIDRs.
    #[serde(default)]
    pub tunnel_internal_allowed: Vec<String>,
    /// The upstreams.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

/// One `[[proxy.upstreams]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its name: `Mayfly::Upstream::"<name>"` in policy, `/<name>/…` in reverse mode.
    pub name: String,
    /// Its base URL, e.g. `https://api.payments.example` (a path prefix is allowed).
    pub url: String,
    /// Hosts whose requests go to it through the forward proxy (`*.example.com` matches any
    /// name below); default: its URL's host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// PEM CA certificates its TLS certificate must chain to (default: the system roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Requests per minute one caller (a task, or a workload) may send to it; 0: no limit.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    /// Body bytes (request and response) one caller (a task, or a workload) may move to it per
    /// minute through one proxy; 0: no limit. Each proxy counts its own.
    #[serde(default)]
    pub bytes_per_minute: u64,
    /// Largest request body forwarded (default 10 MiB).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    /// Largest response body passed back (default 100 MiB).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// How the credential is injected.
    pub inject: InjectConfig,
}

fn default_requests_per_minute() -> u32 {
    600
}
fn default_max_request_bytes() -> u64 {
    10 << 20
}
fn default_max_response_bytes() -> u64 {
    100 << 20
}

pub use crate::keys::SecretSource;

/// How the proxy authenticates to an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawInjectConfig")]
pub enum InjectConfig {
    /// A static secret in a header, e.g. `Authorization: Bearer {{secret}}` or `X-Api-Key: {{secret}}`.
    Header {
        /// The header's name.
        header: String,
        /// Its value, with `{{secret}}` where the secret goes.
        template: String,
        /// The secret.
        secret: SecretSource,
    },
    /// HTTP basic authentication (RFC 7617).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        secret: SecretSource,
    },
    /// An OAuth 2.0 client-credentials grant (RFC 6749 §4.4) at the upstream's token
    /// endpoint; its access token is sent as `Authorization: Bearer` and reused until shortly before it expires.
    OauthClientCredentials {
        /// The upstream's token endpoint.
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret (sent with HTTP basic authentication).
        secret: SecretSource,
        /// The scope asked for.
        scope: Option<String>,
        /// The audience (or RFC 8707 resource) asked for, for servers that need one.
        audience: Option<String>,
    },
    /// A Mayfly access token for the upstream's audience, minted for the caller at request
    /// time (recorded, under its task, revocable like every other).
    MayflyToken {
        /// The audience.
        audience: String,
        /// Scopes asked for.
        scope: Option<String>,
        /// Lifetime asked for (default: the audience's).
        ttl: Option<Duration>,
    },
}

impl InjectConfig {
    /// Its kind, as `ProxyUpstreamInfo::inject` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            InjectConfig::Header { .. } => "header",
            InjectConfig::Basic { .. } => "basic",
            InjectConfig::OauthClientCredentials { .. } => "oauth_client_credentials",
            InjectConfig::MayflyToken { .. } => "mayfly_token",
        }
    }

    /// The header it sets (the workload's own header of that name is removed).
    pub fn header_name(&self) -> &str {
        match self {
            InjectConfig::Header { header, .. } => header,
            _ => "authorization",
        }
    }

    /// Its secret, if it has one.
    pub fn secret(&self) -> Option<&SecretSource> {
        match self {
            InjectConfig::Header { secret, .. }
            | InjectConfig::Basic { secret, .. }
            | InjectConfig::OauthClientCredentials { secret, .. } => Some(secret),
            InjectConfig::MayflyToken { .. } => None,
        }
    }
}

/// The kinds of injection, as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InjectKind {
    Header,
    Basic,
    OauthClientCredentials,
    MayflyToken,
}

/// `[proxy.upstreams.inject]` as written; [`InjectConfig`] is what it means.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInjectConfig {
    kind: InjectKind,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    token_url: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    secret_sealed: Option<String>,
}

impl TryFrom<RawInjectConfig> for InjectConfig {
    type Error = String;

    fn try_from(raw: RawInjectConfig) -> Result<Self, String> {
        let choices = crate::keys::sealed::PROXY_UPSTREAM_SECRET.choices();
        let secret = SecretSource::one_of(raw.secret_sealed, raw.secret_env, raw.secret)
            .map_err(|()| format!("set only one of {choices}"))?;
        let need_secret = |s: Option<SecretSource>| s.ok_or_else(|| format!("set one of {choices}"));
        // The fields each kind takes; any other one set is a mistake worth naming.
        let given = [
            ("header", raw.header.is_some()),
            ("template", raw.template.is_some()),
            ("username", raw.username.is_some()),
            ("token_url", raw.token_url.is_some()),
            ("client_id", raw.client_id.is_some()),
            ("scope", raw.scope.is_some()),
            ("audience", raw.audience.is_some()),
            ("ttl", raw.ttl.is_some()),
        ];
        let takes: &[&str] = match raw.kind {
            InjectKind::Header => &["header", "template"],
            InjectKind::Basic => &["username"],
            InjectKind::OauthClientCredentials => &["token_url", "client_id", "scope", "audience"],
            InjectKind::MayflyToken => &["audience", "scope", "ttl"],
        };
        if let Some((name, _)) = given.iter().find(|(name, set)| *set && !takes.contains(name)) {
            return Err(format!("{name} does not apply to kind {:?}", raw.kind));
        }
        match raw.kind {
            InjectKind::Header => {
                let header = raw.header.unwrap_or_else(|| "authorization".into()).to_ascii_lowercase();
                if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(format!("header {header:?} is not a header name"));
                }
                if matches!(header.as_str(), "host" | "content-length" | "transfer-encoding" | "connection") {
                    return Err(format!("header {header:?} cannot carry a credential"));
                }
                let template = raw.template.unwrap_or_else(|| {
                    if header == "authorization" { "Bearer {{secret}}".into() } else { "{{secret}}".into() }
                });
                if !template.contains("{{secret}}") {
                    return Err("template must contain {{secret}}".into());
                }
                Ok(InjectConfig::Header { header, template, secret: need_secret(secret)? })
            }
            InjectKind::Basic => {
                let username = raw.username.ok_or("kind \"basic\" needs username")?;
                if username.contains(':') || username.chars().any(char::is_control) {
                    return Err("username cannot contain ':' or control characters (RFC 7617)".into());
                }
                Ok(InjectConfig::Basic { username, secret: need_secret(secret)? })
            }
            InjectKind::OauthClientCredentials => {
                let token_url = raw.token_url.ok_or("kind \"oauth_client_credentials\" needs token_url")?;
                check_url(&token_url, "token_url")?;
                let client_id = raw.client_id.ok_or("kind \"oauth_client_credentials\" needs client_id")?;
                Ok(InjectConfig::OauthClientCredentials {
                    token_url,
                    client_id,
                    secret: need_secret(secret)?,
                    scope: raw.scope,
                    audience: raw.audience,
                })
            }
            InjectKind::MayflyToken => {
                if secret.is_some() {
                    return Err("kind \"mayfly_token\" has no secret: Mayfly mints the token".into());
                }
                let audience = raw.audience.ok_or("kind \"mayfly_token\" needs audience")?;
                if audience.starts_with("urn:mayfly:") {
                    return Err(format!("audience {audience:?} is one of Mayfly's own"));
                }
                Ok(InjectConfig::MayflyToken { audience, scope: raw.scope, ttl: raw.ttl })
            }
        }
    }
}

/// An `http(s)` URL without user information, query or fragment; plain `http` only to loopback.
fn check_url(url: &str, what: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{what} {url:?} does not parse: {e}"))?;
    let Some(host) = parsed.host_str() else { return Err(format!("{what} {url:?} has no host")) };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(format!("{what} {url:?} is plain http to a host other than loopback: use https")),
        other => return Err(format!("{what} {url:?} has scheme {other:?}: use https")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{what} {url:?} carries user information: put the secret in inject"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{what} {url:?} has a query or fragment"));
    }
    Ok(parsed)
}

/// A host pattern: a DNS name or an IP address, lower case; `*.` matches one or more labels.
fn check_host_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    let ok = !name.is_empty()
        && name.len() <= 253
        && (name.parse::<IpAddr>().is_ok()
            || name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }));
    if ok {
        Ok(())
    } else {
        Err(format!("host pattern {pattern:?} is not a lower-case DNS name (optionally *.name) or an IP address"))
    }
}

/// Parses `addr/len` (or a bare address, the whole address).
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (cidr, None),
    };
    let addr: IpAddr = addr.trim().parse().map_err(|_| format!("{cidr:?} is not an address or CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => {
            l.trim().parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| format!("{cidr:?}: bad prefix length"))?
        }
        None => max,
    };
    Ok((addr, len))
}

/// Whether `host` (lower case, no port) matches `pattern`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.strip_suffix(suffix).is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == host,
    }
}

impl ProxyConfig {
    /// Checks names, URLs, patterns and CIDRs.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.tunnel_internal_allowed {
            parse_cidr(c).map_err(|e| format!("proxy.tunnel_internal_allowed: {e}"))?;
        }
        let mut names = std::collections::HashSet::new();
        for u in &self.upstreams {
            let ok = !u.name.is_empty()
                && u.name.len() <= 64
                && u.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !ok {
                return Err(format!("proxy.upstreams name {:?}: use 1 to 64 of a-z, 0-9, '-', '_'", u.name));
            }
            if !names.insert(u.name.as_str()) {
                return Err(format!("proxy.upstreams: two upstreams are named {:?}", u.name));
            }
            let parsed = check_url(&u.url, "url").map_err(|e| format!("proxy.upstreams {:?}: {e}", u.name))?;
            if parsed.host_str().is_some_and(|h| h.bytes().any(|b| b.is_ascii_uppercase())) {
                return Err(format!("proxy.upstreams {:?}: url host must be lower case", u.name));
            }
            for h in &u.hosts {
                check_host_pattern(h).map_err(|e| format!("proxy.upstreams {:?}: {e}", u.name))?;
            }
            if u.max_request_bytes == 0 || u.max_response_bytes == 0 {
                return Err(format!("proxy.upstreams {:?}: byte limits must be above zero", u.name));
            }
        }
        // A host goes to one upstream only, or the forward proxy could not tell which to inject.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for u in &self.upstreams {
            for h in self.hosts_of(u) {
                if let Some((other, _)) = seen.iter().find(|(_, p)| *p == h) {
                    return Err(format!("proxy.upstreams {:?} and {other:?} both claim host {h:?}", u.name));
                }
                seen.push((&u.name, h));
            }
        }
        Ok(())
    }

    /// The host patterns of an upstream: those configured, or else its URL's host.
    pub fn hosts_of<'a>(&self, u: &'a UpstreamConfig) -> Vec<&'a str> {
        if !u.hosts.is_empty() {
            return u.hosts.iter().map(String::as_str).collect();
        }
        let host = u.url.split("://").nth(1).and_then(|rest| rest.split(['/', ':']).next()).unwrap_or("");
        if host.is_empty() { Vec::new() } else { vec![host] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<ProxyConfig, String> {
        let text = format!("[[upstreams]]\nname = \"pay\"\nurl = \"https://api.pay.example\"\n{extra}");
        let cfg: ProxyConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn each_kind_of_injection_says_what_it_lacks_or_does_not_take() {
        let cases = [
            ("[upstreams.inject]\nkind = \"header\"", "set one of secret_sealed, secret_env and secret"),
            ("[upstreams.inject]\nkind = \"header\"\nsecret = \"s\"\nsecret_env = \"E\"", "set only one of"),
            (
                "[upstreams.inject]\nkind = \"header\"\nsecret = \"s\"\ntemplate = \"Bearer x\"",
                "must contain {{secret}}",
            ),
            ("[upstreams.inject]\nkind = \"header\"\nsecret = \"s\"\nheader = \"Host\"", "cannot carry a credential"),
            ("[upstreams.inject]\nkind = \"header\"\nsecret = \"s\"\nheader = \"a b\"", "is not a header name"),
            ("[upstreams.inject]\nkind = \"basic\"\nsecret = \"s\"", "needs username"),
            ("[upstreams.inject]\nkind = \"basic\"\nsecret = \"s\"\nusername = \"a:b\"", "cannot contain ':'"),
            (
                "[upstreams.inject]\nkind = \"basic\"\nsecret = \"s\"\nusername = \"a\"\nscope = \"x\"",
                "scope does not apply",
            ),
            (
                "[upstreams.inject]\nkind = \"oauth_client_credentials\"\nsecret = \"s\"\nclient_id = \"c\"",
                "needs token_url",
            ),
            (
                "[upstreams.inject]\nkind = \"oauth_client_credentials\"\nsecret = \"s\"\nclient_id = \"c\"\ntoken_url = \"http://idp.example/token\"",
                "plain http to a host other than loopback",
            ),
            ("[upstreams.inject]\nkind = \"mayfly_token\"\naudience = \"a\"\nsecret = \"s\"", "has no secret"),
            ("[upstreams.inject]\nkind = \"mayfly_token\"\naudience = \"urn:mayfly:proxy\"", "one of Mayfly's own"),
            ("[upstreams.inject]\nkind = \"nope\"", "unknown variant"),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        let ok =
            parse("[upstreams.inject]\nkind = \"header\"\nheader = \"X-Api-Key\"\nsecret_env = \"PAY_KEY\"").unwrap();
        match &ok.upstreams[0].inject {
            InjectConfig::Header { header, template, secret: SecretSource::Env(v) } => {
                assert_eq!((header.as_str(), template.as_str(), v.as_str()), ("x-api-key", "{{secret}}", "PAY_KEY"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{:?}", SecretSource::Plain("hunter2".into())).contains("hunter2"));
    }

    #[test]
    fn upstreams_need_good_names_urls_and_hosts_and_never_share_a_host() {
        let inject = "[upstreams.inject]\nkind = \"mayfly_token\"\naudience = \"a\"\n";
        let second = |name: &str, url: &str, hosts: &str| {
            format!("{inject}[[upstreams]]\nname = \"{name}\"\nurl = \"{url}\"\nhosts = [{hosts}]\n{inject}")
        };
        let cases = [
            (second("Pay", "https://b.example", ""), "use 1 to 64 of"),
            (second("pay", "https://b.example", ""), "two upstreams are named"),
            (second("b", "http://b.example", ""), "plain http"),
            (second("b", "https://user:pw@b.example", ""), "user information"),
            (second("b", "https://b.example/?k=v", ""), "query or fragment"),
            (second("b", "https://b.example", "\"B.example\""), "host pattern"),
            (second("b", "https://b.example", "\"api.pay.example\""), "both claim host"),
            (second("b", "https://api.pay.example/other", ""), "both claim host"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        parse(&second("b", "http://127.0.0.1:9000/base", "\"*.b.example\"")).unwrap();
        let bad_cidr: Result<ProxyConfig, _> = toml::from_str("tunnel_internal_allowed = [\"10.0.0.0/33\"]");
        assert!(bad_cidr.unwrap().validate().unwrap_err().contains("bad prefix length"));
    }

    #[test]
    fn host_patterns_match_names_below_them_only() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "evilexample.com"));
        assert!(host_matches("api.example.com", "api.example.com"));
        assert!(!host_matches("api.example.com", "api.example.com.evil"));
    }
}
