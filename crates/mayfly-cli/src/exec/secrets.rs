//! Keeping secrets from the command: the process is made non-dumpable before any secret is
//! read, and credential files are written owner-only, replaced atomically, never through a link.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Want;
use super::session::Session;

/// Makes this process non-dumpable (`PR_SET_DUMPABLE` 0), as the first thing `mayfly exec`
/// does, before any secret is read: the command it runs has the same uid and could
/// otherwise read its environment (`MAYFLY_ADMIN_TOKEN`, `MAYFLY_JOIN_TOKEN`) and memory
/// through `/proc/<pid>/environ` and `/proc/<pid>/mem`, and no core dump holds them.
pub fn keep_secrets_from_the_command() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

/// Writes a file only the owner can read, replacing any previous version atomically.
///
/// The command can write into the credentials directory (same uid): the new version is
/// written to a fresh file of a random name, created exclusively (so a link planted there
/// cannot be followed), with its mode 0600 applied again, then renamed over `name` (which
/// replaces a link planted at `name` rather than writing through it).
pub(super) fn write_secret(dir: &Path, name: &str, value: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let mut f = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .permissions(Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    f.as_file().set_permissions(Permissions::from_mode(0o600))?;
    f.write_all(value.as_bytes())?;
    f.as_file().sync_all()?;
    f.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// Re-exchanges before expiry and replaces the file, until the task ends.
pub(super) async fn renew_file(
    session: std::sync::Arc<Session>,
    want: Want,
    dir: PathBuf,
    mut expires_in: u64,
    ttl: Option<Duration>,
) {
    loop {
        // Renew at two thirds of the lifetime; retry every few seconds on failure.
        tokio::time::sleep(Duration::from_secs((expires_in * 2 / 3).max(1))).await;
        session.reattest().await;
        if session.is_ended() {
            return;
        }
        match session.token(&want.audience, ttl).await {
            Ok((token, exp)) => match write_secret(&dir, &want.var, &token) {
                Ok(_) => expires_in = exp,
                Err(e) => {
                    eprintln!("mayfly exec: cannot write renewed {}: {e}", want.var);
                    expires_in = 6;
                }
            },
            Err(_) if session.is_ended() => return,
            Err(e) => {
                eprintln!("mayfly exec: renewing the token for {} failed: {e:#}", want.audience);
                expires_in = 6;
            }
        }
    }
}

/// The `exp` of a JWT, read without verifying it: only to decide whether it is worth sending.
pub(super) fn jwt_expiry(token: &str) -> Option<i64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secrets_are_written_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_secret(dir.path(), "T", "one").unwrap();
        write_secret(dir.path(), "T", "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn links_the_command_plants_in_the_credentials_directory_are_not_written_through() {
        // The command shares the uid: it can put links where renewed tokens go, pointing at
        // a file others can read (or that does not exist yet).
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let public = outside.path().join("public");
        std::fs::write(&public, "nothing").unwrap();
        let fresh = outside.path().join("fresh");
        std::os::unix::fs::symlink(&public, dir.path().join("T")).unwrap();
        std::os::unix::fs::symlink(&fresh, dir.path().join(".T.tmp")).unwrap();
        let p = write_secret(dir.path(), "T", "secret").unwrap();
        assert_eq!(std::fs::read_to_string(&public).unwrap(), "nothing", "the link's target is untouched");
        assert!(!fresh.exists(), "nothing was created through a link");
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_file(), "the link was replaced by the file itself");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }
}
