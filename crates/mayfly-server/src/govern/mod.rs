//! Background work after issuance, and only that: revocation upkeep, expiry housekeeping,
//! task retirement, SVID authority rotation, audit checkpoints, refusal summaries, the
//! replicas' leadership. It depends on the broker, never the reverse.

pub mod checkpoints;
pub mod refusals;
pub mod replicas;
pub mod stats;
pub mod svids;
pub mod tasks;

pub use replicas::Leadership;
