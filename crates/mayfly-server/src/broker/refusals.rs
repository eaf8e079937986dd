//! What exactly went wrong, for the [`BrokerError`](super::BrokerError) variants that are
//! not policy, attestation or storage: one enum per variant, each case with typed fields
//! and its message written once, here. `deliver::http` and the Workload API map the outer
//! variant to a status; callers that react to a refusal match the case.
//!
//! Where a message truly comes from a lower layer, the case wraps that layer's error; a
//! guarded ledger write that lost a race (`LedgerError::Changed`) only says why in words,
//! so its cases carry that text as `why`.

use crate::attest::AttestError;
use crate::attest::delegation::SubjectError;
use crate::attest::entries::EntryError;
use crate::issue::svid::JwtSvidInvalid;
use crate::ledger::{DbLeaseState, RevocationKind, TaskState};
use crate::spiffe::SpiffeId;
use crate::verify::VerifyError;

/// The audience or resource is missing, repeated or not acceptable (`invalid_target`).
#[derive(Debug, thiserror::Error)]
pub enum InvalidTarget {
    /// A JWT-SVID's audience is empty or too long.
    #[error("audience is 1 to {max_bytes} bytes")]
    AudienceLength {
        /// Longest audience accepted, in bytes.
        max_bytes: usize,
    },
    /// A JWT-SVID was asked for without an audience.
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    /// A JWT-SVID was asked for with too many audiences.
    #[error("at most {max} audiences")]
    TooManyAudiences {
        /// Most audiences accepted.
        max: usize,
    },
    /// A JWT-SVID audience is empty, too long or not printable.
    #[error("each audience is 1 to {max_bytes} printable bytes")]
    BadAudience {
        /// Longest audience accepted, in bytes.
        max_bytes: usize,
    },
    /// A task's audience list is too long, or one of them is empty, too long or not printable.
    #[error("at most {max} audiences, each 1 to {max_bytes} bytes without control characters")]
    BadTaskAudiences {
        /// Most audiences a task may name.
        max: usize,
        /// Longest audience accepted, in bytes.
        max_bytes: usize,
    },
    /// A sub-task named an audience its parent may not get credentials for.
    #[error("audience {audience:?} is not among parent task {parent}'s audiences; a sub-task only narrows")]
    WiderThanParent {
        /// The audience asked for.
        audience: String,
        /// The parent task's id.
        parent: String,
    },
    /// A credential was asked for under a task, for an audience outside the task's.
    #[error("task {task} may get credentials for {} only, not {target}", .allowed.join(", "))]
    OutsideTask {
        /// The task's id.
        task: String,
        /// The audiences the task may get credentials for.
        allowed: Vec<String>,
        /// The audience asked for.
        target: String,
    },
    /// An access token was asked for with an audience a cloud takes: only a cloud profile issues those.
    #[error(
        "audience {audience:?} is a cloud's: ask for it through a cloud profile (POST /v1/clouds/{{profile}}/token)"
    )]
    CloudAudience {
        /// The audience asked for.
        audience: String,
    },
    /// AWS credentials were asked for with a cloud profile of another kind.
    #[error("cloud profile {profile:?} is {kind}, not aws")]
    NotAnAwsProfile {
        /// The profile.
        profile: String,
        /// Its kind.
        kind: &'static str,
    },
}

/// A scope is malformed or not offered for this audience (`invalid_scope`).
#[derive(Debug, thiserror::Error)]
pub enum InvalidScope {
    /// The scope parameter is longer than accepted.
    #[error("scope is longer than {max_bytes} bytes")]
    TooLong {
        /// Longest scope string accepted, in bytes.
        max_bytes: usize,
    },
    /// A scope has a character RFC 6749 does not allow.
    #[error("scopes use printable ASCII without '\"' or '\\'")]
    BadCharacters,
    /// More scopes than accepted.
    #[error("at most {max} scopes")]
    TooMany {
        /// Most scopes in one request.
        max: usize,
    },
    /// The audience does not offer this scope.
    #[error("scope {scope:?} is not offered for audience {audience:?}")]
    NotOffered {
        /// The scope asked for.
        scope: String,
        /// The audience asked for.
        audience: String,
    },
    /// A credential asked for under a task named a scope the task does not have.
    #[error("scope {scope:?} is not among task {task}'s scopes; scopes only narrow under a task")]
    WiderThanTask {
        /// The scope asked for.
        scope: String,
        /// The task's id.
        task: String,
    },
    /// A sub-task asked for a scope its parent does not have.
    #[error("scope {scope:?} is not among parent task {parent}'s scopes; a sub-task only narrows")]
    WiderThanParent {
        /// The scope asked for.
        scope: String,
        /// The parent task's id.
        parent: String,
    },
}

