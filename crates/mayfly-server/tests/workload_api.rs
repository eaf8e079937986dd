//! The SPIFFE Workload API, met the way workloads meet it: through the `spiffe` crate
//! from crates.io (and a raw gRPC client for malformed requests), over a real unix
//! socket, with callers attested by the kernel.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mayfly_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use mayfly_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};
use mayfly_testkit::{GITHUB_TEST_ISSUER, K8S_ISSUER, TestConfig, TestDir, TestIssuer, TestServer};
use serde_json::{Value, json};
use spiffe::{WorkloadApiClient, WorkloadApiError};
use tokio_stream::StreamExt;
use x509_parser::prelude::*;

const POLICIES: &str = r#"
@id("svids-for-the-test-domain")
permit (principal, action == Mayfly::Action::"fetch_svid", resource)
when { principal.trust_domain == "test.example" && principal.attestor == "unix" && context.ttl_seconds <= 7200 };

@id("no-svids-for-forbidden")
forbid (principal, action == Mayfly::Action::"fetch_svid", resource == Mayfly::Svid::"jwt")
when { context.audiences.contains("https://forbidden.test") };
"#;

/// Env var that turns a re-run of this test binary into a workload process.
const ROLE_ENV: &str = "MAYFLY_TEST_WORKLOAD_ROLE";

async fn start(extra: &str) -> (TestServer, PathBuf) {
    let k8s = TestIssuer::new(K8S_ISSUER);
    let gh = TestIssuer::new(GITHUB_TEST_ISSUER);
    let dir = TestDir::new();
    let socket = dir.path().join("wl.sock");
    let config = TestConfig::standard(&k8s, &gh)
        .policies(POLICIES)
        .toml(&format!("[workload_api]\nsocket = \"{}\"\n{extra}", socket.display()));
    let path = dir.write_config(&config);
    (TestServer::start_in(dir, &path).await, socket)
}

fn endpoint(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

fn my_selectors() -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    vec![format!("unix:uid:{}", nix::unistd::geteuid()), format!("unix:path:{}", exe.display())]
}

async fn create_entry(s: &TestServer, spiffe_id: &str, selectors: &[String], extra: Value) -> Value {
    let mut body = json!({"spiffe_id": spiffe_id, "selectors": selectors});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    let resp = s.admin_post("/v1/entries", Some(body)).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

async fn delete_entry(s: &TestServer, id: &str) -> reqwest::StatusCode {
    let url = format!("{}/v1/entries/{id}", s.url);
    s.http.delete(url).bearer_auth(&s.admin_token).send().await.unwrap().status()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

/// The SPIFFE X509-SVID rules, checked with x509-parser (not the code that minted it).
fn assert_x509_svid_rules(leaf: &X509Certificate<'_>, spiffe_id: &str) {
    let san = leaf.subject_alternative_name().unwrap().expect("SAN");
    let uris: Vec<_> = san.value.general_names.iter().filter(|n| matches!(n, GeneralName::URI(_))).collect();
    assert_eq!(uris.len(), 1, "exactly one URI SAN");
    assert_eq!(uris[0], &GeneralName::URI(spiffe_id));
    let bc = leaf.basic_constraints().unwrap().expect("basicConstraints present");
    assert!(!bc.value.ca, "cA=false");
    let ku = leaf.key_usage().unwrap().expect("key usage");
    assert!(ku.critical, "key usage is critical");
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("EKU");
    assert!(eku.value.server_auth && eku.value.client_auth);
}

#[tokio::test]
async fn a_standard_spiffe_client_fetches_and_validates_svids() {
    let (s, socket) = start("").await;
    let id = "spiffe://test.example/workload/self";
    create_entry(&s, id, &my_selectors(), json!({"hint": "internal", "dns_names": ["self.test"]})).await;
    let client = WorkloadApiClient::connect_to(endpoint(&socket)).await.unwrap();

    // X.509-SVID: SPIFFE's rules, signed by the bundle's CA, one hour.
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), id);
    assert_eq!(svid.hint(), Some("internal"));
    let leaf = parse(svid.leaf().as_bytes());
    assert_x509_svid_rules(&leaf, id);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((3600..=3620).contains(&lifetime), "default lifetime 1h: {lifetime}");
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = svid.spiffe_id().trust_domain();
    let bundle = bundles.get(td).expect("bundle for the trust domain");
    assert_eq!(bundle.authorities().len(), 1);
    let ca = parse(bundle.authorities()[0].as_bytes());
    assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
    leaf.verify_signature(Some(ca.public_key())).expect("the SVID is signed by the bundle's CA");

    // JWT-SVID: ES256, aud required, five minutes; verified by jsonwebtoken against the JWT bundle.
    let jwt = client.fetch_jwt_svid(["https://svc.test"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), id);
    let header = jsonwebtoken::decode_header(jwt.token()).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let jwt_bundle = jwt_bundles.get(td).expect("JWT bundle");
    let authority = jwt_bundle.find_jwt_authority(header.kid.as_deref().unwrap()).expect("kid in bundle");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_slice(authority.jwk_json()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["https://svc.test"]);
    let claims = jsonwebtoken::decode::<Value>(jwt.token(), &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], id);
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 300, "default JWT-SVID lifetime 5m");
    assert!(claims["jti"].is_string(), "every credential has a jti");

    // ValidateJWTSVID, through the client library.
    let valid = client.validate_jwt_token("https://svc.test", jwt.token()).await.unwrap();
    assert_eq!(valid.spiffe_id().to_string(), id);
    assert!(client.validate_jwt_token("https://other.test", jwt.token()).await.is_err(), "wrong audience");

    // Recorded and audited like any other credential.
    let leases: Value = s.admin_get("/v1/leases?limit=50").await;
    let kinds: Vec<&str> = leases.as_array().unwrap().iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"x509-svid") && kinds.contains(&"jwt-svid"), "{kinds:?}");
    let audit: Value = s.admin_get("/v1/audit?kind=svid.issued&limit=50").await;
    let text = audit.to_string();
    assert!(!text.contains(jwt.token()), "the audit never holds the SVID");
    assert!(audit.as_array().unwrap().len() >= 2, "{audit}");

    // The bundle is public over HTTP too, as a SPIFFE bundle endpoint serves it.
    let b: Value = s.http.get(format!("{}/v1/bundle", s.url)).send().await.unwrap().json().await.unwrap();
    let uses: Vec<&str> = b["keys"].as_array().unwrap().iter().map(|k| k["use"].as_str().unwrap()).collect();
    assert_eq!(uses, vec!["x509-svid", "jwt-svid"]);
    s.stop().await;
}

