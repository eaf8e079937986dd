//! Delivery: how credentials reach workloads. `http` serves the REST API,
//! OAuth endpoints and discovery documents; `listener` accepts TCP/TLS connections; `workload_api` serves the
//! SPIFFE Workload API on a unix socket; `vault_api` answers Vault's clients on its own listener.

pub mod config;
pub mod http;
pub mod listener;
pub mod quota;
pub mod vault_api;
pub mod workload_api;
