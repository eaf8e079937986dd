//! MySQL and MariaDB users: `CREATE USER … IDENTIFIED BY`, sessions ended with
//! `KILL CONNECTION`, then `DROP USER IF EXISTS`.

use async_trait::async_trait;
use sqlx::ConnectOptions;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

use super::{DbDriver, DbError, NewUser, audited, is_own_username, render, scrub, sql_error, timed};

/// Default creation statement.
const CREATE: &str = "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'";

/// A MySQL or MariaDB server reached with an admin URL.
#[derive(Debug)]
pub struct MySql {
    pool: MySqlPool,
}

impl MySql {
    /// A lazily connecting pool.
    pub fn new(url: &str) -> Result<Self, DbError> {
        // Statements carry passwords: sqlx must never log them (it logs slow ones at WARN).
        let options = <MySqlConnectOptions as std::str::FromStr>::from_str(url)
            .map_err(|e| DbError::Config(format!("MySQL URL: {}", scrub(&e.to_string(), url))))?
            .disable_statement_logging();
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(super::OPERATION_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }
}

#[async_trait]
impl DbDriver for MySql {
    fn max_username_len(&self) -> usize {
        // MySQL's limit; MariaDB allows 80.
        32
    }

    async fn create(&self, user: &NewUser<'_>) -> Result<(), DbError> {
        // DDL commits implicitly in MySQL: on failure the caller drops whatever was made.
        timed(async {
            let creation = user.role.creation.clone().unwrap_or_else(|| vec![CREATE.to_owned()]);
            for stmt in creation.iter().chain(&user.role.grants) {
                sqlx::raw_sql(audited(render(stmt, user)))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| sql_error(e, user.password))?;
            }
            Ok(())
        })
        .await
    }

    async fn drop_user(&self, username: &str) -> Result<(), DbError> {
        // Only Mayfly's own usernames ([a-z0-9_]) go into a statement: with MySQL's
        // backslash escapes, no quoting of an arbitrary name is safe.
        if !is_own_username(username) {
            return Err(DbError::Config("a username outside [a-z0-9_] is not one Mayfly made; not dropped".into()));
        }
        timed(async {
            let account = format!("'{username}'@'%'");
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT CAST(1 AS SIGNED) FROM mysql.user WHERE User = ? LIMIT 1")
                    .bind(username)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| sql_error(e, ""))?;
            if exists.is_some() {
                sqlx::raw_sql(audited(format!("ALTER USER {account} ACCOUNT LOCK")))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| sql_error(e, ""))?;
            }
            let sessions: Vec<i64> =
                sqlx::query_scalar("SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE USER = ?")
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| sql_error(e, ""))?;
            for id in sessions {
                // A session that ended meanwhile is fine.
                let _ = sqlx::raw_sql(audited(format!("KILL CONNECTION {id}"))).execute(&self.pool).await;
            }
            sqlx::raw_sql(audited(format!("DROP USER IF EXISTS {account}")))
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| sql_error(e, ""))
        })
        .await
    }

    async fn renew(&self, _username: &str, _expiration: &str) -> Result<(), DbError> {
        // MySQL has no per-user expiry time; the lease's expiry is what counts.
        Ok(())
    }

    async fn users_with_prefix(&self, prefix: &str) -> Result<Vec<String>, DbError> {
        timed(async {
            let users: Vec<String> = sqlx::query_scalar("SELECT DISTINCT CAST(User AS CHAR) FROM mysql.user")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| sql_error(e, ""))?;
            // Names outside [a-z0-9_] are skipped, not quoted: Mayfly never makes them.
            Ok(users.into_iter().filter(|u| u.starts_with(prefix) && is_own_username(u)).collect())
        })
        .await
    }
}
