//! Start-up: configuration → storage → keys → policies → attestors → listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::attest::task::TaskAttestor;
use crate::attest::{Attestors, JoinTokens, OidcAttestor, oidc::OidcConfigError};
use crate::authorize::{PolicyEngine, PolicyError};
use crate::broker::{Broker, BrokerParts};
use crate::config::{Config, Storage};
use crate::deliver::http::{AppInner, AppState, router};
use crate::deliver::listener::{self, TlsSetupError};
use crate::govern::Jobs;
use crate::govern::checkpoints::CheckpointWriter;
use crate::govern::jobs::Schedule;
use crate::govern::policies::PolicyWatcher;
use crate::govern::refusals::RefusalSummaries;
use crate::govern::replicas::{self, SharedState};
use crate::govern::revocations::RevocationUpkeep;
use crate::govern::stats::Stats;
use crate::govern::svids::SvidRotation;
use crate::govern::tasks::TaskSweep;
use crate::issue::JwtIssuer;
use crate::keys::{Kek, KekSource, KeyError, KeyRing, KeyRingError};
use crate::ledger::Revocations;
use crate::ledger::postgres::{PostgresStore, redact_url};
use crate::ledger::sqlite::SqliteStore;
use crate::ledger::{AuditEvent, Ledger, LedgerError, Store};
use crate::verify::TokenVerifier;

