//! The SQL of database leases: the group commit's lease upserts and the lease reads
//! (guards on leases are checked with the task guards, in `tasks.rs`).

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! lease_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
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

        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use lease_sql;
