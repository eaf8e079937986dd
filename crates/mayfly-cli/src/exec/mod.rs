//! `mayfly exec … -- CMD ARGS…`: run a command under a task that lives exactly as long as it.
//!
//! Attest with ambient evidence, start a task, get the credentials asked for, hand
//! them to the child (environment, or 0600 files in a private directory), renew
//! them while it runs (files only: a running process's environment cannot change),
//! forward signals, and end the task the moment the child exits, however it exits.
//! While the child runs, the platform evidence is presented again (re-read from its
//! file or variable) every `--reattest-every` and before every renewal: evidence that no
//! longer proves the same workload ends the task on the server, and the child is
//! stopped, as it is when the task ends in any other way (revoked, signalled, expired).
//! If `mayfly exec` itself is killed, the task's lifetime bounds the exposure.

mod child;
mod clouds;
mod secrets;
mod session;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use mayfly_proto::{EndTaskRequest, EndTaskResponse, StartTaskResponse, TOKEN_TYPE_TASK, TaskAttestRequest, TaskInfo};

use crate::client::{Evidence, Remote, ServerProblem, call, exchange};
use crate::tasks::{TaskSpec, start_task};
use child::{Child, ChildEnv, run_child};
pub use secrets::keep_secrets_from_the_command;
use secrets::{jwt_expiry, renew_file, write_secret};
use session::{Session, reattest_periodically};

/// Exit code when `mayfly exec` itself fails (as `env` and container runtimes do).
pub const EXIT_EXEC_FAILED: u8 = 125;
/// The command exists but cannot be run.
const EXIT_NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
const EXIT_NOT_FOUND: u8 = 127;
/// How long a command whose task ended has to stop after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Variable that receives an audience's token when no name is given.
const DEFAULT_TOKEN_VAR: &str = "MAYFLY_ACCESS_TOKEN";
/// Variables the child never inherits: the evidence and admin credentials of its parent.
const WITHHELD_VARS: [&str; 3] = ["MAYFLY_JOIN_TOKEN", "MAYFLY_ADMIN_TOKEN", "MAYFLY_TASK_TOKEN"];

/// How credentials reach the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Delivery {
    /// In environment variables.
    Env,
    /// In 0600 files in a private directory (removed afterwards); renewed while the child runs.
    Files,
}

/// `mayfly exec`
#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(flatten)]
    evidence: Evidence,
    #[command(flatten)]
    spec: TaskSpec,
    /// Audience to get an access token for: AUD, or VAR=AUD to choose the variable that
    /// carries it (default MAYFLY_ACCESS_TOKEN). Repeatable.
    #[arg(long = "audience")]
    audiences: Vec<String>,
    /// Lifetime of each access token, e.g. 5m (capped by the server and by the task).
    #[arg(long, value_parser = humantime::parse_duration)]
    token_ttl: Option<Duration>,
    /// How credentials reach the command.
    #[arg(long, value_enum, default_value_t = Delivery::Env)]
    deliver: Delivery,
    /// Wait up to this long for an approver when policy makes the task wait (default: do not wait).
    #[arg(long, value_parser = humantime::parse_duration)]
    wait_approval: Option<Duration>,
    /// Present the platform evidence again (re-read from its file or variable) this often
    /// while the command runs, and before every renewal; evidence that no longer proves
    /// the same workload ends the task and stops the command. Without such evidence (a
    /// join token), check this often that the task is still active. 0s: only at renewals.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
    reattest_every: Duration,
    /// A cloud profile (`[[clouds]]` on the server) to give the command credentials for,
    /// through the files and variables the cloud's SDKs and CLI read (AWS web identity,
    /// a Google `external_account` file, Azure workload identity). Repeatable, one per cloud.
    #[arg(long = "cloud", value_name = "NAME")]
    clouds: Vec<String>,
    /// Also give the command the task token (MAYFLY_TASK_TOKEN), so it can get more
    /// credentials or sub-tasks under the same task.
    #[arg(long, conflicts_with = "proxy")]
    pass_task_token: bool,
    /// Run a credential-injecting proxy for the command (`[proxy]` upstreams on the server):
    /// its HTTP_PROXY/HTTPS_PROXY point at it with a per-command secret, and it trusts the
    /// proxy's CA (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, NODE_EXTRA_CA_CERTS).
    /// The upstream secrets never reach the command. Policy must let the task exchange
    /// for `urn:mayfly:proxy` and decide `Action::"proxy"` per request.
    #[arg(long)]
    proxy: bool,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1.., value_name = "CMD")]
    command: Vec<String>,
}

/// One credential wanted: the variable that carries it and its audience.
#[derive(Clone, Debug)]
struct Want {
    var: String,
    audience: String,
}

