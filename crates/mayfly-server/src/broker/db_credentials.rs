//! Dynamic database credentials, from request to dropped user.
//!
//! The lease is recorded (`creating`) before the user exists; the user is created;
//! the lease turns `active`. At expiry or revocation (of the lease, its task, its
//! subject, anything the revocation index covers) the lease turns `revoking`, the
//! user's sessions are ended and the user dropped, retried with backoff until the
//! database confirms. On start, half-done work is finished or undone, and users with
//! Mayfly's prefix that no open lease accounts for are dropped.
//!
//! Every transition is written guarded on the state it was decided from ([`Guard::Lease`]),
//! so two requests or two replicas moving the same lease never both win.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use crate::authorize::IssueRequest;
use crate::broker::{Broker, BrokerError, Caller, Conflict, Forbidden, InvalidRequest, Missing, Unavailable};
use crate::issue::db::{Database, NewUser, new_password};
use crate::ledger::revocations::CredentialFacts;
use crate::ledger::{AuditEvent, Batch, DbLease, DbLeaseState, Guard, LedgerError};

/// Users dropped at once per database in a reaping round (a database pool has 8 connections).
const DROP_CONCURRENCY: usize = 8;
/// Longest wait between revocation attempts, in seconds.
const MAX_BACKOFF_SECS: i64 = 60;

/// A request for a database credential.
#[derive(Clone)]
pub struct DbCredentialParams {
    /// The configured database.
    pub database: String,
    /// The role.
    pub role: String,
    /// The caller's evidence type.
    pub subject_token_type: String,
    /// The caller's evidence. Secret.
    pub subject_token: String,
    /// Lease lifetime wanted.
    pub ttl_seconds: Option<u64>,
    /// The caller's address.
    pub source_ip: IpAddr,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for DbCredentialParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredentialParams")
            .field("database", &self.database)
            .field("role", &self.role)
            .field("subject_token_type", &self.subject_token_type)
            .field("ttl_seconds", &self.ttl_seconds)
            .field("source_ip", &self.source_ip)
            .finish_non_exhaustive()
    }
}

/// A created user and its lease.
#[derive(Clone)]
pub struct IssuedDbCredential {
    /// The lease.
    pub lease: DbLease,
    /// The password. Secret: shown once, never stored.
    pub password: String,
    /// Where to connect.
    pub database: Arc<Database>,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for IssuedDbCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedDbCredential")
            .field("lease", &self.lease)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

fn backoff(attempts: i64) -> i64 {
    1i64.checked_shl(attempts.clamp(0, 6) as u32).unwrap_or(MAX_BACKOFF_SECS).min(MAX_BACKOFF_SECS)
}

impl Broker {
    /// Which revocation in force covers a lease, if any (its users are credentials too).
    fn lease_revoked_by(&self, lease: &DbLease) -> Option<crate::ledger::RevocationKind> {
        let audience = lease.audience();
        self.revocations.revoked_by(&CredentialFacts {
            jti: &lease.id,
            subject: &lease.subject,
            audience: &audience,
            task_id: lease.task_id.as_deref(),
            issued_at: lease.created_at,
        })
    }

    fn database(&self, name: &str) -> Result<Arc<Database>, BrokerError> {
        self.databases.get(name).cloned().ok_or_else(|| BrokerError::NotFound(Missing::Database(name.to_owned())))
    }

