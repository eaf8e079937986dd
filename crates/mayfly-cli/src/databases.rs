//! `mayfly databases …`: offline tools for database issuers.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use mayfly_server::keys::Kek;

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
        let cfg = mayfly_server::config::Config::load(&config)?;
        let kek = Kek::load(&mayfly_server::server::kek_source(&cfg)?).context("loading the key-encryption key")?;
        let mut url = String::new();
        std::io::stdin().read_to_string(&mut url).context("reading the URL from standard input")?;
        let url = url.trim();
        if url.is_empty() {
            bail!(
                "give the admin URL on standard input, e.g. `printenv ORDERS_ADMIN_URL | mayfly databases seal-url -c mayfly.toml`"
            );
        }
        reqwest::Url::parse(url).context("the input is not a URL")?;
        println!("{}", mayfly_server::issue::db::seal_url(&kek, url)?);
        Ok(ExitCode::SUCCESS)
    }
}
