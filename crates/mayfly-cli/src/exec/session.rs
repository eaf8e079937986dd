//! The task `mayfly exec` runs its command under, and acting as it: tokens, re-attestation,
//! the end of the task.

use mayfly_proto::ProblemKind;
use std::time::Duration;

use super::*;

/// The task and what is needed to act as it.
pub(super) struct Session {
    pub(super) remote: Remote,
    pub(super) client: reqwest::Client,
    pub(super) task: TaskInfo,
    pub(super) task_token: String,
    /// The starter's evidence, when it can be presented again.
    pub(super) evidence: Option<Evidence>,
    /// Why the task ended under the running command (set once, watched by the child's keeper).
    pub(super) ended: tokio::sync::watch::Sender<Option<String>>,
    /// Whether the user was told that expired evidence is no longer presented.
    pub(super) told_stale: std::sync::atomic::AtomicBool,
}

impl Session {
    pub(super) async fn end(&self, reason: String) -> anyhow::Result<EndTaskResponse> {
        let url = self.remote.endpoint(&format!("/v1/tasks/{}", self.task.id));
        let req = self.client.delete(&url).bearer_auth(&self.task_token).json(&EndTaskRequest { reason: Some(reason) });
        call(req, &url).await
    }

    pub(super) async fn token(&self, audience: &str, ttl: Option<Duration>) -> anyhow::Result<(String, u64)> {
        let resp = exchange(&self.remote, &self.client, (&self.task_token, TOKEN_TYPE_TASK), audience, None, ttl).await;
        let resp = resp.inspect_err(|e| {
            self.ended_by(e);
        })?;
        Ok((resp.access_token, resp.expires_in))
    }

    /// Presents the starter's evidence as it is now. An answer that the task is over
    /// marks it ended; a failure to check (server or issuer unreachable) changes nothing.
    pub(super) async fn reattest(&self) {
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
    pub(super) async fn check_alive(&self) {
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
    pub(super) fn ended_by(&self, e: &anyhow::Error) -> bool {
        let Some(p) = ServerProblem::of(e) else { return false };
        let over = [
            ProblemKind::TaskEnded,
            ProblemKind::TaskNotActive,
            ProblemKind::InvalidTaskToken,
            ProblemKind::SubjectTokenExpired,
        ]
        .into_iter()
        .any(|k| p.is(k))
            || p.status == 409
            || p.status == 401;
        if over {
            self.mark_ended(p.to_string());
        }
        over
    }

    pub(super) fn mark_ended(&self, why: String) {
        self.ended.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(why);
            true
        });
    }

    pub(super) fn is_ended(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Waits for an approver, polling the task.
    pub(super) async fn await_approval(&mut self, limit: Duration) -> anyhow::Result<()> {
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

/// Re-attests every `every` until the task ends.
pub(super) async fn reattest_periodically(session: std::sync::Arc<Session>, every: Duration) {
    while !session.is_ended() {
        tokio::time::sleep(every).await;
        session.reattest().await;
    }
}
