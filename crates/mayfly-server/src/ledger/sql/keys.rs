//! The SQL of key material: token signing keys, SVID authorities and workload entries.

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! key_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

            async fn signing_keys(&self) -> Result<Vec<$crate::ledger::StoredSigningKey>, $crate::ledger::LedgerError> {
                Ok(sqlx::query_as("SELECT * FROM signing_keys ORDER BY created_at, kid").fetch_all(&self.pool).await?)
            }

            async fn insert_signing_key(
                &self,
                key: &$crate::ledger::StoredSigningKey,
            ) -> Result<(), $crate::ledger::LedgerError> {
                sqlx::query(
                    "INSERT INTO signing_keys \
                     (kid, alg, sealed_private_key, created_at, retired_at, published_until, profile, activates_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&key.kid)
                .bind(&key.alg)
                .bind(&key.sealed_private_key)
                .bind(key.created_at)
                .bind(key.retired_at)
                .bind(key.published_until)
                .bind(&key.profile)
                .bind(key.activates_at)
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
                    "INSERT INTO signing_keys \
                     (kid, alg, sealed_private_key, created_at, retired_at, published_until, profile, activates_at) \
                     VALUES ($1, $2, $3, $4, NULL, NULL, $5, $6)",
                )
                .bind(&new.kid)
                .bind(&new.alg)
                .bind(&new.sealed_private_key)
                .bind(new.created_at)
                .bind(&new.profile)
                .bind(new.activates_at)
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
        });
    };
}

pub(crate) use key_sql;
