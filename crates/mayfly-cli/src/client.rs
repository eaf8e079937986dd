//! Commands that talk to a running server over its HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use mayfly_proto::{
    AdminTokenInfo, CreateAdminTokenRequest, CreateAdminTokenResponse, CreateJoinTokenRequest, CreateJoinTokenResponse,
    GRANT_TYPE_TOKEN_EXCHANGE, Problem, ProblemKind, SigningKeyInfo, TOKEN_TYPE_JOIN_TOKEN, TOKEN_TYPE_JWT,
    TOKEN_TYPE_TASK, TokenExchangeResponse,
};
use serde::de::DeserializeOwned;

use crate::serve::DEV_LISTEN;

/// Where the server is.
#[derive(Args, Clone)]
pub struct Remote {
    /// Base URL of the server.
    #[arg(long, env = "MAYFLY_URL", default_value_t = format!("http://{DEV_LISTEN}"))]
    pub(crate) url: String,
    /// CA certificate (PEM) to trust for an https URL.
    #[arg(long, env = "MAYFLY_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

/// Where the server is, and the admin token.
#[derive(Args)]
pub struct AdminRemote {
    #[command(flatten)]
    pub(crate) remote: Remote,
    /// On the server's own box: the server's config file; the URL and the admin token
    /// (<data_dir>/admin-token) are taken from it.
    #[arg(long, short = 'c', env = "MAYFLY_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Admin token (prefer the environment variable: arguments show up in process lists).
    #[arg(long, env = "MAYFLY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token (e.g. <data dir>/admin-token).
    #[arg(long, conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
}

impl AdminRemote {
    /// Applies `--config`: the server's URL and admin-token file.
    pub(crate) fn resolve(mut self) -> anyhow::Result<Self> {
        if let Some(path) = &self.config {
            let cfg = mayfly_server::config::Config::load(path)?;
            let mut url = cfg.issuer_url();
            // A wildcard listen address is reached on loopback from the same box.
            url = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:");
            self.remote.url = url;
            if self.admin_token.is_none() && self.admin_token_file.is_none() {
                self.admin_token_file = Some(cfg.data_dir.join(mayfly_server::server::ADMIN_TOKEN_FILE));
            }
        }
        Ok(self)
    }

    pub(crate) fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.admin_token {
            return Ok(t.trim().to_owned());
        }
        if let Some(p) = &self.admin_token_file {
            return Ok(std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned());
        }
        bail!("an admin token is needed: set MAYFLY_ADMIN_TOKEN or pass --admin-token-file")
    }
}

impl Remote {
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(self.builder()?.timeout(Duration::from_secs(30)).build()?)
    }

    /// A client for answers that stream as long as they are open (the revocation feed): no
    /// deadline on the whole answer, only on connecting.
    pub(crate) fn streaming_client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(self.builder()?.connect_timeout(Duration::from_secs(10)).build()?)
    }

    fn builder(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("parsing the CA certificate")?);
        }
        Ok(b)
    }

    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

