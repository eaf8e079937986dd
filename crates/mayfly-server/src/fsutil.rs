//! Small file-system helpers.

use std::io::Write;
use std::path::Path;

/// Writes a file readable only by its owner (mode 0600), replacing any old one.
///
/// The contents go to a new file of a random name in the same directory, created by this
/// call alone (`O_EXCL`, `O_NOFOLLOW`, mode 0600), which is then renamed over `path`: a file
/// someone else planted at `path` (owned by them, or held open by them) never receives the
/// secret, it is replaced. A symbolic link at `path` is refused, never followed: planted
/// where a secret is about to be written, it would send the secret wherever it points.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link; a private file is never written through one (remove the link)",
                path.display()
            )));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(std::io::Error::other(format!("{} is not a regular file", path.display())));
        }
        _ => {}
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::ids::random_hex(8)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself survives a crash once the directory is on disk (best effort).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
    fn a_file_planted_and_held_open_never_receives_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "planted").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        // The planter keeps a handle on its file, to read whatever is written into it.
        let mut held = std::fs::File::open(&path).unwrap();
        write_private(&path, b"secret").unwrap();
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut held, &mut seen).unwrap();
        assert_eq!(seen, "planted", "the planted file was replaced, not written into");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
        assert_eq!(mode(&path), 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "no temporary file left behind: {left:?}");
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
