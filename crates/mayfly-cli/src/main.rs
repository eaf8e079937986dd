//! `mayfly`: runs the broker (`mayfly server`) and talks to it.
#![forbid(unsafe_code)]

mod audit;
mod client;
mod clouds;
mod databases;
mod exec;
mod ops;
mod policy;
mod proxy;
mod sealing;
mod serve;
mod tasks;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc: the request path allocates many small, short-lived objects; glibc malloc
// showed up at ~7% of server CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mayfly: runtime credentials for services, jobs and agents.
#[derive(Parser)]
#[command(name = "mayfly", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Server(serve::ServerArgs),
    /// One-time join tokens for bootstrapping workloads.
    #[command(subcommand, name = "join-token")]
    JoinToken(client::JoinTokenCommand),
    /// Admin tokens: create, list and revoke the tokens of the admin API.
    #[command(subcommand, name = "admin-token")]
    AdminToken(client::AdminTokenCommand),
    /// Signing keys.
    #[command(subcommand)]
    Keys(client::KeysCommand),
    /// Access tokens.
    #[command(subcommand)]
    Token(client::TokenCommand),
    /// Cloud profiles: list them, print the set-up each needs on the cloud's side.
    #[command(subcommand)]
    Clouds(clouds::CloudsCommand),
    /// OpenID Connect: export the discovery document and JWKS as static files.
    #[command(subcommand)]
    Oidc(clouds::OidcCommand),
    /// Tasks: runtime identities that live for one job.
    #[command(subcommand)]
    Tasks(tasks::TasksCommand),
    /// Run a command under a task that ends when it exits, with its credentials.
    Exec(exec::ExecArgs),
    /// Revoke credentials by selector (jti, subject, prefix, audience, task, time, all), or a database lease.
    Revoke(ops::RevokeArgs),
    /// List leases (issued credentials) with their state.
    Leases(ops::LeasesArgs),
    /// Read the audit trail, verify its hash chain (`audit verify`), export a signed checkpoint (`audit checkpoint`).
    Audit(ops::AuditArgs),
    /// Database issuers, offline: seal an admin URL for the config.
    #[command(subcommand)]
    Databases(databases::DatabasesCommand),
    /// Cedar policies, offline: validate a directory, evaluate a request.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The credential-injecting egress proxy: run it, seal an upstream secret.
    #[command(subcommand)]
    Proxy(proxy::ProxyCommand),
    /// Workload API registration entries: which local processes get which SPIFFE ID.
    #[command(subcommand)]
    Entries(workload::EntriesCommand),
    /// Fetch SVIDs from the SPIFFE Workload API (SPIFFE_ENDPOINT_SOCKET), as a workload does.
    #[command(subcommand)]
    Svid(workload::SvidCommand),
}

fn main() -> ExitCode {
    // Before clap reads a single variable (MAYFLY_ADMIN_TOKEN, MAYFLY_JOIN_TOKEN are read
    // while parsing): `mayfly exec`'s command must not read them back through /proc.
    if std::env::args_os().nth(1).is_some_and(|a| a == "exec")
        && let Err(e) = exec::keep_secrets_from_the_command()
    {
        eprintln!("error: mayfly exec cannot keep its secrets from the command (prctl PR_SET_DUMPABLE): {e}");
        return ExitCode::from(exec::EXIT_EXEC_FAILED);
    }
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Proxy(cmd) = &cli.command
        && let Some(threads) = cmd.worker_threads()
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => serve::run(args).await,
            Command::JoinToken(cmd) => cmd.run().await,
            Command::AdminToken(cmd) => cmd.run().await,
            Command::Keys(cmd) => cmd.run().await,
            Command::Token(cmd) => cmd.run().await,
            Command::Clouds(cmd) => cmd.run().await,
            Command::Oidc(cmd) => cmd.run().await,
            Command::Tasks(cmd) => cmd.run().await,
            Command::Exec(args) => args.run().await,
            Command::Policy(cmd) => cmd.run(),
            Command::Databases(cmd) => cmd.run(),
            Command::Revoke(args) => args.run().await,
            Command::Leases(args) => args.run().await,
            Command::Audit(args) => args.run().await,
            Command::Entries(cmd) => cmd.run().await,
            Command::Svid(cmd) => cmd.run().await,
            Command::Proxy(cmd) => cmd.run().await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
