//! The SQL of admin tokens and one-time join tokens.

/// Adds, for one sqlx database type, this file's group-commit helpers (free functions in the
/// invoking module) and its `Store` methods to those gathered so far, then hands on to
/// [`assemble`](super::assemble) with the aggregates still to come.
macro_rules! token_sql {
    ($store:ty, $db:ty, [$($rest:ident)*], { $($methods:tt)* }) => {
        $crate::ledger::sql::assemble!($store, $db, [$($rest)*], {
            $($methods)*

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
        });
    };
}

pub(crate) use token_sql;
