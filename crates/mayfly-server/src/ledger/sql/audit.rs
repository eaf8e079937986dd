//! The SQL of the audit chain: the group commit's event inserts, reads and queries of events,
//! and signed checkpoints.

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! audit_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
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

        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use audit_sql;
