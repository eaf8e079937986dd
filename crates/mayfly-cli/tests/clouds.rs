//! `mayfly exec --cloud`, `mayfly clouds`, `mayfly oidc export`, `mayfly keys rotate --profile`:
//! the files a command gets for each cloud, their renewal and removal, the set-up printed
//! for an operator, and a configuration a cloud would refuse stopping start-up.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mayfly_testkit::TestConfig;
use serde_json::Value;

const CLOUDS: &str = r#"
[[keys.profiles]]
name = "clouds"
algorithm = "RS256"

[[clouds]]
name = "ci-aws"
kind = "aws"
signing_profile = "clouds"
role_arn = "arn:aws:iam::123456789012:role/deployer"
region = "eu-west-1"
token_ttl = "1m"

[[clouds]]
name = "ci-gcp"
kind = "gcp"
signing_profile = "clouds"
project_number = "123456789012"
pool = "mayfly-pool"
provider = "mayfly"

[[clouds]]
name = "ci-azure"
kind = "azure"
signing_profile = "clouds"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "00000000-1111-2222-3333-444444444444"
"#;

const POLICIES: &str = r#"
permit (principal, action == Mayfly::Action::"start_task", resource) when { principal.attestor == "join_token" };
permit (principal is Mayfly::Task, action == Mayfly::Action::"cloud", resource);
"#;

fn config() -> TestConfig {
    TestConfig::new()
        .trust_domain("clouds.test")
        .free_port()
        .set("", "public_url = \"https://mayfly.clouds.test\"")
        .policies(POLICIES)
        .toml(CLOUDS)
}

fn join_token(srv: &ServerProcess) -> String {
    let out = mayfly(&["join-token", "create", "--spiffe-path", "ci/deployer"], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

#[test]
fn exec_gives_each_cloud_its_files_renews_them_and_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_server(&config().write(dir.path()));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // The command records what it sees, waits past a renewal of the 1-minute AWS token
    // (renewed at half-life), and records the token file again.
    let script = r#"env | grep -E '^(AWS_|GOOGLE_|CLOUDSDK_|AZURE_|MAYFLY_)' | sort > env.txt
cp "$AWS_WEB_IDENTITY_TOKEN_FILE" aws1; cp "$GOOGLE_APPLICATION_CREDENTIALS" gcp.json
stat -c %a "$AWS_WEB_IDENTITY_TOKEN_FILE" > mode; stat -c %a "$(dirname "$AWS_WEB_IDENTITY_TOKEN_FILE")" > dirmode
echo "$AWS_WEB_IDENTITY_TOKEN_FILE" > path; touch started
sleep 34; cp "$AWS_WEB_IDENTITY_TOKEN_FILE" aws2"#;
    let out = Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--cloud", "ci-aws", "--cloud", "ci-gcp", "--cloud", "ci-azure", "--"])
        .args(["sh", "-c", script])
        .current_dir(w)
        .env("MAYFLY_JOIN_TOKEN", join_token(&srv))
        .env_remove("MAYFLY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let env = std::fs::read_to_string(w.join("env.txt")).unwrap();
    for expected in [
        "AWS_ROLE_ARN=arn:aws:iam::123456789012:role/deployer",
        "AWS_REGION=eu-west-1",
        "AWS_DEFAULT_REGION=eu-west-1",
        "AZURE_AUTHORITY_HOST=https://login.microsoftonline.com/",
        "AZURE_CLIENT_ID=00000000-1111-2222-3333-444444444444",
        "AZURE_TENANT_ID=72f988bf-86f1-41af-91ab-2d7cd011db47",
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in\n{env}");
    }
    assert!(!env.contains("MAYFLY_TASK_TOKEN") && !env.contains("MAYFLY_JOIN_TOKEN"), "{env}");
    let session = env.lines().find_map(|l| l.strip_prefix("AWS_ROLE_SESSION_NAME=")).unwrap();
    let task_id = env.lines().find_map(|l| l.strip_prefix("MAYFLY_TASK_ID=")).unwrap();
    assert_eq!(session, task_id, "the session name is the task id: CloudTrail shows which task acted");
    assert_eq!(std::fs::read_to_string(w.join("mode")).unwrap().trim(), "600");
    assert_eq!(std::fs::read_to_string(w.join("dirmode")).unwrap().trim(), "700");

    let first = std::fs::read_to_string(w.join("aws1")).unwrap();
    let second = std::fs::read_to_string(w.join("aws2")).unwrap();
    assert!(!first.ends_with('\n') && first.split('.').count() == 3, "exactly the JWT: {first:?}");
    assert_ne!(first, second, "renewed while the command ran");
    let claims = |t: &str| -> Value {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.split('.').nth(1).unwrap()).unwrap(),
        )
        .unwrap()
    };
    let c = claims(&second);
    assert_eq!(c["sub"], "spiffe://clouds.test/ci/deployer", "the workload, not the task");
    assert_eq!(c["task_id"], task_id);
    assert_eq!(c["aud"], "sts.amazonaws.com");

    let gcp: Value = serde_json::from_str(&std::fs::read_to_string(w.join("gcp.json")).unwrap()).unwrap();
    assert_eq!(gcp["type"], "external_account");
    assert_eq!(
        gcp["audience"],
        "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/mayfly-pool/providers/mayfly"
    );
    let path = std::fs::read_to_string(w.join("path")).unwrap();
    assert!(!Path::new(path.trim()).exists(), "removed at exit");

    // The task ended with the command: no more cloud tokens under it.
    let out = mayfly(&["tasks", "show", task_id, "--json"], &srv.env());
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["state"], "ended");
}

