//! `mayfly exec --proxy` and `mayfly proxy`: real clients (curl, Python requests and httpx)
//! reach real upstreams on loopback through the proxy; the upstream's key is injected on the
//! way out and never reaches the command; policy decides per request; a revocation cuts a
//! stream mid-way; what should be refused is.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mayfly_testkit::TestConfig;
use serde_json::Value;

const API_KEY: &str = "sk_live_upstream_key_never_in_the_workload";
const OAUTH_SECRET: &str = "oauth_client_secret_never_in_the_workload";

const POLICIES: &str = r#"
permit (principal, action == Mayfly::Action::"start_task", resource) when { principal.attestor == "join_token" };
// A task may be its own command's proxy, and get tokens for the internal service.
permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource)
  when { resource == Mayfly::Audience::"urn:mayfly:proxy" || resource == Mayfly::Audience::"urn:mayfly:proxy-client" ||
         resource == Mayfly::Audience::"https://internal.test" };
@id("tasks-call-upstreams")
permit (principal is Mayfly::Task, action == Mayfly::Action::"proxy", resource);
@id("no-tunnels-to-localhost")
forbid (principal, action == Mayfly::Action::"proxy", resource == Mayfly::Upstream::"*")
  when { context.host == "localhost" };
@id("no-admin-paths")
forbid (principal, action == Mayfly::Action::"proxy", resource == Mayfly::Upstream::"pay")
  when { context.path like "/admin*" };
"#;

