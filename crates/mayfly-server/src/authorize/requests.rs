//! What each request asks for, as policy sees it: one struct per Cedar action.

use std::net::IpAddr;

use super::Principal;
use crate::attest::WorkloadIdentity;
use crate::attest::task::TaskIdentity;

/// What a token-exchange request asks for, as policy sees it.
#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    /// The attested caller.
    pub principal: Principal<'a>,
    /// The audience asked for.
    pub audience: &'a str,
    /// The scopes asked for.
    pub scopes: &'a [String],
    /// The lifetime that would be granted.
    pub ttl_seconds: i64,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
    /// Whether the token will be bound to a DPoP key.
    pub dpop: bool,
    /// Whether the token will be bound to the TLS client certificate.
    pub mtls: bool,
    /// Limited use: how many verifications it allows (0: unlimited).
    pub max_uses: i64,
}

/// A request to start a task, as policy sees it.
#[derive(Debug, Clone)]
pub struct StartTaskRequest<'a> {
    /// The starter (a task for a sub-task).
    pub principal: Principal<'a>,
    /// The task that would be created.
    pub task: &'a TaskIdentity,
    /// Requested lifetime.
    pub ttl_seconds: i64,
    /// Audiences it is limited to.
    pub audiences: &'a [String],
    /// Whether to decide as if an approver had approved it.
    pub approved: bool,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

/// A request for a cloud token (or cloud credentials), as policy sees it.
#[derive(Debug, Clone)]
pub struct CloudRequest<'a> {
    /// The caller.
    pub principal: Principal<'a>,
    /// The configured cloud profile.
    pub profile: &'a str,
    /// `aws`, `gcp` or `azure`.
    pub kind: &'a str,
    /// The audience the token carries.
    pub audience: &'a str,
    /// Lifetime of the token or credentials.
    pub ttl_seconds: i64,
    /// Whether Mayfly exchanges the token with the cloud itself.
    pub exchange: bool,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

/// A request for an X.509 certificate (the Vault-compatible `pki/issue/<role>`), as policy sees it.
#[derive(Debug, Clone)]
pub struct CertificateRequest<'a> {
    /// The caller.
    pub principal: Principal<'a>,
    /// The certificate role.
    pub role: &'a str,
    /// The DNS names it would carry.
    pub dns_names: &'a [String],
    /// Its lifetime.
    pub ttl_seconds: i64,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

/// A request for a database credential, as policy sees it.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    /// The caller.
    pub principal: Principal<'a>,
    /// The configured database.
    pub database: &'a str,
    /// Its kind.
    pub kind: &'a str,
    /// The role.
    pub role: &'a str,
    /// Lease lifetime.
    pub ttl_seconds: i64,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

/// A Workload API caller asking for an SVID, as policy sees it.
#[derive(Debug, Clone)]
pub struct FetchSvidRequest<'a> {
    /// The workload its registration entry names.
    pub principal: &'a WorkloadIdentity,
    /// `x509` or `jwt`.
    pub profile: &'a str,
    /// The SVID's lifetime.
    pub ttl_seconds: i64,
    /// JWT-SVIDs: the audiences.
    pub audiences: &'a [String],
    /// The entry that matched.
    pub entry_id: &'a str,
    /// Unix seconds.
    pub now: i64,
}

/// A request to approve or deny a pending task, as policy sees it.
#[derive(Debug, Clone)]
pub struct ApproveRequest<'a> {
    /// The approver.
    pub approver: &'a WorkloadIdentity,
    /// The pending task.
    pub task: &'a TaskIdentity,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

/// A request to act for a subject that gave no proof, as policy sees it.
#[derive(Debug, Clone)]
pub struct ActForRequest<'a> {
    /// Who would act (the task's starter).
    pub principal: Principal<'a>,
    /// The subject named in `on_behalf_of`.
    pub subject: &'a str,
    /// The task's scopes.
    pub scopes: &'a [String],
    /// The task's lifetime.
    pub ttl_seconds: i64,
    /// The caller's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

/// One request through the credential-injecting proxy, as policy sees it.
#[derive(Debug, Clone)]
pub struct ProxyRequest<'a> {
    /// The workload (or task) that sent it.
    pub principal: Principal<'a>,
    /// The upstream's name.
    pub upstream: &'a str,
    /// The upstream's base URL.
    pub upstream_url: &'a str,
    /// The task's scopes (empty for a workload).
    pub scopes: &'a [String],
    /// The request's method.
    pub method: &'a str,
    /// The host asked for.
    pub host: &'a str,
    /// The path as sent.
    pub path: &'a str,
    /// Names of the query's parameters.
    pub query_keys: &'a [String],
    /// What is left of the caller's identity, in seconds.
    pub ttl_seconds: i64,
    /// The workload's address.
    pub source_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}
