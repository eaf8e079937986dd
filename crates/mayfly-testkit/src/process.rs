//! `mayfly` as a child process: a server started from a config or in dev mode, and the CLI.
//! The binary is the caller's to name (`env!("CARGO_BIN_EXE_mayfly")` in the CLI's tests).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::block_on;

/// `mayfly server --config FILE` in a child process, killed when dropped. Its log
/// (`MAYFLY_LOG=info`) is kept, and printed when a test fails while it runs.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Its base URL (from the config's listen address).
    pub url: String,
    /// The admin token in its data directory once ready; empty if it has none (a replica
    /// that joined a database whose first replica made the token).
    pub admin_token: String,
    data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `bin server --config <config>` and returns at once (it may be waiting for its database).
    pub fn spawn(bin: &str, config: &Path) -> Self {
        let cfg = mayfly_server::config::Config::load(config).expect("config loads");
        let mut child = Command::new(bin)
            .args(["server", "--config"])
            .arg(config)
            .env("MAYFLY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), logs.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let url = format!("http://{}", cfg.listen.addr);
        Self { child, url, admin_token: String::new(), data_dir: cfg.data_dir, logs }
    }

    /// Starts it, waits (60 s at most) until it is ready, and reads its admin token.
    pub fn start(bin: &str, config: &Path) -> Self {
        let mut server = Self::spawn(bin, config);
        server.wait_ready(Duration::from_secs(60));
        let token = std::fs::read_to_string(server.data_dir.join("admin-token")).unwrap_or_default();
        server.admin_token = token.trim().to_owned();
        server
    }

    /// Waits until `/readyz` answers 200 (panics after `within`, or if the process exits);
    /// returns the answer.
    pub fn wait_ready(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        // No pooled connections: each poll runs on a runtime of its own.
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        loop {
            let answer = block_on(async {
                let resp = http.get(format!("{}/readyz", self.url)).send().await.ok()?;
                if resp.status() != 200 {
                    return None;
                }
                resp.json::<Value>().await.ok()
            });
            if let Some(health) = answer {
                return health;
            }
            // Its log is printed as it drops.
            assert!(self.child.try_wait().unwrap().is_none(), "the server at {} exited", self.url);
            assert!(Instant::now() < deadline, "the server at {} was not ready within {within:?}", self.url);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `MAYFLY_URL` and `MAYFLY_ADMIN_TOKEN` for the CLI.
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [("MAYFLY_URL", self.url.as_str()), ("MAYFLY_ADMIN_TOKEN", self.admin_token.as_str())]
    }

    /// What it has logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// SIGTERM, and its exit status.
    pub fn stop(mut self) -> ExitStatus {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("log of the server at {}:\n{}", self.url, self.logs().join("\n"));
        }
    }
}

/// A loopback port free now (for a listener chosen before its process starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    nix::sys::signal::kill(pid, signal).unwrap();
}

/// `mayfly server --dev` in a child process, killed when dropped, with what its banner says.
pub struct DevServer {
    /// The process.
    pub child: Child,
    /// Its base URL.
    pub url: String,
    /// The admin token the banner shows.
    pub admin_token: String,
    /// The join token the banner shows.
    pub join_token: String,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevServer {
    /// Starts `bin server --dev` on a free port and reads the banner.
    pub fn start(bin: &str, data_dir: &Path) -> Self {
        Self::start_on(bin, data_dir, "127.0.0.1:0")
    }

    /// Starts `bin server --dev` on `listen`.
    pub fn start_on(bin: &str, data_dir: &Path, listen: &str) -> Self {
        let mut child = Command::new(bin)
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
}

/// Runs `bin args` with `env` (and none of the caller's `MAYFLY_ADMIN_TOKEN`, `MAYFLY_URL`,
/// `SPIFFE_ENDPOINT_SOCKET`), to its end.
pub fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("MAYFLY_ADMIN_TOKEN").env_remove("MAYFLY_URL").env_remove("SPIFFE_ENDPOINT_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Output bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
