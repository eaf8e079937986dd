//! `mayfly exec`: a command runs under a task that ends when it exits, however it exits.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

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
