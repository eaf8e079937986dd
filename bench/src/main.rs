//! Writes a self-contained benchmark setup into a directory: a Mayfly config, a
//! Cedar policy, a key-encryption key, a test OIDC issuer's JWKS, a platform JWT
//! signed by that issuer, and a wrk script that exchanges it.
//!
//! Usage:
//!   mayfly-bench-fixture DIR PORT [full|normal]      write the setup
//!   mayfly-bench-fixture seed DIR N SUBJECT          add N live credentials of SUBJECT to DIR's ledger (server stopped)
//!   mayfly-bench-fixture feed-latency URL ADMIN_TOKEN JWT_FILE ROUNDS [STREAM_URL]
//!                                                    time from revoke to the event on the SSE stream
//!   mayfly-bench-fixture signal [N]                  one signal over N live tokens of one workload
//!   mayfly-bench-fixture db [N] [CONCURRENCY] [POSTGRES_ADMIN_URL] [SESSIONS]
//!                                                    issue N PostgreSQL credentials over HTTP, then revoke
//!                                                    them all (SESSIONS of them with an open session)
//!   mayfly-bench-fixture svid [N] [CONCURRENCY]       Workload API: first-SVID latency on fresh connections,
//!                                                    then N X.509-SVIDs at a concurrency
//!   mayfly-bench-fixture svid-load ENDPOINT CONCURRENCY SECONDS
//!                                                    X.509-SVIDs from a running server's socket for SECONDS;
//!                                                    prints "requests/s p50 p99" (ms)
//!   mayfly-bench-fixture disk-sync DIR SECONDS       the disk under DIR alone: 48 KiB written and fsynced in a
//!                                                    loop (a group commit's size); prints the latency spread
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let sub = args.get(1).map(String::as_str);
    if matches!(
        sub,
        Some("seed" | "feed-latency" | "db" | "svid" | "svid-load" | "signal" | "disk-sync" | "proxy-upstream")
    ) {
        let rt = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = match sub {
            Some("seed") => rt.block_on(seed(&args[2..])),
            Some("db") => rt.block_on(db_credentials(&args[2..])),
            Some("svid") => rt.block_on(svids(&args[2..])),
            Some("svid-load") => rt.block_on(svid_load_command(&args[2..])),
            Some("signal") => rt.block_on(signal_bench(&args[2..])),
            Some("disk-sync") => disk_sync(&args[2..]),
            Some("proxy-upstream") => rt.block_on(proxy_upstream(&args[2..])),
            _ => rt.block_on(feed_latency(&args[2..])),
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (Some(dir), Some(port)) = (args.get(1), args.get(2).and_then(|p| p.parse::<u16>().ok())) else {
        eprintln!("usage: mayfly-bench-fixture DIR PORT [full|normal]");
        return ExitCode::from(2);
    };
    let sync = args.get(3).map(String::as_str).unwrap_or("full");
    match write_fixture(Path::new(dir), port, sync) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The upstream of `bench/proxy.sh`: answers `ok` to a request that carries the key the
/// proxy injects (`X-Api-Key: bench-key`), and 401 to any other, so a benchmark of
/// requests the proxy failed to inject into cannot pass for a fast one.
async fn proxy_upstream(args: &[String]) -> Result<(), BoxError> {
    let Some(port) = args.first().and_then(|p| p.parse::<u16>().ok()) else {
        return Err("usage: mayfly-bench-fixture proxy-upstream PORT".into());
    };
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        if headers.get("x-api-key").is_some_and(|v| v == "bench-key") {
            (axum::http::StatusCode::OK, "ok")
        } else {
            (axum::http::StatusCode::UNAUTHORIZED, "no key")
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// How long the disk itself takes to make a group commit's worth of writes durable: the
/// floor under the ledger's latency at `sync = full`, and the source of its worst tail.
fn disk_sync(args: &[String]) -> Result<(), BoxError> {
    use std::io::{Seek, SeekFrom, Write};
    let (Some(dir), Some(seconds)) = (args.first(), args.get(1).and_then(|s| s.parse::<u64>().ok())) else {
        return Err("usage: mayfly-bench-fixture disk-sync DIR SECONDS".into());
    };
    let path = Path::new(dir).join("disk-sync.probe");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    const SPAN: u64 = 4 << 20;
    const CHUNK: usize = 48 << 10;
    file.write_all(&vec![0u8; SPAN as usize])?;
    file.sync_all()?;
    let chunk = vec![0x5au8; CHUNK];
    let mut latencies = Vec::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds.clamp(1, 60));
    let mut offset = 0;
    while std::time::Instant::now() < until {
        let start = std::time::Instant::now();
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&chunk)?;
        file.sync_all()?;
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
        offset = (offset + CHUNK as u64) % (SPAN - CHUNK as u64);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let slow = latencies.iter().filter(|&&l| l > 5.0).count();
    println!(
        "disk_sync_ms writes {} p50 {:.2} p99 {:.2} p999 {:.2} max {:.1} over_5ms {slow}",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        latencies[latencies.len() - 1]
    );
    Ok(())
}

fn write_fixture(dir: &Path, port: u16, sync: &str) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir.join("policies"))?;
    let mut kek = [0u8; 32];
    aws_lc_rs::rand::fill(&mut kek).map_err(|_| "random")?;
    // 0600: the server refuses a KEK file open to group or others.
    mayfly_server::fsutil::write_private(&dir.join("kek"), hex::encode(kek).as_bytes())?;

    // The platform issuer (think: a Kubernetes API server) signs with RS256, as most do.
    let issuer = mayfly_testkit::TestIssuer::new("https://k8s.bench.local");
    std::fs::write(dir.join("jwks.json"), issuer.jwks().to_string())?;
    // The same key as PEM, for verifiers that take PEM (OpenBao's jwt auth).
    std::fs::write(dir.join("platform.pub.pem"), issuer.rsa_public_pem())?;
    // Valid for the longest benchmark run.
    let mut claims = issuer.k8s_claims("prod", "web");
    claims["exp"] = json!(mayfly_testkit::now() + 4 * 3600);
    let jwt = issuer.sign("RS256", &claims);
    std::fs::write(dir.join("platform.jwt"), &jwt)?;

    std::fs::write(
        dir.join("policies/bench.cedar"),
        r#"@id("bench")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.bench")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" && context.ttl_seconds <= 900 };
@id("bench-rs256")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://rs256.bench")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" && context.ttl_seconds <= 900 };
@id("no-admin")
forbid (principal, action, resource) when { context.scopes.contains("admin") };
"#,
    )?;
    std::fs::write(
        dir.join("mayfly.toml"),
        format!(
            r#"trust_domain = "bench.local"
data_dir = "data"
[listen]
addr = "127.0.0.1:{port}"
[keys]
kek_file = "kek"
# The clouds take RS256, not EdDSA: this audience is signed as a cloud token would be.
[[keys.profiles]]
name = "rs256"
algorithm = "RS256"
audiences = ["https://rs256.bench"]
[policy]
dir = "policies"
[ledger]
sync = "{sync}"
[[attest.oidc]]
name = "k8s"
preset = "kubernetes"
issuer = "https://k8s.bench.local"
jwks_file = "jwks.json"
audiences = ["mayfly"]
"#
        ),
    )?;
    for (file, audience) in [("exchange.lua", "api.bench"), ("exchange-rs256.lua", "rs256.bench")] {
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&audience=https%3A%2F%2F{audience}&scope=read&subject_token={jwt}"
        );
        std::fs::write(
            dir.join(file),
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\nwrk.body = \"{body}\"\n\
                 function response(status, headers, body)\n  if status ~= 200 then\n    io.stderr:write(\"unexpected status \" .. status .. \"\\n\")\n  end\nend\n"
            ),
        )?;
    }
    Ok(())
}

