//! Generates the SPIFFE Workload API server and client from `proto/workload.proto`
//! (only with the `workload-api` feature). protox compiles the .proto in pure Rust,
//! so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    if std::env::var_os("CARGO_FEATURE_WORKLOAD_API").is_none() {
        return Ok(());
    }
    let descriptors = protox::compile(["proto/workload.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
