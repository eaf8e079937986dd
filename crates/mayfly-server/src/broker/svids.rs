//! The Workload API's flow, without gRPC: a local caller attested by the kernel →
//! its registration entries → Cedar → an SVID minted → recorded in the ledger.
//! `deliver::workload_api` serves it on the socket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::json;

use crate::attest::entries::Entry;
use crate::attest::unix::{PeerCredentials, UnixWorkload};
use crate::attest::{AttestError, WorkloadIdentity};
use crate::authorize::FetchSvidRequest;
use crate::broker::{
    Broker, BrokerError, Caller, Conflict, Forbidden, InvalidRequest, InvalidTarget, RecordFacts, Unavailable,
};
use crate::issue::IssuedToken;
use crate::issue::svid::{MintedJwtSvid, MintedX509Svid};
use crate::ledger::revocations::CredentialFacts;

/// Most attestations (each may read and hash an executable) running at once.
pub const ATTESTATIONS_AT_ONCE: usize = 8;
/// Longest an attestation may take, waiting for its turn included.
const ATTESTATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most audiences in one JWT-SVID request.
pub const MAX_AUDIENCES: usize = 16;
/// Longest audience accepted.
pub const MAX_AUDIENCE_BYTES: usize = 256;

/// An X.509-SVID a caller holds, with when it is due for rotation.
#[derive(Debug, Clone)]
pub struct HeldX509Svid {
    /// The entry it was issued for.
    pub entry: Arc<Entry>,
    /// The certificate and key.
    pub svid: MintedX509Svid,
    /// Unix seconds: half its lifetime, less some jitter so a fleet does not rotate at once.
    pub rotate_at: i64,
}

/// A JWT-SVID minted for a caller.
#[derive(Debug, Clone)]
pub struct IssuedJwtSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The token.
    pub svid: MintedJwtSvid,
    /// The entry's hint.
    pub hint: Option<String>,
}

impl Broker {
    /// The SVID authorities (bundles, rotation).
    pub fn svid_authorities(&self) -> &Arc<crate::issue::svid::SvidAuthorities> {
        &self.svids
    }

    /// Starts a new SVID authority generation (sealed under `kek`); returns its id.
    pub async fn rotate_svid_authority(&self, kek: &crate::keys::Kek) -> Result<String, crate::issue::svid::SvidError> {
        self.svids.rotate(self.ledger.store().as_ref(), kek).await
    }

    /// The registration entries.
    pub fn entries(&self) -> &Arc<crate::attest::entries::Entries> {
        &self.entries
    }