    /// Issues a database credential: recorded, then created, then handed out.
    pub async fn issue_db_credential(&self, p: DbCredentialParams) -> Result<IssuedDbCredential, BrokerError> {
        let db = self.database(&p.database)?;
        let role = db
            .role(&p.role)
            .ok_or_else(|| BrokerError::NotFound(Missing::Role { database: p.database.clone(), role: p.role.clone() }))?
            .clone();
        let max = role.max_ttl.as_secs();
        let ttl = match p.ttl_seconds {
            Some(0) => return Err(InvalidRequest::ZeroTtl.into()),
            Some(t) if t > max => {
                return Err(InvalidRequest::LeaseTtlAboveMax { ttl: t, max }.into());
            }
            Some(t) => t as i64,
            None => role.default_ttl.as_secs() as i64,
        };
        let now = crate::clock::now_unix();
        let caller = self.attest(&p.subject_token_type, &p.subject_token, p.source_ip, now).await?;
        let mut expires_at = now + ttl;
        let mut max_expires_at = now + max as i64;
        let (subject, task_id) = match &caller {
            Caller::Workload(w) => (w.spiffe_id.to_string(), None),
            Caller::Task(t) => {
                if t.task.state == crate::ledger::TaskState::Pending {
                    return Err(BrokerError::TaskPending { task: t.task.id.clone() });
                }
                // A task limited to audiences gets database roles only if it names them.
                crate::broker::tasks::check_task_audience(&t.task, &format!("db:{}/{}", p.database, p.role))?;
                // Nothing issued under a task outlives it.
                expires_at = expires_at.min(t.task.expires_at);
                max_expires_at = max_expires_at.min(t.task.expires_at);
                (t.spiffe_id.to_string(), Some(t.task.id.clone()))
            }
        };
        let decision = self.policies.decide_issue(&IssueRequest {
            principal: caller.principal(),
            database: &p.database,
            kind: db.config.kind.as_str(),
            role: &p.role,
            ttl_seconds: expires_at - now,
            source_ip: p.source_ip,
            now,
        });
        let detail =
            || json!({"action": "issue", "database": p.database, "role": p.role, "ttl_seconds": expires_at - now});
        self.check_decision(&caller, &decision, detail, p.source_ip).await?;

        // 1. The intent, durably, before the user exists.
        let lease_id = crate::ids::time_ordered_id();
        let target = format!("db:{}/{}", p.database, p.role);
        self.refuse_if_revoked(&CredentialFacts {
            jti: &lease_id,
            subject: &subject,
            audience: &target,
            task_id: task_id.as_deref(),
            issued_at: now,
        })?;
        let mut lease = DbLease {
            id: lease_id,
            issuer: p.database.clone(),
            role: p.role.clone(),
            username: db.new_username(&p.role),
            subject: subject.clone(),
            task_id,
            created_at: now,
            expires_at,
            max_expires_at,
            state: DbLeaseState::Creating,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            ended_at: None,
            end_reason: None,
            context: caller.issuance_context(p.source_ip),
        };
        let base = json!({"lease_id": lease.id, "database": lease.issuer, "role": lease.role,
                          "username": lease.username, "task_id": lease.task_id, "expires_at": expires_at});
        self.ledger
            .commit(Batch {
                db_leases: vec![lease.clone()],
                events: vec![AuditEvent::new("db_credential.intent", Some(subject.clone()), base.clone())],
                ..Batch::default()
            })
            .await?;

        // 2. The user.
        let password = new_password();
        let expiration = crate::clock::rfc3339(expires_at);
        let user = NewUser { name: &lease.username, password: &password, expiration: &expiration, role: &role };
        if let Err(e) = db.driver.create(&user).await {
            // Undo whatever part was made; if even that fails, the reaper keeps trying.
            let undone = db.driver.drop_user(&lease.username).await;
            lease.state = if undone.is_ok() { DbLeaseState::Failed } else { DbLeaseState::Revoking };
            lease.last_error = Some(e.to_string());
            lease.end_reason = Some("creation failed".into());
            lease.ended_at = undone.is_ok().then_some(now);
            let mut detail = base.clone();
            detail["error"] = json!(e.to_string());
            let creating = Guard::Lease { id: lease.id.clone(), state: DbLeaseState::Creating };
            let recorded = self
                .ledger
                .commit(Batch {
                    db_leases: vec![lease],
                    events: vec![AuditEvent::new("db_credential.failed", Some(subject), detail)],
                    guards: vec![creating],
                    ..Batch::default()
                })
                .await;
            // Changed: a replica's reconciler took the lease over, and finishes undoing it.
            if let Err(e) = recorded
                && !matches!(e, LedgerError::Changed(_))
            {
                return Err(e.into());
            }
            return Err(BrokerError::Database(e));
        }

        // 3. Active: handed out.
        lease.state = DbLeaseState::Active;
        let mut detail = base;
        detail["kind"] = json!(db.config.kind.as_str());
        detail["policies"] = json!(decision.policies);
        detail["source_ip"] = json!(p.source_ip.to_string());
        let creating = Guard::Lease { id: lease.id.clone(), state: DbLeaseState::Creating };
        self.ledger
            .commit(Batch {
                db_leases: vec![lease.clone()],
                events: vec![AuditEvent::new("db_credential.issued", Some(subject), detail)],
                guards: vec![creating],
                ..Batch::default()
            })
            .await
            .map_err(|e| match e {
                // A reconciler took it for abandoned and is dropping the user: never handed out.
                LedgerError::Changed(why) => BrokerError::from(Unavailable::LeaseTakenOver { why }),
                other => other.into(),
            })?;
        metrics::counter!("mayfly_credentials_issued_total", "kind" => db.config.kind.as_str()).increment(1);
        Ok(IssuedDbCredential { lease, password, database: db })
    }