#[tokio::test]
async fn no_entry_no_identity_and_deleting_or_revoking_removes_it_from_the_stream() {
    let (s, socket) = start("").await;
    let client = WorkloadApiClient::connect_to(endpoint(&socket)).await.unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(err, WorkloadApiError::NoIdentityIssued), "{err:?}");
    assert!(client.fetch_jwt_svid(["https://svc.test"], None).await.is_err());

    // An entry made now is served at once; deleting it ends the stream with PermissionDenied.
    let id = "spiffe://test.example/workload/streamed";
    let entry = create_entry(&s, id, &my_selectors(), json!({})).await;
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.spiffe_id().to_string(), id);
    assert_eq!(delete_entry(&s, entry["id"].as_str().unwrap()).await, 200);
    let ended = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("pushed at once");
    assert!(matches!(ended, Some(Err(WorkloadApiError::NoIdentityIssued))), "{ended:?}");
    assert_eq!(delete_entry(&s, entry["id"].as_str().unwrap()).await, 404);

    // Revoking one SVID (by its serial) replaces it on the stream; revoking the subject removes it.
    create_entry(&s, id, &my_selectors(), json!({})).await;
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let serial = hex::encode(parse(first.leaf().as_bytes()).raw_serial());
    let resp = s.admin_post("/v1/revocations", Some(json!({"jti": serial}))).await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let next = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.unwrap().unwrap().unwrap();
    assert_ne!(hex::encode(parse(next.leaf().as_bytes()).raw_serial()), serial, "a fresh SVID replaces it");
    let resp = s.admin_post("/v1/revocations", Some(json!({"subject": id}))).await;
    assert_eq!(resp.status(), 201);
    let ended = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("pushed at once");
    assert!(matches!(ended, Some(Err(_))), "{ended:?}");
    assert!(client.fetch_x509_svid().await.is_err(), "not re-issued while the revocation stands");
    // A block keeps it away too; lifting serves the identity again (a new SVID: the old ones stay revoked).
    let resp = s.admin_post("/v1/revocations", Some(json!({"subject": id, "block": true}))).await;
    assert_eq!(resp.status(), 201);
    assert!(client.fetch_x509_svid().await.is_err(), "not issued while blocked");
    let resp = s.admin_post("/v1/revocations/lift", Some(json!({"subject": id}))).await;
    let lifted_at = resp.json::<Value>().await.unwrap()["issued_before"].as_i64().unwrap();
    // Whole seconds: what is minted in the second of the lift is still covered.
    while mayfly_server::clock::now_unix() <= lifted_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = client.fetch_x509_svid().await.expect("served again after the lift");
    assert_eq!(again.spiffe_id().to_string(), id);
    assert_ne!(hex::encode(parse(again.leaf().as_bytes()).raw_serial()), serial);
    // A blocked audience gets no JWT-SVID, even asked for beside an allowed one.
    client.fetch_jwt_svid(["https://ok.test"], None).await.expect("an allowed audience");
    let resp = s.admin_post("/v1/revocations", Some(json!({"audience": "https://blocked.test", "block": true}))).await;
    assert_eq!(resp.status(), 201);
    assert!(client.fetch_jwt_svid(["https://ok.test", "https://blocked.test"], None).await.is_err());
    assert!(client.fetch_jwt_svid(["https://blocked.test", "https://ok.test"], None).await.is_err());
    s.stop().await;
}

