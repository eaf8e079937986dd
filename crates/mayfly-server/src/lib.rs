//! Mayfly: a runtime credential broker for non-human identities.
//!
//! The modules follow the flow of a request: [`attest`] turns evidence into a
//! workload identity, [`authorize`] asks Cedar policy, [`issue`] mints the
//! credential, [`ledger`] records it (and holds the revocation index) before
//! [`deliver`] hands it out. [`broker`] is every use case, one file each (exchange,
//! tasks, SVIDs, database credentials, signals, containment), wiring those steps
//! together; [`govern`] is background work only and depends on the broker, never the
//! reverse. [`verify`] checks Mayfly's own tokens; [`keys`] holds the signing keys;
//! [`checkpoints`] anchors the audit chain. [`config`] composes the sections that live
//! beside their modules; [`server`] starts everything. `tests/layout.rs` keeps the
//! imports between these modules free of cycles.
#![forbid(unsafe_code)]

pub mod attest;
pub mod authorize;
pub mod broker;
pub mod checkpoints;
pub mod clock;
pub mod config;
pub mod deliver;
pub mod dev;
pub mod fsutil;
pub mod govern;
pub mod ids;
pub mod issue;
pub mod keys;
pub mod ledger;
pub mod server;
pub mod spiffe;
/// Shared with resource servers: the verified-token cache lives in `mayfly-verify`.
pub use mayfly_verify::token_cache;
pub mod verify;