    /// Whether policy would issue `database`/`role` to an attested caller now, at the role's
    /// default lifetime (Vault's `sys/capabilities-self`): nothing is issued.
    pub fn may_issue_db_credential(
        &self,
        caller: &Caller,
        database: &str,
        role: &str,
        source_ip: IpAddr,
    ) -> Result<bool, BrokerError> {
        let db = self.database(database)?;
        let r = db.role(role).ok_or_else(|| {
            BrokerError::NotFound(Missing::Role { database: database.to_owned(), role: role.to_owned() })
        })?;
        let now = crate::clock::now_unix();
        let mut ttl = r.default_ttl.as_secs() as i64;
        if let Caller::Task(t) = caller {
            if t.task.state == crate::ledger::TaskState::Pending
                || crate::broker::tasks::check_task_audience(&t.task, &format!("db:{database}/{role}")).is_err()
            {
                return Ok(false);
            }
            ttl = ttl.min(t.task.expires_at - now);
        }
        let decision = self.policies.decide_issue(&IssueRequest {
            principal: caller.principal(),
            database,
            kind: db.config.kind.as_str(),
            role,
            ttl_seconds: ttl,
            source_ip,
            now,
        });
        Ok(decision.allowed)
    }

    /// A lease by id.
    pub async fn db_lease(&self, id: &str) -> Result<DbLease, BrokerError> {
        self.ledger.store().db_lease(id).await?.ok_or_else(|| BrokerError::NotFound(Missing::Lease(id.to_owned())))
    }

    /// Revokes a lease now: the user is dropped before this returns, or the lease stays
    /// `revoking` and the reaper retries until the database confirms.
    pub async fn revoke_db_lease(&self, id: &str, actor: &str) -> Result<DbLease, BrokerError> {
        let mut lease = self.db_lease(id).await?;
        if !lease.state.is_open() || lease.state == DbLeaseState::Creating {
            return Err(Conflict::LeaseState { lease: id.to_owned(), state: lease.state }.into());
        }
        if lease.state == DbLeaseState::Active {
            lease.state = DbLeaseState::Revoking;
            lease.end_reason = Some(format!("revoked by {actor}"));
            let revoking =
                self.commit_lease(&lease, DbLeaseState::Active, "db_credential.revoking", json!({"actor": actor}));
            if let Err(e) = revoking.await {
                // Moved meanwhile: the reaper (or another replica) is revoking it, or has.
                lease = self.db_lease(id).await?;
                if lease.state != DbLeaseState::Revoking {
                    return Err(e);
                }
            }
        }
        match self.drop_lease_user(lease, crate::clock::now_unix()).await {
            Ok(lease) => Ok(lease),
            // Dropped meanwhile by the reaper or another replica: the outcome is recorded.
            Err(BrokerError::Conflict(_)) => self.db_lease(id).await,
            Err(e) => Err(e),
        }
    }

