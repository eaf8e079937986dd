//! Operator commands over the ledger: `revoke`, `leases`, `audit`. They work remotely
//! (`--url` and an admin token) and on the server's own box (`--config`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use mayfly_proto::{LiftRequest, RevokeRequest};
use serde_json::Value;

use crate::client::{AdminRemote, ServerProblem, call, print_json};

/// `mayfly revoke`: exactly one selector; or `mayfly revoke lift` to end a block.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("selector").required(true).multiple(false)))]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct RevokeArgs {
    #[command(subcommand)]
    lift: Option<RevokeCommand>,
    #[command(flatten)]
    remote: AdminRemote,
    /// One token by its jti (the id `mayfly leases` shows).
    #[arg(long, group = "selector")]
    jti: Option<String>,
    /// One database lease by its id: its sessions are ended and its user dropped now.
    /// An id that no database lease has is revoked as a token's jti.
    #[arg(long, group = "selector")]
    lease: Option<String>,
    /// Everything a SPIFFE ID holds now.
    #[arg(long, group = "selector")]
    subject: Option<String>,
    /// Everything held by a SPIFFE ID or any below it, e.g. spiffe://prod.example/ns/payments.
    #[arg(long, group = "selector")]
    subject_prefix: Option<String>,
    /// Everything issued for an audience.
    #[arg(long, group = "selector")]
    audience: Option<String>,
    /// Everything issued under a task.
    #[arg(long, group = "selector")]
    task: Option<String>,
    /// Everything issued at or before a time: Unix seconds or RFC 3339.
    #[arg(long, group = "selector", value_parser = parse_time)]
    issued_before: Option<i64>,
    /// Everything issued until now.
    #[arg(long, group = "selector")]
    all: bool,
    /// Also refuse all new issuance the selector covers (subject, subject prefix, audience
    /// or all) until `mayfly revoke lift`, or for `--for`.
    #[arg(long, conflicts_with = "lease")]
    block: bool,
    /// With --block: how long the block lasts, e.g. 24h (default: until lifted).
    #[arg(long = "for", requires = "block", value_parser = humantime::parse_duration)]
    block_for: Option<std::time::Duration>,
    /// Why (kept in the audit trail; not with --lease).
    #[arg(long, conflicts_with = "lease")]
    reason: Option<String>,
    /// Print the recorded revocation (or the database lease) as JSON.
    #[arg(long)]
    json: bool,
}

/// `mayfly revoke lift`.
#[derive(Subcommand)]
pub enum RevokeCommand {
    /// End the block on a selector: new issuance resumes; what was revoked stays revoked.
    Lift(LiftArgs),
}

/// `mayfly revoke lift`: exactly one selector.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("lifted").required(true).multiple(false)))]
pub struct LiftArgs {
    #[command(flatten)]
    remote: AdminRemote,
    /// The SPIFFE ID whose block ends.
    #[arg(long, group = "lifted")]
    subject: Option<String>,
    /// The SPIFFE ID prefix whose block ends.
    #[arg(long, group = "lifted")]
    subject_prefix: Option<String>,
    /// The audience whose block ends.
    #[arg(long, group = "lifted")]
    audience: Option<String>,
    /// The block on all issuance ends.
    #[arg(long, group = "lifted")]
    all: bool,
    /// Why (kept in the audit trail).
    #[arg(long)]
    reason: Option<String>,
    /// Print the recorded lift as JSON.
    #[arg(long)]
    json: bool,
}

impl LiftArgs {
    async fn run(self) -> anyhow::Result<ExitCode> {
        let remote = self.remote.resolve()?;
        let body = LiftRequest {
            subject: self.subject,
            subject_prefix: self.subject_prefix,
            audience: self.audience,
            all: self.all,
            reason: self.reason,
        };
        let url = remote.remote.endpoint("/v1/revocations/lift");
        let req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?).json(&body);
        let lift: Value = call(req, &url).await?;
        if self.json {
            print_json(&lift)?;
        } else {
            println!(
                "lifted: {} {} (cursor {}; new issuance resumes; what was issued until {} stays revoked)",
                lift["kind"].as_str().unwrap_or("?"),
                lift["value"].as_str().filter(|v| !v.is_empty()).unwrap_or("(everything)"),
                lift["cursor"],
                mayfly_server::clock::rfc3339(lift["issued_before"].as_i64().unwrap_or(0)),
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e}: use Unix seconds or RFC 3339 (2026-11-23T10:00:00Z)"))
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).map_err(|e| e.to_string()))
}

