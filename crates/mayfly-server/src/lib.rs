//! Mayfly: a runtime credential broker for non-human identities.
//!
//! The modules follow the flow of a request: [`attest`] turns evidence into a
//! workload identity, [`authorize`] asks Cedar policy, [`issue`] mints the
//! credential, [`ledger`] records it before [`deliver`] hands it out.
//! [`govern`] revokes and keeps house afterwards; [`verify`] checks Mayfly's own
//! tokens. [`tasks`] provisions identities that live for one job; [`svids`] serves SPIFFE
//! SVIDs to local processes (the Workload API). [`checkpoints`] anchors the audit chain
//! with signed checkpoints of its head. [`broker`] wires the steps together; [`server`] starts everything.
#![forbid(unsafe_code)]

pub mod admin_tokens;
pub mod attest;
pub mod authorize;
pub mod broker;
pub mod checkpoints;
pub mod clock;
pub mod config;
pub mod containment;
pub mod db_credentials;
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
pub mod svids;
pub mod tasks;
/// Shared with resource servers: the verified-token cache lives in `mayfly-verify`.
pub use mayfly_verify::token_cache;
pub mod verify;
