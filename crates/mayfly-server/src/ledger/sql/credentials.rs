//! The SQL of issued credentials: the group commit's inserts, listings, expiry counts and
//! use counting of limited-use credentials.

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! credential_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
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

        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use credential_sql;
