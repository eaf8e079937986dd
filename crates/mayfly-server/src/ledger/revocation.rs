//! Revocation selectors and the in-memory index that answers "is this credential revoked?".
//! The types are shared with resource servers: the wire types live in `mayfly-proto`,
//! the index in `mayfly-verify`.

pub use mayfly_verify::revocation::{CredentialFacts, Revocation, RevocationIndex, RevocationKind, under_prefix};