/// A Python upstream (tests/proxy_upstream.py) on a free port; killed on drop.
struct Upstream {
    child: Child,
    port: u16,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `script` (in tests/) with its port file and `args`, on a free loopback port.
fn upstream(dir: &Path, name: &str, script: &str, args: &[&str]) -> Upstream {
    let port_file = dir.join(format!("{name}.port"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(script);
    let child = Command::new("python3")
        .arg(script)
        .arg(&port_file)
        .args(args)
        // Authlib refuses plain http unless told: the test's token endpoint is on loopback.
        .env("AUTHLIB_INSECURE_TRANSPORT", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned at once, so a failure below still kills it.
    let mut up = Upstream { child, port: 0 };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            up.port = p.trim().parse().unwrap();
            return up;
        }
        assert!(Instant::now() < deadline, "the upstream {name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, for the HTTPS upstream.
fn upstream_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("upstream-ca.pem"), dir.join("upstream.pem"), dir.join("upstream.key"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

struct Setup {
    srv: ServerProcess,
    _pay: Upstream,
    internal: Upstream,
    oauth: Upstream,
    _dir: tempfile::TempDir,
}

/// The server, its upstreams, and `extra` at the head of its `[proxy]` configuration.
fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = upstream_tls(dir.path());
    let pay = upstream(
        dir.path(),
        "pay",
        "proxy_upstream.py",
        &["--tls", cert.to_str().unwrap(), key.to_str().unwrap(), "--key", API_KEY],
    );
    let internal = upstream(dir.path(), "internal", "proxy_upstream.py", &[]);
    let oauth = upstream(dir.path(), "oauth", "proxy_oauth_server.py", &["mayfly-proxy", OAUTH_SECRET]);
    // A port nothing listens on: an upstream that is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let proxy = format!(
        r#"
[proxy]
{extra}

[[proxy.upstreams]]
name = "pay"
url = "https://127.0.0.1:{pay}"
hosts = ["api.pay.test"]
ca_file = "{ca}"
requests_per_minute = 40
[proxy.upstreams.inject]
kind = "header"
header = "X-Api-Key"
secret = "{API_KEY}"

[[proxy.upstreams]]
name = "internal"
url = "http://127.0.0.1:{internal}"
hosts = ["internal.test"]
max_request_bytes = 4096
[proxy.upstreams.inject]
kind = "mayfly_token"
audience = "https://internal.test"

[[proxy.upstreams]]
name = "metered"
url = "http://127.0.0.1:{internal}"
hosts = ["metered.test"]
bytes_per_minute = 4000
[proxy.upstreams.inject]
kind = "header"
header = "X-Api-Key"
secret = "metered-key"

[[proxy.upstreams]]
name = "oauth"
url = "http://127.0.0.1:{oauth}"
hosts = ["oauth.test"]
[proxy.upstreams.inject]
kind = "oauth_client_credentials"
token_url = "http://127.0.0.1:{oauth}/oauth/token"
client_id = "mayfly-proxy"
secret = "{OAUTH_SECRET}"
scope = "payments:read"

[[proxy.upstreams]]
name = "oauth-wrong-secret"
url = "http://127.0.0.1:{oauth}"
hosts = ["oauth-wrong.test"]
[proxy.upstreams.inject]
kind = "oauth_client_credentials"
token_url = "http://127.0.0.1:{oauth}/oauth/token"
client_id = "mayfly-proxy"
secret = "not-the-secret"

[[proxy.upstreams]]
name = "down"
url = "http://127.0.0.1:{down}"
hosts = ["down.test"]
[proxy.upstreams.inject]
kind = "basic"
username = "svc"
secret = "pw"
"#,
        pay = pay.port,
        ca = ca.display(),
        internal = internal.port,
        oauth = oauth.port,
    );
    let cfg = TestConfig::new().trust_domain("proxy.test").free_port().policies(POLICIES).toml(&proxy);
    let srv = start_server(&cfg.write(dir.path()));
    Setup { srv, _pay: pay, internal, oauth, _dir: dir }
}

fn join_token(srv: &ServerProcess) -> String {
    join_token_for(srv, "agents/researcher")
}

fn join_token_for(srv: &ServerProcess, path: &str) -> String {
    let out = mayfly(&["join-token", "create", "--spiffe-path", path], &srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn exec_proxy(srv: &ServerProcess, script: &str, cwd: &Path) -> Child {
    Command::new(BIN)
        .args(["exec", "--url", &srv.url, "--proxy", "--", "sh", "-c", script])
        .current_dir(cwd)
        .env("MAYFLY_JOIN_TOKEN", join_token(srv))
        .env_remove("MAYFLY_ADMIN_TOKEN")
        // Installed by .ci/run (`npm ci --prefix tests/node`).
        .env("NODE_CLIENT", Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/node/fetch_through_proxy.mjs"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).trim().to_owned()
}

fn json(dir: &Path, name: &str) -> Value {
    serde_json::from_str(&read(dir, name)).unwrap_or_else(|e| panic!("{name}: {e}: {}", read(dir, name)))
}

#[test]
fn real_clients_get_the_key_injected_and_never_hold_it_and_policy_decides_each_request() {
    let s = setup("");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let script = r#"
set -u
# https through CONNECT, TLS terminated by the proxy; the workload's own key is replaced.
curl -sS -o pay.json -w '%{http_code}' -H 'X-Api-Key: a-key-the-workload-made-up' 'https://api.pay.test/v1/charges?limit=1&cursor=x' > pay.code
# A path policy forbids.
curl -sS -o denied.json -w '%{http_code}' https://api.pay.test/admin/keys > denied.code
# Plain http, absolute form; a Mayfly token minted for the internal service.
curl -sS -o internal.json -w '%{http_code}' -X POST -d 'hello' -H 'Authorization: Bearer made-up-by-the-workload' http://internal.test/whoami > internal.code
# A host no upstream names, over CONNECT and over plain http.
curl -sS -o /dev/null https://elsewhere.test/ 2> elsewhere.err; echo $? > elsewhere.code
curl -sS -o elsewhere.json -w '%{http_code}' http://elsewhere.test/ > elsewhere-http.code
# An OAuth upstream (Authlib): the proxy's client-credentials token, fetched once and reused.
curl -sS -o oauth1.json -w '%{http_code}' http://oauth.test/api/me > oauth1.code
curl -sS -o oauth2.json -w '%{http_code}' http://oauth.test/api/me > oauth2.code
curl -sS -o oauth-wrong.json -w '%{http_code}' http://oauth-wrong.test/api/me > oauth-wrong.code
# An upstream that is down.
curl -sS -o down.json -w '%{http_code}' http://down.test/ > down.code
# No identity: the same proxy without the command's secret.
P="${HTTP_PROXY##*@}"
curl -sS -o noauth.json -w '%{http_code}' -x "http://$P" http://internal.test/ > noauth.code
# Smuggling (both framings), the cloud metadata address, CONNECT to loopback: refused.
python3 - > smuggle.out <<'PY'
import base64, os, socket
cred, addr = os.environ["HTTP_PROXY"][len("http://"):].split("@")
host, port = addr.split(":")
s = socket.create_connection((host, int(port)))
auth = base64.b64encode(cred.encode()).decode()
s.sendall(("POST http://internal.test/x HTTP/1.1\r\nHost: internal.test\r\nProxy-Authorization: Basic " + auth +
           "\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: internal.test\r\n\r\n").encode())
s.settimeout(5)
import time
time.sleep(1)
print(s.recv(65536).decode(errors="replace"))
PY
curl -sS -o imds.json -w '%{http_code}' http://169.254.169.254/latest/meta-data/ > imds.code
curl -sS -o /dev/null "https://127.0.0.1:${HTTP_PROXY##*:}/" 2> loopback.err; echo $? > loopback.code
# Python's requests and httpx, as the environment configures them.
python3 -c "import requests; r = requests.get('https://api.pay.test/v1/requests'); print(r.status_code, r.json()['headers']['x-api-key'] != '')" > requests.out
python3 -c "import httpx; r = httpx.get('https://api.pay.test/v1/httpx'); print(r.status_code, r.json()['path'])" > httpx.out
# Node's fetch (undici's EnvHttpProxyAgent, the proxy's CA from NODE_EXTRA_CA_CERTS).
node "$NODE_CLIENT" https://api.pay.test/v1/node > node.out 2> node.err
# What the command holds.
env > env.txt
cat "$SSL_CERT_FILE" "$NODE_EXTRA_CA_CERTS" > certs.txt
"#;
    let child = exec_proxy(&s.srv, script, w);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    assert_eq!(read(w, "pay.code"), "200", "{}", read(w, "pay.json"));
    let pay = json(w, "pay.json");
    assert_eq!(pay["headers"]["x-api-key"], API_KEY, "the configured key replaced the workload's");
    assert_eq!(pay["path"], "/v1/charges?limit=1&cursor=x");
    assert!(pay["headers"].get("proxy-authorization").is_none(), "the proxy credential stays at the proxy");

    assert_eq!(read(w, "denied.code"), "403");
    let denied = json(w, "denied.json");
    assert_eq!(denied["type"], "urn:mayfly:problem:policy-denied", "{denied}");
    assert_eq!(denied["policies"], serde_json::json!(["no-admin-paths"]));

    assert_eq!(read(w, "internal.code"), "200", "{}", read(w, "internal.json"));
    let internal = json(w, "internal.json");
    assert_eq!(internal["body"], "hello", "the body is forwarded");
    let bearer = internal["headers"]["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap().to_owned();
    assert_ne!(bearer, "made-up-by-the-workload", "the workload's own Authorization is replaced");
    let claims: Value = {
        use base64::Engine;
        let payload = bearer.split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    };
    assert_eq!(claims["aud"], "https://internal.test");
    assert!(claims["sub"].as_str().unwrap().starts_with("spiffe://proxy.test/"), "{claims}");
    assert!(claims["task_id"].is_string(), "minted under the command's task: {claims}");

    assert_ne!(read(w, "elsewhere.code"), "0", "CONNECT to an unconfigured host is refused");
    assert_eq!(read(w, "elsewhere-http.code"), "403");
    assert_eq!(json(w, "elsewhere.json")["type"], "urn:mayfly:problem:destination-refused");
    for n in ["oauth1", "oauth2"] {
        assert_eq!(read(w, &format!("{n}.code")), "200", "{}", read(w, &format!("{n}.json")));
        let me = json(w, &format!("{n}.json"));
        assert_eq!((me["client_id"].as_str(), me["scope"].as_str()), (Some("mayfly-proxy"), Some("payments:read")));
    }
    let stats: Value = serde_json::from_str(&curl(&[&format!("http://127.0.0.1:{}/stats", s.oauth.port)]).2).unwrap();
    assert_eq!(stats["tokens_issued"], 1, "the upstream token is reused until shortly before it expires");
    assert_eq!(read(w, "oauth-wrong.code"), "502");
    let wrong = json(w, "oauth-wrong.json");
    assert_eq!(wrong["type"], "urn:mayfly:problem:upstream-credential-failed", "{wrong}");
    assert!(wrong["detail"].as_str().unwrap().contains("invalid_client"), "{wrong}");
    assert_eq!(read(w, "down.code"), "502");
    assert_eq!(json(w, "down.json")["type"], "urn:mayfly:problem:upstream-unreachable");
    assert_eq!(read(w, "noauth.code"), "407");
    assert_eq!(json(w, "noauth.json")["type"], "urn:mayfly:problem:proxy-authentication-required");
    // Framed by Transfer-Encoding (RFC 9112 §6.3) and re-originated: the tail is the
    // proxy's next request (no upstream named "smuggled"), never a request to the upstream.
    let smuggle = read(w, "smuggle.out");
    assert!(smuggle.starts_with("HTTP/1.1 400") || smuggle.starts_with("HTTP/1.1 200"), "{smuggle}");
    assert!(!smuggle.contains("\"path\": \"/smuggled\""), "{smuggle}");
    assert_eq!(read(w, "imds.code"), "403");
    assert_eq!(json(w, "imds.json")["type"], "urn:mayfly:problem:destination-refused");
    assert_ne!(read(w, "loopback.code"), "0", "CONNECT to loopback is refused");
    assert_eq!(read(w, "requests.out"), "200 True");
    assert_eq!(read(w, "httpx.out"), "200 /v1/httpx");
    assert_eq!(
        read(w, "node.out"),
        "200 /v1/node",
        "{}",
        std::fs::read_to_string(w.join("node.err")).unwrap_or_default()
    );

    // Nothing the command held or wrote carries the key.
    for entry in std::fs::read_dir(w).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "pay.json") {
            continue; // the upstream's echo of what it received
        }
        let content = std::fs::read(&path).unwrap();
        assert!(!String::from_utf8_lossy(&content).contains(API_KEY), "{} holds the upstream key", path.display());
    }
    let env = read(w, "env.txt");
    assert!(env.contains("HTTPS_PROXY=http://mayfly:"), "{env}");
    assert!(!env.contains("MAYFLY_TASK_TOKEN") && !env.contains("MAYFLY_JOIN_TOKEN"));
    assert!(read(w, "certs.txt").contains("BEGIN CERTIFICATE"));

    // Denials and allowed requests are audited; never the key.
    let audit = mayfly(&["audit", "--json", "--limit", "500"], &s.srv.env());
    assert!(audit.status.success(), "{}", text(&audit.stderr));
    let audit = text(&audit.stdout);
    assert!(audit.contains("proxy.allowed"), "{audit}");
    assert!(audit.contains("no-admin-paths"), "the denial names its rule: {audit}");
    assert!(!audit.contains(API_KEY) && !audit.contains(OAUTH_SECRET));
    let logs = s.srv.logs().join("\n");
    assert!(!logs.contains(API_KEY) && !logs.contains(OAUTH_SECRET), "the server never logs a secret");
}

#[test]
fn revoking_the_task_cuts_a_stream_mid_way_and_the_rate_limit_answers_429() {
    let s = setup("");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let script = r#"
echo "$MAYFLY_TASK_ID" > task
# Over the rate: 40 a minute to "pay" for one task.
n=0; while [ $n -lt 45 ]; do curl -s -o /dev/null -w '%{http_code}\n' https://api.pay.test/v1/x >> rate.codes; n=$((n+1)); done
curl -sS -N http://internal.test/stream > stream.out 2> stream.err; echo $? > stream.code
"#;
    let child = exec_proxy(&s.srv, script, w);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(w.join("stream.out")).map(|t| t.lines().count()).unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "the stream did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let codes = read(w, "rate.codes");
    let ok = codes.lines().filter(|c| *c == "200").count();
    let limited = codes.lines().filter(|c| *c == "429").count();
    assert!(ok <= 40 && ok + limited == 45, "{codes}");
    let task = read(w, "task");
    let revoked_at = Instant::now();
    let out = mayfly(&["revoke", "--task", &task], &s.srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    while !w.join("stream.code").exists() {
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "the stream was not cut");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cut_after = revoked_at.elapsed();
    assert!(cut_after < Duration::from_millis(1500), "cut {cut_after:?} after the revocation");
    assert_ne!(read(w, "stream.code"), "0", "curl saw the stream cut");
    let chunks = read(w, "stream.out").lines().count();
    assert!(chunks < 100, "the stream did not run to its end ({chunks} chunks)");
    // Not killed: mayfly exec ends on its own once the command does, and removes its files.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.code().is_some(), "{}", text(&out.stderr));
}

/// A task started with a join token for `path`: its task token.
fn task_token(srv: &ServerProcess, path: &str) -> String {
    let join = join_token_for(srv, path);
    let out =
        mayfly(&["tasks", "start", "--url", &srv.url, "--purpose", "proxy test"], &[("MAYFLY_JOIN_TOKEN", &join)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// `curl ARGS -o BODY -w '%{http_code} %{http_connect}'`: the status, the CONNECT status, the body.
fn curl(args: &[&str]) -> (String, String, String) {
    let body = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(body.path())
        .args(["-w", "%{http_code} %{http_connect}"])
        .args(args)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    let codes = text(&out.stdout);
    let (code, connect) = codes.split_once(' ').unwrap_or((&codes, ""));
    (code.to_owned(), connect.to_owned(), std::fs::read_to_string(body.path()).unwrap_or_default())
}

#[test]
fn a_standalone_proxy_serves_workloads_that_prove_themselves_and_decides_their_tunnels() {
    let s = setup("tunnel_unmatched = true\ntunnel_internal_allowed = [\"127.0.0.0/8\", \"::1/128\"]");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("proxy-ca.pem");

    // Its own evidence: a join token is refused (it would be spent at the first renewal).
    let out = mayfly(&["proxy", "run", "--url", &s.srv.url, "--join-token", "x"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("single use"), "{}", text(&out.stderr));
    // No threads, or absurdly many: a clear refusal before anything starts.
    for threads in ["0", "100000", "two"] {
        let out = mayfly(&["proxy", "run", "--url", &s.srv.url, "--worker-threads", threads], &[]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("--worker-threads"), "{}", text(&out.stderr));
    }

    let own = task_token(&s.srv, "egress/proxy");
    let mut proxy = Command::new(BIN)
        .args(["proxy", "run", "--url", &s.srv.url, "--listen", "127.0.0.1:0", "--ca-cert-out"])
        .arg(&ca)
        .env("MAYFLY_TASK_TOKEN", &own)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = {
        use std::io::BufRead;
        let stderr = std::io::BufReader::new(proxy.stderr.take().unwrap());
        let mut addr = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                addr = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        addr.expect("the proxy says where it listens")
    };
    let workload = task_token(&s.srv, "agents/researcher");
    let via = format!("http://task:{workload}@{addr}");
    let ca = ca.to_str().unwrap();

    // Forward, https: the key injected for a workload that proved itself.
    let (code, _, body) = curl(&["-x", &via, "--cacert", ca, "https://api.pay.test/v1/standalone"]);
    assert_eq!(code, "200", "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-api-key"], API_KEY);

    // Reverse mode: /<upstream>/<path>, identity in Proxy-Authorization.
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("task:{workload}"))
    };
    let auth = format!("Proxy-Authorization: Basic {basic}");
    let (code, _, body) = curl(&["-H", &auth, &format!("http://{addr}/pay/v1/reverse?x=1")]);
    assert_eq!(code, "200", "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (echoed["path"].as_str(), echoed["headers"]["x-api-key"].as_str()),
        (Some("/v1/reverse?x=1"), Some(API_KEY))
    );
    let (code, _, body) = curl(&["-H", &auth, &format!("http://{addr}/nope/x")]);
    assert_eq!(code, "404", "{body}");

    // Evidence the server does not accept: 407, whatever the way in.
    let forged = format!("http://task:{}x@{addr}", &workload[..workload.len() - 1]);
    let (code, _, body) = curl(&["-x", &forged, "http://internal.test/"]);
    assert_eq!(code, "407", "{body}");
    assert!(body.contains("proxy-authentication-required"), "{body}");
    let internal = s.internal.port.to_string();
    let (_, connect, _) = curl(&["-p", "-x", &forged, &format!("http://127.0.0.1:{internal}/")]);
    assert_eq!(connect, "407", "a tunnel needs evidence the server accepts");

    // A tunnel to a host no upstream names: decided by policy, nothing injected.
    let (code, connect, body) = curl(&["-p", "-x", &via, &format!("http://127.0.0.1:{internal}/tunnelled")]);
    assert_eq!((code.as_str(), connect.as_str()), ("200", "200"), "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/tunnelled");
    assert!(echoed["headers"].get("authorization").is_none(), "a tunnel carries what the workload sent, no more");
    let (_, connect, _) = curl(&["-p", "-x", &via, &format!("http://localhost:{internal}/")]);
    assert_eq!(connect, "403", "the policy forbids tunnels to localhost");

    // Oversized: a body over the upstream's limit (413), a head over 64 KiB (431).
    let big = "x".repeat(5000);
    let (code, _, body) = curl(&["-x", &via, "--data-binary", &big, "http://internal.test/upload"]);
    assert_eq!(code, "413", "{body}");
    let huge = format!("X-Filler: {}", "y".repeat(70 * 1024));
    let (code, _, _) = curl(&["-x", &via, "-H", &huge, "http://internal.test/"]);
    assert_eq!(code, "431");

    // Slow: a head that never ends is cut (10 s), not held open.
    {
        use std::io::{Read, Write};
        let mut slow = std::net::TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET http://internal.test/ HTTP/1.1\r\nHost: internal.test\r\n").unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = slow.read_to_end(&mut buf);
        assert!(started.elapsed() < Duration::from_secs(15), "the slow head was cut after {:?}", started.elapsed());
    }

    // A byte budget per caller and minute: spent, the next request is refused (429) until the
    // minute ends, and another caller's budget is its own. Started early in a minute, so the
    // budget does not reset half-way.
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    if second > 45 {
        std::thread::sleep(Duration::from_secs(61 - second));
    }
    // The upstream echoes the body: about 1,000 + 1,400 bytes for the first round trip, under
    // the 4,000; the second request's 2,500 cross it on the way up, before the upstream answers.
    let (code, _, out) = curl(&["-x", &via, "--data-binary", &"a".repeat(1000), "http://metered.test/first"]);
    assert_eq!(code, "200", "{out}");
    let (code, _, _) = curl(&["-x", &via, "--data-binary", &"b".repeat(2500), "http://metered.test/over"]);
    assert_ne!(code, "200", "the request that goes over the budget is cut");
    let (code, _, out) = curl(&["-x", &via, "http://metered.test/after"]);
    assert_eq!(code, "429", "{out}");
    assert!(out.contains("rate-limited") && out.contains("bytes per minute"), "{out}");
    let other = task_token(&s.srv, "agents/other");
    let (code, _, out) = curl(&["-x", &format!("http://task:{other}@{addr}"), "http://metered.test/other-caller"]);
    assert_eq!(code, "200", "{out}");

    // A Mayfly access token for urn:mayfly:proxy-client as the identity (Bearer); its
    // revocation refuses it at once, while the task's own token still works.
    let exchanged = |audience: &str| {
        let out = mayfly(
            &["token", "exchange", "--url", &s.srv.url, "--audience", audience],
            &[("MAYFLY_TASK_TOKEN", workload.as_str())],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    let client_token = exchanged("urn:mayfly:proxy-client");
    let bearer = format!("Proxy-Authorization: Bearer {client_token}");
    let (code, _, body) =
        curl(&["-x", &format!("http://{addr}"), "--proxy-header", &bearer, "http://internal.test/by-access-token"]);
    assert_eq!(code, "200", "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/by-access-token");
    let other = exchanged("https://internal.test");
    let wrong = format!("Proxy-Authorization: Bearer {other}");
    let (code, _, body) = curl(&["-x", &format!("http://{addr}"), "--proxy-header", &wrong, "http://internal.test/"]);
    assert_eq!(code, "407", "a token for another audience is not an identity here: {body}");
    let jti = {
        use base64::Engine;
        let payload = client_token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["jti"].as_str().unwrap().to_owned()
    };
    let out = mayfly(&["revoke", "--jti", &jti], &s.srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, body) =
        curl(&["-x", &format!("http://{addr}"), "--proxy-header", &bearer, "http://internal.test/after-jti"]);
    assert_eq!(code, "407", "{body}");
    let (code, _, body) = curl(&["-x", &via, "http://internal.test/task-still-works"]);
    assert_eq!(code, "200", "{body}");

    // Replayed after the workload's task ended: the same evidence gets nothing more.
    let workload_task = {
        use base64::Engine;
        let payload = workload.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["task_id"].as_str().unwrap().to_owned()
    };
    let out = mayfly(&["revoke", "--task", &workload_task], &s.srv.env());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, body) = curl(&["-x", &via, "--cacert", ca, "https://api.pay.test/v1/after-revocation"]);
    assert!(code == "407" || code == "403", "{code}: {body}");
    assert!(!body.contains(API_KEY));

    // The audit has the tunnel, with the policy that allowed it.
    let audit = mayfly(&["audit", "--json", "--kind", "proxy.tunnel"], &s.srv.env());
    assert!(text(&audit.stdout).contains("tunnel"), "{}", text(&audit.stdout));
    let _ = proxy.kill();
    let _ = proxy.wait();
}
