//! Supervised background work: a job that panics is counted in `/metrics` and runs
//! again; shutdown stops and joins every job, then the ledger writer; and nothing
//! issued before shutdown is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mayfly_server::govern::jobs::{Periodic, Schedule, Service};
use mayfly_server::ledger::{AuditEvent, LedgerError};
use mayfly_testkit::*;
use serde_json::{Value, json};

fn issuers() -> (TestIssuer, TestIssuer) {
    (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER))
}

/// Waits (at most 20 s) until `done` holds.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A periodic job that panics on its first run and counts its runs.
struct PanicsFirst(Arc<AtomicUsize>);

impl Periodic for PanicsFirst {
    async fn run(&mut self) {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the first run fails on purpose");
        }
    }
}

/// A service that panics the first time it is started, and then runs until stopped.
struct ServicePanicsFirst(Arc<AtomicUsize>);

impl Service for ServicePanicsFirst {
    async fn serve(&mut self) {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the first start fails on purpose");
        }
        std::future::pending::<()>().await;
    }
}

/// A periodic job whose run takes a while (most of its period), to see shutdown wait for it.
struct SlowRun {
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

impl Periodic for SlowRun {
    async fn run(&mut self) {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// The value of `mayfly_job_panics_total{job="…"}` in a `/metrics` page.
fn panics_of(metrics: &str, job: &str) -> Option<f64> {
    let series = format!("mayfly_job_panics_total{{job=\"{job}\"}}");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_job_that_panics_is_counted_and_runs_again() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    let runs = Arc::new(AtomicUsize::new(0));
    srv.running
        .jobs
        .every(Schedule::every("test-periodic-panics", Duration::from_millis(20)), PanicsFirst(runs.clone()));
    let starts = Arc::new(AtomicUsize::new(0));
    srv.running.jobs.service("test-service-panics", ServicePanicsFirst(starts.clone()));

    wait_until("the periodic job ran after its panic", || runs.load(Ordering::SeqCst) >= 3).await;
    wait_until("the service was started again", || starts.load(Ordering::SeqCst) >= 2).await;

    let metrics = srv.http.get(format!("{}/metrics", srv.url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(panics_of(&metrics, "test-periodic-panics"), Some(1.0), "{metrics}");
    assert_eq!(panics_of(&metrics, "test-service-panics"), Some(1.0), "{metrics}");
    // The server's own jobs are listed, at zero.
    for job in ["task-sweep", "revocation-upkeep", "policy-watcher", "refusal-summaries"] {
        assert_eq!(panics_of(&metrics, job), Some(0.0), "{job}: {metrics}");
    }
    // The server still works.
    let resp = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
    assert_eq!(resp.status(), 200);
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_joins_every_job_then_the_ledger_writer() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    let jobs = srv.running.jobs.clone();
    let ledger = srv.running.broker.ledger().clone();
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    jobs.every(
        Schedule::every("test-slow-run", Duration::from_millis(10)),
        SlowRun { started: started.clone(), finished: finished.clone() },
    );
    jobs.service("test-service-panics", ServicePanicsFirst(Arc::new(AtomicUsize::new(1))));
    assert!(jobs.len() >= 9, "the server's jobs and the two above run: {}", jobs.len());
    assert!(!jobs.is_stopped());
    wait_until("the slow job ran twice", || started.load(Ordering::SeqCst) >= 2).await;

    srv.stop().await;
    assert!(jobs.is_stopped() && jobs.is_empty(), "no job is left running: {}", jobs.len());
    assert_eq!(
        finished.load(Ordering::SeqCst),
        started.load(Ordering::SeqCst),
        "every run that started ended before shutdown returned (none was cut off)"
    );
    assert!(ledger.is_closed(), "the ledger writer was joined");
    let late = ledger.audit(AuditEvent::new("test.after_shutdown", None, json!({}))).await;
    assert!(matches!(late, Err(LedgerError::WriterGone)), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_issued_before_shutdown_is_lost() {
    let (k8s, gh) = issuers();
    let srv = TestServer::start(&k8s, &gh).await;
    let jwt = k8s.k8s_token("prod", "web");
    let received = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (http, url, jwt, received, stop) =
            (srv.http.clone(), srv.url.clone(), jwt.clone(), received.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Bounded: the server stops long before this many.
            for _ in 0..2000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let form = [
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", jwt.as_str()),
                    ("subject_token_type", JWT_TYPE),
                    ("audience", "https://api.test"),
                ];
                let Ok(resp) = http.post(format!("{url}/v1/token")).form(&form).send().await else { break };
                if resp.status() == 200
                    && let Ok(v) = resp.json::<Value>().await
                {
                    received.lock().unwrap().push(v["access_token"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    // Shut down in the middle of the burst.
    wait_until("tokens were issued", || received.lock().unwrap().len() >= 50).await;
    let dir = srv.stop().await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 50);

    let store = open_store(dir.path()).await;
    for token in &received {
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        let jti = claims["jti"].as_str().unwrap();
        assert!(store.credential(jti).await.unwrap().is_some(), "token {jti}, delivered before shutdown, is recorded");
    }
}
