//! RFC 9068 JWT access tokens (`typ: at+jwt`), signed with the key ring's active key.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::IssueError;
use crate::keys::config::KeysConfig;
use crate::keys::{KeyRing, SigningKey};

/// What to put in an access token.
#[derive(Debug, Clone)]
pub struct AccessTokenRequest<'a> {
    /// `sub`: the holder's SPIFFE ID.
    pub subject: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// `client_id`: the OAuth client, here the workload itself.
    pub client_id: &'a str,
    /// Granted scopes.
    pub scopes: &'a [String],
    /// Lifetime in seconds.
    pub ttl_seconds: i64,
    /// `iat`, Unix seconds.
    pub now: i64,
    /// The task it is issued under.
    pub task_id: Option<&'a str>,
    /// RFC 8693 `act`: who acts, and for whom, in a delegation.
    pub act: Option<&'a serde_json::Value>,
    /// RFC 7800 `cnf`: the DPoP key or client certificate the token is bound to.
    pub cnf: Option<&'a mayfly_verify::Confirmation>,
    /// Limited use: how many verifications it allows.
    pub max_uses: Option<u32>,
    /// `ctx`: the attested facts it is bound to (pod, node, run), when any.
    pub context: Option<&'a std::collections::BTreeMap<String, String>>,
}

/// A minted token and the facts the ledger records about it.
#[derive(Clone)]
pub struct IssuedToken {
    /// The compact JWS. Secret: never logged or stored.
    pub token: String,
    /// `jti`.
    pub jti: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// The signing key's id.
    pub kid: String,
    /// Space-separated granted scopes.
    pub scope: String,
}

// Hand-written: the secret never reaches a log through `{:?}`.
impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("jti", &self.jti)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("kid", &self.kid)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A JWS header as Mayfly writes it: algorithm, type and key id (clouds need the `kid`).
#[derive(Serialize)]
pub(super) struct Header<'a> {
    pub(super) alg: &'a str,
    pub(super) typ: &'a str,
    pub(super) kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<&'a mayfly_verify::Confirmation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_uses: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ctx: Option<&'a std::collections::BTreeMap<String, String>>,
}

/// Mints RFC 9068 access tokens.
#[derive(Debug)]
pub struct JwtIssuer {
    keys: Arc<KeyRing>,
    issuer_url: String,
    /// Audiences signed by a named profile's key rather than the default one.
    profile_of_audience: HashMap<String, String>,
}

impl JwtIssuer {
    /// An issuer whose tokens carry `iss = issuer_url`, each signed by the profile that
    /// claims its audience in `keys` (else the default profile).
    pub fn new(keys: Arc<KeyRing>, issuer_url: String, profiles: &KeysConfig) -> Self {
        let profile_of_audience =
            profiles.profiles.iter().flat_map(|p| p.audiences.iter().map(|a| (a.clone(), p.name.clone()))).collect();
        Self { keys, issuer_url, profile_of_audience }
    }

    /// The key that signs for a named signing profile now.
    pub fn key_of_profile(&self, profile: &str) -> Option<Arc<SigningKey>> {
        self.keys.active_for(profile)
    }

    /// The key that signs for `audience`.
    fn key_for(&self, audience: &str) -> Arc<SigningKey> {
        self.profile_of_audience
            .get(audience)
            .and_then(|p| self.keys.active_for(p))
            .unwrap_or_else(|| self.keys.active())
    }

    /// The `iss` of issued tokens.
    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// Signs a new access token.
    pub fn issue(&self, req: &AccessTokenRequest<'_>) -> Result<IssuedToken, IssueError> {
        let key = self.key_for(req.audience);
        let jti = crate::ids::time_ordered_id();
        let scope = req.scopes.join(" ");
        let expires_at = req.now + req.ttl_seconds;
        let header = Header { alg: key.alg().as_str(), typ: "at+jwt", kid: key.kid() };
        let claims = Claims {
            iss: &self.issuer_url,
            sub: req.subject,
            aud: req.audience,
            exp: expires_at,
            iat: req.now,
            nbf: req.now,
            jti: &jti,
            client_id: req.client_id,
            scope: &scope,
            task_id: req.task_id,
            act: req.act,
            cnf: req.cnf,
            max_uses: req.max_uses,
            ctx: req.context.filter(|c| !c.is_empty()),
        };
        let token = key.sign_compact(&serde_json::to_vec(&header)?, &serde_json::to_vec(&claims)?)?;
        Ok(IssuedToken { token, jti, issued_at: req.now, expires_at, kid: key.kid().to_owned(), scope })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_token_debug_hides_the_token() {
        let t = IssuedToken {
            token: "eyJ-access-token".into(),
            jti: "jti-1".into(),
            issued_at: 1,
            expires_at: 2,
            kid: "kid-1".into(),
            scope: String::new(),
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("eyJ-access-token"), "{shown}");
        assert!(shown.contains("jti-1"), "{shown}");
    }
}
