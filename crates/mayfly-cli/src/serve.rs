//! `mayfly server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use mayfly_proto::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JOIN_TOKEN};
use mayfly_server::config::Config;
use mayfly_server::server::{self, ADMIN_TOKEN_FILE};

/// Default listen address of dev mode.
pub const DEV_LISTEN: &str = "127.0.0.1:8270";

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct ServerArgs {
    /// TOML configuration file (see examples/mayfly.toml).
    #[arg(long, short, conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Run with no config: SQLite state, generated keys and a permissive dev policy, on loopback.
    #[arg(long)]
    dev: bool,
    /// Dev mode: address to listen on (loopback only).
    #[arg(long, requires = "dev", default_value = DEV_LISTEN)]
    listen: SocketAddr,
    /// Dev mode: data directory (created if missing).
    #[arg(long, requires = "dev", default_value = ".mayfly-dev")]
    data_dir: PathBuf,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", env = "MAYFLY_LOG_FORMAT")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAYFLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let cfg = match (&args.config, args.dev) {
        (Some(path), false) => Config::load(path)?,
        (None, true) => mayfly_server::dev::prepare(&args.data_dir, args.listen)?,
        _ => bail!("give --config FILE, or --dev for a local server with no config"),
    };
    let data_dir = cfg.data_dir.clone();
    let policy_dir = cfg.policy.dir.clone();
    let trust_domain = cfg.trust_domain.clone();
    let running = server::start(cfg, None).await.context("the server did not start")?;
    if args.dev {
        let admin = match &running.new_admin_token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| format!("(see {})", data_dir.join(ADMIN_TOKEN_FILE).display())),
        };
        let join = running
            .broker
            .attestors()
            .join_tokens()
            .create(None, Some("dev/workload"))
            .await
            .context("creating the dev join token")?;
        print_dev_banner(&running.url, &trust_domain, &data_dir, &policy_dir, &admin, &join);
    } else if let Some(t) = &running.new_admin_token {
        eprintln!(
            "Created the first admin token; it is in {} (mode 0600). Keep it safe.",
            data_dir.join(ADMIN_TOKEN_FILE).display()
        );
        let _ = t;
    }
    let stop = shutdown_signal();
    tokio::pin!(stop);
    stop.await;
    tracing::info!("shutting down");
    // The process exits once the background jobs and the ledger writer are joined: every
    // record queued before the signal is committed. A second signal does not wait.
    tokio::select! {
        () = running.shutdown() => Ok(ExitCode::SUCCESS),
        () = shutdown_signal() => {
            tracing::warn!("second signal: exiting before shutdown finished");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn print_dev_banner(
    url: &str,
    trust_domain: &str,
    data_dir: &std::path::Path,
    policy_dir: &std::path::Path,
    admin: &str,
    join: &mayfly_proto::CreateJoinTokenResponse,
) {
    let ttl = join.expires_at - mayfly_server::clock::now_unix();
    // A closed stdout must not take the server down: write errors are ignored.
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout().lock(),
        r#"
Mayfly dev server is running. Nothing here is fit for production.

  URL:           {url}
  Trust domain:  {trust_domain}
  Data dir:      {data} (SQLite state, key-encryption key, policies)
  Admin token:   {admin}
  Join token:    {token}
                 one use, expires in {mins} min, identity {spiffe}

Exchange the join token for a short-lived access token (RFC 8693):

  curl -s {url}/v1/token \
    -d grant_type={grant} \
    -d subject_token_type={jtt} \
    -d subject_token={token} \
    -d audience=https://api.example \
    -d scope=read

or with the CLI:

  mayfly token exchange --url {url} --join-token {token} --audience https://api.example

or run a command under a task that ends when it exits (each join token works once):

  mayfly exec --url {url} --join-token {token} --audience https://api.example -- env

SPIFFE Workload API (X.509- and JWT-SVIDs for local processes) on {socket}.
Give processes of your user an identity, then fetch it as any SPIFFE client does:

  MAYFLY_ADMIN_TOKEN={admin} mayfly entries create --url {url} \
    --spiffe-id spiffe://{trust_domain}/dev/me --selector unix:uid:{uid}
  SPIFFE_ENDPOINT_SOCKET=unix://{socket} mayfly svid x509

Verify tokens offline with {url}/.well-known/jwks.json.
More join tokens:  MAYFLY_ADMIN_TOKEN={admin} mayfly join-token create --url {url}
Policies:          {policies} (reloaded on save or SIGHUP)
Stop with Ctrl-C.
"#,
        data = data_dir.display(),
        token = join.token,
        mins = ttl / 60,
        spiffe = join.spiffe_id,
        grant = GRANT_TYPE_TOKEN_EXCHANGE,
        jtt = TOKEN_TYPE_JOIN_TOKEN,
        policies = policy_dir.display(),
        socket = data_dir.join(mayfly_server::dev::DEV_WORKLOAD_SOCKET).display(),
        uid = nix::unistd::getuid(),
    );
}
