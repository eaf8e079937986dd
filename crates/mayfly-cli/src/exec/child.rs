//! The command itself: its environment, the signals passed on to it, its exit status, and
//! stopping it when the task ends under it.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use tokio::signal::unix::{SignalKind, signal};

use super::*;

/// The signals passed on to the child.
pub(super) const FORWARDED: [SignalKind; 6] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
    SignalKind::quit(),
    SignalKind::user_defined1(),
    SignalKind::user_defined2(),
];

/// What the child gets, and which files to keep fresh.
pub(super) struct ChildEnv {
    pub(super) vars: BTreeMap<String, String>,
    pub(super) renew: Vec<(Want, u64)>,
    /// Cloud profiles to renew, with their tokens' lifetime.
    pub(super) renew_clouds: Vec<(String, u64)>,
    /// The command's credential-injecting proxy (`--proxy`), stopped when this drops.
    pub(super) proxy: Option<crate::proxy::RunningProxy>,
}

/// How the child ended.
pub(super) struct Child {
    pub(super) code: u8,
    pub(super) reason: String,
}

/// Why the child could not run.
pub(super) struct ChildError {
    pub(super) code: u8,
    pub(super) message: String,
}

/// Runs the child to completion, forwarding signals, and stopping it (SIGTERM) if the
/// task ends under it; its exit code (or 128 + signal).
pub(super) async fn run_child(
    command: &[String],
    vars: &BTreeMap<String, String>,
    withheld: &[String],
    ended: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> Result<Child, ChildError> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]).envs(vars);
    for v in withheld {
        cmd.env_remove(v);
    }
    let mut child = cmd.spawn().map_err(|e| ChildError {
        code: match e.kind() {
            std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
            _ => EXIT_NOT_EXECUTABLE,
        },
        message: format!("cannot run {:?}: {e}", command[0]),
    })?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    // One listener per signal, all feeding one channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(16);
    let mut listeners = Vec::new();
    for kind in FORWARDED {
        match signal(kind) {
            Ok(mut stream) => {
                let tx = tx.clone();
                listeners.push(tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(kind.as_raw_value()).await.is_err() {
                            break;
                        }
                    }
                }));
            }
            Err(e) => eprintln!("mayfly exec: cannot forward signal {}: {e}", kind.as_raw_value()),
        }
    }
    let send = |sig| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    };
    // Once the task has ended under it: SIGTERM, then SIGKILL if it is still there after a grace period.
    let (mut kill_at, mut killed) = (None, false);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Ok(()) = ended.changed(), if kill_at.is_none() => {
                kill_at = Some(tokio::time::Instant::now() + STOP_GRACE);
                send(nix::sys::signal::Signal::SIGTERM);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() && !killed => {
                killed = true;
                send(nix::sys::signal::Signal::SIGKILL);
            }
            Some(raw) = rx.recv() => {
                if let Ok(sig) = nix::sys::signal::Signal::try_from(raw) {
                    send(sig);
                }
            }
        }
    };
    for l in listeners {
        l.abort();
    }
    let status =
        status.map_err(|e| ChildError { code: EXIT_EXEC_FAILED, message: format!("waiting for the command: {e}") })?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => {
            Child { code: u8::try_from(code).unwrap_or(1), reason: format!("command exited with status {code}") }
        }
        (None, Some(sig)) => Child {
            code: 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
            reason: format!("command killed by signal {sig}"),
        },
        (None, None) => Child { code: EXIT_EXEC_FAILED, reason: "command ended without a status".into() },
    })
}
