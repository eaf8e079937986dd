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

use std::collections::BTreeMap;
use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use mayfly_proto::{EndTaskRequest, EndTaskResponse, StartTaskResponse, TOKEN_TYPE_TASK, TaskAttestRequest, TaskInfo};
use tokio::signal::unix::{SignalKind, signal};

use crate::client::{Evidence, Remote, ServerProblem, call, exchange};
use crate::tasks::{TaskSpec, start_task};

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
    /// Also give the command the task token (MAYFLY_TASK_TOKEN), so it can get more
    /// credentials or sub-tasks under the same task.
    #[arg(long)]
    pass_task_token: bool,
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

/// The task and what is needed to act as it.
struct Session {
    remote: Remote,
    client: reqwest::Client,
    task: TaskInfo,
    task_token: String,
    /// The starter's evidence, when it can be presented again.
    evidence: Option<Evidence>,
    /// Why the task ended under the running command (set once, watched by the child's keeper).
    ended: tokio::sync::watch::Sender<Option<String>>,
    /// Whether the user was told that expired evidence is no longer presented.
    told_stale: std::sync::atomic::AtomicBool,
}

impl Session {
    async fn end(&self, reason: String) -> anyhow::Result<EndTaskResponse> {
        let url = self.remote.endpoint(&format!("/v1/tasks/{}", self.task.id));
        let req = self.client.delete(&url).bearer_auth(&self.task_token).json(&EndTaskRequest { reason: Some(reason) });
        call(req, &url).await
    }

    async fn token(&self, audience: &str, ttl: Option<Duration>) -> anyhow::Result<(String, u64)> {
        let resp = exchange(&self.remote, &self.client, (&self.task_token, TOKEN_TYPE_TASK), audience, None, ttl).await;
        let resp = resp.inspect_err(|e| {
            self.ended_by(e);
        })?;
        Ok((resp.access_token, resp.expires_in))
    }

    /// Presents the starter's evidence as it is now. An answer that the task is over
    /// marks it ended; a failure to check (server or issuer unreachable) changes nothing.
    async fn reattest(&self) {
        if self.is_ended() {
            return;
        }
        let now = mayfly_server::clock::now_unix();
        if self.task.expires_at <= now {
            return self.mark_ended("its lifetime is over".into());
        }
        let Some(evidence) = &self.evidence else { return self.check_alive().await };
        let (subject_token, subject_token_type) = match evidence.read() {
            Ok((t, ty)) => (t, ty.to_owned()),
            // A token file being replaced can be unreadable for a moment: tried again next time.
            Err(e) => return eprintln!("mayfly exec: cannot re-read the evidence (will retry): {e:#}"),
        };
        // A platform that stopped renewing its token (a variable never changes; a CI token
        // written once) has not shown that the workload moved: the token is no longer
        // presented, and the task's own lifetime bounds what it holds.
        if jwt_expiry(&subject_token).is_some_and(|exp| exp <= now) {
            if !self.told_stale.swap(true, std::sync::atomic::Ordering::Relaxed) {
                eprintln!(
                    "mayfly exec: the evidence has expired and was not renewed; it is no longer presented (task {} ends at {})",
                    self.task.id,
                    mayfly_server::clock::rfc3339(self.task.expires_at)
                );
            }
            return;
        }
        let url = self.remote.endpoint(&format!("/v1/tasks/{}/attest", self.task.id));
        let body = TaskAttestRequest { subject_token_type, subject_token };
        let req = self.client.post(&url).bearer_auth(&self.task_token).json(&body);
        match call::<TaskInfo>(req, &url).await {
            Ok(_) => tracing::debug!(task = %self.task.id, "re-attested"),
            Err(e) if !self.ended_by(&e) => {
                eprintln!("mayfly exec: re-attestation could not be checked now (will retry): {e:#}")
            }
            Err(_) => {}
        }
    }

