//! `mayfly tasks …`: start, list, show, approve, deny and end tasks.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use mayfly_proto::{EndTaskRequest, EndTaskResponse, StartTaskRequest, StartTaskResponse, TaskInfo, TaskPage};

use crate::client::{AdminRemote, Evidence, Remote, call, print_json};

/// What a task is for and what it may get.
#[derive(Args, Clone)]
pub struct TaskSpec {
    /// Why the task exists (kept in the audit trail and shown to approvers).
    #[arg(long)]
    pub purpose: Option<String>,
    /// Space-separated scopes: the most anything issued under the task can get.
    #[arg(long)]
    pub scope: Option<String>,
    /// Lifetime of the task, e.g. 30m (default: the server's, 15m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// The subject the task acts for (delegation: credentials carry it as `sub`, the task as
    /// `act`). Without --delegation-token-file, policy must permit it (`act_for`), and it
    /// cannot be an identity of the server's trust domain.
    #[arg(long)]
    pub on_behalf_of: Option<String>,
    /// RFC 8693 delegation: a file holding the represented subject's own token (its platform
    /// JWT, or a Mayfly access token whose audience is your SPIFFE ID). The task acts for it.
    #[arg(long)]
    pub delegation_token_file: Option<std::path::PathBuf>,
    /// The type of that token (default: urn:ietf:params:oauth:token-type:access_token).
    #[arg(long, requires = "delegation_token_file")]
    pub delegation_token_type: Option<String>,
    /// Parent task id, for a sub-task started with the parent starter's own evidence.
    #[arg(long)]
    pub parent: Option<String>,
}

/// Starts a task; returns the server's answer.
pub(crate) async fn start_task(
    remote: &Remote,
    client: &reqwest::Client,
    evidence: (&str, &str),
    spec: &TaskSpec,
    audiences: Vec<String>,
    default_purpose: &str,
) -> anyhow::Result<StartTaskResponse> {
    // With a delegation, the subject token is the represented subject's and the caller's
    // evidence becomes the actor token (RFC 8693 §2.1).
    let (subject, actor) = match &spec.delegation_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the delegation token from {}", path.display()))?;
            let token_type =
                spec.delegation_token_type.clone().unwrap_or_else(|| mayfly_proto::TOKEN_TYPE_ACCESS_TOKEN.to_owned());
            ((token_type, token.trim().to_owned()), Some((evidence.1.to_owned(), evidence.0.to_owned())))
        }
        None => ((evidence.1.to_owned(), evidence.0.to_owned()), None),
    };
    let (actor_token_type, actor_token) = actor.unzip();
    let body = StartTaskRequest {
        subject_token_type: subject.0,
        subject_token: subject.1,
        purpose: spec.purpose.clone().unwrap_or_else(|| default_purpose.to_owned()),
        scope: spec.scope.clone(),
        audiences,
        ttl_seconds: spec.ttl.map(|d| d.as_secs()),
        on_behalf_of: spec.on_behalf_of.clone(),
        parent: spec.parent.clone(),
        actor_token,
        actor_token_type,
    };
    let url = remote.endpoint("/v1/tasks");
    call(client.post(&url).json(&body), &url).await
}