#[tokio::test]
async fn rotation_keeps_the_old_ca_in_the_bundle_and_streams_push_it() {
    let (s, socket) = start("").await;
    create_entry(&s, "spiffe://test.example/workload/rotated", &my_selectors(), json!({})).await;
    let client = WorkloadApiClient::connect_to(endpoint(&socket)).await.unwrap();
    let before = client.fetch_x509_svid().await.unwrap();
    let mut bundles = client.stream_x509_bundles().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), bundles.next()).await.unwrap().unwrap().unwrap();
    let td = before.spiffe_id().trust_domain().clone();
    assert_eq!(first.get(&td).unwrap().authorities().len(), 1);
    let jwt_before = client.fetch_jwt_svid(["https://svc.test"], None).await.unwrap();

    let resp = s.admin_post("/v1/svid-authorities/rotate", None).await;
    assert_eq!(resp.status(), 200);
    let pushed = tokio::time::timeout(Duration::from_secs(2), bundles.next()).await.unwrap().unwrap().unwrap();
    let cas = pushed.get(&td).unwrap().authorities().to_vec();
    assert_eq!(cas.len(), 2, "old and new CA while the old one's SVIDs live");
    // The SVID from before verifies against the pushed bundle; a new one is signed by the new CA.
    let old_leaf = parse(before.leaf().as_bytes());
    assert!(old_leaf.verify_signature(Some(parse(cas[0].as_bytes()).public_key())).is_ok());
    let after = client.fetch_x509_svid().await.unwrap();
    assert!(parse(after.leaf().as_bytes()).verify_signature(Some(parse(cas[1].as_bytes()).public_key())).is_ok());
    // JWT-SVIDs signed before the rotation still validate, and new ones use the new key.
    assert!(client.validate_jwt_token("https://svc.test", jwt_before.token()).await.is_ok());
    let jwt_after = client.fetch_jwt_svid(["https://svc.test"], None).await.unwrap();
    assert_ne!(jwt_after.key_id(), jwt_before.key_id());
    assert!(client.validate_jwt_token("https://svc.test", jwt_after.token()).await.is_ok());
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert_eq!(jwt_bundles.get(&td).unwrap().jwt_authorities().count(), 2, "both JWT keys published");
    s.stop().await;
}

#[tokio::test]
async fn streams_rotate_svids_at_half_life_and_entries_are_checked() {
    let (s, socket) = start("").await;
    // Four seconds: the stream must push a fresh SVID about two seconds in, before expiry.
    create_entry(&s, "spiffe://test.example/workload/short", &my_selectors(), json!({"x509_svid_ttl": 4})).await;
    let client = WorkloadApiClient::connect_to(endpoint(&socket)).await.unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let started = std::time::Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("pushed").unwrap().unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(4), "pushed at half-life: {waited:?}");
    assert_ne!(parse(first.leaf().as_bytes()).raw_serial(), parse(next.leaf().as_bytes()).raw_serial());
    assert!(
        parse(next.leaf().as_bytes()).validity().not_after.timestamp()
            > parse(first.leaf().as_bytes()).validity().not_after.timestamp()
    );

    // Entries the server must refuse: no user or group selector, a task path, another trust domain.
    let exe = format!("unix:path:{}", std::env::current_exe().unwrap().display());
    for (id, sels) in [
        ("spiffe://test.example/path-only", vec![exe.clone()]),
        ("spiffe://test.example/task/forged", my_selectors()),
        ("spiffe://elsewhere.example/x", my_selectors()),
    ] {
        let resp = s.admin_post("/v1/entries", Some(json!({"spiffe_id": id, "selectors": sels}))).await;
        assert_eq!(resp.status(), 400, "{id}");
        let problem: Value = resp.json().await.unwrap();
        assert!(problem["detail"].as_str().is_some(), "{problem}");
    }
    s.stop().await;
}

