//! The SQL both stores share. SQLite and PostgreSQL accept the same statements here
//! (`$N` parameters, `ON CONFLICT`, `RETURNING`); what differs (how a group commit is
//! sent, where the chain's head lives, notifications, leadership) stays in each store.
//!
//! sqlx's query types are generic over the database, but every bind then needs its
//! own trait bound; a macro instantiates the same code for each concrete database instead.

/// Rows per multi-row INSERT, well under both databases' bound-parameter limits.
pub(crate) const ROWS_PER_STATEMENT: usize = 256;

/// Keeps the last row for each id: one upsert statement may not touch a row twice in
/// PostgreSQL, and the last write in a batch is the one that must win.
pub(crate) fn last_per_id<T: Clone>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<T> = rows.iter().rev().filter(|r| seen.insert(id(r).to_owned())).cloned().collect();
    out.reverse();
    out
}

/// Generates, for one sqlx database type, the INSERT builders of a group commit
/// (`push_*`, one statement per call) and `impl Store for $store` with every method
/// whose SQL is portable; `$store` must have a `pool` field and pass the methods that
/// differ in the braces.
macro_rules! portable_store {
    ($store:ty, $db:ty, { $($specific:tt)* }) => {
        /// One multi-row INSERT of credentials.
        fn push_credentials(q: &mut sqlx::QueryBuilder<$db>, rows: &[$crate::ledger::CredentialRecord]) {
            q.push(
                " INSERT INTO credentials (jti, kind, subject, audience, scope, task_id, client_id, issued_at, \
                 expires_at, key_id, binding, fingerprint, max_uses, context) ",
            );
            q.push_values(rows, |mut b, c| {
                b.push_bind(c.jti.clone())
                    .push_bind(c.kind.clone())
                    .push_bind(c.subject.clone())
                    .push_bind(c.audience.clone())
                    .push_bind(c.scope.clone())
                    .push_bind(c.task_id.clone())
                    .push_bind(c.client_id.clone())
                    .push_bind(c.issued_at)
                    .push_bind(c.expires_at)
                    .push_bind(c.key_id.clone())
                    .push_bind(c.binding.clone())
                    .push_bind(c.fingerprint.clone())
                    .push_bind(c.max_uses)
                    .push_bind(c.context.clone());
            });
        }

        /// Checks `guards` inside the caller's open transaction on `conn`, reading their
        /// rows with `lock` appended (` FOR UPDATE` where rows can be locked); the first
        /// that no longer holds fails with [`LedgerError::Changed`].
        async fn check_guards(
            conn: &mut <$db as sqlx::Database>::Connection,
            guards: &[$crate::ledger::Guard],
            lock: &str,
        ) -> Result<(), $crate::ledger::LedgerError> {
            use $crate::ledger::{Guard, LedgerError, TaskRecord, DbLease};
            for guard in $crate::ledger::guards::in_lock_order(guards) {
                match guard {
                    Guard::Task { id, .. } => {
                        let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM tasks WHERE id = ");
                        q.push_bind(id.clone()).push(lock);
                        let rows: Vec<TaskRecord> = q.build_query_as().fetch_all(&mut *conn).await?;
                        guard.check_tasks(&rows).map_err(LedgerError::Changed)?;
                    }
                    Guard::LiveSubtree { path, .. } => {
                        // The same range as `task_subtree`, in id order (the lock order).
                        let subtree = |columns: &str, lock: &str| {
                            let mut q = sqlx::QueryBuilder::<$db>::new(format!("SELECT {columns} FROM tasks WHERE path = "));
                            q.push_bind(path.clone())
                                .push(" OR (path >= ")
                                .push_bind(format!("{path}/"))
                                .push(" AND path < ")
                                .push_bind(format!("{path}0"))
                                .push(") ORDER BY id")
                                .push(lock.to_owned());
                            q
                        };
                        let rows: Vec<TaskRecord> = subtree("*", lock).build_query_as().fetch_all(&mut *conn).await?;
                        guard.check_tasks(&rows).map_err(LedgerError::Changed)?;
                        if !lock.is_empty() {
                            // Under READ COMMITTED a locking read that waited for a sub-task's
                            // start to commit does not see the row that start inserted (its
                            // snapshot predates it). Every start locks its parent, and every live
                            // row is now locked here: a fresh read finds any such row.
                            let again: Vec<(String,)> = subtree("id", "").build_query_as().fetch_all(&mut *conn).await?;
                            if again.len() != rows.len() || again.iter().zip(&rows).any(|((id,), row)| *id != row.id) {
                                return Err(LedgerError::Changed(format!("tasks were started under {path} meanwhile")));
                            }
                        }
                    }
                    Guard::Lease { id, .. } => {
                        let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM db_leases WHERE id = ");
                        q.push_bind(id.clone()).push(lock);
                        let row: Option<DbLease> = q.build_query_as().fetch_optional(&mut *conn).await?;
                        guard.check_lease(row.as_ref()).map_err(LedgerError::Changed)?;
                    }
                }
            }
            Ok(())
        }

        /// One multi-row upsert of task rows (ids unique within `rows`).
        fn push_tasks(q: &mut sqlx::QueryBuilder<$db>, rows: &[$crate::ledger::TaskRecord]) {
            q.push(
                " INSERT INTO tasks (id, parent_id, path, depth, creator, on_behalf_of, actor, attributes, \
                 purpose, scope, audiences, created_at, expires_at, state, approval_deadline, decided_by, decided_at, \
                 ended_at, end_reason) ",
            );
            q.push_values(rows, |mut b, t| {
                b.push_bind(t.id.clone())
                    .push_bind(t.parent_id.clone())
                    .push_bind(t.path.clone())
                    .push_bind(t.depth)
                    .push_bind(t.creator.clone())
                    .push_bind(t.on_behalf_of.clone())
                    .push_bind(t.actor.clone())
                    .push_bind(t.attributes.clone())
                    .push_bind(t.purpose.clone())
                    .push_bind(t.scope.clone())
                    .push_bind(t.audiences.clone())
                    .push_bind(t.created_at)
                    .push_bind(t.expires_at)
                    .push_bind(t.state.as_str())
                    .push_bind(t.approval_deadline)
                    .push_bind(t.decided_by.clone())
                    .push_bind(t.decided_at)
                    .push_bind(t.ended_at)
                    .push_bind(t.end_reason.clone());
            });
            // Identity columns never change; the rest is replaced whole.
            q.push(
                " ON CONFLICT (id) DO UPDATE SET on_behalf_of = excluded.on_behalf_of, actor = excluded.actor, \
                 attributes = excluded.attributes, purpose = excluded.purpose, scope = excluded.scope, \
                 audiences = excluded.audiences, expires_at = excluded.expires_at, state = excluded.state, \
                 approval_deadline = excluded.approval_deadline, decided_by = excluded.decided_by, \
                 decided_at = excluded.decided_at, ended_at = excluded.ended_at, end_reason = excluded.end_reason",
            );
        }

        /// One multi-row upsert of database leases (ids unique within `rows`).
        fn push_db_leases(q: &mut sqlx::QueryBuilder<$db>, rows: &[$crate::ledger::DbLease]) {
            q.push(
                " INSERT INTO db_leases (id, issuer, role, username, subject, task_id, created_at, \
                 expires_at, max_expires_at, state, attempts, next_attempt_at, last_error, ended_at, end_reason, \
                 context) ",
            );
            q.push_values(rows, |mut b, l| {
                b.push_bind(l.id.clone())
                    .push_bind(l.issuer.clone())
                    .push_bind(l.role.clone())
                    .push_bind(l.username.clone())
                    .push_bind(l.subject.clone())
                    .push_bind(l.task_id.clone())
                    .push_bind(l.created_at)
                    .push_bind(l.expires_at)
                    .push_bind(l.max_expires_at)
                    .push_bind(l.state.as_str())
                    .push_bind(l.attempts)
                    .push_bind(l.next_attempt_at)
                    .push_bind(l.last_error.clone())
                    .push_bind(l.ended_at)
                    .push_bind(l.end_reason.clone())
                    .push_bind(l.context.clone());
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at, \
                 max_expires_at = excluded.max_expires_at, state = excluded.state, attempts = excluded.attempts, \
                 next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error, \
                 ended_at = excluded.ended_at, end_reason = excluded.end_reason",
            );
        }

        /// One multi-row INSERT of revocations, cursors as assigned.
        fn push_revocations(q: &mut sqlx::QueryBuilder<$db>, rows: &[$crate::ledger::Revocation]) {
            q.push(" INSERT INTO revocations (seq, kind, value, issued_before, revoked_at, expires_at, reason, lift) ");
            q.push_values(rows, |mut b, r| {
                b.push_bind(r.cursor)
                    .push_bind(r.kind.as_str())
                    .push_bind(r.value.clone())
                    .push_bind(r.issued_before)
                    .push_bind(r.revoked_at)
                    .push_bind(r.expires_at)
                    .push_bind(r.reason.clone())
                    .push_bind(r.lift);
            });
        }

        /// One multi-row INSERT of chained audit events.
        fn push_events(q: &mut sqlx::QueryBuilder<$db>, rows: &[$crate::ledger::ChainedAuditEvent]) {
            q.push(" INSERT INTO audit_events (seq, ts_ms, kind, subject, detail, prev_hash, hash) ");
            q.push_values(rows, |mut b, e| {
                b.push_bind(e.seq)
                    .push_bind(e.ts_ms)
                    .push_bind(e.kind.clone())
                    .push_bind(e.subject.clone())
                    .push_bind(e.detail.clone())
                    .push_bind(e.prev_hash.clone())
                    .push_bind(e.hash.clone());
            });
        }

        #[async_trait::async_trait]
        impl $crate::ledger::Store for $store {
            $($specific)*

            async fn ping(&self) -> Result<(), $crate::ledger::LedgerError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn meta_put_if_absent(&self, key: &str, value: &[u8]) -> Result<bool, $crate::ledger::LedgerError> {
                let res = sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                Ok(res.rows_affected() == 1)
            }

            async fn meta_delete(&self, key: &str) -> Result<bool, $crate::ledger::LedgerError> {
                let res = sqlx::query("DELETE FROM meta WHERE key = $1").bind(key).execute(&self.pool).await?;
                Ok(res.rows_affected() == 1)
            }

            async fn subject_contexts(
                &self,
                now: i64,
            ) -> Result<Vec<$crate::ledger::StoredSubjectContext>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM subject_contexts WHERE expires_at > $1 ORDER BY subject")
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn put_subject_context(
                &self,
                row: &$crate::ledger::StoredSubjectContext,
            ) -> Result<(), $crate::ledger::LedgerError> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM subject_contexts WHERE expires_at <= $1")
                    .bind(row.updated_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO subject_contexts (subject, attributes, updated_at, expires_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (subject) DO UPDATE SET attributes = excluded.attributes, \
                     updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                )
                .bind(&row.subject)
                .bind(&row.attributes)
                .bind(row.updated_at)
                .bind(row.expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn signing_keys(&self) -> Result<Vec<$crate::ledger::StoredSigningKey>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM signing_keys ORDER BY created_at, kid").fetch_all(&self.pool).await?)
            }

            async fn insert_signing_key(
                &self,
                key: &$crate::ledger::StoredSigningKey,
            ) -> Result<(), $crate::ledger::LedgerError> {
                sqlx::query(
                    "INSERT INTO signing_keys (kid, alg, sealed_private_key, created_at, retired_at, published_until) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&key.kid)
                .bind(&key.alg)
                .bind(&key.sealed_private_key)
                .bind(key.created_at)
                .bind(key.retired_at)
                .bind(key.published_until)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn rotate_signing_key(
                &self,
                new: &$crate::ledger::StoredSigningKey,
                old_kid: &str,
                retired_at: i64,
                published_until: i64,
            ) -> Result<(), $crate::ledger::LedgerError> {
                let mut tx = self.pool.begin().await?;
                let res = sqlx::query(
                    "UPDATE signing_keys SET retired_at = $1, published_until = $2 \
                     WHERE kid = $3 AND retired_at IS NULL",
                )
                .bind(retired_at)
                .bind(published_until)
                .bind(old_kid)
                .execute(&mut *tx)
                .await?;
                if res.rows_affected() != 1 {
                    return Err($crate::ledger::LedgerError::Conflict(format!(
                        "signing key {old_kid} is not the active key"
                    )));
                }
                sqlx::query(
                    "INSERT INTO signing_keys (kid, alg, sealed_private_key, created_at, retired_at, published_until) \
                     VALUES ($1, $2, $3, $4, NULL, NULL)",
                )
                .bind(&new.kid)
                .bind(&new.alg)
                .bind(&new.sealed_private_key)
                .bind(new.created_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn svid_authorities(
                &self,
            ) -> Result<Vec<$crate::ledger::StoredSvidAuthority>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM svid_authorities ORDER BY created_at, id")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_svid_authority(
                &self,
                new: &$crate::ledger::StoredSvidAuthority,
                retire: Option<(&str, i64, i64)>,
            ) -> Result<(), $crate::ledger::LedgerError> {
                let mut tx = self.pool.begin().await?;
                if let Some((old, retired_at, published_until)) = retire {
                    let res = sqlx::query(
                        "UPDATE svid_authorities SET retired_at = $1, published_until = $2 \
                         WHERE id = $3 AND retired_at IS NULL",
                    )
                    .bind(retired_at)
                    .bind(published_until)
                    .bind(old)
                    .execute(&mut *tx)
                    .await?;
                    if res.rows_affected() != 1 {
                        return Err($crate::ledger::LedgerError::Conflict(format!(
                            "SVID authority {old} is not the active one"
                        )));
                    }
                }
                sqlx::query(
                    "INSERT INTO svid_authorities (id, ca_cert, sealed_ca_key, sealed_jwt_key, created_at, not_after) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&new.id)
                .bind(&new.ca_cert)
                .bind(&new.sealed_ca_key)
                .bind(&new.sealed_jwt_key)
                .bind(new.created_at)
                .bind(new.not_after)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn workload_entries(&self) -> Result<Vec<$crate::ledger::StoredEntry>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT id, spec, created_at FROM workload_entries ORDER BY created_at, id")
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_workload_entry(
                &self,
                entry: &$crate::ledger::StoredEntry,
            ) -> Result<(), $crate::ledger::LedgerError> {
                sqlx::query("INSERT INTO workload_entries (id, spec, created_at) VALUES ($1, $2, $3)")
                    .bind(&entry.id)
                    .bind(&entry.spec)
                    .bind(entry.created_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_workload_entry(&self, id: &str) -> Result<bool, $crate::ledger::LedgerError> {
                let res =
                    sqlx::query("DELETE FROM workload_entries WHERE id = $1").bind(id).execute(&self.pool).await?;
                Ok(res.rows_affected() == 1)
            }

            async fn insert_admin_token(
                &self,
                row: &$crate::ledger::StoredAdminToken,
            ) -> Result<(), $crate::ledger::LedgerError> {
                let res = sqlx::query(
                    "INSERT INTO admin_tokens (id, token_hash, name, created_at, last_used_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&row.id)
                .bind(&row.token_hash)
                .bind(&row.name)
                .bind(row.created_at)
                .bind(row.last_used_at)
                .execute(&self.pool)
                .await;
                match res {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(
                        $crate::ledger::LedgerError::Conflict(format!("an admin token named {:?} exists", row.name)),
                    ),
                    Err(e) => Err(e.into()),
                }
            }

            async fn admin_token_by_hash(
                &self,
                token_hash: &str,
            ) -> Result<Option<$crate::ledger::StoredAdminToken>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as(
                    "SELECT id, token_hash, name, created_at, last_used_at FROM admin_tokens WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn admin_tokens(&self) -> Result<Vec<$crate::ledger::StoredAdminToken>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as(
                    "SELECT id, token_hash, name, created_at, last_used_at FROM admin_tokens ORDER BY created_at, id",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn admin_token_count(&self) -> Result<i64, $crate::ledger::LedgerError> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM admin_tokens").fetch_one(&self.pool).await?)
            }

            async fn touch_admin_token(&self, id: &str, now: i64) -> Result<(), $crate::ledger::LedgerError> {
                sqlx::query("UPDATE admin_tokens SET last_used_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn insert_join_token(&self, row: &$crate::ledger::JoinTokenRow) -> Result<(), $crate::ledger::LedgerError> {
                sqlx::query(
                    "INSERT INTO join_tokens (id, token_hash, spiffe_path, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&row.id)
                .bind(&row.token_hash)
                .bind(&row.spiffe_path)
                .bind(row.created_at)
                .bind(row.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn redeem_join_token(
                &self,
                token_hash: &str,
                now: i64,
            ) -> Result<$crate::ledger::RedeemOutcome, $crate::ledger::LedgerError> {
                use $crate::ledger::RedeemOutcome;
                // One conditional UPDATE: two concurrent redemptions (on any replica) cannot both succeed.
                let row: Option<$crate::ledger::JoinTokenRow> = sqlx::query_as(
                    "UPDATE join_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
                     RETURNING id, token_hash, spiffe_path, created_at, expires_at",
                )
                .bind(now)
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(r) = row {
                    return Ok(RedeemOutcome::Redeemed(r));
                }
                let why: Option<Option<i64>> = sqlx::query_scalar("SELECT used_at FROM join_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match why {
                    None => RedeemOutcome::Unknown,
                    Some(Some(_)) => RedeemOutcome::AlreadyUsed,
                    Some(None) => RedeemOutcome::Expired,
                })
            }

            async fn audit_events_after(
                &self,
                after: i64,
                limit: i64,
            ) -> Result<Vec<$crate::ledger::ChainedAuditEvent>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_audit_checkpoint(
                &self,
                c: &$crate::ledger::StoredCheckpoint,
            ) -> Result<bool, $crate::ledger::LedgerError> {
                let res = sqlx::query(
                    "INSERT INTO audit_checkpoints (seq, hash, created_at, kid, jws) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (seq) DO NOTHING",
                )
                .bind(c.seq)
                .bind(&c.hash)
                .bind(c.created_at)
                .bind(&c.kid)
                .bind(&c.jws)
                .execute(&self.pool)
                .await?;
                Ok(res.rows_affected() == 1)
            }

            async fn audit_checkpoints_after(
                &self,
                after: i64,
                limit: i64,
            ) -> Result<Vec<$crate::ledger::StoredCheckpoint>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM audit_checkpoints WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn latest_audit_checkpoints(
                &self,
                limit: i64,
            ) -> Result<Vec<$crate::ledger::StoredCheckpoint>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT $1")
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn revocations_after(
                &self,
                after: i64,
                limit: i64,
            ) -> Result<Vec<$crate::ledger::Revocation>, $crate::ledger::LedgerError> {
                let rows = sqlx::query_as("SELECT * FROM revocations WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                $crate::ledger::revocations_from_rows(rows)
            }

            async fn drop_expired_revocations(&self, now: i64) -> Result<u64, $crate::ledger::LedgerError> {
                let res =
                    sqlx::query("DELETE FROM revocations WHERE expires_at <= $1").bind(now).execute(&self.pool).await?;
                Ok(res.rows_affected())
            }

            async fn lift_blocks(
                &self,
                kind: $crate::ledger::RevocationKind,
                value: &str,
                lifted_at: i64,
                keep_until: i64,
            ) -> Result<u64, $crate::ledger::LedgerError> {
                let res = sqlx::query(
                    "UPDATE revocations SET issued_before = $1, \
                     expires_at = CASE WHEN expires_at > $2 THEN $2 ELSE expires_at END \
                     WHERE kind = $3 AND value = $4 AND issued_before > $1",
                )
                .bind(lifted_at)
                .bind(keep_until)
                .bind(kind.as_str())
                .bind(value)
                .execute(&self.pool)
                .await?;
                Ok(res.rows_affected())
            }

            async fn credentials(
                &self,
                f: &$crate::ledger::CredentialFilter,
            ) -> Result<Vec<$crate::ledger::CredentialRecord>, $crate::ledger::LedgerError> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM credentials WHERE 1 = 1");
                if let Some(v) = &f.subject {
                    q.push(" AND subject = ").push_bind(v.clone());
                }
                if let Some(v) = &f.subject_prefix {
                    // The prefix itself, or anything below it on a path-segment boundary: a range
                    // ['<p>/', '<p>0') ('0' follows '/'), so the subject index is used.
                    let p = v.trim_end_matches('/');
                    q.push(" AND (subject = ")
                        .push_bind(p.to_owned())
                        .push(" OR (subject >= ")
                        .push_bind(format!("{p}/"))
                        .push(" AND subject < ")
                        .push_bind(format!("{p}0"))
                        .push("))");
                }
                if let Some(v) = &f.task_id {
                    q.push(" AND task_id = ").push_bind(v.clone());
                }
                if let Some(v) = &f.kind {
                    q.push(" AND kind = ").push_bind(v.clone());
                }
                if let Some(v) = &f.audience {
                    q.push(" AND audience = ").push_bind(v.clone());
                }
                if let Some(t) = f.live_at {
                    q.push(" AND expires_at > ").push_bind(t);
                }
                if let Some(t) = f.expired_at {
                    q.push(" AND expires_at <= ").push_bind(t);
                }
                if let Some(a) = &f.after {
                    q.push(" AND jti > ").push_bind(a.clone());
                }
                q.push(" ORDER BY jti LIMIT ").push_bind(f.limit);
                Ok(q.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn count_expiring(&self, after: i64, until: i64) -> Result<Vec<(String, i64)>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as(
                    "SELECT kind, COUNT(*) AS n FROM credentials WHERE expires_at > $1 AND expires_at <= $2 GROUP BY kind",
                )
                .bind(after)
                .bind(until)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn unexpired_totals(&self, now: i64) -> Result<Vec<(String, i64, i64)>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as(
                    "SELECT kind, COUNT(*) AS n, CAST(COALESCE(SUM(expires_at - $1), 0) AS BIGINT) AS exposure \
                     FROM credentials WHERE expires_at > $1 GROUP BY kind",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn audit_query(
                &self,
                f: &$crate::ledger::AuditFilter,
            ) -> Result<Vec<$crate::ledger::ChainedAuditEvent>, $crate::ledger::LedgerError> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM audit_events WHERE seq > ");
                q.push_bind(f.after);
                if let Some(v) = &f.subject {
                    q.push(" AND subject = ").push_bind(v.clone());
                }
                match &f.kind {
                    Some(k) if k.ends_with('.') => {
                        q.push(" AND substr(kind, 1, length(")
                            .push_bind(k.clone())
                            .push(")) = ")
                            .push_bind(k.clone());
                    }
                    Some(k) => {
                        q.push(" AND kind = ").push_bind(k.clone());
                    }
                    None => {}
                }
                if let Some(t) = f.since_ms {
                    q.push(" AND ts_ms >= ").push_bind(t);
                }
                if let Some(t) = f.until_ms {
                    q.push(" AND ts_ms < ").push_bind(t);
                }
                q.push(" ORDER BY seq LIMIT ").push_bind(f.limit);
                Ok(q.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn task(&self, id: &str) -> Result<Option<$crate::ledger::TaskRecord>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM tasks WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
            }

            async fn task_subtree(&self, path: &str) -> Result<Vec<$crate::ledger::TaskRecord>, $crate::ledger::LedgerError> {
                // The path itself, or a range ['<p>/', '<p>0') ('0' follows '/') for its descendants.
                Ok(sqlx::query_as("SELECT * FROM tasks WHERE path = $1 OR (path >= $2 AND path < $3) ORDER BY path")
                    .bind(path)
                    .bind(format!("{path}/"))
                    .bind(format!("{path}0"))
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn tasks(
                &self,
                f: &$crate::ledger::TaskFilter,
            ) -> Result<Vec<$crate::ledger::TaskRecord>, $crate::ledger::LedgerError> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM tasks WHERE 1 = 1");
                if let Some(v) = &f.creator {
                    q.push(" AND creator = ").push_bind(v.clone());
                }
                if let Some(v) = f.state {
                    q.push(" AND state = ").push_bind(v.as_str());
                }
                if let Some(t) = f.live_at {
                    q.push(" AND expires_at > ").push_bind(t);
                }
                if let Some(a) = &f.after {
                    q.push(" AND id > ").push_bind(a.clone());
                }
                q.push(" ORDER BY id LIMIT ").push_bind(f.limit);
                Ok(q.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn tasks_due(&self, now: i64, limit: i64) -> Result<Vec<$crate::ledger::TaskRecord>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as(
                    "SELECT * FROM tasks WHERE state IN ('pending', 'active') \
                     AND (expires_at <= $1 OR (state = 'pending' AND approval_deadline <= $1)) ORDER BY id LIMIT $2",
                )
                .bind(now)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn db_lease(&self, id: &str) -> Result<Option<$crate::ledger::DbLease>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM db_leases WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
            }

            async fn db_leases(
                &self,
                states: &[$crate::ledger::DbLeaseState],
                after: Option<&str>,
                limit: i64,
            ) -> Result<Vec<$crate::ledger::DbLease>, $crate::ledger::LedgerError> {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM db_leases WHERE 1 = 1");
                if !states.is_empty() {
                    q.push(" AND state IN (");
                    let mut sep = q.separated(", ");
                    for st in states {
                        sep.push_bind(st.as_str());
                    }
                    q.push(")");
                }
                if let Some(a) = after {
                    q.push(" AND id > ").push_bind(a.to_owned());
                }
                q.push(" ORDER BY id LIMIT ").push_bind(limit);
                Ok(q.build_query_as().fetch_all(&self.pool).await?)
            }

            async fn use_credential(&self, jti: &str) -> Result<bool, $crate::ledger::LedgerError> {
                let res = sqlx::query(
                    "UPDATE credentials SET uses = uses + 1 WHERE jti = $1 AND max_uses IS NOT NULL AND uses < max_uses",
                )
                .bind(jti)
                .execute(&self.pool)
                .await?;
                Ok(res.rows_affected() == 1)
            }

            async fn has_uses_left(&self, jti: &str) -> Result<bool, $crate::ledger::LedgerError> {
                let left: Option<i64> = sqlx::query_scalar(
                    "SELECT max_uses - uses FROM credentials WHERE jti = $1 AND max_uses IS NOT NULL",
                )
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?;
                Ok(left.is_some_and(|n| n > 0))
            }

            async fn credential(&self, jti: &str) -> Result<Option<$crate::ledger::CredentialRecord>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM credentials WHERE jti = $1").bind(jti).fetch_optional(&self.pool).await?)
            }
        }
    };
}

pub(crate) use portable_store;
