//! `mayfly entries …` (registration entries, admin API) and `mayfly svid …` (a
//! Workload API client built on the standard `spiffe` crate, as any workload would use).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use mayfly_proto::{EntryInfo, EntryList, EntrySpec};

use crate::client::{AdminRemote, call, print_json};

/// `mayfly entries …`
#[derive(Subcommand)]
pub enum EntriesCommand {
    /// List registration entries.
    List {
        #[command(flatten)]
        remote: AdminRemote,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one entry as JSON.
    Show {
        #[command(flatten)]
        remote: AdminRemote,
        /// Entry id.
        id: String,
    },
    /// Create an entry: processes matching every selector get the SPIFFE ID.
    Create {
        #[command(flatten)]
        remote: AdminRemote,
        #[command(flatten)]
        spec: EntryArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an entry; processes holding its SVID lose it at once.
    Delete {
        #[command(flatten)]
        remote: AdminRemote,
        /// Entry id.
        id: String,
    },
}

/// What an entry grants and to whom.
#[derive(Args)]
pub struct EntryArgs {
    /// The SPIFFE ID granted, e.g. spiffe://prod.example/billing/api.
    #[arg(long)]
    spiffe_id: String,
    /// A selector (repeatable; all must match): unix:uid:N, unix:gid:N, unix:user:NAME,
    /// unix:group:NAME, unix:path:/abs/path, unix:sha256:HEX.
    #[arg(long = "selector", required = true)]
    selectors: Vec<String>,
    /// Guidance for workloads given several SVIDs.
    #[arg(long)]
    hint: Option<String>,
    /// DNS name added to the X.509-SVID (repeatable).
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// X.509-SVID lifetime, e.g. 30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    x509_svid_ttl: Option<std::time::Duration>,
    /// JWT-SVID lifetime, e.g. 2m.
    #[arg(long, value_parser = humantime::parse_duration)]
    jwt_svid_ttl: Option<std::time::Duration>,
    /// Extra Cedar attribute KEY=VALUE (repeatable).
    #[arg(long = "attribute", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
}

fn parse_attribute(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "use KEY=VALUE".to_owned())
}

impl EntriesCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            EntriesCommand::List { remote, json } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint("/v1/entries");
                let list: EntryList =
                    call(remote.remote.client()?.get(&url).bearer_auth(remote.token()?), &url).await?;
                if json {
                    print_json(&list)?;
                } else {
                    println!("{:<32} {:<7} {:<45} SELECTORS", "ID", "SOURCE", "SPIFFE ID");
                    for e in &list.entries {
                        println!(
                            "{:<30} {:<7} {:<45} {}",
                            e.id,
                            e.source,
                            e.spec.spiffe_id,
                            e.spec.selectors.join(" ")
                        );
                    }
                }
            }
            EntriesCommand::Show { remote, id } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint(&format!("/v1/entries/{id}"));
                let e: EntryInfo = call(remote.remote.client()?.get(&url).bearer_auth(remote.token()?), &url).await?;
                print_json(&e)?;
            }
            EntriesCommand::Create { remote, spec, json } => {
                let remote = remote.resolve()?;
                let body = EntrySpec {
                    spiffe_id: spec.spiffe_id,
                    selectors: spec.selectors,
                    hint: spec.hint,
                    dns_names: spec.dns_names,
                    x509_svid_ttl: spec.x509_svid_ttl.map(|d| d.as_secs()),
                    jwt_svid_ttl: spec.jwt_svid_ttl.map(|d| d.as_secs()),
                    attributes: spec.attributes.into_iter().collect(),
                };
                let url = remote.remote.endpoint("/v1/entries");
                let req = remote.remote.client()?.post(&url).bearer_auth(remote.token()?).json(&body);
                let e: EntryInfo = call(req, &url).await?;
                if json {
                    print_json(&e)?;
                } else {
                    println!("{}", e.id);
                    eprintln!("entry {} grants {} to {}", e.id, e.spec.spiffe_id, e.spec.selectors.join(" + "));
                }
            }
            EntriesCommand::Delete { remote, id } => {
                let remote = remote.resolve()?;
                let url = remote.remote.endpoint(&format!("/v1/entries/{id}"));
                let e: EntryInfo =
                    call(remote.remote.client()?.delete(&url).bearer_auth(remote.token()?), &url).await?;
                eprintln!("entry {} deleted; {} is no longer issued to its selectors", e.id, e.spec.spiffe_id);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Where the Workload API is.
#[derive(Args)]
pub struct SocketArgs {
    /// The Workload API endpoint, e.g. unix:///var/run/mayfly/workload.sock.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    socket: String,
}

impl SocketArgs {
    async fn connect(&self) -> anyhow::Result<spiffe::WorkloadApiClient> {
        spiffe::WorkloadApiClient::connect_to(&self.socket)
            .await
            .map_err(|e| anyhow!("cannot reach the Workload API at {}: {e}", self.socket))
    }
}

/// `mayfly svid …`: fetch identities from the Workload API, as a workload does.
#[derive(Subcommand)]
pub enum SvidCommand {
    /// Fetch this process's X.509-SVID; print its SPIFFE ID and expiry, or write PEM files.
    X509 {
        #[command(flatten)]
        socket: SocketArgs,
        /// Write svid.pem, svid.key (0600) and bundle.pem into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Fetch a JWT-SVID for an audience and print it.
    Jwt {
        #[command(flatten)]
        socket: SocketArgs,
        /// Audience (repeatable).
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// Which of this process's SPIFFE IDs (default: the first).
        #[arg(long)]
        spiffe_id: Option<String>,
    },
    /// Validate a JWT-SVID (read from standard input) for an audience; print its claims.
    Validate {
        #[command(flatten)]
        socket: SocketArgs,
        /// The audience the SVID must name.
        #[arg(long)]
        audience: String,
    },
}

impl SvidCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            SvidCommand::X509 { socket, write } => {
                let client = socket.connect().await?;
                let svid = client.fetch_x509_svid().await.map_err(|e| anyhow!("no X.509-SVID: {e}"))?;
                let bundles = client.fetch_x509_bundles().await.map_err(|e| anyhow!("no X.509 bundle: {e}"))?;
                let td = svid.spiffe_id().trust_domain();
                let bundle = bundles.get(td).ok_or_else(|| anyhow!("no bundle for trust domain {td}"))?;
                let leaf = x509_parser::parse_x509_certificate(svid.leaf().as_bytes())
                    .map_err(|e| anyhow!("the SVID does not parse: {e}"))?
                    .1;
                println!("{}", svid.spiffe_id());
                eprintln!("expires {}", leaf.validity().not_after);
                if let Some(dir) = write {
                    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                    let chain: String = svid.cert_chain().iter().map(|c| pem("CERTIFICATE", c.as_bytes())).collect();
                    let roots: String = bundle.authorities().iter().map(|c| pem("CERTIFICATE", c.as_bytes())).collect();
                    std::fs::write(dir.join("svid.pem"), chain)?;
                    std::fs::write(dir.join("bundle.pem"), roots)?;
                    mayfly_server::fsutil::write_private(
                        &dir.join("svid.key"),
                        pem("PRIVATE KEY", svid.private_key().as_bytes()).as_bytes(),
                    )?;
                    eprintln!("wrote svid.pem, svid.key and bundle.pem to {}", dir.display());
                }
            }
            SvidCommand::Jwt { socket, audiences, spiffe_id } => {
                let client = socket.connect().await?;
                let id = spiffe_id
                    .map(|s| spiffe::SpiffeId::try_from(s.as_str()).map_err(|e| anyhow!("--spiffe-id: {e}")))
                    .transpose()?;
                let svid =
                    client.fetch_jwt_svid(&audiences, id.as_ref()).await.map_err(|e| anyhow!("no JWT-SVID: {e}"))?;
                println!("{}", svid.token());
            }
            SvidCommand::Validate { socket, audience } => {
                use std::io::Read;
                let mut token = String::new();
                std::io::stdin().take(64 * 1024).read_to_string(&mut token).context("reading the SVID from stdin")?;
                let client = socket.connect().await?;
                let svid =
                    client.validate_jwt_token(&audience, token.trim()).await.map_err(|e| anyhow!("not valid: {e}"))?;
                println!("{}", svid.spiffe_id());
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