/// A raw gRPC client on the socket, for requests a well-behaved library never sends.
async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

#[tokio::test]
async fn malformed_requests_get_the_status_codes_the_standard_names() {
    let (s, socket) = start("").await;
    create_entry(&s, "spiffe://test.example/workload/raw", &my_selectors(), json!({})).await;
    let mut c = raw_client(&socket).await;
    use tonic::Code;

    // Without the security header: InvalidArgument, on every call.
    let e = c.fetch_x509svid(tonic::Request::new(X509svidRequest {})).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e =
        c.fetch_jwtsvid(tonic::Request::new(JwtsvidRequest { audience: vec!["a".into()], spiffe_id: String::new() }));
    assert_eq!(e.await.unwrap_err().code(), Code::InvalidArgument);
    let mut wrong = tonic::Request::new(X509svidRequest {});
    wrong.metadata_mut().insert("workload.spiffe.io", "yes".parse().unwrap());
    assert_eq!(c.fetch_x509svid(wrong).await.unwrap_err().code(), Code::InvalidArgument);

    let jwt = |aud: Vec<String>, id: &str| with_header(JwtsvidRequest { audience: aud, spiffe_id: id.into() });
    assert_eq!(c.fetch_jwtsvid(jwt(vec![], "")).await.unwrap_err().code(), Code::InvalidArgument, "no audience");
    assert_eq!(c.fetch_jwtsvid(jwt(vec![String::new()], "")).await.unwrap_err().code(), Code::InvalidArgument);
    let many: Vec<String> = (0..17).map(|i| format!("https://a{i}.test")).collect();
    assert_eq!(c.fetch_jwtsvid(jwt(many, "")).await.unwrap_err().code(), Code::InvalidArgument);
    let e = c.fetch_jwtsvid(jwt(vec!["https://forbidden.test".into()], "")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "policy refuses that audience: {e:?}");
    let e = c.fetch_jwtsvid(jwt(vec!["https://svc.test".into()], "spiffe://test.example/not/mine")).await;
    assert_eq!(e.unwrap_err().code(), Code::PermissionDenied, "not entitled to that SPIFFE ID");
    let ok = c.fetch_jwtsvid(jwt(vec!["https://svc.test".into()], "spiffe://test.example/workload/raw")).await;
    assert_eq!(ok.unwrap().into_inner().svids.len(), 1);

    // A request larger than the limit is refused by size, and the server keeps serving.
    let huge = vec!["x".repeat(100 * 1024)];
    let e = c.fetch_jwtsvid(jwt(huge, "")).await.unwrap_err();
    assert!(matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange), "{e:?}");

    let validate =
        |aud: &str, svid: &str| with_header(ValidateJwtsvidRequest { audience: aud.into(), svid: svid.into() });
    assert_eq!(c.validate_jwtsvid(validate("", "x.y.z")).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(c.validate_jwtsvid(validate("a", "")).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(c.validate_jwtsvid(validate("a", "not-a-jwt")).await.unwrap_err().code(), Code::InvalidArgument);
    // A token signed by a key outside the bundle (a Mayfly access token is EdDSA, not a JWT-SVID).
    let forged = "eyJhbGciOiJFUzI1NiIsImtpZCI6Im5vcGUiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJzcGlmZmU6Ly90ZXN0LmV4YW1wbGUveCIsImF1ZCI6WyJhIl0sImV4cCI6OTk5OTk5OTk5OX0.c2ln";
    assert_eq!(c.validate_jwtsvid(validate("a", forged)).await.unwrap_err().code(), Code::InvalidArgument);

    // Still serving after all that.
    let mut stream = c.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().svids.len(), 1);
    s.stop().await;
}

/// Hard-links (or copies) this test binary to `dir/name`: a distinct executable path, so
/// `unix:path` selectors tell the workload processes apart.
fn workload_binary(dir: &Path, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = dir.join(name);
    if std::fs::hard_link(&exe, &path).is_err() {
        std::fs::copy(&exe, &path).unwrap();
    }
    path
}