    /// Attests a socket peer off the async threads (it may hash the executable). At most
    /// `ATTESTATIONS_AT_ONCE` run together and each gets `ATTESTATION_TIMEOUT`: a caller whose
    /// executable is slow to read (a stalled file system) cannot take every blocking thread.
    pub async fn attest_local(&self, peer: PeerCredentials) -> Result<UnixWorkload, BrokerError> {
        let busy = || BrokerError::Unavailable(Unavailable::AttestationsBusy);
        let permit = tokio::time::timeout(ATTESTATION_TIMEOUT, self.attestations.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let unix = self.unix.clone();
        let hash = self.entries.uses_selector("sha256");
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            unix.attest(peer, hash)
        });
        match tokio::time::timeout(ATTESTATION_TIMEOUT, work).await {
            Ok(Ok(result)) => result.map_err(|e| BrokerError::Attest(AttestError::from(e))),
            Ok(Err(_)) => Err(Forbidden::AttestationInterrupted.into()),
            Err(_) => Err(Unavailable::AttestationTimedOut.into()),
        }
    }

    /// The entries a caller is entitled to now: matching its selectors, and not under a
    /// subject revocation (a revoked identity is not re-issued while the revocation stands).
    pub fn entitled(&self, w: &UnixWorkload) -> Vec<Arc<Entry>> {
        let selectors = w.selectors();
        self.entries
            .matching(&selectors)
            .into_iter()
            .filter(|e| !self.revocations.names_subject(&e.spec.spiffe_id))
            .collect()
    }

    /// The workload identity policy sees for a caller under an entry.
    fn identity_under(&self, w: &UnixWorkload, entry: &Entry) -> WorkloadIdentity {
        // The entry's attributes first, so attested facts win on a clash.
        let mut attributes = entry.spec.attributes.clone();
        attributes.extend(w.attributes());
        WorkloadIdentity { spiffe_id: entry.spiffe_id.clone(), attestor: "unix".into(), attributes }
    }

    /// Asks policy: the deciding policies when allowed, `None` when denied (the denial is audited).
    async fn allow_svid(
        &self,
        identity: WorkloadIdentity,
        entry: &Entry,
        profile: &str,
        ttl: i64,
        audiences: &[String],
        now: i64,
    ) -> Result<Option<Vec<String>>, BrokerError> {
        let decision = self.policies.decide_fetch_svid(&FetchSvidRequest {
            principal: &identity,
            profile,
            ttl_seconds: ttl,
            audiences,
            entry_id: &entry.id,
            now,
        });
        let detail = || json!({"action": "fetch_svid", "profile": profile, "entry": entry.id, "audiences": audiences});
        let caller = Caller::Workload(identity);
        match self.check_decision(&caller, &decision, detail, IpAddr::V4(Ipv4Addr::LOCALHOST)).await {
            Ok(()) => Ok(Some(decision.policies)),
            Err(BrokerError::Denied(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a held X.509-SVID has been revoked.
    pub fn x509_svid_revoked(&self, held: &HeldX509Svid) -> bool {
        self.revocations
            .revoked_by(&CredentialFacts {
                jti: &held.svid.serial,
                subject: &held.entry.spec.spiffe_id,
                audience: "",
                task_id: None,
                issued_at: held.svid.issued_at,
            })
            .is_some()
    }

    /// The X.509-SVIDs a caller should hold now: what it holds is kept while its entry is
    /// unchanged, unrevoked and before rotation; the rest is minted and recorded.
    /// An empty answer means the caller has no identity.
    pub async fn x509_svids(&self, w: &UnixWorkload, held: &[HeldX509Svid]) -> Result<Vec<HeldX509Svid>, BrokerError> {
        let now = crate::clock::now_unix();
        let mut out = Vec::new();
        let mut records = Vec::new();
        let mut events = Vec::new();
        let by_entry: HashMap<&str, &HeldX509Svid> = held.iter().map(|h| (h.entry.id.as_str(), h)).collect();
        for entry in self.entitled(w) {
            if let Some(h) = by_entry.get(entry.id.as_str())
                && *h.entry == *entry
                && now < h.rotate_at
                && !self.x509_svid_revoked(h)
            {
                out.push((*h).clone());
                continue;
            }
            let ttl = entry.spec.x509_svid_ttl.unwrap_or(self.workload_api.x509_svid_ttl.as_secs()) as i64;
            let identity = self.identity_under(w, &entry);
            let Some(policies) = self.allow_svid(identity, &entry, "x509", ttl, &[], now).await? else {
                continue;
            };
            let svid = self
                .svids
                .mint_x509(&entry.spec.spiffe_id, &entry.spec.dns_names, ttl, now)
                .map_err(|e| BrokerError::Issue(e.into()))?;
            let lifetime = svid.expires_at - svid.issued_at;
            let jitter = (rand::random::<u64>() % (lifetime as u64 / 10 + 1)) as i64;
            // At least a second later: a very short lifetime must not make the stream spin.
            let rotate_at = (svid.issued_at + lifetime / 2 - jitter).max(svid.issued_at + 1);
            let issued = IssuedToken {
                token: String::new(),
                jti: svid.serial.clone(),
                issued_at: svid.issued_at,
                expires_at: svid.expires_at,
                kid: svid.authority.clone(),
                scope: String::new(),
            };
            let (record, event) = self.minted_record(
                &svid.cert,
                &issued,
                &svid_facts("x509-svid", &entry.spec.spiffe_id, ""),
                json!({"entry": entry.id, "pid": w.pid, "uid": w.uid, "attestor": "unix", "policies": policies}),
            );
            records.push(record);
            events.push(event);
            out.push(HeldX509Svid { entry, svid, rotate_at });
        }
        // Recorded before delivery: a crash after this leaves nothing Mayfly cannot see.
        self.record_issued("x509-svid", records, events).await?;
        Ok(out)
    }

    /// Mints and records JWT-SVIDs for the caller's identities (or the one named), for the audiences.
    pub async fn jwt_svids(
        &self,
        w: &UnixWorkload,
        audiences: &[String],
        spiffe_id: Option<&str>,
    ) -> Result<Vec<IssuedJwtSvid>, BrokerError> {
        check_audiences(audiences)?;
        let now = crate::clock::now_unix();
        let mut out = Vec::new();
        let mut records = Vec::new();
        let mut events = Vec::new();
        for entry in self.entitled(w) {
            if spiffe_id.is_some_and(|id| id != entry.spec.spiffe_id) {
                continue;
            }
            let ttl = entry.spec.jwt_svid_ttl.unwrap_or(self.workload_api.jwt_svid_ttl.as_secs()) as i64;
            let identity = self.identity_under(w, &entry);
            let Some(policies) = self.allow_svid(identity, &entry, "jwt", ttl, audiences, now).await? else {
                continue;
            };
            // The record holds one audience; a revocation (a block) of any of them refuses the SVID.
            for audience in audiences {
                self.refuse_if_revoked(&CredentialFacts {
                    jti: "",
                    subject: &entry.spec.spiffe_id,
                    audience,
                    task_id: None,
                    issued_at: now,
                })?;
            }
            let svid = self
                .svids
                .mint_jwt(&entry.spec.spiffe_id, audiences, ttl, now)
                .map_err(|e| BrokerError::Issue(e.into()))?;
            let issued = IssuedToken {
                token: svid.token.clone(),
                jti: svid.jti.clone(),
                issued_at: svid.issued_at,
                expires_at: svid.expires_at,
                kid: svid.kid.clone(),
                scope: String::new(),
            };
            // The ledger's audience column holds one value: the first audience (all are in the audit detail).
            let (record, event) = self.issued_record(
                &issued,
                &svid_facts("jwt-svid", &entry.spec.spiffe_id, &audiences[0]),
                json!({"entry": entry.id, "pid": w.pid, "uid": w.uid, "attestor": "unix", "audiences": audiences,
                       "policies": policies}),
            );
            records.push(record);
            events.push(event);
            out.push(IssuedJwtSvid { spiffe_id: entry.spec.spiffe_id.clone(), svid, hint: entry.spec.hint.clone() });
        }
        self.record_issued("jwt-svid", records, events).await?;
        Ok(out)
    }

    /// Validates a JWT-SVID of this trust domain for an audience, revocations included.
    pub fn validate_jwt_svid(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<(String, serde_json::Map<String, serde_json::Value>), BrokerError> {
        if audience.is_empty() || audience.len() > MAX_AUDIENCE_BYTES {
            return Err(InvalidTarget::AudienceLength { max_bytes: MAX_AUDIENCE_BYTES }.into());
        }
        if token.is_empty() || token.len() > crate::attest::MAX_SUBJECT_TOKEN_BYTES {
            return Err(InvalidRequest::SvidLength.into());
        }
        let claims = self.svids.validate_jwt(token, audience).map_err(InvalidRequest::SvidInvalid)?;
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let jti = claims.get("jti").and_then(|v| v.as_str()).unwrap_or_default();
        let iat = claims.get("iat").and_then(serde_json::Value::as_i64).unwrap_or(i64::MIN);
        let facts = CredentialFacts { jti, subject: &sub, audience, task_id: None, issued_at: iat };
        if let Some(kind) = self.revocations.revoked_by(&facts) {
            return Err(InvalidRequest::SvidRevoked { by: kind }.into());
        }
        Ok((sub, claims))
    }
}

impl From<crate::attest::entries::EntryError> for BrokerError {
    fn from(e: crate::attest::entries::EntryError) -> Self {
        use crate::attest::entries::EntryError as E;
        match e {
            e @ E::Invalid(_) => InvalidRequest::Entry(e).into(),
            E::NotFound(id) => BrokerError::NotFound(super::Missing::Entry(id)),
            e @ (E::Duplicate(_) | E::ReadOnly(_)) => Conflict::Entry(e).into(),
            E::Ledger(l) => BrokerError::Ledger(l),
        }
    }
}

fn svid_facts<'a>(kind: &'a str, spiffe_id: &'a str, audience: &'a str) -> RecordFacts<'a> {
    RecordFacts {
        kind,
        subject: spiffe_id,
        audience,
        task_id: None,
        client_id: spiffe_id,
        confirmation: None,
        max_uses: None,
        context: None,
    }
}

fn check_audiences(audiences: &[String]) -> Result<(), BrokerError> {
    if audiences.is_empty() {
        return Err(InvalidTarget::NoAudience.into());
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(InvalidTarget::TooManyAudiences { max: MAX_AUDIENCES }.into());
    }
    if audiences.iter().any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_BYTES || a.chars().any(char::is_control)) {
        return Err(InvalidTarget::BadAudience { max_bytes: MAX_AUDIENCE_BYTES }.into());
    }
    Ok(())
}