    /// Extends a lease within its maximum lifetime. The caller must be its holder, no
    /// revocation in force may cover the lease, and policy must still allow the role
    /// for the new lifetime (decided again now, as at issuance); otherwise nothing changes.
    pub async fn renew_db_lease(
        &self,
        id: &str,
        token_type: &str,
        token: &str,
        ttl_seconds: Option<u64>,
        source_ip: IpAddr,
    ) -> Result<DbLease, BrokerError> {
        let caller = self.attest(token_type, token, source_ip, crate::clock::now_unix()).await?;
        let now = crate::clock::now_unix();
        let mut lease = self.db_lease(id).await?;
        if caller.spiffe_id() != lease.subject {
            return Err(Forbidden::NotYourLease { lease: id.to_owned(), caller: caller.spiffe().clone() }.into());
        }
        if lease.state != DbLeaseState::Active || lease.expires_at <= now {
            return Err(Conflict::LeaseNotRenewable { lease: id.to_owned(), state: lease.state }.into());
        }
        // A revocation that covers the lease (its subject, task, audience, …) ends it; the
        // reaper drops the user soon, and a renewal meanwhile must not keep it alive.
        if let Some(kind) = self.lease_revoked_by(&lease) {
            let detail = json!({"lease_id": lease.id, "database": lease.issuer, "role": lease.role,
                                "reason": format!("revoked ({})", kind.as_str()),
                                "source_ip": source_ip.to_string()});
            self.audit_best_effort(AuditEvent::new("db_credential.renew_refused", Some(lease.subject.clone()), detail))
                .await;
            return Err(Conflict::LeaseRevoked { lease: id.to_owned(), by: kind }.into());
        }
        let db = self.database(&lease.issuer)?;
        let role = db.role(&lease.role).map(|r| r.default_ttl.as_secs()).unwrap_or(300);
        // Clamped before the cast: a huge increment must not wrap (it is capped below anyway).
        let wanted = ttl_seconds.unwrap_or(role).clamp(1, u32::MAX as u64) as i64;
        let mut expires_at = now.saturating_add(wanted).min(lease.max_expires_at);
        if let Caller::Task(t) = &caller {
            // Nothing issued under a task outlives it.
            expires_at = expires_at.min(t.task.expires_at);
        }
        // Policy decides again, as for issuance: what it no longer allows is not extended.
        let decision = self.policies.decide_issue(&IssueRequest {
            principal: caller.principal(),
            database: &lease.issuer,
            kind: db.config.kind.as_str(),
            role: &lease.role,
            ttl_seconds: expires_at - now,
            source_ip,
            now,
        });
        let detail = || {
            json!({"action": "issue", "renewal": true, "lease_id": lease.id, "database": lease.issuer,
                   "role": lease.role, "ttl_seconds": expires_at - now})
        };
        self.check_decision(&caller, &decision, detail, source_ip).await?;
        db.driver.renew(&lease.username, &crate::clock::rfc3339(expires_at)).await.map_err(BrokerError::Database)?;
        lease.expires_at = expires_at;
        // Revoked meanwhile: the renewal is not recorded, and the reaper drops the user.
        self.commit_lease(&lease, DbLeaseState::Active, "db_credential.renewed", json!({"expires_at": expires_at}))
            .await
            .map_err(|e| match e {
                BrokerError::Conflict(_) => Conflict::LeaseRevokedMeanwhile { lease: id.to_owned() }.into(),
                other => other,
            })?;
        Ok(lease)
    }

