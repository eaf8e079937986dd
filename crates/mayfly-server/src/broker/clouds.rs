//! Cloud credentials at the moment of use: a federation token for one cloud profile
//! (the cloud's SDK exchanges it), or, for clients without an SDK, the AWS credentials
//! Mayfly gets from STS with such a token. Both go through the same steps as every other
//! issuance: attest (and admit), Cedar (`Action::"cloud"`), mint, record, then deliver.

use std::net::IpAddr;

use serde_json::json;

use crate::authorize::CloudRequest;
use crate::broker::{Broker, BrokerError, Caller, Conflict, InvalidTarget, Missing, RecordFacts, Unavailable};
use crate::issue::IssuedToken;
use crate::issue::cloud::aws_sts::AwsCredentials;
use crate::issue::cloud::{AWS_MIN_SESSION, CloudConfig, CloudTarget, CloudTokenRequest, aws_session_name};
use crate::ledger::AuditEvent;
use crate::ledger::revocations::CredentialFacts;

/// A request for a cloud token or cloud credentials.
#[derive(Clone)]
pub struct CloudParams {
    /// The cloud profile.
    pub profile: String,
    /// The caller's evidence type.
    pub subject_token_type: String,
    /// The caller's evidence. Secret.
    pub subject_token: String,
    /// The caller's address.
    pub source_ip: IpAddr,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for CloudParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudParams")
            .field("profile", &self.profile)
            .field("subject_token_type", &self.subject_token_type)
            .field("source_ip", &self.source_ip)
            .finish_non_exhaustive()
    }
}

/// A minted cloud token and what the command needs beside it.
#[derive(Debug, Clone)]
pub struct CloudToken {
    /// The token (its `token` is secret).
    pub issued: IssuedToken,
    /// The profile it is for.
    pub profile: CloudConfig,
    /// Its `sub`.
    pub subject: String,
    /// The AWS role session name for it (the task id, else from the SPIFFE ID).
    pub session_name: String,
    /// The task it was issued under.
    pub task_id: Option<String>,
    /// For an exchange at AWS STS: the session's lifetime, within the task's.
    pub aws_session_secs: Option<u64>,
}

/// AWS credentials from STS, with the token they were exchanged for.
#[derive(Debug, Clone)]
pub struct IssuedAwsCredentials {
    /// The web-identity token Mayfly minted and spent.
    pub token: CloudToken,
    /// The credentials (secret parts redacted in `Debug`).
    pub credentials: AwsCredentials,
}

impl Broker {
    fn cloud_profile(&self, name: &str) -> Result<&CloudConfig, BrokerError> {
        self.clouds.get(name).ok_or_else(|| BrokerError::NotFound(Missing::Cloud(name.to_owned())))
    }

    /// Mints a federation token for a cloud profile: recorded before it is returned.
    pub async fn issue_cloud_token(&self, p: CloudParams) -> Result<CloudToken, BrokerError> {
        self.cloud_token(p, false).await
    }

