//! Commands that talk to a running server over its HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use mayfly_proto::{
    CreateJoinTokenRequest, CreateJoinTokenResponse, GRANT_TYPE_TOKEN_EXCHANGE, Problem, SigningKeyInfo,
    TOKEN_TYPE_JOIN_TOKEN, TOKEN_TYPE_JWT, TokenExchangeResponse,
};
use serde::de::DeserializeOwned;

use crate::serve::DEV_LISTEN;

/// Where the server is.
#[derive(Args)]
pub struct Remote {
    /// Base URL of the server.
    #[arg(long, env = "MAYFLY_URL", default_value_t = format!("http://{DEV_LISTEN}"))]
    url: String,
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
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &self.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("parsing the CA certificate")?);
        }
        Ok(b.build()?)
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
            let mut msg = format!("{} ({}): {}", p.title, p.status, p.detail.unwrap_or_default());
            if !p.policies.is_empty() {
                msg.push_str(&format!(" [policies: {}]", p.policies.join(", ")));
            }
            Err(anyhow!(msg))
        }
        Err(_) => Err(anyhow!("{url} answered HTTP {status}")),
    }
}

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

/// `mayfly keys …`
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Rotate the signing key: the new key signs at once; the old one stays in the JWKS until its tokens expire.
    Rotate {
        #[command(flatten)]
        remote: AdminRemote,
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
            KeysCommand::Rotate { remote } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/keys/rotate");
                let req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?);
                let info: SigningKeyInfo = call(req, &url).await?;
                println!("new signing key {} ({})", info.kid, info.alg);
            }
            KeysCommand::List { remote, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/keys");
                let req = remote.remote.client()?.get(&url).bearer_auth(remote.token()?);
                let keys: Vec<SigningKeyInfo> = call(req, &url).await?;
                if json {
                    print_json(&keys)?;
                } else {
                    println!("{:<44} {:<6} {:<7} {:<21} PUBLISHED UNTIL", "KID", "ALG", "ACTIVE", "CREATED");
                    for k in keys {
                        println!(
                            "{:<44} {:<6} {:<7} {:<21} {}",
                            k.kid,
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

/// `mayfly token …`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Exchange evidence (a platform JWT or a join token) for an access token (RFC 8693).
    Exchange {
        #[command(flatten)]
        remote: Remote,
        /// File holding a platform JWT (e.g. /var/run/secrets/tokens/mayfly).
        #[arg(long, conflicts_with = "join_token", required_unless_present = "join_token")]
        subject_token_file: Option<PathBuf>,
        /// A one-time join token.
        #[arg(long, env = "MAYFLY_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
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
        let TokenCommand::Exchange { remote, subject_token_file, join_token, audience, scope, lifetime, json } = self;
        let (subject_token, subject_token_type) = match (subject_token_file, join_token) {
            (Some(p), _) => (
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_owned(),
                TOKEN_TYPE_JWT,
            ),
            (None, Some(t)) => (t, TOKEN_TYPE_JOIN_TOKEN),
            (None, None) => bail!("give --subject-token-file or --join-token"),
        };
        let mut form = vec![
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE.to_owned()),
            ("subject_token", subject_token),
            ("subject_token_type", subject_token_type.to_owned()),
            ("audience", audience),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        if let Some(l) = lifetime {
            form.push(("requested_lifetime", l.as_secs().to_string()));
        }
        let url = remote.endpoint("/v1/token");
        let resp: TokenExchangeResponse = call(remote.client()?.post(&url).form(&form), &url).await?;
        if json {
            print_json(&resp)?;
        } else {
            println!("{}", resp.access_token);
        }
        Ok(ExitCode::SUCCESS)
    }
}
