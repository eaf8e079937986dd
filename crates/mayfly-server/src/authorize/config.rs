//! Where Cedar policies come from.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where Cedar policies come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.cedar` files, validated against Mayfly's schema at load.
    pub dir: PathBuf,
    /// How often the directory is checked for changes (default 2s). SIGHUP reloads at once.
    #[serde(default = "crate::clock::secs::<2>", with = "humantime_serde")]
    pub reload_interval: Duration,
}
