//! Issuance: minting credentials. One module per kind of credential: `jwt` (access
//! tokens), `svid` (SPIFFE X.509- and JWT-SVIDs), `db` (database users).

pub mod cloud;
pub mod db;
pub mod jwt;
pub mod svid;

pub use jwt::{AccessTokenRequest, IssuedToken, JwtIssuer};

/// Why a credential could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(#[from] crate::keys::KeyError),
    /// An SVID could not be minted.
    #[error("SVID could not be minted: {0}")]
    Svid(#[from] svid::SvidError),
    /// Claims could not be serialised.
    #[error("claims could not be encoded: {0}")]
    Encoding(#[from] serde_json::Error),
}