#[test]
fn two_profiles_of_one_cloud_are_refused_and_the_task_ends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config().toml(
        "[[clouds]]\nname = \"ci-aws-2\"\nkind = \"aws\"\nsigning_profile = \"clouds\"\nrole_arn = \"arn:aws:iam::123456789012:role/other\"\naudience = \"mayfly:ci-aws-2\"\n",
    );
    let srv = start_server(&cfg.write(dir.path()));
    let out = Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--cloud", "ci-aws", "--cloud", "ci-aws-2", "--", "true"])
        .env("MAYFLY_JOIN_TOKEN", join_token(&srv))
        .env_remove("MAYFLY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("are both aws"), "{}", text(&out.stderr));
    let out = Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--cloud", "no-such", "--", "true"])
        .env("MAYFLY_JOIN_TOKEN", join_token(&srv))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("no cloud profile is named"), "{}", text(&out.stderr));
}

#[test]
fn the_operator_gets_the_set_up_values_the_static_documents_and_a_profile_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start_server(&config().write(dir.path()));
    let out = mayfly(&["clouds", "setup", "ci-aws"], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let setup = text(&out.stdout);
    for expected in [
        "aws iam create-open-id-connect-provider --url https://mayfly.clouds.test --client-id-list sts.amazonaws.com",
        "\"mayfly.clouds.test:aud\": \"sts.amazonaws.com\"",
        "--role-name deployer",
        "mayfly exec --cloud ci-aws",
    ] {
        assert!(setup.contains(expected), "{expected} in\n{setup}");
    }
    let out = mayfly(&["clouds", "setup", "ci-azure"], &srv.env());
    assert!(text(&out.stdout).contains("--audiences api://AzureADTokenExchange"), "{}", text(&out.stdout));
    let out = mayfly(&["clouds", "setup", "nope"], &srv.env());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no cloud profile is named \"nope\""), "{}", text(&out.stderr));

    let export = dir.path().join("public");
    let out = mayfly(&["oidc", "export", export.to_str().unwrap()], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let discovery: Value =
        serde_json::from_str(&std::fs::read_to_string(export.join(".well-known/openid-configuration")).unwrap())
            .unwrap();
    assert_eq!(discovery["issuer"], "https://mayfly.clouds.test");
    assert_eq!(discovery["jwks_uri"], "https://mayfly.clouds.test/.well-known/jwks.json");
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(export.join(".well-known/jwks.json")).unwrap()).unwrap();
    assert!(jwks["keys"].as_array().unwrap().iter().any(|k| k["alg"] == "RS256"));

    let out = mayfly(&["keys", "rotate", "--profile", "clouds"], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("published now, signs from"), "{}", text(&out.stdout));
    let out = mayfly(&["keys", "list"], &srv.env());
    assert_eq!(text(&out.stdout).lines().filter(|l| l.contains(" clouds ")).count(), 2, "{}", text(&out.stdout));
}

#[test]
fn a_cloud_profile_the_cloud_would_refuse_stops_start_up_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (config().toml("").set("", "public_url = \"http://mayfly.clouds.test\""), "only trust an https:// issuer"),
        (
            TestConfig::new()
                .trust_domain("clouds.test")
                .free_port()
                .set("", "public_url = \"https://m.test\"")
                .toml(&CLOUDS.replace("algorithm = \"RS256\"", "algorithm = \"ES256\"")),
            "signs ES256, which azure does not accept (use RS256)",
        ),
    ];
    for (i, (cfg, reason)) in cases.into_iter().enumerate() {
        let path = cfg.write(&dir.path().join(i.to_string()));
        let out = Command::new(BIN).args(["server", "--config"]).arg(&path).output().unwrap();
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(reason), "{reason} in {}", text(&out.stderr));
    }
}
