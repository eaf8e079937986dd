//! Several replicas on one PostgreSQL database, as separate `mayfly server` processes on
//! loopback: any replica issues, introspects and revokes; a revocation made on one is
//! enforced by the others (and reaches their feed subscribers) within a second; a key
//! rotated on one signs on all; one replica runs background work and another takes over
//! when it is killed; killing a replica under load loses no delivered token; and a
//! database that is unreachable at start or goes away while serving is survived.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, ServerProcess};
use mayfly_testkit::process::{free_port, signal};
use mayfly_testkit::{TestConfig, TestDatabase};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
const AUDIENCE: &str = "https://api.replicas.test";
const POLICY: &str = r#"
@id("joined-may-call-api")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.replicas.test")
when { principal.attestor == "join_token" };
"#;

/// One `mayfly server --config` process.
struct Replica {
    name: String,
    server: ServerProcess,
}

impl std::ops::Deref for Replica {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

impl std::ops::DerefMut for Replica {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.server
    }
}

/// A replica that waits the default 5 s for a database connection.
fn spawn(dir: &Path, name: &str, storage: &str) -> Replica {
    spawn_with(dir, name, storage, "5s")
}

/// Writes the replica's config (KEK and policies shared in `dir`) and starts it.
fn spawn_with(dir: &Path, name: &str, storage: &str, acquire_timeout: &str) -> Replica {
    let config = TestConfig::new()
        .trust_domain("replicas.test")
        // Every replica has the same public URL (the load balancer's): tokens name one issuer.
        .set("", &format!("data_dir = \"data-{name}\"\npublic_url = \"http://mayfly.replicas.test\""))
        .storage(storage)
        .free_port()
        .set("postgres", &format!("acquire_timeout = \"{acquire_timeout}\""))
        .policies(POLICY);
    let path = dir.join(format!("{name}.toml"));
    config.write_to(&path);
    Replica { name: name.into(), server: ServerProcess::spawn(BIN, &path) }
}

async fn is_leader(http: &reqwest::Client, r: &Replica) -> bool {
    match http.get(format!("{}/readyz", r.url)).send().await {
        Ok(resp) => resp.json::<Value>().await.is_ok_and(|v| v["leader"] == true),
        Err(_) => false,
    }
}

async fn join_token(http: &reqwest::Client, r: &Replica, admin: &str) -> String {
    let resp = http.post(format!("{}/v1/join-tokens", r.url)).bearer_auth(admin).json(&json!({})).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
}

async fn exchange(http: &reqwest::Client, url: &str, join: &str) -> reqwest::Result<reqwest::Response> {
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", join),
        ("subject_token_type", "urn:mayfly:params:oauth:token-type:join-token"),
        ("audience", AUDIENCE),
    ];
    http.post(format!("{url}/v1/token")).form(&form).send().await
}

async fn issue(http: &reqwest::Client, r: &Replica, join: &str) -> String {
    let resp = exchange(http, &r.url, join).await.unwrap();
    assert_eq!(resp.status(), 200, "exchange on {}", r.name);
    resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

async fn introspect(http: &reqwest::Client, r: &Replica, admin: &str, token: &str) -> Value {
    let resp = http
        .post(format!("{}/v1/introspect", r.url))
        .bearer_auth(admin)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "introspection on {}", r.name);
    resp.json().await.unwrap()
}

