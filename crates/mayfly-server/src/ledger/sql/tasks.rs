//! The SQL of tasks: the group commit's task upserts, the guards a batch is checked against
//! (`check_guards`, which also reads leases: guards are checked together, in lock order),
//! and the task reads.

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! task_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
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

        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use task_sql;