fn spawn_workload(bin: &Path, role: &str, socket: &Path, arg: &str) -> std::process::Child {
    std::process::Command::new(bin)
        .args(["workload_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint(socket))
        .env("MAYFLY_TEST_ARG", arg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads lines from a child until one starts with `prefix`.
fn read_line_with(out: &mut impl std::io::BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended before printing {prefix}");
        // libtest prints "test workload_process ... " before the child's first line.
        if let Some(at) = line.find(prefix) {
            return line[at + prefix.len()..].trim().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workloads_talk_mtls_with_their_svids_and_a_third_gets_none() {
    let (s, socket) = start("").await;
    let bins = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (a, b, c) = (
        workload_binary(bins.path(), "svc-a"),
        workload_binary(bins.path(), "svc-b"),
        workload_binary(bins.path(), "svc-c"),
    );
    let uid = nix::unistd::geteuid();
    let sel = |p: &Path| vec![format!("unix:uid:{uid}"), format!("unix:path:{}", p.display())];
    create_entry(&s, "spiffe://test.example/svc/a", &sel(&a), json!({"dns_names": ["a.svc.test"]})).await;
    create_entry(&s, "spiffe://test.example/svc/b", &sel(&b), json!({})).await;

    let (server_out, client_out, nobody) = tokio::task::spawn_blocking(move || {
        let mut server = spawn_workload(&a, "mtls-server", &socket, "spiffe://test.example/svc/b");
        let mut server_stdout = std::io::BufReader::new(server.stdout.take().unwrap());
        let port = read_line_with(&mut server_stdout, "PORT");
        let client = spawn_workload(&b, "mtls-client", &socket, &port);
        let client_out = client.wait_with_output().unwrap();
        let server_saw = read_line_with(&mut server_stdout, "PEER");
        let _ = server.wait();
        let nobody = spawn_workload(&c, "nobody", &socket, "").wait_with_output().unwrap();
        (server_saw, String::from_utf8(client_out.stdout).unwrap(), String::from_utf8(nobody.stdout).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(server_out, "spiffe://test.example/svc/b", "the server saw the client's SVID");
    assert!(client_out.contains("PEER spiffe://test.example/svc/a"), "the client saw the server's SVID: {client_out}");
    assert!(client_out.contains("REPLY hello spiffe://test.example/svc/b"), "{client_out}");
    assert!(nobody.contains("REFUSED no-identity"), "a process without an entry gets no identity: {nobody}");
    s.stop().await;
}

/// Not a test on its own: the body of the workload processes the test above starts.
#[test]
#[ignore = "run as a child process by two_workloads_talk_mtls_with_their_svids_and_a_third_gets_none"]
fn workload_process() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let arg = std::env::var("MAYFLY_TEST_ARG").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Bounded: a stuck child ends, which closes its stdout and fails the parent's read instead of hanging it.
    let work = async move {
        let client = WorkloadApiClient::connect_env().await.unwrap();
        if role == "nobody" {
            match client.fetch_x509_svid().await {
                Err(WorkloadApiError::NoIdentityIssued) => println!("REFUSED no-identity"),
                other => println!("UNEXPECTED {other:?}"),
            }
            return;
        }
        let svid = client.fetch_x509_svid().await.unwrap();
        let bundles = client.fetch_x509_bundles().await.unwrap();
        let bundle = bundles.get(svid.spiffe_id().trust_domain()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in bundle.authorities() {
            roots.add(rustls_pki_types::CertificateDer::from(ca.as_bytes().to_vec())).unwrap();
        }
        let roots = Arc::new(roots);
        let chain: Vec<_> =
            svid.cert_chain().iter().map(|c| rustls_pki_types::CertificateDer::from(c.as_bytes().to_vec())).collect();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(svid.private_key().as_bytes().to_vec().into());
        let peer_id = |certs: Option<&[rustls_pki_types::CertificateDer<'_>]>| -> String {
            let leaf = parse(certs.unwrap()[0].as_ref());
            let san = leaf.subject_alternative_name().unwrap().unwrap();
            san.value
                .general_names
                .iter()
                .find_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .unwrap()
        };
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        if role == "mtls-server" {
            let verifier = rustls::server::WebPkiClientVerifier::builder(roots).build().unwrap();
            let cfg = rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("PORT {}", listener.local_addr().unwrap().port());
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(cfg)).accept(tcp).await.unwrap();
            let peer = peer_id(tls.get_ref().1.peer_certificates());
            assert_eq!(peer, arg, "only the expected SPIFFE ID is served");
            println!("PEER {peer}");
            let mut tls = tls;
            tls.write_all(format!("hello {peer}\n").as_bytes()).await.unwrap();
            tls.shutdown().await.unwrap();
        } else {
            let cfg = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap();
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", arg.parse::<u16>().unwrap())).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("a.svc.test").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
            println!("PEER {}", peer_id(tls.get_ref().1.peer_certificates()));
            let mut reply = String::new();
            tokio::io::BufReader::new(tls).read_line(&mut reply).await.unwrap();
            println!("REPLY {}", reply.trim());
        }
    };
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), work).await.expect("workload process timed out")
    });
}
