//! `mayfly proxy`: a credential-injecting egress proxy. The workload sends ordinary HTTP(S)
//! requests through it; the server decides each one (`Action::"proxy"`) and gives the
//! credential to inject; the workload never holds the upstream's secret.

mod engine;
mod http;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::client::{Evidence, Remote};
use crate::sealing::{SealInput, seal_from_stdin};
pub(crate) use engine::ExecWorkload;
use engine::{EvidenceSource, Proxy};

/// `mayfly proxy …`
#[derive(Subcommand)]
pub enum ProxyCommand {
    /// Run the proxy: workloads set HTTP_PROXY/HTTPS_PROXY to it, with their evidence in
    /// Proxy-Authorization (`http://task:<task token>@127.0.0.1:8080`), or call
    /// `http://127.0.0.1:8080/<upstream>/<path>` (reverse mode).
    Run(RunArgs),
    /// Seal an upstream secret under the server's key-encryption key, for `secret_sealed`.
    /// Reads the secret from standard input (so it stays out of the shell history).
    Seal {
        /// The server's config file (its key-encryption key is used).
        #[arg(long, short = 'c', env = "MAYFLY_CONFIG")]
        config: PathBuf,
    },
}

/// `mayfly proxy run`
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    remote: Remote,
    /// The proxy's own evidence: exchanged for a token for `urn:mayfly:proxy`, which
    /// policy must allow (the workloads' evidence does not make a proxy).
    #[command(flatten)]
    evidence: Evidence,
    /// Where to listen (loopback: the proxy serves the workloads of this host or pod).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Write the proxy's CA certificate (PEM) here, for workloads to trust.
    #[arg(long)]
    ca_cert_out: Option<PathBuf>,
    /// Threads serving requests. One keeps each request on one thread, the lowest latency
    /// (a request crosses the proxy four times: handing it between threads costs more than
    /// the work); more serve more concurrent requests on more cores (see bench/README.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
}

impl ProxyCommand {
    /// How many runtime threads the command wants, if it says.
    pub fn worker_threads(&self) -> Option<usize> {
        match self {
            ProxyCommand::Run(args) => Some(usize::from(args.worker_threads)),
            ProxyCommand::Seal { .. } => None,
        }
    }
}

impl ProxyCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            ProxyCommand::Seal { config } => {
                let input = SealInput {
                    trim: |s| s.trim_end_matches(['\r', '\n']),
                    check: |_| Ok(()),
                    empty: "give the secret on standard input, e.g. `printenv PAYMENTS_KEY | mayfly proxy seal -c mayfly.toml`",
                };
                seal_from_stdin(&config, &mayfly_server::keys::sealed::PROXY_UPSTREAM_SECRET, input)
            }
            ProxyCommand::Run(args) => {
                let evidence = args.evidence;
                if evidence.read()?.1 == mayfly_proto::TOKEN_TYPE_JOIN_TOKEN {
                    bail!(
                        "a join token is single use, and a proxy presents its evidence again at every renewal of its \
                         token: give it platform evidence (--subject-token-file) or a task token"
                    );
                }
                let source: EvidenceSource = Box::new(move || evidence.read());
                let running = start(args.remote, source, None, args.listen).await?;
                if let Some(path) = &args.ca_cert_out {
                    std::fs::write(path, running.ca_pem()).with_context(|| format!("writing {}", path.display()))?;
                }
                eprintln!("mayfly proxy: listening on http://{} ({} upstreams)", running.addr, running.upstreams());
                tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
                running.stop();
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// A running proxy.
pub(crate) struct RunningProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    proxy: Arc<Proxy>,
    stop: CancellationToken,
}

impl RunningProxy {
    /// The CA certificate its workloads must trust (PEM).
    pub fn ca_pem(&self) -> &str {
        self.proxy.ca.cert_pem()
    }

    /// How many upstreams it knows.
    pub fn upstreams(&self) -> usize {
        self.proxy.upstreams.len()
    }

    /// Closes the listener and every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a proxy on `listen`: its token, the upstreams, the revocation feed.
pub(crate) async fn start(
    remote: Remote,
    evidence: EvidenceSource,
    exec: Option<ExecWorkload>,
    listen: SocketAddr,
) -> anyhow::Result<RunningProxy> {
    if let Some(e) = &exec {
        engine::check_secret(&e.secret)?;
    }
    let proxy = Proxy::open(remote, evidence, exec).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    proxy.spawn_watchers(stop.clone());
    tokio::spawn(http::serve(proxy.clone(), listener, stop.clone()));
    Ok(RunningProxy { addr, proxy, stop })
}
