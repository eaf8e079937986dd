//! The agent example in `examples/agent/` runs against a dev server as its docstring says.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_agent_example_loses_access_when_its_workflow_ends() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_dev(&dir.path().join("dev"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent/agent.py");
    let out = Command::new("python3")
        .arg(script)
        .env("MAYFLY_URL", &srv.url)
        .env("MAYFLY_JOIN_TOKEN", &srv.join_token)
        .env("MAYFLY_VERIFIER_TOKEN", &srv.admin_token)
        .env_remove("MAYFLY_SUBJECT_TOKEN_FILE")
        .output()
        .expect("python3 runs");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "agent failed:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("during the workflow: tickets service answered 200"), "{stdout}");
    assert!(stdout.contains("'for': 'user:alice'"), "delegation: the service sees the user: {stdout}");
    assert!(stdout.contains("after the workflow: tickets service answered 401"), "{stdout}");
}
