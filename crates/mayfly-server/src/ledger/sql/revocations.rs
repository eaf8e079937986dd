//! The SQL of revocations: the group commit's inserts, the replication feed (`revocations_after`),
//! expiry and lifting of blocks.

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! revocation_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
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

        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use revocation_sql;
