//! `mayfly databases seal-url`, `mayfly proxy seal`: a secret read from standard input (so it
//! stays out of the shell history), printed sealed under the server's key-encryption key.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use mayfly_server::keys::{Kek, SealedUse};

/// What one command seals: how its input is cut, checked and asked for.
pub struct SealInput {
    /// Cuts what was read down to the secret.
    pub trim: fn(&str) -> &str,
    /// Refuses what cannot be the secret.
    pub check: fn(&str) -> anyhow::Result<()>,
    /// The message for empty input, with an example.
    pub empty: &'static str,
}

/// Reads the secret, seals it for `use_` with the KEK of the server `config` names, prints it.
pub fn seal_from_stdin(config: &Path, use_: &SealedUse, input: SealInput) -> anyhow::Result<ExitCode> {
    let cfg = mayfly_server::config::Config::load(config)?;
    let kek = Kek::load(&mayfly_server::server::kek_source(&cfg)?).context("loading the key-encryption key")?;
    let mut read = String::new();
    std::io::stdin().read_to_string(&mut read).context("reading standard input")?;
    let secret = (input.trim)(&read);
    if secret.is_empty() {
        bail!("{}", input.empty);
    }
    (input.check)(secret)?;
    println!("{}", use_.seal(&kek, secret)?);
    Ok(ExitCode::SUCCESS)
}
