//! The HTTP edge under abuse: slow and partial request heads, idle connections, slow bodies,
//! oversized heads, more connections than the limit, and label cardinality in `/metrics`.
//! Raw TCP on loopback where a client library would hide what the server does.

use std::time::{Duration, Instant};

use mayfly_testkit::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server whose `[listen]` section gets `listen` (one `key = value` a line).
async fn start_edge(listen: &str) -> (TestServer, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    (TestServer::start_with(TestConfig::standard(&k8s, &gh).set("listen", listen)).await, k8s)
}

async fn connect(srv: &TestServer) -> TcpStream {
    TcpStream::connect(srv.running.addr).await.unwrap()
}

/// Reads (and drops) whatever comes until the server closes the connection; false if it is
/// still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one HTTP/1 response (head and a `Content-Length` body) within `limit`; None if none came.
async fn read_response(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Some(text);
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

// ---- HTTP/2 by hand (prior knowledge, h2c): just enough frames to open, ask and idle.

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS (END_STREAM | END_HEADERS) for `GET /healthz`: HPACK literals, no Huffman.
fn h2_get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
    block.extend_from_slice(&[0x04, 8]); // :path, literal without indexing
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, 9]); // :authority
    block.extend_from_slice(b"127.0.0.1");
    h2_frame(0x1, 0x5, 1, &block)
}

/// What reading HTTP/2 frames came to.
#[derive(Debug, PartialEq)]
enum H2 {
    /// The awaited frame came.
    Done,
    /// The server closed the connection.
    Closed,
    /// Nothing more came in time.
    Quiet,
}