    /// Without evidence to present, asks whether the task is still active.
    async fn check_alive(&self) {
        let url = self.remote.endpoint(&format!("/v1/tasks/{}", self.task.id));
        match call::<TaskInfo>(self.client.get(&url).bearer_auth(&self.task_token), &url).await {
            Ok(t) if t.state == "active" => {}
            Ok(t) => self.mark_ended(format!("the task is {}", t.state)),
            Err(e) if !self.ended_by(&e) => {
                eprintln!("mayfly exec: the task's state could not be checked now (will retry): {e:#}")
            }
            Err(_) => {}
        }
    }

    /// Marks the task ended when the server's answer says it is over (its token no
    /// longer works, whoever ended it, or re-attestation ended it); whether it did.
    fn ended_by(&self, e: &anyhow::Error) -> bool {
        let Some(p) = ServerProblem::of(e) else { return false };
        let over = ["task-ended", "task-not-active", "invalid-task-token", "subject-token-expired"]
            .iter()
            .any(|slug| p.is(slug))
            || p.status == 409
            || p.status == 401;
        if over {
            self.mark_ended(p.to_string());
        }
        over
    }

    fn mark_ended(&self, why: String) {
        self.ended.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(why);
            true
        });
    }

    fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Waits for an approver, polling the task.
    async fn await_approval(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let url = self.remote.endpoint(&format!("/v1/tasks/{}", self.task.id));
        eprintln!(
            "mayfly exec: task {} is waiting for approval (mayfly tasks approve {}); waiting up to {}",
            self.task.id,
            self.task.id,
            humantime::format_duration(limit)
        );
        while self.task.state == "pending" {
            if tokio::time::Instant::now() >= deadline {
                bail!("task {} was not approved within {}", self.task.id, humantime::format_duration(limit));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.task = call(self.client.get(&url).bearer_auth(&self.task_token), &url).await?;
        }
        if self.task.state != "active" {
            bail!("task {} is {}", self.task.id, self.task.state);
        }
        Ok(())
    }
}

/// Makes this process non-dumpable (`PR_SET_DUMPABLE` 0), as the first thing `mayfly exec`
/// does, before any secret is read: the command it runs has the same uid and could
/// otherwise read its environment (`MAYFLY_ADMIN_TOKEN`, `MAYFLY_JOIN_TOKEN`) and memory
/// through `/proc/<pid>/environ` and `/proc/<pid>/mem`, and no core dump holds them.
pub fn keep_secrets_from_the_command() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

/// Writes a file only the owner can read, replacing any previous version atomically.
///
/// The command can write into the credentials directory (same uid): the new version is
/// written to a fresh file of a random name, created exclusively (so a link planted there
/// cannot be followed), with its mode 0600 applied again, then renamed over `name` (which
/// replaces a link planted at `name` rather than writing through it).
fn write_secret(dir: &Path, name: &str, value: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let mut f = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    f.as_file().set_permissions(Permissions::from_mode(0o600))?;
    f.write_all(value.as_bytes())?;
    f.as_file().sync_all()?;
    f.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// Re-exchanges before expiry and replaces the file, until the task ends.
async fn renew_file(
    session: std::sync::Arc<Session>,
    want: Want,
    dir: PathBuf,
    mut expires_in: u64,
    ttl: Option<Duration>,
) {
    loop {
        // Renew at two thirds of the lifetime; retry every few seconds on failure.
        tokio::time::sleep(Duration::from_secs((expires_in * 2 / 3).max(1))).await;
        session.reattest().await;
        if session.is_ended() {
            return;
        }
        match session.token(&want.audience, ttl).await {
            Ok((token, exp)) => match write_secret(&dir, &want.var, &token) {
                Ok(_) => expires_in = exp,
                Err(e) => {
                    eprintln!("mayfly exec: cannot write renewed {}: {e}", want.var);
                    expires_in = 6;
                }
            },
            Err(_) if session.is_ended() => return,
            Err(e) => {
                eprintln!("mayfly exec: renewing the token for {} failed: {e:#}", want.audience);
                expires_in = 6;
            }
        }
    }
}

/// The `exp` of a JWT, read without verifying it: only to decide whether it is worth sending.
fn jwt_expiry(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_i64()
}

/// Re-attests every `every` until the task ends.
async fn reattest_periodically(session: std::sync::Arc<Session>, every: Duration) {
    while !session.is_ended() {
        tokio::time::sleep(every).await;
        session.reattest().await;
    }
}

/// The signals passed on to the child.
const FORWARDED: [SignalKind; 6] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
    SignalKind::quit(),
    SignalKind::user_defined1(),
    SignalKind::user_defined2(),
];

