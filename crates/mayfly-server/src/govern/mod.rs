//! Governance after issuance: revocation (and its feed), expiry housekeeping, task retirement,
//! SVID authority rotation, audit checkpoints.

pub mod checkpoints;
pub mod failures;
pub mod replicas;
pub mod revocations;
pub mod signals;
pub mod stats;
pub mod svids;
pub mod tasks;

pub use replicas::Leadership;
pub use revocations::{Revocations, RevokeError};
