//! Supervised background work. Every job runs under one [`TaskTracker`] and one
//! [`CancellationToken`], so shutdown stops and joins them all. A panic in a job is
//! caught, logged with the job's name and counted (`mayfly_job_panics_total{job}`); a
//! periodic job carries on at its next period, a service is started again.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Leadership;

/// How long a service that panicked waits before it starts again: one that panics at
/// once every time must not spin.
pub const RESTART_AFTER: Duration = Duration::from_secs(1);

/// The counter of panics caught in background jobs, labelled by `job`.
pub const PANICS_METRIC: &str = "mayfly_job_panics_total";

/// Where a periodic job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// On every replica.
    Everywhere,
    /// On the replica that leads only; at the periods it does not, the job is told it
    /// stands by ([`Periodic::standing_by`]) instead.
    OnLeader,
}

/// When a periodic job runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// As soon as it is started.
    AtOnce,
    /// One period after it is started.
    AfterPeriod,
}

/// How a periodic job is scheduled: the next run starts one period after the last one ended.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Its name, in logs and metrics.
    pub name: &'static str,
    /// The wait between two runs.
    pub period: Duration,
    /// On which replicas.
    pub runs: Runs,
    /// When the first run is.
    pub first: First,
}

impl Schedule {
    /// A job on every replica, first run one period after start.
    pub fn every(name: &'static str, period: Duration) -> Self {
        Self { name, period, runs: Runs::Everywhere, first: First::AfterPeriod }
    }

    /// The same job on the leader only.
    pub fn on_leader(self) -> Self {
        Self { runs: Runs::OnLeader, ..self }
    }

    /// The same job, first run at once.
    pub fn at_once(self) -> Self {
        Self { first: First::AtOnce, ..self }
    }
}

/// A job that runs once per period. What it remembers between runs lives in `self`;
/// a run that panicked may have left it half-updated, and the next run starts from there.
pub trait Periodic: Send + 'static {
    /// One run. Shutdown waits for a run in progress to end (within its bound).
    fn run(&mut self) -> impl Future<Output = ()> + Send + '_;

    /// Called instead of [`Periodic::run`] at each period while a leader-only job's
    /// replica does not lead: what the job knows may be stale when it leads again.
    fn standing_by(&mut self) {}
}

/// A job that is not a periodic loop: it runs until the process stops (it is dropped
/// at its next await point on shutdown), or returns when it has nothing left to do.
pub trait Service: Send + 'static {
    /// Runs the service. After a panic it is called again on the same `self`.
    fn serve(&mut self) -> impl Future<Output = ()> + Send + '_;
}

/// The supervisor of background work. Cheap to clone: clones share the tracker.
#[derive(Debug, Clone)]
pub struct Jobs {
    tracker: TaskTracker,
    token: CancellationToken,
    leadership: Leadership,
    /// Names of the jobs still running, to say which ones a slow shutdown waits for.
    running: Arc<Mutex<Vec<&'static str>>>,
}

