//! Unix workload attestation for the Workload API socket: the kernel tells us the
//! caller's pid, uid and gid (`SO_PEERCRED`) and, where it can (Linux 6.5+), a pidfd of
//! the very process that connected (`SO_PEERPIDFD`); `/proc/<pid>` adds its executable's
//! path and SHA-256. As SPIRE's unix attestor does, selectors are strings such as
//! `unix:uid:1000` or `unix:sha256:<hex>`.
//!
//! What these prove, and what they do not: the uid and gid are the kernel's, at connect
//! time. The pidfd (or, without one, the process's start time) makes sure the pid still
//! names the process that connected, not another one that got its pid. `unix:path` and
//! `unix:sha256` describe the program that process runs *when it is attested*: a process
//! that connected and then `exec`ed another program is attested as the program it became
//! (the pid, pidfd and start time survive `exec`; SPIRE has the same limit). Long-lived
//! streams are re-checked (`still_the_same`), so a change of program or user ends them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;

/// Entries cached in the executable-hash cache before it is cleared.
const HASH_CACHE_CAPACITY: usize = 1024;

/// A file's identity and version: (device, inode, size, mtime and ctime in nanoseconds).
type FileVersion = (u64, u64, u64, i128, i128);

/// What the kernel reports about the peer of a unix socket.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    /// Process id (0 when the kernel did not report one).
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// A pidfd of the process that connected (`SO_PEERPIDFD`), where the kernel gives one:
    /// it names that process only, whatever becomes of its pid.
    pub pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// The pid a pidfd names now: `None` once that process has exited (or if unreadable).
fn pidfd_pid(fd: &std::os::fd::OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let pid: i32 = info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()?;
    (pid > 0).then_some(pid)
}

/// A local process, attested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixWorkload {
    /// Its process id.
    pub pid: i32,
    /// When it started (clock ticks since boot): with the pid, it names this process only.
    pub started: u64,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// User name, when the uid has one.
    pub user: Option<String>,
    /// Group name, when the gid has one.
    pub group: Option<String>,
    /// The executable's path, when `/proc/<pid>/exe` is readable.
    pub path: Option<String>,
    /// Hex SHA-256 of the executable, when readable and within the size limit.
    pub sha256: Option<String>,
}

impl UnixWorkload {
    /// The selectors registration entries are matched against.
    pub fn selectors(&self) -> BTreeSet<String> {
        self.attributes().into_iter().map(|(k, v)| format!("unix:{k}:{v}")).collect()
    }

    /// The same facts as Cedar tags (`uid`, `gid`, `user`, `group`, `path`, `sha256`, `pid`).
    pub fn attributes(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert("uid".to_owned(), self.uid.to_string());
        a.insert("gid".to_owned(), self.gid.to_string());
        let optional = [("user", &self.user), ("group", &self.group), ("path", &self.path), ("sha256", &self.sha256)];
        for (k, v) in optional {
            if let Some(v) = v {
                a.insert(k.to_owned(), v.clone());
            }
        }
        a
    }
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum UnixAttestError {
    /// The socket did not report the peer's process.
    #[error("the kernel did not report the caller's process id")]
    NoPeerProcess,
    /// The caller exited (or its pid was reused) while it was being attested.
    #[error("the calling process {0} exited during attestation")]
    ProcessGone(i32),
}

/// Attests callers of the Workload API socket.
#[derive(Debug)]
pub struct UnixAttestor {
    /// Executables larger than this are not hashed (no `unix:sha256` selector): hashing
    /// is work a caller could otherwise make the server do at will.
    max_exe_bytes: u64,
    /// (device, inode, size, mtime, ctime) → hex SHA-256, so a binary is hashed once.
    hashes: quick_cache::sync::Cache<FileVersion, String>,
}

impl UnixAttestor {
    /// An attestor that hashes executables up to `max_exe_bytes`.
    pub fn new(max_exe_bytes: u64) -> Self {
        Self { max_exe_bytes, hashes: quick_cache::sync::Cache::new(HASH_CACHE_CAPACITY) }
    }

    /// Attests a caller; hashes its executable only when `hash` (some entry selects on it).
    /// Blocking (reads `/proc`, may hash a file): run it off the async threads.
    pub fn attest(&self, peer: PeerCredentials, hash: bool) -> Result<UnixWorkload, UnixAttestError> {
        if peer.pid <= 0 {
            return Err(UnixAttestError::NoPeerProcess);
        }
        let pid = peer.pid;
        // The process that connected, by its pidfd when the kernel gave one: it must be
        // alive and still hold this pid before /proc/<pid> is read, and after.
        let same_process = || peer.pidfd.as_deref().is_none_or(|fd| pidfd_pid(fd) == Some(pid));
        if !same_process() {
            return Err(UnixAttestError::ProcessGone(pid));
        }
        // The start time pins the process too: if it differs afterwards, the pid now names another process.
        let started = start_time(pid).ok_or(UnixAttestError::ProcessGone(pid))?;
        let exe = format!("/proc/{pid}/exe");
        let path = std::fs::read_link(&exe).ok().map(|p| p.to_string_lossy().into_owned());
        let sha256 = if hash { path.as_ref().and_then(|_| self.hash_executable(&exe)) } else { None };
        if start_time(pid) != Some(started) || !same_process() {
            return Err(UnixAttestError::ProcessGone(pid));
        }
        Ok(UnixWorkload {
            pid,
            started,
            uid: peer.uid,
            gid: peer.gid,
            user: nix::unistd::User::from_uid(peer.uid.into()).ok().flatten().map(|u| u.name),
            group: nix::unistd::Group::from_gid(peer.gid.into()).ok().flatten().map(|g| g.name),
            path,
            sha256,
        })
    }