    /// The token for a profile; with `exchange`, for Mayfly to exchange at AWS STS itself
    /// (then policy decides on the AWS session's lifetime, and `aws_session_secs` is set).
    async fn cloud_token(&self, p: CloudParams, exchange: bool) -> Result<CloudToken, BrokerError> {
        let now = crate::clock::now_unix();
        let caller = self.attest(&p.subject_token_type, &p.subject_token, p.source_ip, now).await?;
        // Looked up after attestation: an unauthenticated caller learns nothing of the configuration.
        let profile = self.cloud_profile(&p.profile)?.clone();
        let aws_session = match (&profile.target, exchange) {
            (_, false) => None,
            (CloudTarget::Aws { session_duration, .. }, true) => Some(session_duration.as_secs()),
            (other, true) => {
                return Err(InvalidTarget::NotAnAwsProfile {
                    profile: profile.name.clone(),
                    kind: other.kind().as_str(),
                }
                .into());
            }
        };
        // The cloud trusts a stable subject: the workload, also for a task it started
        // (the task is in `task_id` and the session name).
        let (subject, task_id, task_end) = match &caller {
            Caller::Workload(w) => (w.spiffe_id.to_string(), None, None),
            Caller::Task(t) => {
                if t.task.state == crate::ledger::TaskState::Pending {
                    return Err(BrokerError::TaskPending { task: t.task.id.clone() });
                }
                crate::broker::tasks::check_task_audience(&t.task, &format!("cloud:{}", profile.name))?;
                let root = t.actors.last().cloned().unwrap_or_else(|| t.task.creator.clone());
                (root, Some(t.task.id.clone()), Some(t.task.expires_at))
            }
        };
        let ttl = crate::issue::cloud::token_lifetime(&profile, task_end, now);
        // AWS credentials cannot be revoked before they expire: none outlive the task, and a
        // task too close to its end gets none.
        let aws_session = match (aws_session, task_end) {
            (Some(session), Some(end)) => {
                let left = u64::try_from(end - now).unwrap_or(0);
                if left < AWS_MIN_SESSION.as_secs() {
                    return Err(Conflict::TaskEndsBeforeAwsSession {
                        left_secs: left,
                        min_secs: AWS_MIN_SESSION.as_secs(),
                    }
                    .into());
                }
                Some(session.min(left))
            }
            (session, _) => session,
        };
        // Policy decides on the lifetime of what is handed out: the AWS session for an exchange.
        let decided_ttl = aws_session.map_or(ttl, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let kind = profile.target.kind().as_str();
        let decision = self.policies.decide_cloud(&CloudRequest {
            principal: caller.principal(),
            profile: &profile.name,
            kind,
            audience: &profile.audience,
            ttl_seconds: decided_ttl,
            exchange,
            source_ip: p.source_ip,
            now,
        });
        let detail = || json!({"action": "cloud", "profile": profile.name, "kind": kind, "ttl_seconds": decided_ttl});
        self.check_decision(&caller, &decision, detail, p.source_ip).await?;

        let key = self
            .issuer
            .key_of_profile(&profile.signing_profile)
            .ok_or_else(|| BrokerError::from(Unavailable::NoSigningKey { profile: profile.signing_profile.clone() }))?;
        let issued = self.clouds.mint(
            &key,
            &CloudTokenRequest {
                profile: &profile,
                subject: &subject,
                now,
                ttl_seconds: ttl,
                task_id: task_id.as_deref(),
            },
        )?;
        let session_name = aws_session_name(task_id.as_deref().unwrap_or(&subject));
        let client_id = caller.spiffe_id();
        let context = caller.issuance_context(p.source_ip);
        let facts = RecordFacts {
            kind: "cloud",
            subject: &subject,
            audience: &profile.audience,
            task_id: task_id.as_deref(),
            client_id: &client_id,
            confirmation: None,
            max_uses: None,
            context: context.as_deref(),
        };
        let detail = json!({
            "cloud": kind, "profile": profile.name, "audience": profile.audience, "attestor": caller.attestor(),
            "policies": decision.policies, "source_ip": p.source_ip.to_string(), "exchange": exchange,
        });
        let (record, event) = self.issued_record(&issued, &facts, detail);
        self.record_issued("cloud", vec![record], vec![event]).await?;
        Ok(CloudToken { issued, profile, subject, session_name, task_id, aws_session_secs: aws_session })
    }

    /// Gets AWS credentials for an `aws` profile: mints a web-identity token for the caller
    /// (recorded first), calls STS `AssumeRoleWithWebIdentity` with it, and records what
    /// STS handed out (its access key id, never its secrets) before returning it.
    pub async fn issue_aws_credentials(&self, p: CloudParams) -> Result<IssuedAwsCredentials, BrokerError> {
        let token = self.cloud_token(p, true).await?;
        let CloudTarget::Aws { role_arn, sts_endpoint, .. } = &token.profile.target else {
            return Err(InvalidTarget::NotAnAwsProfile {
                profile: token.profile.name.clone(),
                kind: token.profile.target.kind().as_str(),
            }
            .into());
        };
        let (role_arn, sts_endpoint) = (role_arn.clone(), sts_endpoint.clone());
        let duration = token.aws_session_secs.unwrap_or(AWS_MIN_SESSION.as_secs());
        let sts = self.sts.as_ref().ok_or_else(|| BrokerError::from(Unavailable::NoStsClient))?;
        let answer = sts
            .assume_role_with_web_identity(&sts_endpoint, &role_arn, &token.session_name, &token.issued.token, duration)
            .await;
        let subject = token.subject.clone();
        // A revocation (of the token, its task or its subject) or a block that landed while
        // STS answered: the credentials are not handed out.
        let facts = CredentialFacts {
            jti: &token.issued.jti,
            subject: &token.subject,
            audience: &token.profile.audience,
            task_id: token.task_id.as_deref(),
            issued_at: token.issued.issued_at,
        };
        let answer = match (answer, self.revocations.revoked_by(&facts)) {
            (Ok(_), Some(kind)) => Err(kind),
            (answer, _) => Ok(answer),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(kind) => {
                let detail =
                    json!({"profile": token.profile.name, "jti": token.issued.jti, "revoked_by": kind.as_str()});
                self.audit_best_effort(AuditEvent::new("cloud.aws.withheld", Some(subject), detail)).await;
                return Err(Conflict::RevokedDuringExchange { by: kind }.into());
            }
        };
        match answer {
            Ok(credentials) => {
                let detail = json!({
                    "profile": token.profile.name, "role_arn": role_arn, "session_name": token.session_name,
                    "jti": token.issued.jti, "access_key_id": credentials.access_key_id,
                    "assumed_role_arn": credentials.assumed_role_arn, "expiration": credentials.expiration,
                });
                // Delivered only once this is durable.
                self.ledger.audit(AuditEvent::new("cloud.aws.credentials_issued", Some(subject), detail)).await?;
                metrics::counter!("mayfly_credentials_issued_total", "kind" => "aws").increment(1);
                Ok(IssuedAwsCredentials { token, credentials })
            }
            Err(e) => {
                let detail = json!({"profile": token.profile.name, "jti": token.issued.jti, "error": e.to_string()});
                self.audit_best_effort(AuditEvent::new("cloud.aws.refused", Some(subject), detail)).await;
                Err(e.into())
            }
        }
    }
}

impl Broker {
    /// The cloud profiles with the values their set-up on the cloud's side needs.
    pub fn cloud_profile_infos(&self) -> Vec<mayfly_proto::CloudProfileInfo> {
        let issuer = self.clouds.issuer_url().to_owned();
        self.clouds
            .names()
            .into_iter()
            .filter_map(|name| self.clouds.get(name))
            .map(|c| mayfly_proto::CloudProfileInfo {
                name: c.name.clone(),
                kind: c.target.kind().as_str().to_owned(),
                jwks_uri: format!("{issuer}/.well-known/jwks.json"),
                issuer: issuer.clone(),
                audience: c.audience.clone(),
                signing_profile: c.signing_profile.clone(),
                algorithm: self
                    .issuer
                    .key_of_profile(&c.signing_profile)
                    .map(|k| k.alg().as_str().to_owned())
                    .unwrap_or_default(),
                token_ttl_seconds: c.token_ttl.as_secs(),
                settings: c.settings(),
            })
            .collect()
    }
}