type BoxError = Box<dyn std::error::Error>;

/// Inserts live credential records straight into a stopped server's ledger.
async fn seed(args: &[String]) -> Result<(), BoxError> {
    let [dir, n, subject] = args else { return Err("usage: seed DIR N SUBJECT".into()) };
    let n: usize = n.parse()?;
    let store = mayfly_server::ledger::sqlite::SqliteStore::open(&Path::new(dir).join("data/mayfly.db"), false).await?;
    let now = mayfly_server::clock::now_unix();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        batch.push(mayfly_server::ledger::CredentialRecord {
            jti: format!("{}{:08}", mayfly_server::ids::time_ordered_id(), i),
            kind: "jwt".into(),
            subject: subject.clone(),
            audience: "https://api.bench".into(),
            scope: "read".into(),
            task_id: None,
            client_id: subject.clone(),
            issued_at: now - 1,
            expires_at: now + 3000,
            key_id: "seed".into(),
            binding: None,
            fingerprint: "seed".into(),
            max_uses: None,
            context: None,
        });
        if batch.len() == 1000 || i + 1 == n {
            let mut stored =
                mayfly_server::ledger::StoredBatch { credentials: std::mem::take(&mut batch), ..Default::default() };
            mayfly_server::ledger::Store::append(&store, &mut stored).await?;
        }
    }
    Ok(())
}

