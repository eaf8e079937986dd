//! The `mayfly` binary this crate builds, bound to the test kit's process helpers.
// Each test file uses some of it.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::process::Output;

pub use mayfly_testkit::process::{DevServer, ServerProcess, text};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mayfly");

/// `mayfly server --dev` on a free port, with what its banner says.
pub fn start_dev(data_dir: &Path) -> DevServer {
    DevServer::start(BIN, data_dir)
}

/// `mayfly server --dev` on `listen`.
pub fn start_dev_on(data_dir: &Path, listen: &str) -> DevServer {
    DevServer::start_on(BIN, data_dir, listen)
}

/// `mayfly server --config <config>`, ready.
pub fn start_server(config: &Path) -> ServerProcess {
    ServerProcess::start(BIN, config)
}

/// `mayfly args` with `env`, to its end.
pub fn mayfly(args: &[&str], env: &[(&str, &str)]) -> Output {
    mayfly_testkit::process::run(BIN, args, env)
}
