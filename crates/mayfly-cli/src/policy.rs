//! `mayfly policy …`: offline policy tools for writing and debugging policies.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use mayfly_server::attest::WorkloadIdentity;
use mayfly_server::authorize::{ExchangeRequest, PolicyEngine, Principal};
use mayfly_server::spiffe::SpiffeId;

/// `mayfly policy …`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check that a policy directory parses and validates against Mayfly's schema.
    Validate {
        /// Directory of *.cedar files.
        dir: PathBuf,
    },
    /// Print the Cedar schema policies are validated against.
    Schema,
    /// Decide a token-exchange request offline, as the server would, and say which policies decided.
    Eval {
        /// Directory of *.cedar files.
        #[arg(long)]
        policies: PathBuf,
        /// SPIFFE ID of the workload.
        #[arg(long)]
        principal: String,
        /// An attested attribute, NAME=VALUE (repeatable).
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
        /// Attestor name as the server reports it, e.g. oidc:k8s or join_token.
        #[arg(long, default_value = "join_token")]
        attestor: String,
        /// Audience asked for.
        #[arg(long)]
        audience: String,
        /// Space-separated scopes asked for.
        #[arg(long, default_value = "")]
        scope: String,
        /// Lifetime that would be granted, in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: i64,
        /// Caller's address.
        #[arg(long, default_value = "127.0.0.1")]
        source_ip: IpAddr,
        /// The token would be DPoP-bound.
        #[arg(long)]
        dpop: bool,
        /// The token would be bound to a TLS client certificate.
        #[arg(long)]
        mtls: bool,
        /// Limited use: verifications allowed (0: unlimited).
        #[arg(long, default_value_t = 0)]
        max_uses: i64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "use NAME=VALUE".to_owned())
}

impl PolicyCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            PolicyCommand::Validate { dir } => {
                let engine = PolicyEngine::load(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
                println!("{}: {} policies, valid", dir.display(), engine.current().count);
                Ok(ExitCode::SUCCESS)
            }
            PolicyCommand::Schema => {
                print!("{}", mayfly_server::authorize::SCHEMA);
                Ok(ExitCode::SUCCESS)
            }
            PolicyCommand::Eval {
                policies,
                principal,
                attrs,
                attestor,
                audience,
                scope,
                ttl,
                source_ip,
                dpop,
                mtls,
                max_uses,
                json,
            } => {
                let engine = PolicyEngine::load(&policies).map_err(|e| anyhow!("{}: {e}", policies.display()))?;
                let spiffe_id = SpiffeId::parse(&principal).context("--principal")?;
                let identity =
                    WorkloadIdentity { spiffe_id, attestor, attributes: attrs.into_iter().collect::<BTreeMap<_, _>>() };
                let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
                let decision = engine.decide_exchange(&ExchangeRequest {
                    principal: Principal::Workload(&identity),
                    audience: &audience,
                    scopes: &scopes,
                    ttl_seconds: ttl,
                    source_ip,
                    now: mayfly_server::clock::now_unix(),
                    dpop,
                    mtls,
                    max_uses,
                });
                if json {
                    let v = serde_json::json!({
                        "decision": if decision.allowed { "allow" } else { "deny" },
                        "policies": decision.policies,
                        "errors": decision.errors,
                        "reason": decision.reason(),
                    });
                    println!("{v}");
                } else {
                    println!("{}: {}", if decision.allowed { "ALLOW" } else { "DENY" }, decision.reason());
                    for e in &decision.errors {
                        println!("  evaluation error: {e}");
                    }
                }
                // Exit 0 for allow, 2 for deny: scripts can test policies.
                Ok(if decision.allowed { ExitCode::SUCCESS } else { ExitCode::from(2) })
            }
        }
    }
}