/// Reads frames, acknowledging the server's SETTINGS, until `done` accepts one.
async fn h2_until(s: &mut TcpStream, limit: Duration, mut done: impl FnMut(u8, u8, u32) -> bool) -> H2 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, s.read_exact(&mut head)).await {
            Err(_) => return H2::Quiet,
            Ok(Err(_)) => return H2::Closed,
            Ok(Ok(_)) => {}
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return H2::Closed;
        }
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if kind == 0x4 && flags & 0x1 == 0 && s.write_all(&h2_frame(0x4, 0x1, 0, &[])).await.is_err() {
            return H2::Closed;
        }
        if done(kind, flags, stream) {
            return H2::Done;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_request_head_is_disconnected_at_the_header_read_timeout() {
    let (srv, _) = start_edge("header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let (mut read, mut write) = connect(&srv).await.into_split();
    write.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    // Slowloris: a byte every 200 ms, so the connection is never silent, only never done.
    let trickle = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut rest = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(6), read.read_to_end(&mut rest)).await;
    assert!(outcome.is_ok(), "a head still incomplete after 1 s must be cut; open after {:?}", started.elapsed());
    trickle.abort();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_a_request_is_disconnected_at_the_header_read_timeout() {
    let (srv, _) = start_edge("header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let mut s = connect(&srv).await;
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    // PINGs keep bytes moving both ways; no request ever comes.
    let mut closed = false;
    for i in 0..30u64 {
        if s.write_all(&h2_frame(0x6, 0, 0, &i.to_be_bytes())).await.is_err() {
            closed = true;
            break;
        }
        let ping_ack = |kind: u8, flags: u8, _| kind == 0x6 && flags & 0x1 == 1;
        if h2_until(&mut s, Duration::from_millis(200), ping_ack).await == H2::Closed {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "an HTTP/2 connection that sends no request head must be cut after header_read_timeout");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let (srv, _) = start_edge("header_read_timeout = \"10s\"\nidle_timeout = \"1s\"").await;
    // HTTP/1.1: one request, then silence.
    let mut s = connect(&srv).await;
    s.write_all(HEALTHZ).await.unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5)).await.expect("a response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "idle HTTP/1.1 keep-alive connection still open");

    // HTTP/2 (prior knowledge): one request, then silence.
    let mut s = connect(&srv).await;
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    s.write_all(&h2_get_healthz()).await.unwrap();
    let answered = h2_until(&mut s, Duration::from_secs(5), |kind, flags, stream| {
        stream == 1 && (kind == 0x0 || kind == 0x1) && flags & 0x1 == 1
    })
    .await;
    assert_eq!(answered, H2::Done, "the HTTP/2 request is answered");
    let after = h2_until(&mut s, Duration::from_secs(5), |_, _, _| false).await;
    assert_eq!(after, H2::Closed, "idle HTTP/2 connection still open");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_event_stream_outlives_the_idle_timeout() {
    let (srv, k8s) = start_edge("header_read_timeout = \"1s\"\nidle_timeout = \"1s\"").await;
    let mut s = connect(&srv).await;
    let req = format!(
        "GET /v1/revocations/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        srv.admin_token
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Three idle timeouts with nothing to send (the stream's keep-alive comes every 15 s).
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(quiet_until, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(_) => panic!("the event stream was cut: {}", String::from_utf8_lossy(&got)),
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");

    // Still live: a revocation made now arrives on it.
    let r = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let jti = srv.verify(&token, "https://api.test").await["jti"].as_str().unwrap().to_owned();
    assert_eq!(srv.admin_post("/v1/revocations", Some(json!({"jti": jti}))).await.status(), 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains(&jti) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => panic!("no revocation event on the stream: {}", String::from_utf8_lossy(&got)),
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_is_cut_by_the_request_timeout() {
    let (srv, _) = start_edge("request_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let mut s = connect(&srv).await;
    let head = "POST /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                Content-Length: 1000\r\n\r\ngrant_type";
    s.write_all(head.as_bytes()).await.unwrap();
    let resp = read_response(&mut s, Duration::from_secs(6)).await.expect("an answer within the request timeout");
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("urn:mayfly:problem:request-timeout"), "{resp}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_on_http1_and_http2() {
    let (srv, _) = start_edge("").await;
    let big = "a".repeat(100 * 1024);

    // HTTP/1.1: a 100 KB header gets 431 (or the connection closed), never an answer.
    let mut s = connect(&srv).await;
    let req = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {big}\r\n\r\n");
    let (mut read, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(req.as_bytes()).await;
        write
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut got)).await;
    let resp = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || resp.starts_with("HTTP/1.1 431"), "100 KB header over HTTP/1.1: {resp}");
    writer.abort();

    // HTTP/1.1: 150 header fields get 431; a 4 KB header is fine.
    s = connect(&srv).await;
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n").as_bytes()).await.unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(resp.starts_with("HTTP/1.1 431"), "150 header fields over HTTP/1.1: {resp}");
    s = connect(&srv).await;
    let small = "a".repeat(4096);
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Ok: {small}\r\n\r\n").as_bytes()).await.unwrap();
    let resp = read_response(&mut s, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(resp.starts_with("HTTP/1.1 200"), "4 KB header over HTTP/1.1: {resp}");

    // HTTP/2: the same limits.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let url = format!("{}/healthz", srv.url);
    let ok = h2.get(&url).header("x-ok", &small).send().await.unwrap();
    assert_eq!((ok.status().as_u16(), ok.version()), (200, reqwest::Version::HTTP_2));
    match h2.get(&url).header("x-big", &big).send().await {
        Ok(r) => assert_eq!(r.status(), 431, "100 KB header over HTTP/2"),
        Err(e) => eprintln!("100 KB header over HTTP/2 refused: {e:?}"),
    }
    let mut req = h2.get(&url);
    for i in 0..150 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 431, "150 header fields over HTTP/2");
    assert_problem(resp, 431, "header-fields-too-large").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let (srv, _) = start_edge("max_connections = 2\nheader_read_timeout = \"30s\"\nidle_timeout = \"30s\"").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&srv).await;
        s.write_all(HEALTHZ).await.unwrap();
        let resp = read_response(&mut s, Duration::from_secs(5)).await.expect("served");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        held.push(s);
    }
    // A third connection: the kernel completes the handshake, the server does not serve it.
    let mut third = connect(&srv).await;
    third.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut third, Duration::from_millis(800)).await, None, "served beyond the limit");
    // One held connection goes away: the waiting one is served.
    drop(held.pop());
    let resp = read_response(&mut third, Duration::from_secs(5)).await.expect("served once a slot is free");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(held);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection() {
    // A client holding its share keeps it alive with requests; its next connection is
    // closed at once, and the slots it does not hold stay free for others.
    let (srv, _) = start_edge(
        "max_connections = 10
max_connections_per_ip = 2",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&srv).await;
        s.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut s, Duration::from_secs(5)).await.expect("served").starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = connect(&srv).await;
    let _ = third.write_all(HEALTHZ).await;
    assert!(closed_within(&mut third, Duration::from_secs(5)).await, "the third connection of one address is closed");
    drop(held.pop());
    // Served again once the server has seen that connection go (a moment later).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect(&srv).await;
        let _ = again.write_all(HEALTHZ).await;
        if let Some(resp) = read_response(&mut again, Duration::from_secs(1)).await {
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "served once it holds fewer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_methods_and_paths_do_not_grow_metrics() {
    let (srv, _) = start_edge("").await;
    let metrics_len = || async {
        let r = srv.http.get(format!("{}/metrics", srv.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap().len()
    };
    let before = metrics_len().await;
    for i in 0..2000u32 {
        let method = reqwest::Method::from_bytes(format!("M{:X}", rand::random::<u64>()).as_bytes()).unwrap();
        let path = if i % 2 == 0 { "/healthz".to_owned() } else { format!("/x/{:x}", rand::random::<u64>()) };
        let method = if i % 3 == 0 { reqwest::Method::GET } else { method };
        let r = srv.http.request(method, format!("{}{path}", srv.url)).send().await.unwrap();
        assert!([200, 404, 405].contains(&r.status().as_u16()), "{}", r.status());
    }
    let after = metrics_len().await;
    // Unbounded labels add about 1.7 KB a request (a histogram series each): megabytes here.
    assert!(after < before + 64 * 1024, "/metrics grew from {before} to {after} bytes");
    srv.stop().await;
}

#[test]
fn listen_limits_parse_and_out_of_range_values_are_refused() {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let load = |listen: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = TestConfig::standard(&k8s, &gh).set("listen", listen).write(dir.path());
        mayfly_server::config::Config::load(&path)
    };
    let all = "header_read_timeout = \"5s\"\nidle_timeout = \"2m\"\nrequest_timeout = \"20s\"\n\
               max_connections = 10\nmax_header_bytes = 65536\nmax_headers = 50";
    let cfg = load(all).expect("every [listen] limit parses");
    let l = &cfg.listen;
    assert_eq!(
        (l.header_read_timeout, l.idle_timeout, l.request_timeout),
        (Duration::from_secs(5), Duration::from_secs(120), Duration::from_secs(20))
    );
    assert_eq!((l.max_connections, l.max_header_bytes, l.max_headers), (10, 65536, 50));
    let defaults = load("").unwrap().listen;
    assert_eq!((defaults.max_connections, defaults.max_header_bytes, defaults.max_headers), (4096, 32768, 100));
    for bad in [
        "header_read_timeout = \"0s\"",
        "idle_timeout = \"2h\"",
        "request_timeout = \"10ms\"",
        "max_connections = 0",
        // Below hyper's smallest HTTP/1 buffer: refused here rather than a panic at start.
        "max_header_bytes = 4096",
        "max_headers = 0",
    ] {
        assert!(load(bad).is_err(), "{bad} must be refused");
    }
}
