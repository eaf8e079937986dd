//! `mayfly databases …`: offline tools for database issuers.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::sealing::{SealInput, seal_from_stdin};
use anyhow::Context;
use clap::Subcommand;

/// `mayfly databases …`
#[derive(Subcommand)]
pub enum DatabasesCommand {
    /// Seal a database admin URL under the server's key-encryption key, for `url_sealed`.
    /// Reads the URL from standard input (so it stays out of the shell history).
    SealUrl {
        /// The server's config file (its key-encryption key is used).
        #[arg(long, short = 'c', env = "MAYFLY_CONFIG")]
        config: PathBuf,
    },
}

impl DatabasesCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let DatabasesCommand::SealUrl { config } = self;
        let input = SealInput {
            trim: str::trim,
            check: |url| reqwest::Url::parse(url).map(drop).context("the input is not a URL"),
            empty: "give the admin URL on standard input, e.g. `printenv ORDERS_ADMIN_URL | mayfly databases seal-url -c mayfly.toml`",
        };
        seal_from_stdin(&config, &mayfly_server::keys::sealed::DATABASE_ADMIN_URL, input)
    }
}
