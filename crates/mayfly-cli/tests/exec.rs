//! `mayfly exec`: a command runs under a task that ends when it exits, however it exits.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mayfly_testkit::{K8S_ISSUER, TestConfig, TestIssuer};
use serde_json::{Value, json};

const AUD: &str = "https://api.example";

fn join_token(srv: &DevServer) -> String {
    let out = mayfly(&["join-token", "create", "--url", &srv.url], &[("MAYFLY_ADMIN_TOKEN", &srv.admin_token)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn exec(srv: &DevServer, extra: &[&str], script: &str, cwd: &Path) -> std::process::Output {
    let join = join_token(srv);
    let mut args = vec!["exec", "--url", &srv.url, "--audience", AUD];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    Command::new(BIN)
        .args(&args)
        .current_dir(cwd)
        .env("MAYFLY_JOIN_TOKEN", &join)
        .env_remove("MAYFLY_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn task(srv: &DevServer, id: &str) -> Value {
    let out = mayfly(&["tasks", "show", id, "--json", "--url", &srv.url], &[("MAYFLY_ADMIN_TOKEN", &srv.admin_token)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn introspect_active(srv: &DevServer, token: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let v: Value = reqwest::Client::new()
            .post(format!("{}/v1/introspect", srv.url))
            .bearer_auth(&srv.admin_token)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["active"].as_bool().unwrap()
    })
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).trim().to_owned()
}

#[test]
fn exec_ends_the_task_on_success_on_failure_and_when_the_command_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_dev(&dir.path().join("dev"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // Success: the command sees its task and token (and not its parent's join token).
    let out = exec(
        &srv,
        &["--purpose", "nightly report"],
        r#"echo "$MAYFLY_TASK_ID" > id; echo "$MAYFLY_ACCESS_TOKEN" > token; echo "${MAYFLY_JOIN_TOKEN:-none}" > join"#,
        w,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (id, token) = (read(w, "id"), read(w, "token"));
    assert_eq!(read(w, "join"), "none", "the evidence is withheld from the command");
    let t = task(&srv, &id);
    assert_eq!(t["state"], "ended");
    assert_eq!(t["purpose"], "nightly report");
    assert_eq!(t["end_reason"], "command exited with status 0");
    assert!(!introspect_active(&srv, &token), "the token died with the task");

    // The task token reaches the command only when asked for.
    let out = exec(&srv, &["--pass-task-token"], r#"echo "${MAYFLY_TASK_TOKEN:+given}" > tt"#, w);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(read(w, "tt"), "given");

    // Failure: the exit code passes through, and the task ends.
    let out = exec(&srv, &[], r#"echo "$MAYFLY_TASK_ID" > id; exit 3"#, w);
    assert_eq!(out.status.code(), Some(3));
    let t = task(&srv, &read(w, "id"));
    assert_eq!(t["state"], "ended");
    assert_eq!(t["end_reason"], "command exited with status 3");

    // Killed by a signal: 128 + the signal, and the task ends.
    let out = exec(&srv, &[], r#"echo "$MAYFLY_TASK_ID" > id; kill -KILL $$"#, w);
    assert_eq!(out.status.code(), Some(128 + 9));
    assert_eq!(task(&srv, &read(w, "id"))["end_reason"], "command killed by signal 9");

    // A command that does not exist: 127, and the task still ends.
    let join = join_token(&srv);
    let out = Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--join-token", &join, "--", "/nonexistent/cmd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    let out = mayfly(&["tasks", "list", "--json", "--url", &srv.url], &[("MAYFLY_ADMIN_TOKEN", &srv.admin_token)]);
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(live["tasks"].as_array().unwrap().len(), 0, "no task outlives its command: {live}");
}

/// A command that runs `mayfly exec` (and so its child) as an unprivileged user when the
/// test runs as root: root's CAP_SYS_PTRACE reads any process's /proc entries, whatever
/// it made itself. None (with the reason printed) when that cannot be arranged here.
fn unprivileged_mayfly(scratch: &Path) -> Option<Command> {
    if !nix::unistd::geteuid().is_root() {
        return Some(Command::new(BIN));
    }
    let setpriv = |program: &Path| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(program).current_dir("/");
        c
    };
    if !Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: running as root without setpriv (util-linux): cannot run mayfly exec unprivileged");
        return None;
    }
    if setpriv(Path::new(BIN)).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some(setpriv(Path::new(BIN)));
    }
    // The build directory is out of the unprivileged user's reach: a copy it can run.
    use std::os::unix::fs::PermissionsExt;
    let copy = scratch.join("mayfly");
    std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(BIN, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    if !setpriv(&copy).arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: uid 65534 cannot run a copy of mayfly in {}", scratch.display());
        return None;
    }
    Some(setpriv(&copy))
}

#[test]
fn the_command_cannot_read_the_secrets_of_mayfly_exec_through_proc() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_dev(&dir.path().join("dev"));
    let scratch = tempfile::tempdir().unwrap();
    let Some(mut cmd) = unprivileged_mayfly(scratch.path()) else { return };
    let join = join_token(&srv);
    // The command is the attacker: same uid as its parent, it tries the parent's
    // environment (where the admin and join tokens are), its memory, and its memory map.
    let script = r#"for f in environ mem maps; do
                        if (: < /proc/$PPID/$f) 2>/dev/null; then echo "opened $f"; else echo "denied $f"; fi
                    done
                    tr '\0' '\n' 2>/dev/null < /proc/$PPID/environ; true"#;
    let out = cmd
        .args(["exec", "--url", &srv.url, "--audience", AUD, "--", "sh", "-c", script])
        .env("MAYFLY_JOIN_TOKEN", &join)
        .env("MAYFLY_ADMIN_TOKEN", &srv.admin_token)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Only the verdicts in messages: the rest is the environment the command could read.
    let verdicts: Vec<&str> = stdout.lines().filter(|l| l.starts_with("opened ") || l.starts_with("denied ")).collect();
    for f in ["environ", "mem", "maps"] {
        assert!(verdicts.contains(&format!("denied {f}").as_str()), "/proc/$PPID/{f}: {verdicts:?}");
    }
    assert!(!stdout.contains(&srv.admin_token), "the command read MAYFLY_ADMIN_TOKEN from its parent");
    assert!(!stdout.contains(&join), "the command read MAYFLY_JOIN_TOKEN from its parent");
}

#[test]
fn signals_reach_the_command_and_files_do_not_outlive_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_dev(&dir.path().join("dev"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // Files: 0600 in a private directory, removed afterwards.
    let script = r#"cat "$MAYFLY_ACCESS_TOKEN_FILE" > token; echo "$MAYFLY_CREDENTIALS_DIR" > dir;
                    stat -c %a "$MAYFLY_ACCESS_TOKEN_FILE" > mode; stat -c %a "$MAYFLY_CREDENTIALS_DIR" > dirmode;
                    echo "${MAYFLY_ACCESS_TOKEN:-none}" > env"#;
    let out = exec(&srv, &["--deliver", "files"], script, w);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(read(w, "mode"), "600");
    assert_eq!(read(w, "dirmode"), "700");
    assert_eq!(read(w, "env"), "none", "files mode keeps the token out of the environment");
    assert!(!Path::new(&read(w, "dir")).exists(), "the credentials directory is removed");
    assert!(!introspect_active(&srv, &read(w, "token")));

    // Files are renewed before the token expires, while the command runs.
    let script = r#"cat "$MAYFLY_ACCESS_TOKEN_FILE" > t1; sleep 3; cat "$MAYFLY_ACCESS_TOKEN_FILE" > t2"#;
    let out = exec(&srv, &["--deliver", "files", "--token-ttl", "3s"], script, w);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(read(w, "t1"), read(w, "t2"), "the token file was renewed");

    // SIGTERM to `mayfly exec` is forwarded; the command's death ends the task.
    let join = join_token(&srv);
    let mut child = Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--audience", AUD, "--", "sh", "-c"])
        .arg(r#"echo "$MAYFLY_TASK_ID" > id.tmp; mv id.tmp id; exec sleep 30"#)
        .current_dir(w)
        .env("MAYFLY_JOIN_TOKEN", &join)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !w.join("id").exists() {
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = read(w, "id");
    assert_eq!(task(&srv, &id)["state"], "active");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "the command died of the forwarded SIGTERM");
    assert_eq!(task(&srv, &id)["state"], "ended");
}

#[test]
fn a_task_that_needs_approval_does_not_run_the_command_unless_approved() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_dev(&dir.path().join("dev"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // The dev policy makes tasks that ask for the "admin" scope wait for approval.
    let out = exec(&srv, &["--scope", "admin"], "touch ran", w);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("needs approval"), "{}", text(&out.stderr));
    assert!(!w.join("ran").exists());

    // With --wait-approval, an operator's approval lets it run.
    let join = join_token(&srv);
    let child = Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--scope", "admin", "--wait-approval", "60s", "--audience", AUD])
        .args(["--", "sh", "-c", r#"echo "$MAYFLY_TASK_ID" > id"#])
        .current_dir(w)
        .env("MAYFLY_JOIN_TOKEN", &join)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let admin = [("MAYFLY_ADMIN_TOKEN", srv.admin_token.as_str())];
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = loop {
        let out = mayfly(&["tasks", "list", "--state", "pending", "--json", "--url", &srv.url], &admin);
        let page: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(t) = page["tasks"].as_array().unwrap().first() {
            break t["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no pending task appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = mayfly(&["tasks", "approve", &pending, "--url", &srv.url], &admin);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(read(w, "id"), pending);
    let t = task(&srv, &pending);
    assert_eq!(t["state"], "ended");
    assert_eq!(t["decided_by"], "admin");
}

#[test]
fn a_task_ended_while_the_command_runs_stops_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_dev(&dir.path().join("dev"));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Join-token evidence cannot be presented again; the renewal is what notices.
    let join = join_token(&srv);
    let child = Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--audience", AUD, "--deliver", "files", "--token-ttl", "3s"])
        .args(["--", "sh", "-c", r#"echo "$MAYFLY_TASK_ID" > id.tmp; mv id.tmp id; exec sleep 60"#])
        .current_dir(w)
        .env("MAYFLY_JOIN_TOKEN", &join)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_for_file(w, "id");
    let admin = [("MAYFLY_ADMIN_TOKEN", srv.admin_token.as_str())];
    let out = mayfly(&["tasks", "end", &id, "--reason", "job cancelled", "--url", &srv.url], &admin);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "stopped at the next renewal");
    assert!(text(&out.stderr).contains("ended while"), "{}", text(&out.stderr));
    assert_eq!(task(&srv, &id)["end_reason"], "job cancelled", "the operator's reason stays");
}

/// A Kubernetes-like issuer the test controls, and a server (a child process) that trusts it.
struct K8sSetup {
    k8s: TestIssuer,
    server: ServerProcess,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for K8sSetup {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

impl K8sSetup {
    fn start() -> Self {
        let k8s = TestIssuer::new(K8S_ISSUER);
        let dir = tempfile::tempdir().unwrap();
        let config = TestConfig::new().trust_domain("exec.test").free_port().kubernetes(&k8s).policies(&format!(
            r#"permit (principal, action == Mayfly::Action::"start_task", resource)
               when {{ principal.hasTag("namespace") && principal.getTag("namespace") == "prod" }};
               permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"{AUD}");"#
        ));
        let server = start_server(&config.write(dir.path()));
        Self { k8s, server, _dir: dir }
    }

    /// A projected service-account token of `prod/worker` in the pod with `pod_uid`.
    fn token(&self, pod_uid: &str, iat: i64) -> String {
        let mut claims = self.k8s.k8s_claims("prod", "worker");
        (claims["iat"], claims["nbf"], claims["exp"]) = (json!(iat), json!(iat), json!(iat + 3600));
        claims["kubernetes.io"]["pod"]["uid"] = json!(pod_uid);
        self.k8s.sign("EdDSA", &claims)
    }

    fn task(&self, id: &str) -> Value {
        let out = mayfly(&["tasks", "show", id, "--json"], &self.env());
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn wait_for_file(dir: &Path, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join(name).exists() {
        assert!(Instant::now() < deadline, "{name} did not appear: the command did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    read(dir, name)
}

/// Writes a file the way the kubelet rotates a projected token: atomically.
fn rotate(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn exec_re_attests_its_evidence_and_stops_the_command_when_it_no_longer_proves_the_starter() {
    let k8s = K8sSetup::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let evidence = w.join("sa-token");
    let now = mayfly_server::clock::now_unix();
    rotate(&evidence, &k8s.token("pod-a", now));
    let child = Command::new(BIN)
        .args(["exec", "--url", &k8s.url, "--audience", AUD, "--reattest-every", "1s", "--subject-token-file"])
        .arg(&evidence)
        .args(["--", "sh", "-c", r#"echo "$MAYFLY_TASK_ID" > id.tmp; mv id.tmp id; exec sleep 60"#])
        .current_dir(w)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = wait_for_file(w, "id");

    // The kubelet rotates the token for the same pod: the command keeps running.
    rotate(&evidence, &k8s.token("pod-a", now + 1));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(k8s.task(&id)["state"], "active");

    // The file now holds another pod's token: the evidence no longer proves the starter.
    rotate(&evidence, &k8s.token("pod-b", now + 2));
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15), "stopped within a few re-attestations");
    assert!(stderr.contains("ended while") && stderr.contains("pod_uid changed"), "{stderr}");
    let t = k8s.task(&id);
    assert_eq!(t["state"], "ended");
    assert!(t["end_reason"].as_str().unwrap().starts_with("re-attestation failed"), "{t}");

    // Evidence in a variable expires and is never renewed: it stops being presented, and
    // the command runs to its end under its task.
    let short = k8s.token("pod-a", mayfly_server::clock::now_unix() - 3598);
    let out = Command::new(BIN)
        .args([
            "exec",
            "--url",
            &k8s.url,
            "--audience",
            AUD,
            "--reattest-every",
            "1s",
            "--subject-token-env",
            "SA_TOKEN",
        ])
        .args(["--", "sh", "-c", r#"echo "$MAYFLY_TASK_ID" > id2; sleep 4"#])
        .current_dir(w)
        .env("SA_TOKEN", &short)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no longer presented"), "{stderr}");
    assert_eq!(k8s.task(&read(w, "id2"))["end_reason"], "command exited with status 0");
}