/// `mayfly tasks …`
#[derive(Subcommand)]
pub enum TasksCommand {
    /// Start a task with the caller's evidence; prints the task token.
    Start {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        evidence: Evidence,
        #[command(flatten)]
        spec: TaskSpec,
        /// Audience the task may get credentials for (repeatable; none: any that policy allows).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tasks (admin).
    List {
        #[command(flatten)]
        remote: AdminRemote,
        /// pending, active, denied, ended, expired, live (pending or active; the default) or all.
        #[arg(long)]
        state: Option<String>,
        /// Only tasks started by this SPIFFE ID.
        #[arg(long)]
        creator: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one task (admin).
    Show {
        #[command(flatten)]
        remote: AdminRemote,
        /// Task id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending task (admin): credentials can then be issued under it.
    Approve {
        #[command(flatten)]
        remote: AdminRemote,
        /// Task id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Deny a pending task (admin): nothing will ever be issued under it.
    Deny {
        #[command(flatten)]
        remote: AdminRemote,
        /// Task id.
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// End a task and its sub-tasks (admin), revoking everything issued under them.
    End {
        #[command(flatten)]
        remote: AdminRemote,
        /// Task id.
        id: String,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn time(t: i64) -> String {
    mayfly_server::clock::rfc3339(t)
}

fn print_task(t: &TaskInfo) {
    println!("task        {}", t.id);
    println!("spiffe id   {}", t.spiffe_id);
    println!("state       {}", t.state);
    println!("purpose     {}", t.purpose);
    println!("scope       {}", if t.scope.is_empty() { "-" } else { &t.scope });
    if !t.audiences.is_empty() {
        println!("audiences   {}", t.audiences.join(", "));
    }
    println!("started by  {}", t.creator);
    if let Some(p) = &t.parent_id {
        println!("parent      {p} (depth {})", t.depth);
    }
    if let Some(o) = &t.on_behalf_of {
        println!("acts for    {o}");
    }
    println!("created     {}", time(t.created_at));
    println!("expires     {}", time(t.expires_at));
    if let Some(d) = t.approval_deadline.filter(|_| t.state == "pending") {
        println!("approve by  {}", time(d));
    }
    if let (Some(by), Some(at)) = (&t.decided_by, t.decided_at) {
        println!("decided     by {by} at {}", time(at));
    }
    if let Some(at) = t.ended_at {
        println!("ended       {} ({})", time(at), t.end_reason.as_deref().unwrap_or("no reason given"));
    }
}

impl TasksCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            TasksCommand::Start { remote, evidence, spec, audiences, json } => {
                let client = remote.client()?;
                let (token, token_type) = evidence.read()?;
                let purpose = spec.purpose.clone().context("--purpose is required to start a task")?;
                let started = start_task(&remote, &client, (&token, token_type), &spec, audiences, &purpose).await?;
                if json {
                    print_json(&started)?;
                } else {
                    println!("{}", started.task_token);
                    eprintln!(
                        "task {} ({}) is {}; expires {}",
                        started.task.id,
                        started.task.spiffe_id,
                        started.task.state,
                        time(started.task.expires_at)
                    );
                }
            }
            TasksCommand::List { remote, state, creator, limit, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/tasks");
                let mut query = vec![("limit", limit.to_string())];
                query.extend(state.map(|s| ("state", s)));
                query.extend(creator.map(|c| ("creator", c)));
                let req = remote.remote.client()?.get(&url).query(&query).bearer_auth(remote.token()?);
                let page: TaskPage = call(req, &url).await?;
                if json {
                    print_json(&page)?;
                } else {
                    println!("{:<30} {:<8} {:<21} {:<40} PURPOSE", "ID", "STATE", "EXPIRES", "STARTED BY");
                    for t in &page.tasks {
                        println!(
                            "{:<30} {:<8} {:<21} {:<40} {}",
                            t.id,
                            t.state,
                            time(t.expires_at),
                            t.creator,
                            t.purpose
                        );
                    }
                    if page.tasks.is_empty() {
                        eprintln!("no tasks");
                    }
                }
            }
            TasksCommand::Show { remote, id, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint(&format!("/v1/tasks/{id}"));
                let req = remote.remote.client()?.get(&url).bearer_auth(remote.token()?);
                let task: TaskInfo = call(req, &url).await?;
                if json { print_json(&task)? } else { print_task(&task) }
            }
            TasksCommand::Approve { remote, id, json } => decide(remote, &id, "approve", json).await?,
            TasksCommand::Deny { remote, id, json } => decide(remote, &id, "deny", json).await?,
            TasksCommand::End { remote, id, reason, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint(&format!("/v1/tasks/{id}"));
                let req =
                    remote.remote.client()?.delete(&url).bearer_auth(remote.token()?).json(&EndTaskRequest { reason });
                let ended: EndTaskResponse = call(req, &url).await?;
                if json {
                    print_json(&ended)?;
                } else {
                    println!("ended task {}", ended.task.id);
                    for d in &ended.ended_descendants {
                        println!("ended sub-task {d}");
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Approves or denies a pending task as the operator.
async fn decide(remote: AdminRemote, id: &str, verb: &str, json: bool) -> anyhow::Result<()> {
    let remote = remote.resolve()?;
    let url = remote.remote.endpoint(&format!("/v1/tasks/{id}/{verb}"));
    let req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?);
    let task: TaskInfo = call(req, &url).await?;
    if json {
        print_json(&task)?;
    } else {
        println!("task {} is now {}", task.id, task.state);
    }
    Ok(())
}