/// Exchanges a token, subscribes to the revocation stream (of STREAM_URL, another
/// replica, when given), revokes the token's jti, and times until the event arrives.
/// Prints one line per round, in milliseconds.
async fn feed_latency(args: &[String]) -> Result<(), BoxError> {
    let (url, admin, jwt_file, rounds, stream_url) = match args {
        [url, admin, jwt, rounds] => (url, admin, jwt, rounds, url),
        [url, admin, jwt, rounds, stream] => (url, admin, jwt, rounds, stream),
        _ => return Err("usage: feed-latency URL ADMIN JWT_FILE ROUNDS [STREAM_URL]".into()),
    };
    let jwt = std::fs::read_to_string(jwt_file)?;
    let http = reqwest::Client::new();
    for _ in 0..rounds.parse::<usize>()? {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", jwt.trim()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", "https://api.bench"),
        ];
        let tok: serde_json::Value = http.post(format!("{url}/v1/token")).form(&form).send().await?.json().await?;
        let token = tok["access_token"].as_str().ok_or("no token")?;
        let payload = token.split('.').nth(1).ok_or("bad token")?;
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload)?)?;
        let jti = claims["jti"].as_str().ok_or("no jti")?.to_owned();
        let mut sse = http.get(format!("{stream_url}/v1/revocations/stream")).bearer_auth(admin).send().await?;
        // Drain the backlog: wait until the stream is idle briefly.
        while let Ok(Ok(Some(_))) = tokio::time::timeout(std::time::Duration::from_millis(200), sse.chunk()).await {}
        let start = std::time::Instant::now();
        http.post(format!("{url}/v1/revocations"))
            .bearer_auth(admin)
            .json(&json!({"jti": jti}))
            .send()
            .await?
            .error_for_status()?;
        let mut seen = String::new();
        while !seen.contains(&jti) {
            let chunk =
                tokio::time::timeout(std::time::Duration::from_secs(5), sse.chunk()).await??.ok_or("stream ended")?;
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        println!("{:.2}", start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

/// A server started in-process from a fixture directory, with what a load needs.
struct InProcess {
    running: mayfly_server::server::RunningServer,
    admin: String,
    url: String,
    jwt: String,
}

async fn start_in_process(dir: &Path) -> Result<InProcess, BoxError> {
    let cfg = mayfly_server::config::Config::load(&dir.join("mayfly.toml"))?;
    let running = mayfly_server::server::start(cfg, None).await?;
    let admin = running.new_admin_token.clone().ok_or("no admin token")?;
    let url = running.url.clone();
    let jwt = std::fs::read_to_string(dir.join("platform.jwt"))?;
    Ok(InProcess { running, admin, url, jwt })
}

/// Issues N tokens to one workload (in-process server), then sends one signal that moves
/// it out of the namespace policy allows, and times until the answer (every token
/// re-decided and revoked) and until an open feed stream has delivered the revocation
/// (one for the subject when every token falls, else one per token).
async fn signal_bench(args: &[String]) -> Result<(), BoxError> {
    let n: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("mayfly-signal-bench-{}", std::process::id()));
    write_fixture(&dir, 0, "normal")?;
    let InProcess { running, admin, url, jwt } = start_in_process(&dir).await?;
    let http = reqwest::Client::new();
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
        ("subject_token", jwt.trim().to_owned()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".to_owned()),
        ("audience", "https://api.bench".to_owned()),
    ];
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (http, url, form, limit) = (http.clone(), url.clone(), form.clone(), limit.clone());
        set.spawn(async move {
            let _slot = limit.acquire_owned().await;
            let r = http.post(format!("{url}/v1/token")).form(&form).send().await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            v["access_token"].as_str().map(str::to_owned)
        });
    }
    let mut subject = None;
    let mut issued = 0;
    while let Some(j) = set.join_next().await {
        if let Some(t) = j? {
            issued += 1;
            if subject.is_none() {
                let claims: serde_json::Value =
                    serde_json::from_slice(&B64.decode(t.split('.').nth(1).ok_or("bad token")?)?)?;
                subject = claims["sub"].as_str().map(str::to_owned);
            }
        }
    }
    let subject = subject.ok_or("no token issued")?;
    let mut sse = http.get(format!("{url}/v1/revocations/stream")).bearer_auth(&admin).send().await?;
    let started = std::time::Instant::now();
    let r = http
        .post(format!("{url}/v1/signals"))
        .bearer_auth(&admin)
        .json(&json!({"kind": "workload_moved", "subject": {"spiffe_id": subject}, "attributes": {"namespace": "staging"}}))
        .send()
        .await?;
    let decided = started.elapsed();
    let outcome: serde_json::Value = r.json().await?;
    // One subject revocation when nothing of the workload survives, else one per token.
    let mut seen = 0usize;
    let mut text = String::new();
    while seen < issued && !text.contains(&subject) {
        let chunk =
            tokio::time::timeout(std::time::Duration::from_secs(10), sse.chunk()).await??.ok_or("stream ended")?;
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen += text.matches("event: revocation").count();
        if text.contains(&subject) {
            break;
        }
        // Keep only an unfinished tail so nothing is counted twice.
        text = text.rsplit_once("event: revocation").map(|(_, tail)| tail.to_owned()).unwrap_or(text);
    }
    let in_feed = started.elapsed();
    println!(
        "signal over {issued} live tokens of one workload: decided and enforced in {:.0} ms ({} revoked, {} kept); \
         every revocation on the feed after {:.0} ms",
        decided.as_secs_f64() * 1e3,
        outcome["revoked"],
        outcome["kept"],
        in_feed.as_secs_f64() * 1e3
    );
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Issues N PostgreSQL credentials at a concurrency over HTTP against an in-process
/// server, then revokes them all at once and times until every user is dropped.
async fn db_credentials(args: &[String]) -> Result<(), BoxError> {
    let n: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let concurrency: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(8);
    let pg = args.get(2).cloned().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let sessions: usize = args.get(3).map(|a| a.parse()).transpose()?.unwrap_or(50);
    let dir = std::env::temp_dir().join(format!("mayfly-db-bench-{}", std::process::id()));
    write_fixture(&dir, 0, "normal")?;
    let mut toml = std::fs::read_to_string(dir.join("mayfly.toml"))?;
    // MAYFLY_BENCH_SCRAM_ITERATIONS=0 measures the server hashing each password itself.
    let scram = std::env::var("MAYFLY_BENCH_SCRAM_ITERATIONS").unwrap_or_else(|_| "16".into());
    toml.push_str(&format!(
        "\n[[databases]]\nname = \"pg\"\nkind = \"postgres\"\nurl = \"{pg}\"\nusername_prefix = \"bn_\"\nscram_iterations = {scram}\n\
         [[databases.roles]]\nname = \"app\"\ndefault_ttl = \"1h\"\nmax_ttl = \"1h\"\n"
    ));
    std::fs::write(dir.join("mayfly.toml"), toml)?;
    std::fs::write(
        dir.join("policies/db.cedar"),
        "permit (principal, action == Mayfly::Action::\"issue\", resource) when { principal.hasTag(\"namespace\") };\n",
    )?;
    let InProcess { running, admin, url, jwt } = start_in_process(&dir).await?;
    let http = reqwest::Client::new();
    let body = serde_json::json!({"subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": jwt});

    let started = std::time::Instant::now();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (http, url, body, limit) = (http.clone(), url.clone(), body.clone(), limit.clone());
        set.spawn(async move {
            let _slot = limit.acquire_owned().await;
            let t = std::time::Instant::now();
            let r = http.post(format!("{url}/v1/credentials/pg/app")).json(&body).send().await;
            let ok = matches!(&r, Ok(r) if r.status() == 201);
            let v: serde_json::Value = match r {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            (ok, t.elapsed(), v)
        });
    }
    let mut latencies = Vec::with_capacity(n);
    let mut issued = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(j) = set.join_next().await {
        let (ok, took, v) = j?;
        latencies.push(took);
        if ok { issued.push(v) } else { failed += 1 }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "issued {} PostgreSQL credentials ({failed} failed) at concurrency {concurrency} in {:.2} s: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
        issued.len(),
        elapsed.as_secs_f64(),
        issued.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );

    // Some users hold an open session, as live applications would.
    let mut open = Vec::new();
    for v in issued.iter().take(sessions) {
        // The same server as the admin URL, as each user.
        let mut user_url = reqwest::Url::parse(&pg)?;
        let _ = user_url.set_username(v["username"].as_str().unwrap_or(""));
        let _ = user_url.set_password(v["password"].as_str());
        match <sqlx::PgConnection as sqlx::Connection>::connect(user_url.as_str()).await {
            Ok(c) => open.push(c),
            Err(e) => eprintln!("a credential did not log in: {e}"),
        }
    }
    let started = std::time::Instant::now();
    let r = http
        .post(format!("{url}/v1/revocations"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"all": true}))
        .send()
        .await?;
    if r.status() != 201 {
        return Err(format!("revocation answered {}", r.status()).into());
    }
    loop {
        let left: Vec<serde_json::Value> = http
            .get(format!("{url}/v1/credentials/leases?state=open&limit=1"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        if left.is_empty() {
            break;
        }
        if started.elapsed() > std::time::Duration::from_secs(300) {
            return Err("users were not all dropped within 300 s".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut killed = 0;
    for mut c in open.drain(..) {
        if sqlx::query("SELECT 1").execute(&mut c).await.is_err() {
            killed += 1;
        }
    }
    println!(
        "revoked {} users ({killed} of {sessions} open sessions ended) in {:.2} s, from one revocation",
        issued.len(),
        started.elapsed().as_secs_f64()
    );
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the stat line: 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

async fn svids(args: &[String]) -> Result<(), BoxError> {
    let n: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let concurrency: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(8);
    let dir = std::env::temp_dir().join(format!("mayfly-svid-bench-{}", std::process::id()));
    write_fixture(&dir, 0, "normal")?;
    let socket = dir.join("wl.sock");
    let mut toml = std::fs::read_to_string(dir.join("mayfly.toml"))?;
    let exe = std::env::current_exe()?;
    toml.push_str(&format!(
        "\n[workload_api]\nsocket = \"{}\"\n[[workload_api.entries]]\nspiffe_id = \"spiffe://bench.local/svid-bench\"\n\
         selectors = [\"unix:uid:{}\", \"unix:path:{}\"]\n",
        socket.display(),
        nix::unistd::geteuid(),
        exe.display()
    ));
    std::fs::write(dir.join("mayfly.toml"), toml)?;
    std::fs::write(
        dir.join("policies/svid.cedar"),
        "permit (principal, action == Mayfly::Action::\"fetch_svid\", resource) when { principal.attestor == \"unix\" };\n",
    )?;
    let cfg = mayfly_server::config::Config::load(&dir.join("mayfly.toml"))?;
    let running = mayfly_server::server::start(cfg, None).await?;
    let endpoint = format!("unix://{}", socket.display());

    // A workload's first SVID: connect, attest, decide, mint, record, deliver.
    let mut first = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for _ in 0..300 {
        if std::time::Instant::now() > deadline {
            break;
        }
        let t = std::time::Instant::now();
        let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await?;
        client.fetch_x509_svid().await?;
        first.push(t.elapsed());
    }
    first.sort();
    println!(
        "first X.509-SVID on a new connection ({} rounds, sequential): p50 {:.2} ms, p99 {:.2} ms",
        first.len(),
        percentile(&first, 0.5),
        percentile(&first, 0.99)
    );

    // Issuance rate: each worker keeps its connection; every fetch mints and records a new SVID.
    let cpu_before = cpu_seconds();
    let (lat, elapsed) = svid_load(&endpoint, concurrency, n, std::time::Duration::from_secs(120)).await?;
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "issued {} X.509-SVIDs at concurrency {concurrency} in {elapsed:.2} s: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms; \
         {cpu:.2} CPU-s for server and client together: {:.0} SVIDs per CPU-second",
        lat.len(),
        lat.len() as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len() as f64 / cpu.max(1e-9)
    );
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Fetches X.509-SVIDs on `concurrency` connections until `count` are done or `limit` has passed.
/// Returns the sorted latencies and the elapsed seconds.
async fn svid_load(
    endpoint: &str,
    concurrency: usize,
    count: usize,
    limit: std::time::Duration,
) -> Result<(Vec<std::time::Duration>, f64), BoxError> {
    let started = std::time::Instant::now();
    let per_worker = count / concurrency.max(1);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let endpoint = endpoint.to_owned();
        set.spawn(async move {
            let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await.map_err(|e| e.to_string())?;
            let mut lat = Vec::new();
            let stop = std::time::Instant::now() + limit;
            for _ in 0..per_worker {
                if std::time::Instant::now() > stop {
                    break;
                }
                let t = std::time::Instant::now();
                client.fetch_x509_svid().await.map_err(|e| e.to_string())?;
                lat.push(t.elapsed());
            }
            Ok::<_, String>(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(j) = set.join_next().await {
        lat.extend(j??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    if lat.is_empty() {
        return Err("no SVID was fetched".into());
    }
    Ok((lat, elapsed))
}

async fn svid_load_command(args: &[String]) -> Result<(), BoxError> {
    let endpoint = args.first().ok_or("svid-load ENDPOINT CONCURRENCY SECONDS")?;
    let concurrency: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1);
    let seconds: u64 = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(8);
    let (lat, elapsed) =
        svid_load(endpoint, concurrency, usize::MAX / 2, std::time::Duration::from_secs(seconds)).await?;
    println!("{:.0} {:.2} {:.2}", lat.len() as f64 / elapsed, percentile(&lat, 0.5), percentile(&lat, 0.99));
    Ok(())
}
