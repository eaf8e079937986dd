//! X.509 certificates from Mayfly's CA for named roles (the Vault-compatible `pki/issue/<role>`):
//! attest → names within the role → Cedar (`Action::"certificate"`) → mint → record.
//!
//! The certificate's only URI SAN is the caller's SPIFFE ID (a task's, under a task), so a
//! relying party that checks SPIFFE IDs sees who holds it; its DNS names are those asked
//! for, each within the role's allowed domains, and policy sees them.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;

use crate::authorize::CertificateRequest;
use crate::broker::{Broker, BrokerError, Caller, InvalidRequest, RecordFacts};
use crate::issue::IssuedToken;
use crate::issue::svid::MintedX509Svid;

/// Most DNS names in one certificate.
pub const MAX_DNS_NAMES: usize = 32;

/// A certificate role: which names it may carry and for how long.
#[derive(Debug, Clone)]
pub struct CertificateRole {
    /// The role's name (`Mayfly::CertificateRole::"<name>"`).
    pub name: String,
    /// Domains the names must be (or, with `allow_subdomains`, be under).
    pub allowed_domains: Vec<String>,
    /// Whether names below an allowed domain are allowed.
    pub allow_subdomains: bool,
    /// Longest lifetime (and the default).
    pub max_ttl: Duration,
}

impl CertificateRole {
    fn allows(&self, name: &str) -> bool {
        self.allowed_domains.iter().any(|d| {
            name == d || (self.allow_subdomains && name.strip_suffix(d.as_str()).is_some_and(|h| h.ends_with('.')))
        })
    }
}

/// A request for a certificate.
pub struct CertificateParams<'a> {
    /// The caller's evidence type.
    pub token_type: &'a str,
    /// The caller's evidence. Secret.
    pub token: &'a str,
    /// The role.
    pub role: &'a CertificateRole,
    /// DNS names asked for.
    pub dns_names: Vec<String>,
    /// Lifetime wanted (capped at the role's maximum and the task's end).
    pub ttl_seconds: Option<u64>,
    /// The caller's address.
    pub source_ip: IpAddr,
}

/// A DNS name as Mayfly issues it: lower case, labels of letters, digits and '-'.
fn dns_name(raw: &str) -> Result<String, BrokerError> {
    let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(InvalidRequest::BadDnsName { name: raw.chars().take(256).collect() }.into());
    }
    Ok(name)
}

impl Broker {
    /// Issues a certificate for the attested caller, recorded before it is returned.
    pub async fn issue_certificate(&self, p: CertificateParams<'_>) -> Result<MintedX509Svid, BrokerError> {
        let mut names = Vec::new();
        for raw in &p.dns_names {
            let name = dns_name(raw)?;
            if !p.role.allows(&name) {
                return Err(InvalidRequest::NameNotAllowed { name, role: p.role.name.clone() }.into());
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() || names.len() > MAX_DNS_NAMES {
            return Err(InvalidRequest::CertificateNames { max: MAX_DNS_NAMES }.into());
        }
        let max = p.role.max_ttl.as_secs();
        let mut ttl = match p.ttl_seconds {
            Some(0) => return Err(InvalidRequest::ZeroTtl.into()),
            Some(t) => t.min(max),
            None => max,
        } as i64;
        let now = crate::clock::now_unix();
        let caller = self.attest(p.token_type, p.token, p.source_ip, now).await?;
        let audience = format!("pki:{}", p.role.name);
        let task_id = match &caller {
            Caller::Workload(_) => None,
            Caller::Task(t) => {
                if t.task.state == crate::ledger::TaskState::Pending {
                    return Err(BrokerError::TaskPending { task: t.task.id.clone() });
                }
                crate::broker::tasks::check_task_audience(&t.task, &audience)?;
                // Nothing issued under a task outlives it.
                ttl = ttl.min(t.task.expires_at - now).max(1);
                Some(t.task.id.clone())
            }
        };
        let decision = self.policies.decide_certificate(&CertificateRequest {
            principal: caller.principal(),
            role: &p.role.name,
            dns_names: &names,
            ttl_seconds: ttl,
            source_ip: p.source_ip,
            now,
        });
        let detail = || json!({"action": "certificate", "role": p.role.name, "dns_names": names, "ttl_seconds": ttl});
        self.check_decision(&caller, &decision, detail, p.source_ip).await?;

        let subject = caller.spiffe_id();
        let cert = self.svids.mint_x509(&subject, &names, ttl, now).map_err(|e| BrokerError::Issue(e.into()))?;
        let issued = IssuedToken {
            token: String::new(),
            jti: cert.serial.clone(),
            issued_at: cert.issued_at,
            expires_at: cert.expires_at,
            kid: cert.authority.clone(),
            scope: String::new(),
        };
        let context = caller.issuance_context(p.source_ip);
        let facts = RecordFacts {
            kind: "x509",
            subject: &subject,
            audience: &audience,
            task_id: task_id.as_deref(),
            client_id: &subject,
            confirmation: None,
            max_uses: None,
            context: context.as_deref(),
        };
        let detail = json!({"role": p.role.name, "dns_names": names, "attestor": caller.attestor(),
                            "policies": decision.policies, "source_ip": p.source_ip.to_string()});
        let (record, event) = self.minted_record(&cert.cert, &issued, &facts, detail);
        self.record_issued("x509", vec![record], vec![event]).await?;
        Ok(cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_names_within_the_role() {
        let role = CertificateRole {
            name: "web".into(),
            allowed_domains: vec!["svc.internal".into()],
            allow_subdomains: true,
            max_ttl: Duration::from_secs(3600),
        };
        assert!(role.allows("svc.internal") && role.allows("api.svc.internal"));
        assert!(!role.allows("evilsvc.internal") && !role.allows("svc.internal.evil.com"));
        let exact = CertificateRole { allow_subdomains: false, ..role };
        assert!(!exact.allows("api.svc.internal"));
        assert_eq!(dns_name("API.svc.internal.").unwrap(), "api.svc.internal");
        for bad in ["*.svc.internal", "a..b", "-a.b", "a b", "", "ä.b"] {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
    }
}
