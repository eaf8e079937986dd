//! Background work after issuance, and only that: revocation upkeep, expiry housekeeping,
//! task retirement, SVID authority rotation, audit checkpoints, refusal summaries, policy
//! reloads, the replicas' leadership. Every job runs supervised ([`jobs::Jobs`]): a panic
//! is caught and the job carries on, and shutdown stops and joins them all. It depends
//! on the broker, never the reverse.

pub mod checkpoints;
pub mod jobs;
pub mod policies;
pub mod refusals;
pub mod replicas;
pub mod revocations;
pub mod stats;
pub mod svids;
pub mod tasks;

pub use jobs::Jobs;
pub use replicas::Leadership;