fn admin_token(dir: &Path) -> String {
    // The first replica to start creates the admin token; the others share it.
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let f = entry.path().join("admin-token");
        if let Ok(t) = std::fs::read_to_string(&f) {
            return t.trim().to_owned();
        }
    }
    panic!("no replica wrote an admin token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_issuance_revocation_keys_and_background_work() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut a = spawn(dir.path(), "a", &db.url());
    a.wait_ready(Duration::from_secs(60));
    let (mut b, mut c) = (spawn(dir.path(), "b", &db.url()), spawn(dir.path(), "c", &db.url()));
    for r in [&mut b, &mut c] {
        let health = r.wait_ready(Duration::from_secs(60));
        assert_eq!(health["storage"], "postgres");
    }
    let admin = admin_token(dir.path());
    let mut replicas = vec![a, b, c];

    // One leader among the three.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leaders = loop {
        let mut n = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            if is_leader(&http, r).await {
                n.push(i);
            }
        }
        if n.len() == 1 {
            break n;
        }
        assert!(Instant::now() < deadline, "exactly one leader, got {n:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // A join token made on B is redeemed on A; the token is known on B and C.
    let join = join_token(&http, &replicas[1], &admin).await;
    let token = issue(&http, &replicas[0], &join).await;
    for r in &replicas[1..] {
        let v = introspect(&http, r, &admin, &token).await;
        assert_eq!(v["active"], true, "token issued on a, introspected on {}: {v}", r.name);
    }
    // A join token is single use across replicas.
    let again = exchange(&http, &replicas[2].url, &join).await.unwrap();
    assert_eq!(again.status(), 400, "a redeemed join token is refused on another replica");

    // Revoked on B: refused on A, and C's feed subscriber hears of it, within a second.
    let jti = introspect(&http, &replicas[0], &admin, &token).await["jti"].as_str().unwrap().to_owned();
    let mut feed =
        http.get(format!("{}/v1/revocations/stream", replicas[2].url)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(feed.status(), 200);
    let revoked_at = Instant::now();
    let resp = http
        .post(format!("{}/v1/revocations", replicas[1].url))
        .bearer_auth(&admin)
        .json(&json!({"jti": jti, "reason": "replica test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "revocation on b");
    loop {
        if introspect(&http, &replicas[0], &admin, &token).await["active"] == false {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "revocation on b enforced on a within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let heard = tokio::time::timeout(Duration::from_secs(1), async {
        let mut text = String::new();
        while let Some(chunk) = feed.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(&jti) {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "c's feed subscriber heard of b's revocation within 1 s");
    drop(feed);

    // A key rotated on C signs on A within seconds, and every replica publishes it.
    let resp = http.post(format!("{}/v1/keys/rotate", replicas[2].url)).bearer_auth(&admin).send().await.unwrap();
    assert!(resp.status().is_success(), "rotation on c: {}", resp.status());
    let new_kid = resp.json::<Value>().await.unwrap()["kid"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let join = join_token(&http, &replicas[0], &admin).await;
        let t = issue(&http, &replicas[0], &join).await;
        let header: Value = serde_json::from_slice(&b64(t.split('.').next().unwrap())).unwrap();
        if header["kid"] == new_kid.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "a signs with the key rotated on c");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in &replicas {
        // Each replica reloads on the notification, each at its own pace.
        loop {
            let jwks: Value =
                http.get(format!("{}/.well-known/jwks.json", r.url)).send().await.unwrap().json().await.unwrap();
            let kids: Vec<String> =
                jwks["keys"].as_array().unwrap().iter().filter_map(|k| k["kid"].as_str().map(str::to_owned)).collect();
            if kids.contains(&new_kid) && kids.len() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{} publishes old and new keys: {kids:?}", r.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The leader is killed with SIGKILL while it and another replica are under load.
    let leader = leaders[0];
    let survivor = (leader + 1) % 3;
    let mut joins = Vec::new();
    for _ in 0..300 {
        joins.push(join_token(&http, &replicas[survivor], &admin).await);
    }
    let joins = Arc::new(Mutex::new(joins));
    let received = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let survivor_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let target = if w % 2 == 0 { leader } else { survivor };
        let (http, url) = (http.clone(), replicas[target].url.clone());
        let (joins, received, failures, stop) =
            (joins.clone(), received.clone(), survivor_failures.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                let Some(j) = joins.lock().unwrap().pop() else { break };
                match exchange(&http, &url, &j).await {
                    Ok(resp) if resp.status() == 200 => {
                        if let Ok(v) = resp.json::<Value>().await {
                            received.lock().unwrap().push((target, v["access_token"].as_str().unwrap().to_owned()));
                        }
                    }
                    Ok(resp) if target == survivor => failures.lock().unwrap().push(format!("{}", resp.status())),
                    Err(e) if target == survivor => failures.lock().unwrap().push(e.to_string()),
                    _ => {}
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().iter().filter(|(t, _)| *t == leader).count() < 30 {
        assert!(Instant::now() < deadline, "load reaches the leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    signal(&replicas[leader].child, Signal::SIGKILL);
    let _ = replicas[leader].child.wait();
    let before_kill = received.lock().unwrap().len();
    // Another replica takes over background work within seconds.
    let new_leader = loop {
        let mut found = None;
        for (i, r) in replicas.iter().enumerate() {
            if i != leader && is_leader(&http, r).await {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(10), "a replica takes over within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(received.len() > before_kill, "the survivor kept issuing after the kill");
    assert!(survivor_failures.lock().unwrap().is_empty(), "the survivor never failed: {:?}", survivor_failures);
    // Every token a client received, from either replica, is in the shared ledger.
    for (_, t) in &received {
        let v = introspect(&http, &replicas[survivor], &admin, t).await;
        assert_eq!(v["active"], true, "a delivered token is known after the kill: {v}");
    }
    // One chain for all replicas, still intact after concurrent writers and a kill.
    let report: Value = http
        .get(format!("{}/v1/audit/verify", replicas[new_leader].url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], true, "audit chain verifies: {report}");
    let leading = audit_kinds(&http, &replicas[survivor], &admin, "replica.leading").await;
    assert!(leading >= 2, "both leaderships are audited ({leading})");

    replicas.clear();
}

async fn audit_kinds(http: &reqwest::Client, r: &Replica, admin: &str, kind: &str) -> usize {
    let resp = http.get(format!("{}/v1/audit?kind={kind}&limit=100", r.url)).bearer_auth(admin).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    v.as_array().map_or(0, |e| e.len())
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// A TCP relay to PostgreSQL that the test can cut and restore, to play an outage.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    fn new() -> Self {
        Self { port: free_port(), up: Arc::new(AtomicBool::new(false)), conns: Default::default(), accept: None }
    }

    async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, conns) = (self.up.clone(), self.conns.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    break;
                }
                conns.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        }));
    }

    /// Refuses new connections and drops the open ones, as a database that went away.
    fn cut(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_waited_for_at_start_and_survived_while_serving() {
    let db = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut relay = Relay::new();
    let storage = format!("postgres://postgres@127.0.0.1:{}/{}", relay.port, db.name());

    // Nothing answers yet: the replica says so plainly and keeps trying.
    // Requests give up on the database after 1 s, so the outage answers quickly.
    let mut r = spawn_with(dir.path(), "a", &storage, "1s");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if r.logs().iter().any(|l| l.contains("storage is unreachable; retrying")) {
            break;
        }
        assert!(Instant::now() < deadline, "a clear retry message: {:?}", r.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(r.child.try_wait().unwrap().is_none(), "still running, not crash-looping");
    let logs = r.logs().join("\n");
    assert!(!logs.contains("panicked") && !logs.contains("backtrace"), "no panic: {logs}");

    // The database appears: the replica starts by itself.
    relay.start().await;
    r.wait_ready(Duration::from_secs(30));
    let admin = admin_token(dir.path());
    let join = join_token(&http, &r, &admin).await;
    issue(&http, &r, &join).await;
    let unused = join_token(&http, &r, &admin).await;

    // The database goes away while serving: requests fail with 503 problems, and a valid
    // join token does not get a credential that could not be recorded.
    relay.cut();
    let resp = exchange(&http, &r.url, &unused).await.unwrap();
    assert_eq!(resp.status(), 503, "exchange without storage");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert!(body["type"].as_str().unwrap().starts_with("urn:mayfly:problem:"), "{body}");
    let resp = http.get(format!("{}/readyz", r.url)).send().await.unwrap();
    assert_eq!(resp.status(), 503, "not ready without storage");

    // It comes back: service resumes without a restart.
    relay.start().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) =
            http.post(format!("{}/v1/join-tokens", r.url)).bearer_auth(&admin).json(&json!({})).send().await
            && resp.status() == 201
        {
            let join = resp.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
            if exchange(&http, &r.url, &join).await.unwrap().status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "service resumes after the database returns");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resp = exchange(&http, &r.url, &unused).await.unwrap();
    assert_eq!(resp.status(), 200, "the join token refused during the outage was not spent");
    assert!(r.child.try_wait().unwrap().is_none(), "the replica never exited");
    let _ = r.child.kill();
    let _ = r.child.wait();
    relay.cut();
}
