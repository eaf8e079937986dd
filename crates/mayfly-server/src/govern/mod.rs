//! Governance after issuance: revocation (and its feed), expiry housekeeping.

pub mod revocations;
pub mod stats;

pub use revocations::{Revocations, RevokeError};