    /// Records one transition of `lease`, decided from the stored state `from`.
    async fn commit_lease(
        &self,
        lease: &DbLease,
        from: DbLeaseState,
        kind: &str,
        extra: serde_json::Value,
    ) -> Result<(), BrokerError> {
        let mut detail = json!({"lease_id": lease.id, "database": lease.issuer, "role": lease.role,
                                "username": lease.username, "state": lease.state.as_str()});
        if let (Some(d), Some(e)) = (detail.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        self.ledger
            .commit(Batch {
                db_leases: vec![lease.clone()],
                events: vec![AuditEvent::new(kind, Some(lease.subject.clone()), detail)],
                guards: vec![Guard::Lease { id: lease.id.clone(), state: from }],
                ..Batch::default()
            })
            .await?;
        Ok(())
    }

    /// Records lease transitions, each decided from the stored state `from`: one write for
    /// all, or, when one of them moved meanwhile (another request or replica), one write
    /// each, leaving out those that moved. Returns the leases recorded.
    async fn commit_lease_transitions(
        &self,
        changes: Vec<(DbLease, DbLeaseState, AuditEvent)>,
    ) -> Result<Vec<DbLease>, BrokerError> {
        let (leases, writes): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .map(|(lease, from, event)| {
                let guards = vec![Guard::Lease { id: lease.id.clone(), state: from }];
                let write = Batch { db_leases: vec![lease.clone()], events: vec![event], guards, ..Batch::default() };
                (lease, write)
            })
            .unzip();
        let committed = self.ledger.commit_each(writes).await?;
        Ok(leases.into_iter().zip(committed).filter_map(|(lease, c)| c.then_some(lease)).collect())
    }

    /// One attempt to drop a `revoking` lease's user; records the outcome.
    async fn drop_lease_user(&self, lease: DbLease, now: i64) -> Result<DbLease, BrokerError> {
        let mut done = self.drop_lease_users(vec![lease], now).await?;
        done.pop().ok_or_else(|| BrokerError::Conflict(Conflict::LeaseMoved))
    }

    /// One attempt to drop each lease's user, several at a time per database, then one
    /// ledger write for all the outcomes.
    async fn drop_lease_users(&self, leases: Vec<DbLease>, now: i64) -> Result<Vec<DbLease>, BrokerError> {
        let mut limits: std::collections::HashMap<String, Arc<tokio::sync::Semaphore>> = Default::default();
        let mut attempts = tokio::task::JoinSet::new();
        let mut unknown = Vec::new();
        for lease in leases {
            let Ok(db) = self.database(&lease.issuer) else {
                // Its database left the configuration: nothing to drop it with; kept and retried.
                unknown.push(lease);
                continue;
            };
            let limit = limits
                .entry(lease.issuer.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(DROP_CONCURRENCY)))
                .clone();
            attempts.spawn(async move {
                let _slot = limit.acquire_owned().await;
                let outcome = db.driver.drop_user(&lease.username).await;
                (lease, outcome)
            });
        }
        for lease in unknown {
            let e = crate::issue::db::DbError::Config(format!("database {:?} is not configured", lease.issuer));
            attempts.spawn(async move { (lease, Err(e)) });
        }
        let mut changes = Vec::new();
        while let Some(joined) = attempts.join_next().await {
            let Ok((mut lease, outcome)) = joined else { continue };
            let detail = |lease: &DbLease, extra: serde_json::Value| {
                let mut d = json!({"lease_id": lease.id, "database": lease.issuer, "role": lease.role,
                                   "username": lease.username, "reason": lease.end_reason});
                if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
                    d.extend(e.clone());
                }
                d
            };
            match outcome {
                Ok(()) => {
                    lease.state = if lease.end_reason.as_deref() == Some("expired") {
                        DbLeaseState::Expired
                    } else {
                        DbLeaseState::Revoked
                    };
                    lease.ended_at = Some(now);
                    lease.next_attempt_at = None;
                    let event = AuditEvent::new(
                        "db_credential.dropped",
                        Some(lease.subject.clone()),
                        detail(&lease, json!({})),
                    );
                    metrics::counter!("mayfly_db_users_dropped_total", "database" => lease.issuer.clone()).increment(1);
                    changes.push((lease, DbLeaseState::Revoking, event));
                }
                Err(e) => {
                    lease.attempts += 1;
                    lease.next_attempt_at = Some(now + backoff(lease.attempts));
                    lease.last_error = Some(e.to_string());
                    tracing::warn!(lease = %lease.id, database = %lease.issuer, error = %e, attempts = lease.attempts,
                                   "dropping a database user failed; will retry");
                    let extra = json!({"error": e.to_string(), "attempts": lease.attempts});
                    let event = AuditEvent::new(
                        "db_credential.drop_failed",
                        Some(lease.subject.clone()),
                        detail(&lease, extra),
                    );
                    changes.push((lease, DbLeaseState::Revoking, event));
                }
            }
        }
        self.commit_lease_transitions(changes).await
    }