impl ExecArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let wants = parse_wants(&self.audiences)?;
        let evidence = self.evidence.read()?;
        let client = self.remote.client()?;
        let program = self.command[0].clone();
        let audiences = wants.iter().map(|w| w.audience.clone()).collect();
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
        let dir = match self.deliver {
            Delivery::Env => None,
            Delivery::Files => {
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
        for (var, value) in secrets {
            match &dir {
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
        Ok((ChildEnv { vars, renew }, dir))
    }
}

/// What the child gets, and which files to keep fresh.
struct ChildEnv {
    vars: BTreeMap<String, String>,
    renew: Vec<(Want, u64)>,
}

/// How the child ended.
struct Child {
    code: u8,
    reason: String,
}

/// Why the child could not run.
struct ChildError {
    code: u8,
    message: String,
}

/// Runs the child to completion, forwarding signals, and stopping it (SIGTERM) if the
/// task ends under it; its exit code (or 128 + signal).
async fn run_child(
    command: &[String],
    vars: &BTreeMap<String, String>,
    withheld: &[String],
    ended: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> Result<Child, ChildError> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]).envs(vars);
    for v in withheld {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn().map_err(|e| ChildError {
        code: match e.kind() {
            std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
            _ => EXIT_NOT_EXECUTABLE,
        },
        message: format!("cannot run {:?}: {e}", command[0]),
    })?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    // One listener per signal, all feeding one channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(16);
    let mut listeners = Vec::new();
    for kind in FORWARDED {
        match signal(kind) {
            Ok(mut stream) => {
                let tx = tx.clone();
                listeners.push(tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(kind.as_raw_value()).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            Err(e) => eprintln!("mayfly exec: cannot forward signal {}: {e}", kind.as_raw_value()),
        }
    }
    let send = |sig| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    };
    // Once the task has ended under it: SIGTERM, then SIGKILL if it is still there after a grace period.
    let (mut kill_at, mut killed) = (None, false);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Ok(()) = ended.changed(), if kill_at.is_none() => {
                kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
                send(nix::sys::signal::Signal::SIGTERM);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() && !killed => {
                killed = true;
                send(nix::sys::signal::Signal::SIGKILL);
            }
            Some(raw) = rx.recv() => {
                if let Ok(sig) = nix::sys::signal::Signal::try_from(raw) {
                    send(sig);
                }
            }
        }
    };
    for l in listeners {
        l.abort();
    }
    let status =
        status.map_err(|e| ChildError { code: EXIT_EXEC_FAILED, message: format!("waiting for the command: {e}") })?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => {
            Child { code: u8::try_from(code).unwrap_or(1), reason: format!("command exited with status {code}") }
        }
        (None, Some(sig)) => Child {
            code: 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
            reason: format!("command killed by signal {sig}"),
        },
        (None, None) => Child { code: EXIT_EXEC_FAILED, reason: "command ended without a status".into() },
    })
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

    #[test]
    fn secrets_are_written_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_secret(dir.path(), "T", "one").unwrap();
        write_secret(dir.path(), "T", "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn links_the_command_plants_in_the_credentials_directory_are_not_written_through() {
        // The command shares the uid: it can put links where renewed tokens go, pointing at
        // a file others can read (or that does not exist yet).
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let public = outside.path().join("public");
        std::fs::write(&public, "nothing").unwrap();
        let fresh = outside.path().join("fresh");
        std::os::unix::fs::symlink(&public, dir.path().join("T")).unwrap();
        std::os::unix::fs::symlink(&fresh, dir.path().join(".T.tmp")).unwrap();
        let p = write_secret(dir.path(), "T", "secret").unwrap();
        assert_eq!(std::fs::read_to_string(&public).unwrap(), "nothing", "the link's target is untouched");
        assert!(!fresh.exists(), "nothing was created through a link");
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_file(), "the link was replaced by the file itself");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }
}