fn parse_wants(audiences: &[String]) -> anyhow::Result<Vec<Want>> {
    let mut wants: Vec<Want> = Vec::new();
    for a in audiences {
        let want = match a.split_once('=') {
            Some((var, aud))
                if !var.is_empty()
                    && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !aud.is_empty() =>
            {
                Want { var: var.to_owned(), audience: aud.to_owned() }
            }
            _ => Want { var: DEFAULT_TOKEN_VAR.to_owned(), audience: a.clone() },
        };
        if wants.iter().any(|w| w.var == want.var) {
            bail!("two audiences would go into {}: name them, e.g. --audience API_TOKEN=https://api.example", want.var);
        }
        wants.push(want);
    }
    Ok(wants)
}

impl ExecArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let wants = parse_wants(&self.audiences)?;
        clouds::check_names(&self.clouds)?;
        let evidence = self.evidence.read()?;
        let client = self.remote.client()?;
        let program = self.command[0].clone();
        // A task limited to audiences gets cloud tokens only for the clouds it names.
        let audiences = wants
            .iter()
            .map(|w| w.audience.clone())
            .chain(self.clouds.iter().map(|c| clouds::task_audience(c)))
            .collect();
        let started: StartTaskResponse = start_task(
            &self.remote,
            &client,
            (&evidence.0, evidence.1),
            &self.spec,
            audiences,
            &format!("exec {program}"),
        )
        .await
        .context("starting the task")?;
        let (ended, mut ended_rx) = tokio::sync::watch::channel(None);
        let mut session = Session {
            remote: self.remote.clone(),
            client,
            task: started.task,
            task_token: started.task_token,
            // A sub-task (started with a task token) is governed through its root.
            evidence: self.evidence.can_reattest().then(|| self.evidence.clone()),
            ended,
            told_stale: Default::default(),
        };

        // From here on, any failure ends the task before returning.
        let prepared = self.prepare(&mut session, &wants).await;
        let (env, dir) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = session.end(format!("mayfly exec failed before starting {program}")).await;
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(EXIT_EXEC_FAILED));
            }
        };
        let session = std::sync::Arc::new(session);
        let mut renewals = Vec::new();
        if let Some(dir) = &dir {
            for (profile, lifetime) in &env.renew_clouds {
                renewals.push(tokio::spawn(clouds::renew(
                    session.clone(),
                    profile.clone(),
                    dir.path().to_owned(),
                    *lifetime,
                )));
            }
        }
        if let Some(dir) = dir.as_ref().filter(|_| self.deliver == Delivery::Files) {
            for (want, expires_in) in &env.renew {
                renewals.push(tokio::spawn(renew_file(
                    session.clone(),
                    want.clone(),
                    dir.path().to_owned(),
                    *expires_in,
                    self.token_ttl,
                )));
            }
        }

        if !self.reattest_every.is_zero() {
            renewals.push(tokio::spawn(reattest_periodically(session.clone(), self.reattest_every)));
        }

        let outcome = run_child(&self.command, &env.vars, &self.withheld(), &mut ended_rx).await;
        // The command's proxy serves no one after it.
        if let Some(proxy) = &env.proxy {
            proxy.stop();
        }
        for r in renewals {
            r.abort();
        }
        let (code, reason) = match &outcome {
            Ok(Child { code, reason }) => (*code, reason.clone()),
            Err(e) => (e.code, e.message.clone()),
        };
        if let Err(e) = &outcome {
            eprintln!("mayfly exec: {}", e.message);
        }
        // End first, then remove the files: nothing written outlives the child.
        let ended_under_it = session.ended.borrow().clone();
        if let Some(why) = &ended_under_it {
            eprintln!("mayfly exec: task {} ended while {program} ran, so it was stopped: {why}", session.task.id);
        }
        // Ended all the same: what looked like the end (a refused token) may not have been one.
        match session.end(reason).await {
            Ok(ended) => {
                tracing::debug!(task = %ended.task.id, "task ended");
            }
            Err(e) if ended_under_it.is_some() && ServerProblem::of(&e).is_some_and(|p| p.status == 409) => {}
            Err(e) => eprintln!(
                "mayfly exec: WARNING: could not end task {} ({e:#}); it expires at {}",
                session.task.id,
                mayfly_server::clock::rfc3339(session.task.expires_at)
            ),
        }
        if let Some(dir) = dir
            && let Err(e) = dir.close()
        {
            eprintln!("mayfly exec: could not remove the credentials directory: {e}");
        }
        Ok(ExitCode::from(code))
    }

    /// Variables the child does not inherit.
    fn withheld(&self) -> Vec<String> {
        let mut out: Vec<String> = WITHHELD_VARS
            .iter()
            .filter(|v| !(self.pass_task_token && **v == "MAYFLY_TASK_TOKEN"))
            .map(|s| (*s).to_owned())
            .collect();
        if let Some(v) = self.evidence.token_env() {
            out.push(v.to_owned());
        }
        out
    }

    /// Waits for approval if needed, gets the credentials, and lays them out for the child.
    async fn prepare(
        &self,
        session: &mut Session,
        wants: &[Want],
    ) -> anyhow::Result<(ChildEnv, Option<tempfile::TempDir>)> {
        if session.task.state == "pending" {
            match self.wait_approval {
                Some(limit) => session.await_approval(limit).await?,
                None => bail!(
                    "task {} needs approval (mayfly tasks approve {}); pass --wait-approval 10m to wait for it",
                    session.task.id,
                    session.task.id
                ),
            }
        }
        let mut vars = BTreeMap::new();
        vars.insert("MAYFLY_TASK_ID".to_owned(), session.task.id.clone());
        vars.insert("MAYFLY_TASK_SPIFFE_ID".to_owned(), session.task.spiffe_id.clone());
        vars.insert("MAYFLY_URL".to_owned(), session.remote.url.clone());
        // Cloud SDKs read their tokens from files, whatever the delivery of the rest.
        let dir = match (self.deliver, self.clouds.is_empty() && !self.proxy) {
            (Delivery::Env, true) => None,
            _ => {
                let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
                let dir = tempfile::Builder::new()
                    .prefix("mayfly-exec-")
                    .tempdir_in(&base)
                    .with_context(|| format!("creating a private credentials directory in {}", base.display()))?;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
                vars.insert("MAYFLY_CREDENTIALS_DIR".to_owned(), dir.path().display().to_string());
                Some(dir)
            }
        };
        let mut renew = Vec::new();
        let mut secrets = vec![];
        for w in wants {
            let (token, expires_in) = session
                .token(&w.audience, self.token_ttl)
                .await
                .with_context(|| format!("getting a token for {}", w.audience))?;
            secrets.push((w.var.clone(), token));
            renew.push((w.clone(), expires_in));
        }
        if self.pass_task_token {
            secrets.push(("MAYFLY_TASK_TOKEN".to_owned(), session.task_token.clone()));
        }
        let mut renew_clouds = Vec::new();
        if let Some(d) = &dir
            && !self.clouds.is_empty()
        {
            let (cloud_vars, renew) = clouds::prepare(session, d.path(), &self.clouds).await?;
            vars.extend(cloud_vars);
            renew_clouds = renew;
        }
        for (var, value) in secrets {
            match dir.as_ref().filter(|_| self.deliver == Delivery::Files) {
                None => {
                    vars.insert(var, value);
                }
                Some(d) => {
                    let path = write_secret(d.path(), &var, &value)
                        .with_context(|| format!("writing {} into {}", var, d.path().display()))?;
                    vars.insert(format!("{var}_FILE"), path.display().to_string());
                }
            }
        }
        let proxy = match dir.as_ref().filter(|_| self.proxy) {
            Some(d) => Some(start_proxy(session, d.path(), &mut vars).await?),
            None => None,
        };
        Ok((ChildEnv { vars, renew, renew_clouds, proxy }, dir))
    }
}