    /// Ends what is due: expired or revoked leases start revoking, and `revoking` ones
    /// whose retry time has come are tried again. Returns how many users were dropped.
    pub async fn reap_db_leases(&self, now: i64) -> Result<usize, BrokerError> {
        if self.databases.all().next().is_none() {
            return Ok(0);
        }
        let open = self.ledger.store().db_leases(&[DbLeaseState::Active, DbLeaseState::Revoking], None, 10_000).await?;
        let mut starting = Vec::new();
        let mut due = Vec::new();
        let mut waiting = 0;
        for mut lease in open {
            if lease.state == DbLeaseState::Active {
                let reason = if lease.expires_at <= now {
                    Some("expired".to_owned())
                } else {
                    self.lease_revoked_by(&lease).map(|k| format!("revoked ({})", k.as_str()))
                };
                let Some(reason) = reason else { continue };
                lease.state = DbLeaseState::Revoking;
                lease.end_reason = Some(reason);
                starting.push(lease);
            } else if lease.next_attempt_at.is_some_and(|t| t > now) {
                waiting += 1;
            } else {
                due.push(lease);
            }
        }
        if !starting.is_empty() {
            // Recorded before any drop: a crash now leaves them `revoking`, and they are retried.
            let changes = starting
                .into_iter()
                .map(|l| {
                    let detail =
                        json!({"lease_id": l.id, "database": l.issuer, "username": l.username, "reason": l.end_reason});
                    let event = AuditEvent::new("db_credential.revoking", Some(l.subject.clone()), detail);
                    (l, DbLeaseState::Active, event)
                })
                .collect();
            due.extend(self.commit_lease_transitions(changes).await?);
        }
        let done = if due.is_empty() { Vec::new() } else { self.drop_lease_users(due, now).await? };
        let dropped = done.iter().filter(|l| !l.state.is_open()).count();
        metrics::gauge!("mayfly_db_leases_revoking").set((waiting + done.len() - dropped) as f64);
        Ok(dropped)
    }

