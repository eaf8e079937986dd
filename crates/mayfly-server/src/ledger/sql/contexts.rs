//! The SQL of stored subject contexts (attributes pushed for a subject, until they expire).

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! context_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use context_sql;
