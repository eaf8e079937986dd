//! Delivery: how credentials reach workloads. `http` serves the REST API,
//! OAuth endpoints and discovery documents; `listener` accepts TCP/TLS connections.

pub mod http;
pub mod listener;