impl Jobs {
    /// A supervisor whose leader-only jobs follow `leadership`.
    pub fn new(leadership: Leadership) -> Self {
        Self {
            tracker: TaskTracker::new(),
            token: CancellationToken::new(),
            leadership,
            running: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `job` on `schedule` until shutdown.
    pub fn every<J: Periodic>(&self, schedule: Schedule, job: J) {
        let (leadership, token) = (self.leadership.clone(), self.token.clone());
        self.spawn(schedule.name, periodic(job, schedule, leadership, token));
    }

    /// Runs `service` until shutdown, again after a panic.
    pub fn service<S: Service>(&self, name: &'static str, service: S) {
        self.spawn(name, supervise(service, name, self.token.clone()));
    }

    fn spawn(&self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        // The series exists from the start, at zero: a dashboard can tell "none" from "not reported".
        metrics::counter!(PANICS_METRIC, "job" => name).increment(0);
        let running = Running::new(self.running.clone(), name);
        self.tracker.spawn(async move {
            let _running = running;
            work.await;
        });
    }

    /// Stops every job and waits, at most `bound`, for all of them to end; returns
    /// whether they did. Jobs that are late are named in the log (they are left to end
    /// on their own).
    pub async fn shutdown(&self, bound: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(bound, self.tracker.wait()).await.is_ok() {
            return true;
        }
        let late = self.running.lock().unwrap_or_else(PoisonError::into_inner).clone();
        tracing::warn!(?bound, jobs = ?late, "background jobs did not stop in time");
        false
    }

    /// Whether shutdown has begun and every job has ended.
    pub fn is_stopped(&self) -> bool {
        self.tracker.is_closed() && self.tracker.is_empty()
    }

    /// How many jobs are running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no job is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// A job's entry in the list of running jobs, removed when its task ends (or unwinds).
struct Running {
    list: Arc<Mutex<Vec<&'static str>>>,
    name: &'static str,
}

impl Running {
    fn new(list: Arc<Mutex<Vec<&'static str>>>, name: &'static str) -> Self {
        list.lock().unwrap_or_else(PoisonError::into_inner).push(name);
        Self { list, name }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = list.iter().position(|n| *n == self.name) {
            list.swap_remove(i);
        }
    }
}

async fn periodic<J: Periodic>(mut job: J, s: Schedule, leadership: Leadership, token: CancellationToken) {
    let mut wait = s.first == First::AfterPeriod;
    loop {
        if wait {
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                () = tokio::time::sleep(s.period) => {}
            }
        }
        wait = true;
        if token.is_cancelled() {
            return;
        }
        if s.runs == Runs::OnLeader && !leadership.is_leading() {
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| job.standing_by())) {
                panicked(s.name, panic.as_ref());
            }
            continue;
        }
        if let Err(panic) = AssertUnwindSafe(job.run()).catch_unwind().await {
            panicked(s.name, panic.as_ref());
        }
    }
}

async fn supervise<S: Service>(mut service: S, name: &'static str, token: CancellationToken) {
    loop {
        let ended = tokio::select! {
            biased;
            () = token.cancelled() => return,
            ended = AssertUnwindSafe(service.serve()).catch_unwind() => ended,
        };
        match ended {
            Ok(()) => {
                tracing::debug!(job = name, "background job ended");
                return;
            }
            Err(panic) => {
                panicked(name, panic.as_ref());
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(RESTART_AFTER) => {}
                }
                tracing::info!(job = name, "background job restarted after a panic");
            }
        }
    }
}

/// Logs and counts a panic caught in `job`.
fn panicked(job: &'static str, panic: &(dyn Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(job, panic = message, "background job panicked; it carries on");
    metrics::counter!(PANICS_METRIC, "job" => job).increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts its runs and its periods standing by.
    struct Counting {
        runs: Arc<AtomicUsize>,
        standing_by: Arc<AtomicUsize>,
    }

    impl Periodic for Counting {
        async fn run(&mut self) {
            self.runs.fetch_add(1, Ordering::SeqCst);
        }

        fn standing_by(&mut self) {
            self.standing_by.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn wait_until(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out");
    }

    #[tokio::test]
    async fn a_leader_only_job_stands_by_until_its_replica_leads() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let jobs = Jobs::new(Leadership::following(rx));
        let (runs, standing_by) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let job = Counting { runs: runs.clone(), standing_by: standing_by.clone() };
        jobs.every(Schedule::every("test-leader-only", Duration::from_millis(5)).on_leader(), job);
        wait_until(|| standing_by.load(Ordering::SeqCst) >= 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "no run while another replica leads");
        tx.send_replace(true);
        wait_until(|| runs.load(Ordering::SeqCst) >= 3).await;
        assert!(jobs.shutdown(Duration::from_secs(5)).await);
        assert!(jobs.is_stopped());
    }

    /// A run that outlasts any reasonable shutdown.
    struct Stuck;

    impl Periodic for Stuck {
        async fn run(&mut self) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }

    #[tokio::test]
    async fn shutdown_is_bounded_and_names_the_late_jobs() {
        let jobs = Jobs::new(Leadership::always());
        jobs.every(Schedule::every("test-stuck", Duration::from_secs(1)).at_once(), Stuck);
        let runs = Arc::new(AtomicUsize::new(0));
        let job = Counting { runs: runs.clone(), standing_by: Arc::new(AtomicUsize::new(0)) };
        jobs.every(Schedule::every("test-quick", Duration::from_millis(5)), job);
        wait_until(|| runs.load(Ordering::SeqCst) >= 1).await;
        assert!(!jobs.shutdown(Duration::from_millis(200)).await, "the stuck run keeps its job alive");
        assert_eq!(*jobs.running.lock().unwrap(), ["test-stuck"], "the quick job stopped, the stuck one is named");
        assert!(!jobs.is_stopped());
    }
}