/// Sends a request and decodes a JSON answer, or turns a problem document into an error.
pub(crate) async fn call<T: DeserializeOwned>(req: reqwest::RequestBuilder, url: &str) -> anyhow::Result<T> {
    let resp = req.send().await.map_err(|e| anyhow!("cannot reach {url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await.context("reading the response")?;
    if status.is_success() {
        return serde_json::from_slice(&body).with_context(|| format!("unexpected answer from {url}"));
    }
    match serde_json::from_slice::<Problem>(&body) {
        Ok(p) => {
            let kind = p.kind();
            let mut message = format!("{} ({}): {}", p.title, p.status, p.detail.unwrap_or_default());
            if !p.policies.is_empty() {
                message.push_str(&format!(" [policies: {}]", p.policies.join(", ")));
            }
            Err(ServerProblem { status: status.as_u16(), kind, message }.into())
        }
        Err(_) => Err(anyhow!("{url} answered HTTP {status}")),
    }
}

/// A problem document the server answered with; callers that must tell problems apart
/// find it with `downcast_ref`.
#[derive(Debug)]
pub(crate) struct ServerProblem {
    /// The HTTP status.
    pub status: u16,
    /// The kind its `type` names (e.g. `urn:mayfly:problem:task-ended`), when it is one
    /// this CLI knows.
    pub kind: Option<ProblemKind>,
    message: String,
}

impl ServerProblem {
    /// The problem in an error chain, if the server answered with one.
    pub(crate) fn of(e: &anyhow::Error) -> Option<&ServerProblem> {
        e.downcast_ref::<ServerProblem>()
    }

    /// Whether it is a problem of this kind.
    pub(crate) fn is(&self, kind: ProblemKind) -> bool {
        self.kind == Some(kind)
    }
}

impl std::fmt::Display for ServerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerProblem {}

/// An error and its causes on one line ("a: b: c").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `mayfly join-token …`
#[derive(Subcommand)]
pub enum JoinTokenCommand {
    /// Create a one-time join token (printed once; only its hash is stored).
    Create {
        #[command(flatten)]
        remote: AdminRemote,
        /// Lifetime, e.g. 10m (default: the server's, 10m).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// SPIFFE ID path the redeemer gets, e.g. node/build-01 (default join/<id>).
        #[arg(long)]
        spiffe_path: Option<String>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl JoinTokenCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            JoinTokenCommand::Create { remote, ttl, spiffe_path, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/join-tokens");
                let body = CreateJoinTokenRequest { ttl_seconds: ttl.map(|d| d.as_secs()), spiffe_path };
                let req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?).json(&body);
                let created: CreateJoinTokenResponse = call(req, &url).await?;
                if json {
                    print_json(&created)?;
                } else {
                    println!("{}", created.token);
                    eprintln!(
                        "join token {} for {}, expires {}",
                        created.id,
                        created.spiffe_id,
                        mayfly_server::clock::rfc3339(created.expires_at)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// `mayfly admin-token …`
#[derive(Subcommand)]
pub enum AdminTokenCommand {
    /// Create a named admin token (printed once; only its hash is stored).
    Create {
        #[command(flatten)]
        remote: AdminRemote,
        /// A unique name: 1 to 64 characters of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List admin tokens: ids, names, when created and last used (never the tokens).
    List {
        #[command(flatten)]
        remote: AdminRemote,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an admin token by id: refused from the next request on. The last one cannot be revoked.
    Revoke {
        #[command(flatten)]
        remote: AdminRemote,
        /// The token's id, as `list` shows it.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

impl AdminTokenCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            AdminTokenCommand::Create { remote, name, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/admin-tokens");
                let body = CreateAdminTokenRequest { name };
                let req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?).json(&body);
                let created: CreateAdminTokenResponse = call(req, &url).await?;
                if json {
                    print_json(&created)?;
                } else {
                    println!("{}", created.token);
                    eprintln!(
                        "admin token {} named {:?}: shown only now, store it (only its hash is kept)",
                        created.info.id, created.info.name
                    );
                }
            }
            AdminTokenCommand::List { remote, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/admin-tokens");
                let req = remote.remote.client()?.get(&url).bearer_auth(remote.token()?);
                let tokens: Vec<AdminTokenInfo> = call(req, &url).await?;
                if json {
                    print_json(&tokens)?;
                } else {
                    println!("{:<16} {:<32} {:<21} LAST USED", "ID", "NAME", "CREATED");
                    for t in tokens {
                        println!(
                            "{:<16} {:<32} {:<21} {}",
                            t.id,
                            t.name,
                            mayfly_server::clock::rfc3339(t.created_at),
                            t.last_used_at.map(mayfly_server::clock::rfc3339).unwrap_or_else(|| "never".into())
                        );
                    }
                }
            }
            AdminTokenCommand::Revoke { remote, id, json } => {
                let remote = remote.resolve()?;
                let mut url = reqwest::Url::parse(&remote.remote.endpoint("/v1/admin-tokens"))
                    .with_context(|| format!("bad server URL {}", remote.remote.url))?;
                url.path_segments_mut().map_err(|()| anyhow!("bad server URL {}", remote.remote.url))?.push(&id);
                let shown = url.to_string();
                let req = remote.remote.client()?.delete(url).bearer_auth(remote.token()?);
                let revoked: AdminTokenInfo = call(req, &shown).await?;
                if json {
                    print_json(&revoked)?;
                } else {
                    println!("revoked admin token {} ({})", revoked.id, revoked.name);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `mayfly keys …`
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Rotate a profile's signing key: the new key is published at once and signs after the
    /// profile's rotation lead; the old one stays in the JWKS until its tokens expire.
    Rotate {
        #[command(flatten)]
        remote: AdminRemote,
        /// The signing profile (default: `default`).
        #[arg(long)]
        profile: Option<String>,
    },
    /// List the published signing keys.
    List {
        #[command(flatten)]
        remote: AdminRemote,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

impl KeysCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            KeysCommand::Rotate { remote, profile } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/keys/rotate");
                let mut req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?);
                if let Some(p) = &profile {
                    req = req.query(&[("profile", p)]);
                }
                let info: SigningKeyInfo = call(req, &url).await?;
                match info.activates_at {
                    Some(t) => println!(
                        "new signing key {} ({}, profile {}): published now, signs from {}",
                        info.kid,
                        info.alg,
                        info.profile,
                        mayfly_server::clock::rfc3339(t)
                    ),
                    None => println!("new signing key {} ({}, profile {})", info.kid, info.alg, info.profile),
                }
            }
            KeysCommand::List { remote, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/keys");
                let req = remote.remote.client()?.get(&url).bearer_auth(remote.token()?);
                let keys: Vec<SigningKeyInfo> = call(req, &url).await?;
                if json {
                    print_json(&keys)?;
                } else {
                    println!(
                        "{:<44} {:<12} {:<6} {:<7} {:<21} PUBLISHED UNTIL",
                        "KID", "PROFILE", "ALG", "ACTIVE", "CREATED"
                    );
                    for k in keys {
                        println!(
                            "{:<44} {:<12} {:<6} {:<7} {:<21} {}",
                            k.kid,
                            k.profile,
                            k.alg,
                            if k.active { "yes" } else { "no" },
                            mayfly_server::clock::rfc3339(k.created_at),
                            k.published_until.map(mayfly_server::clock::rfc3339).unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The caller's evidence: a platform JWT (from a file or a variable), a join token, or a task token.
#[derive(Args, Clone)]
#[command(group(clap::ArgGroup::new("evidence").required(true).multiple(false)))]
pub struct Evidence {
    /// File holding a platform JWT (a Kubernetes projected token, a CI OIDC token).
    #[arg(long, visible_alias = "token-file", group = "evidence")]
    subject_token_file: Option<PathBuf>,
    /// Name of an environment variable holding a platform JWT.
    #[arg(long, visible_alias = "token-env", group = "evidence")]
    subject_token_env: Option<String>,
    /// A one-time join token.
    #[arg(long, env = "MAYFLY_JOIN_TOKEN", hide_env_values = true, group = "evidence")]
    join_token: Option<String>,
    /// A task token (acts as that task; starts sub-tasks).
    #[arg(long, env = "MAYFLY_TASK_TOKEN", hide_env_values = true, group = "evidence")]
    task_token: Option<String>,
}

impl Evidence {
    /// The token and its RFC 8693 type.
    pub(crate) fn read(&self) -> anyhow::Result<(String, &'static str)> {
        if let Some(p) = &self.subject_token_file {
            let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            return Ok((t.trim().to_owned(), TOKEN_TYPE_JWT));
        }
        if let Some(var) = &self.subject_token_env {
            let t = std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
            return Ok((t.trim().to_owned(), TOKEN_TYPE_JWT));
        }
        if let Some(t) = &self.join_token {
            return Ok((t.trim().to_owned(), TOKEN_TYPE_JOIN_TOKEN));
        }
        if let Some(t) = &self.task_token {
            return Ok((t.trim().to_owned(), TOKEN_TYPE_TASK));
        }
        bail!("give --subject-token-file, --subject-token-env, --join-token or --task-token")
    }

    /// Whether the evidence can be presented again as it is now (a platform JWT re-read
    /// from its file or variable); a join token is single use, a task token proves nothing new.
    pub(crate) fn can_reattest(&self) -> bool {
        self.subject_token_file.is_some() || self.subject_token_env.is_some()
    }

    /// The environment variable the evidence was read from, if any.
    pub(crate) fn token_env(&self) -> Option<&str> {
        self.subject_token_env.as_deref()
    }
}

/// RFC 8693 exchange of evidence for an access token.
pub(crate) async fn exchange(
    remote: &Remote,
    client: &reqwest::Client,
    (subject_token, subject_token_type): (&str, &str),
    audience: &str,
    scope: Option<&str>,
    lifetime: Option<Duration>,
) -> anyhow::Result<TokenExchangeResponse> {
    let mut form = vec![
        ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", subject_token_type),
        ("audience", audience),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let secs = lifetime.map(|l| l.as_secs().to_string());
    if let Some(s) = &secs {
        form.push(("requested_lifetime", s));
    }
    let url = remote.endpoint("/v1/token");
    call(client.post(&url).form(&form), &url).await
}

/// `mayfly token …`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Exchange evidence (a platform JWT, a join token or a task token) for an access token (RFC 8693).
    Exchange {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        evidence: Evidence,
        /// Audience of the token.
        #[arg(long)]
        audience: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime wanted, e.g. 2m (capped by the server).
        #[arg(long, value_parser = humantime::parse_duration)]
        lifetime: Option<Duration>,
        /// Print the whole answer as JSON instead of just the token.
        #[arg(long)]
        json: bool,
    },
}

impl TokenCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let TokenCommand::Exchange { remote, evidence, audience, scope, lifetime, json } = self;
        let (token, token_type) = evidence.read()?;
        let client = remote.client()?;
        let resp = exchange(&remote, &client, (&token, token_type), &audience, scope.as_deref(), lifetime).await?;
        if json {
            print_json(&resp)?;
        } else {
            println!("{}", resp.access_token);
        }
        Ok(ExitCode::SUCCESS)
    }
}