/// The request is malformed in another way (`invalid_request`).
#[derive(Debug, thiserror::Error)]
pub enum InvalidRequest {
    /// A proxy decision request that does not describe an HTTP request.
    #[error("proxy request: {why}")]
    ProxyRequest {
        /// What is wrong.
        why: String,
    },
    /// `requested_lifetime` is 0.
    #[error("requested_lifetime must be at least 1 second")]
    ZeroLifetime,
    /// `max_uses` is 0 or above the limit.
    #[error("max_uses is 1 to {max}")]
    MaxUsesOutOfRange {
        /// Most uses a limited-use token may allow.
        max: u32,
    },
    /// `ttl_seconds` is 0.
    #[error("ttl_seconds must be at least 1")]
    ZeroTtl,
    /// A certificate name that is not a DNS name Mayfly issues.
    #[error("{name:?} is not a DNS name (letters, digits, '-', dots; no wildcard; at most 253 bytes)")]
    BadDnsName {
        /// The name asked for (cut to 256 characters).
        name: String,
    },
    /// A certificate name outside the role's allowed domains.
    #[error("{name:?} is not allowed by certificate role {role:?}")]
    NameNotAllowed {
        /// The name asked for.
        name: String,
        /// The role.
        role: String,
    },
    /// A certificate with no name, or more than the most.
    #[error("a certificate carries 1 to {max} DNS names")]
    CertificateNames {
        /// The most names.
        max: usize,
    },
    /// A task's `ttl_seconds` is above the configured maximum.
    #[error("ttl_seconds {ttl} is above the maximum of {max}")]
    TaskTtlAboveMax {
        /// The lifetime asked for, in seconds.
        ttl: u64,
        /// The longest allowed, in seconds.
        max: u64,
    },
    /// A lease's `ttl_seconds` is above its role's maximum.
    #[error("ttl_seconds {ttl} is above the role's maximum of {max}")]
    LeaseTtlAboveMax {
        /// The lifetime asked for, in seconds.
        ttl: u64,
        /// The longest the role allows, in seconds.
        max: u64,
    },
    /// A free-text field is empty, too long or has control characters.
    #[error("{field} must be 1 to {max} characters without control characters")]
    BadText {
        /// The field's name.
        field: &'static str,
        /// Most characters accepted.
        max: usize,
    },
    /// A purpose or scope that only a Vault-compatible login sets.
    #[error("{what} {value:?} is reserved for logins through the Vault-compatible API")]
    ReservedForLogins {
        /// `purpose` or `scope`.
        what: &'static str,
        /// The value (cut to 64 characters).
        value: String,
    },
    /// Only one of `actor_token` and `actor_token_type` was sent.
    #[error("actor_token and actor_token_type are sent together")]
    ActorTokenWithoutType,
    /// A delegation named a parent, or its actor is not a workload.
    #[error("delegation starts a root task: the actor_token is a workload's evidence and parent is not set")]
    DelegationNotRoot,
    /// The actor of a delegation proved itself with something other than a workload's evidence.
    #[error("the actor_token is a workload's evidence")]
    ActorNotWorkload,
    /// The subject and the actor of a delegation are the same workload.
    #[error("the subject_token and the actor_token prove the same workload: drop actor_token")]
    SameWorkloadTwice,
    /// Platform evidence was expected, and a task token was sent.
    #[error("not platform evidence")]
    NotPlatformEvidence,
    /// A task token was expected, and platform evidence was sent.
    #[error("not a task token")]
    NotTaskToken,
    /// A task token was proven that names no task.
    #[error("a task token always names its task")]
    TaskTokenWithoutTask,
    /// A sub-task was to be re-attested; only a root task has platform evidence.
    #[error("task {task} is a sub-task of {parent}: only a task started with platform evidence is re-attested")]
    SubTaskReattested {
        /// The sub-task's id.
        task: String,
        /// Its parent's id.
        parent: String,
    },
    /// Re-attestation was sent something other than a platform JWT.
    #[error(
        "re-attestation takes a platform JWT ({jwt} or {id_token}); join tokens are single use and task tokens prove nothing new",
        jwt = mayfly_proto::TOKEN_TYPE_JWT,
        id_token = mayfly_proto::TOKEN_TYPE_ID_TOKEN
    )]
    ReattestNeedsPlatformJwt,
    /// The task's stored actor chain does not parse.
    #[error("stored task actor chain is not JSON: {0}")]
    StoredActorChain(#[source] serde_json::Error),
    /// A JWT-SVID to validate is empty or too long.
    #[error("svid is empty or too long")]
    SvidLength,
    /// A JWT-SVID did not validate.
    #[error(transparent)]
    SvidInvalid(#[from] JwtSvidInvalid),
    /// A JWT-SVID is covered by a revocation in force.
    #[error("JWT-SVID has been revoked (by {})", .by.as_str())]
    SvidRevoked {
        /// The kind of revocation that covers it.
        by: RevocationKind,
    },
    /// A registration entry's definition is malformed ([`EntryError::Invalid`]).
    #[error(transparent)]
    Entry(EntryError),
}

/// The server is too busy to serve this now; retrying later can succeed (`temporarily_unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Every attestation slot is taken.
    #[error("too many callers are being attested; retry")]
    AttestationsBusy,
    /// Attesting the caller did not finish in time.
    #[error("attesting the caller took too long; retry")]
    AttestationTimedOut,
    /// The evidence's issuer (its keys) could not be reached to check it.
    #[error("the evidence cannot be checked now ({0}); retry")]
    EvidenceUncheckable(#[source] AttestError),
    /// A reconciler took a new lease for abandoned before it was recorded as handed out.
    #[error("{why} before it could be handed out; retry")]
    LeaseTakenOver {
        /// What the ledger found changed.
        why: String,
    },
    /// Deciding again on the credentials a signal touches did not complete.
    #[error("re-deciding credentials failed")]
    RedecideFailed,
    /// A signing profile has no key that signs now.
    #[error("signing profile {profile:?} has no active key")]
    NoSigningKey {
        /// The profile.
        profile: String,
    },
    /// The HTTP client for AWS STS could not be built at start-up.
    #[error("no HTTP client for AWS STS")]
    NoStsClient,
}

/// The caller may not do this to that object: not policy, but ownership or a rule of tasks
/// and delegation (`invalid_request`, 403).
#[derive(Debug, thiserror::Error)]
pub enum Forbidden {
    /// Attesting the caller was cut short.
    #[error("attestation of the caller was interrupted")]
    AttestationInterrupted,
    /// A task token was presented to start a sub-task of another task.
    #[error("task {task} cannot start a sub-task of task {parent:?}: the parent is not yours")]
    NotYourParent {
        /// The calling task's id.
        task: String,
        /// The parent named.
        parent: String,
    },
    /// A workload named a parent task it did not start (or that does not exist).
    #[error("task {parent:?} was not started by {caller}: the parent is not yours")]
    NotYourTask {
        /// The parent named.
        parent: String,
        /// The calling workload.
        caller: SpiffeId,
    },
    /// A task token was presented to act on a task that is neither it nor below it.
    #[error("task {task} may act only on itself and its sub-tasks")]
    OutsideSubtree {
        /// The calling task's id.
        task: String,
    },
    /// A task is re-attested with another task's token.
    #[error("task {task} is re-attested with its own task token, not task {holder}'s")]
    ReattestWithOtherToken {
        /// The task to re-attest.
        task: String,
        /// The task whose token was presented.
        holder: String,
    },
    /// A sub-task would nest deeper than allowed.
    #[error("sub-tasks nest at most {max} deep; task {parent} is at depth {depth}")]
    TooDeep {
        /// The deepest nesting allowed.
        max: u32,
        /// The parent task's id.
        parent: String,
        /// The parent's depth.
        depth: i64,
    },
    /// A sub-task asked to act for another subject than its parent.
    #[error("a sub-task acts for the same subject as its parent; on_behalf_of cannot change")]
    SubjectChanged,
    /// `on_behalf_of` cannot be acted for as written.
    #[error(transparent)]
    NamedSubject(#[from] SubjectError),
    /// The starter is not what a login role requires.
    #[error("the caller does not match {rule}: {why}")]
    StarterRule {
        /// The rule's name.
        rule: String,
        /// What did not match.
        why: RuleMismatch,
    },
    /// `on_behalf_of` names another subject than the delegation proves.
    #[error("on_behalf_of names another subject than the subject_token proves ({proven})")]
    OtherSubject {
        /// The subject the proof names.
        proven: String,
    },
    /// The subject's token does not verify as addressed to the actor.
    #[error("the subject_token does not prove a delegation to {actor}: {source}")]
    NotADelegation {
        /// The actor the proof should be addressed to.
        actor: SpiffeId,
        /// Why it does not verify.
        source: VerifyError,
    },
    /// The subject's token is bound or limited-use: it proves its holder.
    #[error("the subject_token is bound to its holder (or limited-use): it proves its holder, not a delegation")]
    ProofBound,
    /// The subject's token was itself issued under a task or a delegation.
    #[error(
        "the subject_token was issued under a task or a delegation: only a subject's own token proves that it delegates"
    )]
    ProofNotOwn,
    /// The subject's token already proved a delegation.
    #[error("this subject_token was used as a proof before")]
    ProofReused,
    /// A task tried to approve or deny a task.
    #[error("a task cannot approve tasks; approvers are workloads")]
    TaskCannotApprove,
    /// The approver started the task, or acts in its chain.
    #[error("{approver} started task {task} (or acts in its chain) and cannot decide on it")]
    OwnTaskDecision {
        /// The approver.
        approver: SpiffeId,
        /// The task.
        task: String,
    },
    /// A lease was renewed by another identity than its holder.
    #[error("lease {lease} was not issued to {caller}")]
    NotYourLease {
        /// The lease's id.
        lease: String,
        /// The caller.
        caller: SpiffeId,
    },
    /// A verifier token without an audience was used to introspect.
    #[error(
        "this verifier token names no audience: a token for {verifier_audience}:<audience> introspects the tokens of that audience"
    )]
    VerifierWithoutAudience {
        /// The audience prefix of verifier tokens.
        verifier_audience: &'static str,
    },
}