impl RevokeArgs {
    pub async fn run(mut self) -> anyhow::Result<ExitCode> {
        if let Some(RevokeCommand::Lift(lift)) = self.lift.take() {
            return lift.run().await;
        }
        let remote = self.remote.resolve()?;
        if let Some(id) = self.lease.take() {
            match revoke_db_lease(&remote, &id, self.json).await {
                Err(e) if ServerProblem::of(&e).is_some_and(|p| p.status == 404) => {
                    // Not a database lease: a token's lease (jti), as `mayfly leases` lists them.
                    eprintln!("no database lease has id {id}; revoking the token with jti {id}");
                    self.jti = Some(id);
                }
                other => return other,
            }
        }
        let body = RevokeRequest {
            jti: self.jti,
            subject: self.subject,
            subject_prefix: self.subject_prefix,
            audience: self.audience,
            task: self.task,
            issued_before: self.issued_before,
            all: self.all,
            block: self.block,
            block_seconds: self.block_for.map(|d| d.as_secs().max(1)),
            reason: self.reason,
        };
        let url = remote.remote.endpoint("/v1/revocations");
        let req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?).json(&body);
        let rev: Value = call(req, &url).await?;
        if self.json {
            print_json(&rev)?;
        } else {
            let until = rev["issued_before"].as_i64().unwrap_or(0);
            let reach = if !self.block {
                format!("covers credentials issued until {}", mayfly_server::clock::rfc3339(until))
            } else if until == i64::MAX {
                "new issuance blocked until `mayfly revoke lift`".to_owned()
            } else {
                format!("new issuance blocked until {}", mayfly_server::clock::rfc3339(until))
            };
            println!(
                "revoked: {} {} (cursor {}; {reach})",
                rev["kind"].as_str().unwrap_or("?"),
                rev["value"].as_str().filter(|v| !v.is_empty()).unwrap_or("(everything)"),
                rev["cursor"],
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `DELETE /v1/credentials/leases/{id}`: the database user is dropped before the answer,
/// or the lease stays `revoking` and the server retries.
async fn revoke_db_lease(remote: &AdminRemote, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut url = reqwest::Url::parse(&remote.remote.endpoint("/v1/credentials/leases"))
        .with_context(|| format!("bad server URL {}", remote.remote.url))?;
    url.path_segments_mut().map_err(|()| anyhow!("bad server URL {}", remote.remote.url))?.push(id);
    let shown = url.to_string();
    let req = remote.remote.client()?.delete(url).bearer_auth(remote.token()?);
    let lease: Value = call(req, &shown).await?;
    if json {
        print_json(&lease)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (user, database) = (lease["username"].as_str().unwrap_or("?"), lease["database"].as_str().unwrap_or("?"));
    if lease["state"] == "revoked" {
        println!("revoked database lease {id}: user {user} dropped from {database}, its sessions ended");
    } else {
        println!(
            "database lease {id} is {}: user {user} on {database} is not dropped yet ({}); the server retries until it is",
            lease["state"].as_str().unwrap_or("?"),
            lease["last_error"].as_str().unwrap_or("no error recorded"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly leases`.
#[derive(Args)]
pub struct LeasesArgs {
    #[command(flatten)]
    remote: AdminRemote,
    /// Exact SPIFFE ID.
    #[arg(long)]
    subject: Option<String>,
    /// SPIFFE ID prefix.
    #[arg(long)]
    subject_prefix: Option<String>,
    /// Task id.
    #[arg(long)]
    task: Option<String>,
    /// Credential kind, e.g. jwt.
    #[arg(long)]
    kind: Option<String>,
    /// active (default), expired, revoked or all.
    #[arg(long)]
    state: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl LeasesArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let remote = self.remote.resolve()?;
        let url = remote.remote.endpoint("/v1/leases");
        let mut q: Vec<(&str, String)> = vec![("limit", self.limit.to_string())];
        for (k, v) in [
            ("subject", self.subject),
            ("subject_prefix", self.subject_prefix),
            ("task", self.task),
            ("kind", self.kind),
            ("state", self.state),
        ] {
            if let Some(v) = v {
                q.push((k, v));
            }
        }
        let req = remote.remote.client()?.get(&url).query(&q).bearer_auth(remote.token()?);
        let leases: Vec<Value> = call(req, &url).await?;
        if self.json {
            print_json(&leases)?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:<30} {:<5} {:<8} {:<21} {:<45} AUDIENCE", "ID", "KIND", "STATE", "EXPIRES", "SUBJECT");
        for l in &leases {
            println!(
                "{:<30} {:<5} {:<8} {:<21} {:<45} {}",
                l["id"].as_str().unwrap_or(""),
                l["kind"].as_str().unwrap_or(""),
                l["state"].as_str().unwrap_or(""),
                mayfly_server::clock::rfc3339(l["expires_at"].as_i64().unwrap_or(0)),
                l["subject"].as_str().unwrap_or(""),
                l["audience"].as_str().unwrap_or(""),
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `mayfly audit`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[command(flatten)]
    remote: AdminRemote,
    /// Only events about this subject.
    #[arg(long)]
    subject: Option<String>,
    /// Event kind, or a prefix ending in '.' (policy., token.issued, credential.revoked, attest.failed, admin.).
    #[arg(long)]
    kind: Option<String>,
    /// Events at or after: Unix seconds or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Events before: Unix seconds or RFC 3339.
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// One JSON object per line (for a SIEM).
    #[arg(long)]
    json: bool,
}

/// `mayfly audit verify`, `mayfly audit checkpoint`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain and name the first broken link; check it against the latest
    /// stored checkpoints and, with --checkpoint, against one exported earlier. With
    /// --config the database is read directly (the server need not run).
    Verify {
        #[command(flatten)]
        remote: AdminRemote,
        /// A checkpoint exported earlier (`mayfly audit checkpoint > cp.jws`, or its --json
        /// output): its signature must verify with a key of this server (or --jwk), and the
        /// chain must still hold the event it anchors, with the same hash.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Public keys to trust for the checkpoint's signature besides the server's: a JWK,
        /// a JWK Set (e.g. the JWKS saved when the checkpoint was exported), or the --json
        /// output of `mayfly audit checkpoint`. A key inside the checkpoint file itself is
        /// never trusted unless given here.
        #[arg(long, value_name = "FILE", requires = "checkpoint")]
        jwk: Option<PathBuf>,
    },
    /// Print the latest signed checkpoint of the chain's head (a compact JWS), to keep
    /// where the database's writers cannot reach: `mayfly audit checkpoint > cp.jws`.
    Checkpoint {
        #[command(flatten)]
        remote: AdminRemote,
        /// Print it as JSON with its claims and the public JWK of the key that signed it.
        #[arg(long)]
        json: bool,
    },
}

impl AuditArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Some(AuditCommand::Verify { remote, checkpoint, jwk }) => {
                return crate::audit::verify(remote, checkpoint, jwk).await;
            }
            Some(AuditCommand::Checkpoint { remote, json }) => return crate::audit::checkpoint(remote, json).await,
            None => {}
        }
        let remote = self.remote.resolve()?;
        let url = remote.remote.endpoint("/v1/audit");
        let mut q: Vec<(&str, String)> = vec![("limit", self.limit.to_string())];
        for (k, v) in [
            ("subject", self.subject),
            ("kind", self.kind),
            ("since", self.since.map(|t| t.to_string())),
            ("until", self.until.map(|t| t.to_string())),
        ] {
            if let Some(v) = v {
                q.push((k, v));
            }
        }
        let req = remote.remote.client()?.get(&url).query(&q).bearer_auth(remote.token()?);
        let events: Vec<Value> = call(req, &url).await?;
        for e in &events {
            if self.json {
                println!("{e}");
            } else {
                let ts = e["ts_ms"].as_i64().unwrap_or(0) / 1000;
                println!(
                    "{:>6} {} {:<24} {:<45} {}",
                    e["seq"],
                    mayfly_server::clock::rfc3339(ts),
                    e["kind"].as_str().unwrap_or(""),
                    e["subject"].as_str().unwrap_or("-"),
                    e["detail"]
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
