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
    /// SCRAM iteration count of the verifiers sent in place of passwords (0: send passwords).
    scram_iterations: u32,
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 §3, RFC 7677),
/// in the form `CREATE ROLE … PASSWORD` accepts as already hashed:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`. Computed here, the
/// server skips hashing the password while it holds its catalog locks. Mayfly's
/// passwords are base64url, which SASLprep leaves unchanged.
pub fn scram_verifier(password: &str, iterations: std::num::NonZeroU32) -> String {
    scram_verifier_with_salt(password, &crate::ids::random_bytes(16), iterations)
}

fn scram_verifier_with_salt(password: &str, salt: &[u8], iterations: std::num::NonZeroU32) -> String {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut salted = [0u8; 32];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, password.as_bytes(), &mut salted);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    )
}

impl Postgres {
    /// A lazily connecting pool.
    pub fn new(url: &str, scram_iterations: u32) -> Result<Self, DbError> {
        // Statements carry passwords: sqlx must never log them (it logs slow ones at WARN).
        let options = <PgConnectOptions as std::str::FromStr>::from_str(url)
            .map_err(|e| DbError::Config(format!("PostgreSQL URL: {}", scrub(&e.to_string(), url))))?
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(super::OPERATION_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { pool, scram_iterations })
    }
}

#[async_trait]
impl DbDriver for Postgres {
    fn max_username_len(&self) -> usize {
        63
    }

    async fn create(&self, user: &NewUser<'_>) -> Result<(), DbError> {
        let verifier = match std::num::NonZeroU32::new(self.scram_iterations) {
            None => None,
            // Cheap at the default count; a high one (~1 ms at 4,096) must not hold up the runtime's threads.
            Some(n) if n.get() <= 1024 => Some(scram_verifier(user.password, n)),
            Some(n) => {
                let password = user.password.to_owned();
                let v = tokio::task::spawn_blocking(move || scram_verifier(&password, n)).await;
                Some(v.map_err(|_| DbError::Refused("computing the SCRAM verifier failed".into()))?)
            }
        };
        let sent = NewUser { password: verifier.as_deref().unwrap_or(user.password), ..*user };
        let user = &sent;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_is_what_postgresql_stores_for_the_password() {
        // RFC 7677's example password and salt; the keys computed independently (Python's hashlib and hmac).
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = scram_verifier_with_salt("pencil", &salt, std::num::NonZeroU32::new(4096).unwrap());
        assert_eq!(
            v,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        // Fresh salt each time, and nothing in it can close an SQL string literal.
        let (a, b) = (scram_verifier("p", std::num::NonZeroU32::MIN), scram_verifier("p", std::num::NonZeroU32::MIN));
        assert_ne!(a, b);
        assert!(a.starts_with("SCRAM-SHA-256$1:") && !a.contains('\''));
    }
}
