//! PostgreSQL users: `CREATE ROLE … LOGIN … VALID UNTIL` (a backstop if Mayfly is
//! gone at expiry), sessions ended with `pg_terminate_backend`, then `DROP OWNED` and `DROP ROLE`.

use async_trait::async_trait;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{DbDriver, DbError, NewUser, audited, render, scrub, sql_error, timed};

/// Default creation statement.
const CREATE: &str = r#"CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"#;

/// A PostgreSQL server reached with an admin URL.
#[derive(Debug)]
pub struct Postgres {
    pool: PgPool,
}

impl Postgres {
    /// A lazily connecting pool.
    pub fn new(url: &str) -> Result<Self, DbError> {
        // Statements carry passwords: sqlx must never log them (it logs slow ones at WARN).
        let options = <PgConnectOptions as std::str::FromStr>::from_str(url)
            .map_err(|e| DbError::Config(format!("PostgreSQL URL: {}", scrub(&e.to_string(), url))))?
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(super::OPERATION_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }
}

#[async_trait]
impl DbDriver for Postgres {
    fn max_username_len(&self) -> usize {
        63
    }

    async fn create(&self, user: &NewUser<'_>) -> Result<(), DbError> {
        timed(async {
            let mut tx = self.pool.begin().await.map_err(|e| sql_error(e, user.password))?;
            // Creating need not wait for the disk: a role lost in a database crash only
            // means a credential that stops working early. Drops stay synchronous.
            sqlx::raw_sql("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(e, user.password))?;
            let creation = user.role.creation.clone().unwrap_or_else(|| vec![CREATE.to_owned()]);
            for stmt in creation.iter().chain(&user.role.grants) {
                sqlx::raw_sql(audited(render(stmt, user)))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| sql_error(e, user.password))?;
            }
            tx.commit().await.map_err(|e| sql_error(e, user.password))
        })
        .await
    }

    async fn drop_user(&self, username: &str) -> Result<(), DbError> {
        timed(async {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| sql_error(e, ""))?;
            if exists.is_none() {
                return Ok(());
            }
            // No new sessions, then end the open ones, then drop.
            let quoted = format!("\"{}\"", username.replace('"', "\"\""));
            sqlx::raw_sql(audited(format!("ALTER ROLE {quoted} NOLOGIN")))
                .execute(&self.pool)
                .await
                .map_err(|e| sql_error(e, ""))?;
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
                .bind(username)
                .execute(&self.pool)
                .await
                .map_err(|e| sql_error(e, ""))?;
            let mut tx = self.pool.begin().await.map_err(|e| sql_error(e, ""))?;
            sqlx::raw_sql(audited(format!("DROP OWNED BY {quoted}")))
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(e, ""))?;
            sqlx::raw_sql(audited(format!("DROP ROLE IF EXISTS {quoted}")))
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error(e, ""))?;
            tx.commit().await.map_err(|e| sql_error(e, ""))
        })
        .await
    }

    async fn renew(&self, username: &str, expiration: &str) -> Result<(), DbError> {
        let quoted = format!("\"{}\"", username.replace('"', "\"\""));
        // The expiration is Mayfly's own RFC 3339 text, not user input.
        let stmt = format!("ALTER ROLE {quoted} VALID UNTIL '{expiration}'");
        timed(async {
            sqlx::raw_sql(audited(stmt.clone())).execute(&self.pool).await.map(|_| ()).map_err(|e| sql_error(e, ""))
        })
        .await
    }

    async fn users_with_prefix(&self, prefix: &str) -> Result<Vec<String>, DbError> {
        timed(async {
            sqlx::query_scalar("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)")
                .bind(prefix)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| sql_error(e, ""))
        })
        .await
    }
}
