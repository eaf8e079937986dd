//! One-time join tokens: created by an admin, redeemed once, within a short TTL,
//! stored only as SHA-256 hashes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mayfly_proto::CreateJoinTokenResponse;
use sha2::{Digest, Sha256};

use super::{AttestError, WorkloadIdentity};
use crate::ledger::{JoinTokenRow, LedgerError, RedeemOutcome, Store};
use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Prefix that makes a join token recognisable (e.g. to secret scanners).
pub const JOIN_TOKEN_PREFIX: &str = "mfj_";

/// Why a join token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateJoinTokenError {
    /// The requested lifetime is zero or above the maximum.
    #[error("ttl_seconds must be between 1 and {max}")]
    BadTtl {
        /// The maximum, in seconds.
        max: u64,
    },
    /// The requested SPIFFE path is not valid.
    #[error("spiffe_path is not valid: {0}")]
    BadPath(#[from] SpiffeIdError),
    /// The requested SPIFFE path lies under a prefix Mayfly keeps for itself.
    #[error("spiffe_path {0} lies under a reserved prefix (task/, agent/)")]
    ReservedPath(String),
    /// Storage failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Creates and redeems join tokens.
#[derive(Clone)]
pub struct JoinTokens {
    store: Arc<dyn Store>,
    trust_domain: String,
    default_ttl: Duration,
    max_ttl: Duration,
}

impl std::fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokens").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a token. Join tokens carry 256 random bits, so a plain hash is enough.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl JoinTokens {
    /// A join-token attestor over `store`.
    pub fn new(store: Arc<dyn Store>, trust_domain: &str, default_ttl: Duration, max_ttl: Duration) -> Self {
        Self { store, trust_domain: trust_domain.to_owned(), default_ttl, max_ttl }
    }

    /// Creates a token; it is returned once and only its hash is stored.
    pub async fn create(
        &self,
        ttl_seconds: Option<u64>,
        spiffe_path: Option<&str>,
    ) -> Result<CreateJoinTokenResponse, CreateJoinTokenError> {
        let max = self.max_ttl.as_secs();
        let ttl = ttl_seconds.unwrap_or(self.default_ttl.as_secs());
        if ttl == 0 || ttl > max {
            return Err(CreateJoinTokenError::BadTtl { max });
        }
        let id = crate::ids::random_hex(8);
        let path = spiffe_path.map(|p| p.trim_start_matches('/').to_owned()).unwrap_or_else(|| format!("join/{id}"));
        let spiffe_id = SpiffeId::new(&self.trust_domain, &path)?;
        if crate::spiffe::is_reserved(&spiffe_id) {
            return Err(CreateJoinTokenError::ReservedPath(spiffe_id.to_string()));
        }
        let token = format!("{JOIN_TOKEN_PREFIX}{}", crate::ids::random_b64(32));
        let now = crate::clock::now_unix();
        let row = JoinTokenRow {
            id: id.clone(),
            token_hash: token_hash(&token),
            spiffe_path: spiffe_id.path().trim_start_matches('/').to_owned(),
            created_at: now,
            expires_at: now + ttl as i64,
        };
        self.store.insert_join_token(&row).await?;
        Ok(CreateJoinTokenResponse { id, token, spiffe_id: spiffe_id.to_string(), expires_at: row.expires_at })
    }

    /// Redeems a token exactly once: the identity it grants, and when it was created.
    pub async fn redeem(&self, token: &str) -> Result<(WorkloadIdentity, i64), AttestError> {
        if !token.starts_with(JOIN_TOKEN_PREFIX) {
            return Err(AttestError::Malformed(format!("a join token starts with {JOIN_TOKEN_PREFIX}")));
        }
        match self.store.redeem_join_token(&token_hash(token), crate::clock::now_unix()).await? {
            RedeemOutcome::Redeemed(row) => {
                let spiffe_id = SpiffeId::new(&self.trust_domain, &row.spiffe_path)
                    .map_err(|e| AttestError::Mapping(e.to_string()))?;
                let attributes = BTreeMap::from([("join_token_id".to_owned(), row.id)]);
                Ok((WorkloadIdentity { spiffe_id, attestor: "join_token".into(), attributes }, row.created_at))
            }
            RedeemOutcome::Unknown => Err(AttestError::JoinTokenUnknown),
            RedeemOutcome::AlreadyUsed => Err(AttestError::JoinTokenUsed),
            RedeemOutcome::Expired => Err(AttestError::JoinTokenExpired),
        }
    }
}