    /// On start: a lease left `creating` by a crash is undone (its user dropped). With
    /// `created_before`, only leases created by then (older than any creation in progress).
    pub async fn reconcile_db_leases(&self, created_before: Option<i64>) -> Result<usize, BrokerError> {
        let mut half_done = self.ledger.store().db_leases(&[DbLeaseState::Creating], None, 10_000).await?;
        // On a shared store a recent `creating` lease may be in progress on a live replica.
        if let Some(cutoff) = created_before {
            half_done.retain(|l| l.created_at <= cutoff);
        }
        let n = half_done.len();
        for mut lease in half_done {
            lease.state = DbLeaseState::Revoking;
            lease.end_reason = Some("interrupted while creating".into());
            // Finished meanwhile (by its request, or another replica's reconciler): not ours.
            match self.commit_lease(&lease, DbLeaseState::Creating, "db_credential.reconciled", json!({})).await {
                Ok(()) => {}
                Err(BrokerError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
            let lease = match self.drop_lease_user(lease, crate::clock::now_unix()).await {
                Ok(lease) => lease,
                Err(BrokerError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            };
            if !lease.state.is_open() {
                // Never handed out: it failed rather than being revoked.
                let (mut failed, was) = (lease, DbLeaseState::Revoked);
                failed.state = DbLeaseState::Failed;
                let reason = json!({"reason": "interrupted while creating"});
                if let Err(e) = self.commit_lease(&failed, was, "db_credential.failed", reason).await {
                    tracing::debug!(lease = %failed.id, error = %e, "an undone lease moved meanwhile");
                }
            }
        }
        Ok(n)
    }

    /// Drops users with Mayfly's prefix that no open lease accounts for. Runs at start
    /// (before anything is issued) and periodically, skipping users of leases being created.
    pub async fn sweep_db_users(&self) -> Result<usize, BrokerError> {
        let mut dropped = 0;
        for db in self.databases.all() {
            let users = match db.driver.users_with_prefix(&db.config.username_prefix).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(database = %db.config.name, error = %e, "orphan sweep: cannot list users");
                    continue;
                }
            };
            // Leases are read after the users are listed: a lease is recorded before its user
            // is created, so every user in the list that has a lease is found.
            let open = self
                .ledger
                .store()
                .db_leases(&[DbLeaseState::Creating, DbLeaseState::Active, DbLeaseState::Revoking], None, 100_000)
                .await?;
            // Only names Mayfly could have made: others with the prefix are someone else's.
            for user in users.into_iter().filter(|u| crate::issue::db::is_own_username(u)) {
                if open.iter().any(|l| l.issuer == db.config.name && l.username == user) {
                    continue;
                }
                match db.driver.drop_user(&user).await {
                    Ok(()) => {
                        dropped += 1;
                        let detail = json!({"database": db.config.name, "username": user});
                        self.audit_best_effort(AuditEvent::new("db_credential.orphan_dropped", None, detail)).await;
                    }
                    Err(e) => {
                        tracing::warn!(database = %db.config.name, %user, error = %e, "orphan sweep: drop failed")
                    }
                }
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoDriver;

    #[async_trait::async_trait]
    impl crate::issue::db::DbDriver for NoDriver {
        fn max_username_len(&self) -> usize {
            63
        }
        async fn create(&self, _: &NewUser<'_>) -> Result<(), crate::issue::db::DbError> {
            Ok(())
        }
        async fn drop_user(&self, _: &str) -> Result<(), crate::issue::db::DbError> {
            Ok(())
        }
        async fn renew(&self, _: &str, _: &str) -> Result<(), crate::issue::db::DbError> {
            Ok(())
        }
        async fn users_with_prefix(&self, _: &str) -> Result<Vec<String>, crate::issue::db::DbError> {
            Ok(vec![])
        }
    }

    #[test]
    fn debug_hides_the_subject_token() {
        let p = DbCredentialParams {
            database: "pg".into(),
            role: "reader".into(),
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            subject_token: "eyJ-secret-evidence".into(),
            ttl_seconds: Some(60),
            source_ip: IpAddr::from([127, 0, 0, 1]),
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("eyJ-secret-evidence"), "{shown}");
        assert!(shown.contains("reader"), "{shown}");
    }

    #[test]
    fn debug_hides_the_password() {
        let config =
            serde_json::from_value(json!({"name": "pg", "kind": "postgres", "url_env": "PG_URL", "roles": []}))
                .expect("config");
        let database = Database { config, driver: Arc::new(NoDriver), host: "db".into(), port: None, database: None };
        let issued = IssuedDbCredential {
            lease: DbLease::example(),
            password: "s3cret-password".into(),
            database: Arc::new(database),
        };
        let shown = format!("{issued:?}");
        assert!(!shown.contains("s3cret-password"), "{shown}");
        assert!(shown.contains("lease-1"), "{shown}");
    }
}
