//! Delegation proven by the subject: its own evidence or its own Mayfly token, addressed
//! to the actor (RFC 8693 `subject_token` with `actor_token`).

use super::*;
use crate::attest::AttestError;
use crate::broker::{Broker, BrokerError, Caller, Forbidden, InvalidRequest};

impl Broker {
    /// The subject that `p.subject_token` proves, delegating to `caller` (RFC 8693), and
    /// when the proof expires: the subject's platform evidence, or a Mayfly access token
    /// the subject got for itself, addressed to the caller (`aud` is the caller's SPIFFE
    /// ID), unbound, not limited-use, used once. A token that was itself issued under a
    /// task or a delegation (`task_id`, `act`) proves nothing here: delegations are not
    /// laundered through a second one. Evidence of a revoked subject is refused as on every path.
    pub(super) async fn delegating_subject(
        &self,
        caller: &Caller,
        p: &StartTaskParams,
        now: i64,
    ) -> Result<(String, Option<i64>), BrokerError> {
        let Caller::Workload(actor) = caller else {
            return Err(InvalidRequest::ActorNotWorkload.into());
        };
        match p.subject_token_type.as_str() {
            mayfly_proto::TOKEN_TYPE_JWT | mayfly_proto::TOKEN_TYPE_ID_TOKEN => {
                match self.attest(&p.subject_token_type, &p.subject_token, p.source_ip, now).await? {
                    Caller::Workload(w) if w.spiffe_id == actor.spiffe_id => {
                        Err(InvalidRequest::SameWorkloadTwice.into())
                    }
                    Caller::Workload(w) => Ok((w.spiffe_id.to_string(), None)),
                    Caller::Task(_) => Err(InvalidRequest::NotPlatformEvidence.into()),
                }
            }
            mayfly_proto::TOKEN_TYPE_ACCESS_TOKEN => {
                let audience = actor.spiffe_id.to_string();
                let claims = self
                    .task_attestor
                    .verifier()
                    .verify(&p.subject_token, Some(&audience), now)
                    .map_err(|source| Forbidden::NotADelegation { actor: actor.spiffe_id.clone(), source })?;
                if claims.cnf.is_some() || claims.max_uses.is_some() {
                    return Err(Forbidden::ProofBound.into());
                }
                if claims.task_id.is_some() || claims.act.is_some() || claims.sub != claims.client_id {
                    return Err(Forbidden::ProofNotOwn.into());
                }
                if let Some(kind) = self.revocations.subject_revoked(&claims.sub, claims.iat) {
                    return Err(AttestError::SubjectRevoked { subject: claims.sub, kind }.into());
                }
                // One task per proof: a copied proof starts nothing more.
                let key = format!("delegation-proof:{}", claims.jti);
                if !self.ledger.store().meta_put_if_absent(&key, b"").await? {
                    return Err(Forbidden::ProofReused.into());
                }
                Ok((claims.sub, Some(claims.exp)))
            }
            other => Err(AttestError::UnsupportedTokenType(other.chars().take(200).collect()).into()),
        }
    }
}
