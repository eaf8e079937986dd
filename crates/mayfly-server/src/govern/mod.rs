//! Governance after issuance: revocation (and its feed), expiry housekeeping, task retirement.

pub mod revocations;
pub mod stats;
pub mod tasks;

pub use revocations::{Revocations, RevokeError};