/// Where a system's CA bundle usually is (Debian, Fedora, Alpine, macOS via Homebrew's).
const SYSTEM_CA_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// Starts the command's proxy and points the command at it: a per-command secret in the
/// proxy URL, the proxy's CA beside the system's in the bundles the command's TLS stacks read.
async fn start_proxy(
    session: &Session,
    dir: &std::path::Path,
    vars: &mut BTreeMap<String, String>,
) -> anyhow::Result<crate::proxy::RunningProxy> {
    use rand::Rng;
    let secret: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(40).map(char::from).collect();
    let task_token = session.task_token.clone();
    let own = task_token.clone();
    let evidence = Box::new(move || Ok((own.clone(), TOKEN_TYPE_TASK)));
    let exec = crate::proxy::ExecWorkload { secret: secret.clone(), task_token };
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let running = crate::proxy::start(session.remote.clone(), evidence, Some(exec), listen)
        .await
        .context("starting the proxy")?;
    let ca_only = dir.join("proxy-ca.pem");
    std::fs::write(&ca_only, running.ca_pem())?;
    let mut bundle = running.ca_pem().to_owned();
    if let Some(system) = SYSTEM_CA_BUNDLES.iter().find_map(|p| std::fs::read_to_string(p).ok()) {
        bundle.push('\n');
        bundle.push_str(&system);
    }
    let bundle_path = dir.join("ca-bundle.pem");
    std::fs::write(&bundle_path, bundle)?;
    let url = format!("http://mayfly:{secret}@{}", running.addr);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        vars.insert(var.to_owned(), url.clone());
    }
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        vars.insert(var.to_owned(), bundle_path.display().to_string());
    }
    vars.insert("NODE_EXTRA_CA_CERTS".to_owned(), ca_only.display().to_string());
    vars.insert("MAYFLY_PROXY_CA_FILE".to_owned(), ca_only.display().to_string());
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_name_their_variables() {
        let w = parse_wants(&["https://api.example/x?a=b".into(), "DB_TOKEN=https://db".into()]).unwrap();
        assert_eq!(w[0].var, DEFAULT_TOKEN_VAR);
        assert_eq!(w[0].audience, "https://api.example/x?a=b");
        assert_eq!((w[1].var.as_str(), w[1].audience.as_str()), ("DB_TOKEN", "https://db"));
        assert!(parse_wants(&["a".into(), "b".into()]).is_err(), "two unnamed audiences collide");
    }
}