    fn hash_executable(&self, exe: &str) -> Option<String> {
        // Opening /proc/<pid>/exe opens the very file the process runs, even if its path was replaced.
        let file = std::fs::File::open(exe).ok()?;
        let meta = file.metadata().ok()?;
        if meta.len() > self.max_exe_bytes {
            tracing::debug!(size = meta.len(), limit = self.max_exe_bytes, "executable too large to hash");
            return None;
        }
        let nanos = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let key = (
            meta.dev(),
            meta.ino(),
            meta.len(),
            nanos(meta.mtime(), meta.mtime_nsec()),
            nanos(meta.ctime(), meta.ctime_nsec()),
        );
        if let Some(h) = self.hashes.get(&key) {
            return Some(h);
        }
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut reader = file.take(self.max_exe_bytes);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => ctx.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        let hex = hex::encode(ctx.finish().as_ref());
        self.hashes.insert(key, hex.clone());
        Some(hex)
    }
}

/// Whether `pid` still is the process that started at `started` (not exited, pid not reused).
pub fn still_running(pid: i32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
/// Re-attests a long-lived caller: it must still be the process that was attested (same
/// pid and start time), with the same effective uid and gid and the same executable path.
/// A process that changed user (setuid) or replaced its image (execve keeps pid and start
/// time) no longer is what its credentials were issued to. Returns what changed.
pub fn still_the_same(w: &UnixWorkload) -> Result<(), &'static str> {
    if !still_running(w.pid, w.started) {
        return Err("the calling process has exited");
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", w.pid)).map_err(|_| "the calling process has exited")?;
    // "Uid:\treal\teffective\tsaved\tfs": the effective id is what SO_PEERCRED reported.
    let effective = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().nth(1)?.parse::<u32>().ok())
    };
    if effective("Uid:") != Some(w.uid) {
        return Err("the calling process changed its user");
    }
    if effective("Gid:") != Some(w.gid) {
        return Err("the calling process changed its group");
    }
    let path = std::fs::read_link(format!("/proc/{}/exe", w.pid)).ok().map(|p| p.to_string_lossy().into_owned());
    // An upgrade that replaces the file on disk leaves the running image (" (deleted)"):
    // that is the same program still running, not a new one.
    let image = |p: Option<&str>| p.map(|p| p.strip_suffix(" (deleted)").unwrap_or(p).to_owned());
    if image(path.as_deref()) != image(w.path.as_deref()) {
        return Err("the calling process runs another executable");
    }
    if !still_running(w.pid, w.started) {
        return Err("the calling process has exited");
    }
    Ok(())
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attests_this_process() {
        let me = PeerCredentials {
            pid: std::process::id() as i32,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pidfd: None,
        };
        let w = UnixAttestor::new(1 << 40).attest(me.clone(), true).unwrap();
        assert!(still_running(w.pid, w.started));
        assert!(!still_running(w.pid, w.started + 1));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(w.path.as_deref(), Some(exe.to_str().unwrap()));
        let expected =
            hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &std::fs::read(&exe).unwrap()));
        assert_eq!(w.sha256.as_deref(), Some(expected.as_str()));
        assert!(w.selectors().contains(&format!("unix:uid:{}", me.uid)));
        assert!(w.selectors().contains(&format!("unix:sha256:{expected}")));
        assert_eq!(still_the_same(&w), Ok(()));
        let other_user = UnixWorkload { uid: w.uid + 1, ..w.clone() };
        assert_eq!(still_the_same(&other_user), Err("the calling process changed its user"));
        let other_group = UnixWorkload { gid: w.gid + 1, ..w.clone() };
        assert_eq!(still_the_same(&other_group), Err("the calling process changed its group"));
        let other_image = UnixWorkload { path: Some("/usr/bin/something-else".into()), ..w.clone() };
        assert_eq!(still_the_same(&other_image), Err("the calling process runs another executable"));
        let gone = UnixWorkload { started: w.started + 1, ..w };
        assert_eq!(still_the_same(&gone), Err("the calling process has exited"));
    }

    #[test]
    fn large_executables_are_not_hashed_and_gone_processes_are_refused() {
        let me = PeerCredentials { pid: std::process::id() as i32, uid: 0, gid: 0, pidfd: None };
        let w = UnixAttestor::new(16).attest(me.clone(), true).unwrap();
        assert!(w.path.is_some());
        assert_eq!(w.sha256, None);
        let gone = PeerCredentials { pid: i32::MAX - 7, uid: 0, gid: 0, pidfd: None };
        assert!(matches!(UnixAttestor::new(16).attest(gone, true), Err(UnixAttestError::ProcessGone(_))));
        assert_eq!(UnixAttestor::new(1 << 40).attest(me, false).unwrap().sha256, None, "hashed only when asked");
        assert!(matches!(
            UnixAttestor::new(16).attest(PeerCredentials { pid: 0, uid: 0, gid: 0, pidfd: None }, true),
            Err(UnixAttestError::NoPeerProcess)
        ));
    }
}
