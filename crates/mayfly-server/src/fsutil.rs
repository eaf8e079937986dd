//! Small file-system helpers.

use std::io::Write;
use std::path::Path;

/// Writes a file readable only by its owner (mode 0600), replacing any old one's contents.
///
/// A symbolic link at `path` is refused, never followed: planted where a secret is about
/// to be written, it would send the secret wherever it points. An existing file has its
/// mode set back to 0600 (the creation mode applies only to a new file) before anything
/// is written into it.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{} is a symbolic link; a private file is never written through one (remove the link)",
                    path.display()
                ),
            )
        } else {
            e
        }
    })?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!("{} is not a regular file", path.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents)?;
    f.sync_all()
}

/// Creates a directory (and parents) readable only by its owner (mode 0700).
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_symlink_where_a_private_file_goes_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "left alone").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("admin-token");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = write_private(&path, b"secret").unwrap_err().to_string();
        assert!(err.contains("symbolic link") && err.contains("admin-token"), "{err}");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "left alone", "the link's target is untouched");
        assert_eq!(mode(&elsewhere), 0o644);

        // A dangling link (nothing there yet) is refused as well, not created through.
        let dangling = dir.path().join("kek");
        let target = dir.path().join("would-be-created");
        std::os::unix::fs::symlink(&target, &dangling).unwrap();
        assert!(write_private(&dangling, b"secret").is_err());
        assert!(!target.exists());
    }

    #[test]
    fn an_existing_file_gets_0600_back_and_only_the_new_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "an older and longer secret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let fresh = dir.path().join("fresh");
        write_private(&fresh, b"x").unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }
}