/// Prefix that makes an admin token recognisable.
pub const ADMIN_TOKEN_PREFIX: &str = crate::broker::admin_tokens::TOKEN_PREFIX;
/// File in the data directory holding the first admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
const KEK_CHECK_KEY: &str = "kek_check";
/// How long shutdown waits for the background jobs to stop (a run in progress ends first).
const JOBS_STOP_WITHIN: Duration = Duration::from_secs(10);
/// Most DPoP proofs remembered at once (one per token request in the acceptance window).
const DPOP_REPLAY_CAPACITY: usize = 500_000;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Key-encryption key or signing keys.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Key ring.
    #[error(transparent)]
    KeyRing(#[from] KeyRingError),
    /// Storage.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Shared storage did not answer within `postgres.start_timeout`.
    #[error("storage {storage} is unreachable after {waited:?}: {cause}")]
    StorageUnreachable {
        /// The URL, password redacted.
        storage: String,
        /// How long start-up kept trying.
        waited: Duration,
        /// The last error.
        cause: String,
    },
    /// Policies.
    #[error("policies in {dir}: {cause}")]
    Policy {
        /// The directory.
        dir: String,
        /// What is wrong.
        cause: PolicyError,
    },
    /// An OIDC issuer.
    #[error(transparent)]
    Oidc(#[from] OidcConfigError),
    /// TLS.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// SVID authorities.
    #[error("SVID authorities: {0}")]
    Svid(#[from] crate::issue::svid::SvidError),
    /// Registration entries.
    #[error("registration entries: {0}")]
    Entries(#[from] crate::attest::entries::EntryError),
    /// The Workload API socket.
    #[error(transparent)]
    WorkloadSocket(#[from] crate::deliver::workload_api::SocketError),
    /// File system or socket.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        cause: std::io::Error,
    },
}

/// A running server.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of the Vault-compatible API, when it is on.
    pub vault_addr: Option<SocketAddr>,
    /// Its base URL (`iss` of its tokens).
    pub url: String,
    /// The admin token created on this start, when the data directory had none.
    pub new_admin_token: Option<String>,
    /// The flow, for in-process use (tests, dev bootstrap).
    pub broker: Arc<Broker>,
    /// The signing keys.
    pub keys: Arc<KeyRing>,
    /// The supervisor of its background work.
    pub jobs: Jobs,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, drains connections, stops and joins the background jobs, then
    /// the ledger writer once its last group commit is durable, and returns after all that.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops, background work and ledger writer included.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let context = context.into();
    move |cause| StartError::Io { context, cause }
}

/// The configured KEK source.
pub fn kek_source(cfg: &Config) -> Result<KekSource, KeyError> {
    cfg.keys.kek.clone().ok_or_else(|| KeyError::MissingKek("set keys.kek_file or keys.kek_env in the config".into()))
}

/// Opens the configured store: the SQLite file in the data directory, or shared
/// PostgreSQL, retried with backoff while it is unreachable (`postgres.start_timeout`).
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, StartError> {
    match cfg.storage()? {
        Storage::Sqlite(path) => {
            Ok(Arc::new(SqliteStore::open(&path, cfg.ledger.sync == crate::ledger::config::SyncMode::Full).await?))
        }
        Storage::Postgres(url) => {
            use backon::{ExponentialBuilder, Retryable};
            let started = std::time::Instant::now();
            let limit = cfg.postgres.start_timeout;
            // Doubling from half a second to ten, for as long as `start_timeout` allows (0: no end).
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(10))
                .with_factor(2.0)
                .without_max_times()
                .with_total_delay((!limit.is_zero()).then_some(limit));
            let connect = || PostgresStore::connect(&url, &cfg.postgres);
            let unreachable = |e: &LedgerError| matches!(e, LedgerError::Database(e) if is_unreachable(e));
            let store = connect
                .retry(backoff)
                .when(unreachable)
                .notify(|e, retry_in| {
                    tracing::warn!(storage = %redact_url(&url), error = %e, ?retry_in, "storage is unreachable; retrying");
                })
                .await;
            match store {
                Ok(store) => Ok(Arc::new(store)),
                // Gave up on an unreachable database: say how long it was waited for.
                Err(LedgerError::Database(e)) if is_unreachable(&e) => Err(StartError::StorageUnreachable {
                    storage: redact_url(&url),
                    waited: started.elapsed(),
                    cause: e.to_string(),
                }),
                // Wrong password, no such database, a failed migration: retrying cannot help.
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Whether an error means "not answering yet" (worth retrying) rather than "it said no".
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        // 57P03: the database system is starting up; 53300: too many connections.
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("57P03" | "53300")),
        _ => false,
    }
}

/// Opens storage and checks the KEK against it: the pieces offline tools share with the server.
pub async fn open_state(cfg: &Config) -> Result<(Arc<dyn Store>, Arc<Kek>), StartError> {
    crate::fsutil::create_private_dir(&cfg.data_dir)
        .map_err(io_err(format!("cannot create data directory {}", cfg.data_dir.display())))?;
    let kek = Arc::new(Kek::load(&kek_source(cfg)?)?);
    let store = open_store(cfg).await?;
    // A sealed check value detects a wrong KEK even before any signing key exists.
    match store.meta_get(KEK_CHECK_KEY).await? {
        Some(sealed) => {
            kek.open(KEK_CHECK_KEY.as_bytes(), &sealed)?;
        }
        None => {
            store.meta_put_if_absent(KEK_CHECK_KEY, &kek.seal(KEK_CHECK_KEY.as_bytes(), b"mayfly")?).await?;
        }
    }
    Ok((store, kek))
}

/// Starts the server. With `listener` it serves on that socket instead of binding `listen.addr`.
pub async fn start(cfg: Config, listener: Option<TcpListener>) -> Result<RunningServer, StartError> {
    cfg.validate()?;
    let clouds = crate::issue::cloud::CloudProfiles::new(&cfg.clouds, &cfg.keys, cfg.public_url.as_deref())
        .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e)))?;
    let (store, kek) = open_state(&cfg).await?;
    // Retired keys stay published for the longest token lifetime plus clock-skew margin.
    let key_publish_secs = (cfg.longest_token_ttl().as_secs() as i64).max(clouds.longest_token_ttl_secs()) + 300;
    let keys =
        Arc::new(KeyRing::load_or_create(store.as_ref(), &kek, cfg.keys.signing_profiles(), key_publish_secs).await?);
    let new_admin_token = ensure_admin_token(&cfg, store.as_ref()).await?;
    let ledger = Ledger::start(store.clone(), cfg.ledger.batch_max).await?;
    let policies = Arc::new(
        PolicyEngine::load(&cfg.policy.dir)
            .map_err(|cause| StartError::Policy { dir: cfg.policy.dir.display().to_string(), cause })?,
    );
    if policies.current().count == 0 {
        tracing::warn!(dir = %cfg.policy.dir.display(), "no policies loaded: every request will be denied");
    }
    let oidc = cfg
        .attest
        .oidc
        .iter()
        .map(|o| OidcAttestor::from_config(o, &cfg.trust_domain).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let join_tokens =
        JoinTokens::new(store.clone(), &cfg.trust_domain, cfg.join_tokens.default_ttl, cfg.join_tokens.max_ttl);

    let tls = match (&cfg.listen.tls_cert, &cfg.listen.tls_key) {
        (Some(c), Some(k)) => {
            Some(listener::tls_config(c, k, cfg.listen.client_ca.as_deref(), cfg.listen.require_client_cert)?)
        }
        _ => None,
    };
    let tcp = match listener {
        Some(l) => l,
        None => {
            TcpListener::bind(cfg.listen.addr).await.map_err(io_err(format!("cannot listen on {}", cfg.listen.addr)))?
        }
    };
    let addr = tcp.local_addr().map_err(io_err("listener address"))?;
    let url = match &cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
    };

    let max_ttl_secs = cfg.longest_token_ttl().as_secs() as i64;
    let retention = crate::ledger::revocations::Retention {
        credentials_secs: max_ttl_secs,
        // Join tokens are evidence too, as old as their lifetime allows.
        evidence_secs: cfg.attest.max_evidence_age.max(cfg.join_tokens.max_ttl).as_secs() as i64,
        propagation_secs: match cfg.revocations.propagation_margin {
            Some(m) => m.as_secs() as i64,
            None if store.is_shared() => 5,
            None => 0,
        },
    };
    let revocations = Revocations::load(ledger.clone(), retention).await?;
    let verifier = TokenVerifier::new(keys.clone(), revocations.clone(), url.clone());
    crate::deliver::http::metrics::install();
    let issuer = JwtIssuer::new(keys.clone(), url.clone(), &cfg.keys);
    let databases = Arc::new(
        crate::issue::db::Databases::from_config(&cfg.databases, &kek)
            .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e.to_string())))?,
    );
    let w = &cfg.workload_api;
    let svids = Arc::new(
        crate::issue::svid::SvidAuthorities::load_or_create(
            store.as_ref(),
            &kek,
            &cfg.trust_domain,
            crate::issue::svid::SvidLifetimes {
                ca_ttl_secs: w.ca_ttl.as_secs() as i64,
                max_svid_ttl_secs: w.max_svid_ttl.as_secs() as i64,
            },
        )
        .await?,
    );
    let config_entries: Vec<_> = w.entries.iter().map(crate::config::EntryConfig::to_spec).collect();
    let entries = Arc::new(
        crate::attest::entries::Entries::load(
            store.clone(),
            &cfg.trust_domain,
            w.max_svid_ttl.as_secs(),
            &config_entries,
        )
        .await?,
    );
    let contexts = Arc::new(
        crate::attest::contexts::SubjectContexts::load(store.clone(), cfg.signals.context_ttl.as_secs() as i64).await?,
    );
    // Every decision also answers to what signals said: they can only take access away.
    policies.use_signalled_facts(contexts.clone());
    let dpop = Arc::new(mayfly_verify::DpopVerifier::new(
        cfg.dpop.max_age.as_secs() as i64,
        DPOP_REPLAY_CAPACITY,
        // Keyed from the KEK, so every replica accepts the nonces any of them hands out.
        cfg.dpop.require_nonce.then(|| {
            mayfly_verify::NonceSource::with_key(
                kek.fingerprint(b"mayfly dpop nonce key v1").as_bytes(),
                cfg.dpop.nonce_period.as_secs() as i64,
            )
        }),
    ));
    let broker = Arc::new(Broker::new(BrokerParts {
        dpop: dpop.clone(),
        attestors: Attestors::new(oidc, join_tokens),
        task_attestor: TaskAttestor::new(verifier.clone(), store.clone(), cfg.trust_domain.clone()),
        policies: policies.clone(),
        issuer,
        ledger: ledger.clone(),
        revocations: revocations.clone(),
        kek: kek.clone(),
        tokens: cfg.tokens.clone(),
        tasks: cfg.tasks.clone(),
        audiences: cfg.audiences.clone(),
        databases: databases.clone(),
        svids: svids.clone(),
        entries,
        workload_api: cfg.workload_api.clone(),
        contexts: contexts.clone(),
        max_evidence_age_secs: cfg.attest.max_evidence_age.as_secs() as i64,
        clouds,
        proxy: crate::broker::proxy::ProxyUpstreams::from_config(&cfg.proxy, &kek)
            .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e)))?,
    }));
    // Half-done work from before a crash is finished or undone before anything new is
    // issued. On a shared store other replicas may be mid-creation: the leader does this
    // later, for leases old enough to be abandoned.
    if !store.is_shared() {
        if let Err(e) = broker.reconcile_db_leases(None).await {
            tracing::warn!(error = %e, "database lease reconciliation failed; the sweep will retry");
        }
        if let Err(e) = broker.sweep_db_users().await {
            tracing::warn!(error = %e, "orphan sweep failed");
        }
    }
    let signal_senders = cfg
        .signals
        .senders
        .iter()
        .map(crate::broker::signals::SignalSender::load)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Config(crate::config::ConfigError::Invalid(e)))?;
    let (leadership, election) = replicas::elect(ledger.clone());
    // Long-lived responses (event streams) end when this turns true, so shutdown can drain.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let state = AppState::new(AppInner {
        broker: broker.clone(),
        keys: keys.clone(),
        kek: kek.clone(),
        issuer_url: url.clone(),
        trust_domain: cfg.trust_domain.clone(),
        dpop: dpop.clone(),
        resource_dpop: mayfly_verify::DpopVerifier::new(cfg.dpop.max_age.as_secs() as i64, DPOP_REPLAY_CAPACITY, None),
        streams: Arc::new(tokio::sync::Semaphore::new(cfg.revocations.max_streams)),
        streams_per_subject: crate::deliver::quota::Quota::new(cfg.revocations.max_streams_per_subject),
        key_publish_secs,
        revocations: revocations.clone(),
        verifier,
        stopping: stopping_rx.clone(),
        leadership: leadership.clone(),
        signal_senders: Arc::new(signal_senders),
    });

    ledger
        .audit(AuditEvent::new(
            "server.started",
            None,
            json!({"url": url, "trust_domain": cfg.trust_domain, "policies": policies.current().count,
                   "oidc_issuers": cfg.attest.oidc.iter().map(|o| &o.name).collect::<Vec<_>>(),
                   "signing_key": keys.active().kid()}),
        ))
        .await?;

    // Registered before start returns, so a SIGHUP that follows cannot hit the default (terminate) action.
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; policies reload on file change only");
            None
        }
    };
    let jobs = Jobs::new(leadership.clone());
    if let Some(election) = election {
        jobs.service("election", election);
    }
    jobs.service("policy-watcher", PolicyWatcher::new(policies, ledger.clone(), cfg.policy.reload_interval, hup));
    jobs.every(
        Schedule::every("revocation-upkeep", crate::govern::revocations::EVERY),
        RevocationUpkeep::new(revocations.clone()),
    );
    let follower = replicas::follow(SharedState {
        store: store.clone(),
        kek: kek.clone(),
        keys: keys.clone(),
        svids: svids.clone(),
        entries: broker.entries().clone(),
        revocations: revocations.clone(),
        contexts,
    });
    if let Some(follower) = follower {
        jobs.service("replica-follower", follower);
    }
    jobs.every(
        Schedule::every("stats", crate::govern::stats::EVERY).at_once(),
        Stats::new(ledger.clone(), revocations, leadership.clone()),
    );
    jobs.every(Schedule::every("task-sweep", crate::govern::tasks::EVERY).on_leader(), TaskSweep::new(broker.clone()));
    let checkpoints = CheckpointWriter {
        store: store.clone(),
        keys: keys.clone(),
        issuer: url.clone(),
        every_events: cfg.audit.checkpoint_every_events,
        interval: cfg.audit.checkpoint_interval,
    };
    jobs.every(Schedule::every("audit-checkpoints", checkpoints.period()).on_leader(), checkpoints.job());
    jobs.every(
        Schedule::every("svid-rotation", crate::govern::svids::CHECK_EVERY),
        SvidRotation { authorities: svids, ledger: ledger.clone(), kek: kek.clone(), leadership },
    );
    jobs.every(
        Schedule::every("refusal-summaries", cfg.ledger.refusal_summary_interval.max(Duration::from_millis(100))),
        RefusalSummaries(broker.clone()),
    );
    let workload_api = match &cfg.workload_api.socket {
        Some(path) => {
            let handle = crate::deliver::workload_api::serve(broker.clone(), path, stopping_rx.clone())?;
            tracing::info!(socket = %path.display(), "SPIFFE Workload API is serving");
            Some(handle)
        }
        None => None,
    };
    // The Vault-compatible API: its own listener, the same TLS, limits and broker.
    let vault_api = match cfg.vault_api.listen {
        Some(vault_listen) => {
            let tcp = TcpListener::bind(vault_listen)
                .await
                .map_err(io_err(format!("cannot listen on {vault_listen} (vault_api.listen)")))?;
            let addr = tcp.local_addr().map_err(io_err("vault_api listener address"))?;
            let app = crate::deliver::vault_api::router(state.clone(), Arc::new(cfg.vault_api.clone()));
            let mut stopping = stopping_rx.clone();
            // The listener's own refusals (408, 431) in Vault's shape too.
            let limits = listener::Limits {
                render: crate::deliver::vault_api::render_error,
                ..listener::Limits::from(&cfg.listen)
            };
            let handle = tokio::spawn(listener::serve(tcp, tls.clone(), app, limits, async move {
                let _ = stopping.wait_for(|s| *s).await;
            }));
            tracing::info!(%addr, "Vault-compatible API is serving");
            Some((addr, handle))
        }
        None => None,
    };
    let vault_addr = vault_api.as_ref().map(|(a, _)| *a);
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(state);
    let flushing = broker.clone();
    let limits = listener::Limits::from(&cfg.listen);
    let supervised = jobs.clone();
    let task = tokio::spawn(async move {
        listener::serve(tcp, tls, app, limits, async {
            let _ = rx.await;
            let _ = stopping_tx.send(true);
        })
        .await;
        if let Some((_, v)) = vault_api
            && tokio::time::timeout(Duration::from_secs(5), v).await.is_err()
        {
            tracing::warn!("Vault-compatible API did not stop within 5s");
        }
        if let Some(w) = workload_api
            && tokio::time::timeout(Duration::from_secs(5), w).await.is_err()
        {
            tracing::warn!("Workload API did not stop within 5s");
        }
        // Nothing is served any more: background work stops (a run in progress ends first).
        supervised.shutdown(JOBS_STOP_WITHIN).await;
        // The refusals counted since the last summary are not lost at shutdown.
        flushing.flush_failures().await;
        // Last: everything above may still have written through the ledger.
        ledger.close().await;
        tracing::info!("mayfly stopped: background jobs and the ledger writer are done");
    });
    tracing::info!(%url, "mayfly is serving");
    Ok(RunningServer { addr, vault_addr, url, new_admin_token, broker, keys, jobs, shutdown: Some(tx), task })
}

/// The name of the admin token made at first start.
pub const INITIAL_ADMIN_TOKEN_NAME: &str = "initial";

/// Creates the first admin token when none exists, writing it to the data directory (0600).
async fn ensure_admin_token(cfg: &Config, store: &dyn Store) -> Result<Option<String>, StartError> {
    if store.admin_token_count().await? > 0 {
        return Ok(None);
    }
    let token = crate::broker::admin_tokens::new_token();
    // File first: a token stored but never written down would lock everyone out.
    let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
    crate::fsutil::write_private(&path, format!("{token}\n").as_bytes())
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    let row = crate::broker::admin_tokens::new_row(&token, INITIAL_ADMIN_TOKEN_NAME, crate::clock::now_unix());
    match store.insert_admin_token(&row).await {
        Ok(()) => Ok(Some(token)),
        // Another replica starting on the same empty database stored its own first: that
        // one is the admin token, and this file would hold a token that works nowhere.
        Err(crate::ledger::LedgerError::Conflict(_)) => {
            let _ = std::fs::remove_file(&path);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
