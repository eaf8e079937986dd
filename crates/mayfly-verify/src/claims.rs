//! The claims of a Mayfly access token (RFC 9068 plus Mayfly's own).

use serde::Deserialize;

/// The claims of a Mayfly access token.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: a SPIFFE ID, or the subject a task acts for.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    #[serde(default)]
    pub nbf: Option<i64>,
    /// Token id.
    pub jti: String,
    /// OAuth client.
    pub client_id: String,
    /// Scopes.
    #[serde(default)]
    pub scope: Option<String>,
    /// Confirmation (binding): `jkt` for DPoP, `x5t#S256` for mTLS.
    #[serde(default)]
    pub cnf: Option<Confirmation>,
    /// The task the token was issued under.
    #[serde(default)]
    pub task_id: Option<String>,
    /// RFC 8693 actor chain.
    #[serde(default)]
    pub act: Option<serde_json::Value>,
    /// Limited use: how many times the token may be used (counted by the broker).
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Mayfly's `ctx`: attested facts of where the token was issued (`pod_uid`,
    /// `node_name`, …), so a presenter elsewhere can be refused ([`AccessClaims::check_context`]).
    #[serde(default)]
    pub ctx: Option<std::collections::BTreeMap<String, String>>,
}

/// RFC 7800 confirmation claim, as Mayfly issues it.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Confirmation {
    /// RFC 9449: SHA-256 thumbprint of the DPoP key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jkt: Option<String>,
    /// RFC 8705: SHA-256 thumbprint of the client certificate.
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

impl AccessClaims {
    /// Checks the presenter's current context against the one the token was issued in:
    /// every attribute the presenter reports must be in `ctx` with the same value, so a
    /// token copied to another pod or host fails (an attribute the token does not carry
    /// cannot be confirmed, and fails too). Returns the first attribute that does not match.
    pub fn check_context(&self, presenter: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
        for (k, v) in presenter {
            if self.ctx.as_ref().and_then(|c| c.get(k)) != Some(v) {
                return Err(k.clone());
            }
        }
        Ok(())
    }

    /// Whether the token carries a scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.as_deref().is_some_and(|s| s.split(' ').any(|x| x == scope))
    }

    /// The facts revocations match on.
    pub fn facts(&self) -> crate::revocation::CredentialFacts<'_> {
        crate::revocation::CredentialFacts {
            jti: &self.jti,
            subject: &self.sub,
            audience: &self.aud,
            task_id: self.task_id.as_deref(),
            issued_at: self.iat,
        }
    }
}
