//! Starting `mayfly server --dev` as a child process and running the CLI.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_mayfly");

pub struct DevServer {
    pub child: Child,
    pub url: String,
    pub admin_token: String,
    pub join_token: String,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mayfly server --dev` on a free port and reads the banner.
pub fn start_dev(data_dir: &std::path::Path) -> DevServer {
    start_dev_on(data_dir, "127.0.0.1:0")
}

/// Starts `mayfly server --dev` on `listen`.
pub fn start_dev_on(data_dir: &std::path::Path, listen: &str) -> DevServer {
    let mut child = Command::new(BIN)
        .args(["server", "--dev", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env("MAYFLY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the banner is read: a closed pipe must not be what stops the server.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut url, mut admin, mut join) = (None, None, None);
    while url.is_none() || admin.is_none() || join.is_none() {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("dev banner within 60 s");
        let field = |name: &str| line.trim().strip_prefix(name).map(|v| v.trim().to_owned());
        url = url.or(field("URL:"));
        admin = admin.or(field("Admin token:"));
        join = join.or(field("Join token:"));
    }
    DevServer { child, url: url.unwrap(), admin_token: admin.unwrap(), join_token: join.unwrap() }
}

pub fn mayfly(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("MAYFLY_ADMIN_TOKEN").env_remove("MAYFLY_URL").env_remove("SPIFFE_ENDPOINT_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