/// What a starter rule found wrong with the caller (never the expected values).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuleMismatch {
    /// A task token cannot log in.
    #[error("a task token cannot log in; present the workload's platform evidence")]
    NotAWorkload,
    /// Another attestor verified the evidence.
    #[error("the evidence was verified by attestor {actual:?}, which the role does not take")]
    Attestor {
        /// The attestor that verified it.
        actual: String,
    },
    /// A bound attribute is missing or differs.
    #[error("attribute {name:?} does not match the role's bound value")]
    Attribute {
        /// The attribute.
        name: String,
    },
}

/// The object is not in a state that allows this (409, `invalid_request`).
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    /// A guarded ledger write lost a race: what it guarded on changed meanwhile.
    #[error("{why}")]
    Changed {
        /// What the ledger found changed.
        why: String,
    },
    /// A sub-task's parent changed while the sub-task was being recorded.
    #[error("parent {why}")]
    ParentChanged {
        /// What the ledger found changed (it names the parent and its state now).
        why: String,
    },
    /// A sub-task was asked for under a parent that is not active.
    #[error("parent task {parent} is {}", .state.as_str())]
    ParentNotActive {
        /// The parent's id.
        parent: String,
        /// Its state.
        state: TaskState,
    },
    /// Only a pending task can be approved or denied.
    #[error("task {task} is {}; only a pending task can be approved or denied", .state.as_str())]
    NotPending {
        /// The task's id.
        task: String,
        /// Its state.
        state: TaskState,
    },
    /// The task was decided by someone else meanwhile.
    #[error("{why}; it was not decided again")]
    DecidedMeanwhile {
        /// What the ledger found changed.
        why: String,
    },
    /// The task to end is already over.
    #[error("task {task} is already {}", .state.as_str())]
    TaskOver {
        /// The task's id.
        task: String,
        /// Its state.
        state: TaskState,
    },
    /// The task behind a task token is over.
    #[error("the task is already {}", .state.as_str())]
    TokenTaskOver {
        /// The task's state.
        state: TaskState,
    },
    /// The task behind a task token has expired.
    #[error("the task has expired")]
    TokenTaskExpired,
    /// A lease is not in a state that can be revoked.
    #[error("lease {lease} is {}", .state.as_str())]
    LeaseState {
        /// The lease's id.
        lease: String,
        /// Its state.
        state: DbLeaseState,
    },
    /// A lease is not active (or has expired) and cannot be renewed.
    #[error("lease {lease} is {} and cannot be renewed", .state.as_str())]
    LeaseNotRenewable {
        /// The lease's id.
        lease: String,
        /// Its state.
        state: DbLeaseState,
    },
    /// A revocation in force covers the lease to renew.
    #[error("lease {lease} is revoked (a {} revocation covers it) and cannot be renewed", .by.as_str())]
    LeaseRevoked {
        /// The lease's id.
        lease: String,
        /// The kind of revocation that covers it.
        by: RevocationKind,
    },
    /// The lease was revoked while it was being renewed.
    #[error("lease {lease} was revoked while it was being renewed")]
    LeaseRevokedMeanwhile {
        /// The lease's id.
        lease: String,
    },
    /// Another replica recorded the lease while its user was being dropped.
    #[error("the lease moved (another replica recorded it) while its user was being dropped")]
    LeaseMoved,
    /// A registration entry is a duplicate or read-only ([`EntryError::Duplicate`], [`EntryError::ReadOnly`]).
    #[error(transparent)]
    Entry(EntryError),
    /// A revocation covering the token landed while AWS STS answered: the credentials were withheld.
    #[error("the credentials were withheld: a {} revocation covered the request while AWS STS answered", .by.as_str())]
    RevokedDuringExchange {
        /// The kind of revocation.
        by: RevocationKind,
    },
    /// The task ends before the shortest AWS session would: the credentials could not be
    /// revoked with it.
    #[error(
        "the task ends in {left_secs} s; AWS credentials last at least {min_secs} s and could not be revoked with it"
    )]
    TaskEndsBeforeAwsSession {
        /// Seconds the task has left.
        left_secs: u64,
        /// AWS STS's shortest session.
        min_secs: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerError;

    /// The messages callers saw when these were strings, for the cases whose text is
    /// assembled from their fields: the typed cases must not change what clients read.
    #[test]
    fn messages_read_as_before() {
        let alice = SpiffeId::parse("spiffe://example.org/alice").expect("a SPIFFE ID");
        let cases: Vec<(BrokerError, &str)> = vec![
            (
                InvalidTarget::OutsideTask {
                    task: "t1".into(),
                    allowed: vec!["a".into(), "b".into()],
                    target: "c".into(),
                }
                .into(),
                "task t1 may get credentials for a, b only, not c",
            ),
            (
                InvalidScope::WiderThanParent { scope: "delete".into(), parent: "t1".into() }.into(),
                "scope \"delete\" is not among parent task t1's scopes; a sub-task only narrows",
            ),
            (InvalidScope::BadCharacters.into(), "scopes use printable ASCII without '\"' or '\\'"),
            (
                InvalidRequest::ReattestNeedsPlatformJwt.into(),
                "re-attestation takes a platform JWT (urn:ietf:params:oauth:token-type:jwt or \
                 urn:ietf:params:oauth:token-type:id_token); join tokens are single use and task tokens prove nothing new",
            ),
            (
                InvalidRequest::SvidRevoked { by: RevocationKind::Subject }.into(),
                "JWT-SVID has been revoked (by subject)",
            ),
            (
                InvalidRequest::BadText { field: "purpose", max: 9 }.into(),
                "purpose must be 1 to 9 characters without control characters",
            ),
            (
                Forbidden::NotYourTask { parent: "t1".into(), caller: alice.clone() }.into(),
                "task \"t1\" was not started by spiffe://example.org/alice: the parent is not yours",
            ),
            (
                Forbidden::OwnTaskDecision { approver: alice, task: "t1".into() }.into(),
                "spiffe://example.org/alice started task t1 (or acts in its chain) and cannot decide on it",
            ),
            (
                Forbidden::TooDeep { max: 4, parent: "t1".into(), depth: 4 }.into(),
                "sub-tasks nest at most 4 deep; task t1 is at depth 4",
            ),
            (
                Conflict::NotPending { task: "t1".into(), state: TaskState::Active }.into(),
                "task t1 is active; only a pending task can be approved or denied",
            ),
            (
                Conflict::LeaseRevoked { lease: "l1".into(), by: RevocationKind::Jti }.into(),
                "lease l1 is revoked (a jti revocation covers it) and cannot be renewed",
            ),
            (
                Conflict::LeaseNotRenewable { lease: "l1".into(), state: DbLeaseState::Revoking }.into(),
                "lease l1 is revoking and cannot be renewed",
            ),
            (Conflict::ParentChanged { why: "task t1 is now ended".into() }.into(), "parent task t1 is now ended"),
            (
                Unavailable::LeaseTakenOver { why: "lease l1 changed".into() }.into(),
                "lease l1 changed before it could be handed out; retry",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message, "{error:?}");
        }
    }
}
