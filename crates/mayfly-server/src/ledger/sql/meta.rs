//! The SQL of the `meta` key-value table, and the liveness ping.

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! meta_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use meta_sql;
