//! Authorization: Cedar policies decide every request at the moment of use.
//!
//! Policies come from a directory of `*.cedar` files and are validated against
//! [`SCHEMA`] when they load. Default deny. A reload that fails keeps the
//! policies in force and reports why.

pub mod config;
mod entities;
mod loading;
mod requests;
mod values;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request, Schema,
};

use crate::attest::WorkloadIdentity;
pub use crate::attest::contexts::SignalledFacts;
use crate::attest::task::TaskIdentity;
use entities::{entity_set, remembered_exchange_entities};
pub use loading::schema;
use loading::{fingerprint, load_dir, read_sources};
pub use requests::{
    ActForRequest, ApproveRequest, CertificateRequest, CloudRequest, ExchangeRequest, FetchSvidRequest, IssueRequest,
    ProxyRequest, StartTaskRequest,
};
use values::{boolean, context, ip_value, long, now_value, scope_values, string, text, texts};

/// The Cedar schema every policy is validated against.
pub const SCHEMA: &str = include_str!("schema.cedarschema");

/// Why policies could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The directory or a file could not be read.
    #[error("cannot read policies from {path}: {cause}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A file does not parse.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// Policies do not validate against the schema.
    #[error("policies do not validate against the Mayfly schema:\n{0}")]
    Invalid(String),
    /// The built-in schema does not parse (a bug).
    #[error("built-in schema: {0}")]
    Schema(String),
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The policies that decided: the permits that allowed, or the forbids that denied.
    /// Empty on a default deny.
    pub policies: Vec<String>,
    /// Policies that failed to evaluate for this request (they are skipped).
    pub errors: Vec<String>,
}

impl Decision {
    /// A one-line reason for a denial, naming the deciding policies (never secrets).
    pub fn reason(&self) -> String {
        if !self.errors.is_empty() && !self.allowed {
            return "a policy failed to evaluate for this request, so it is denied (see the server log)".to_owned();
        }
        if self.allowed {
            format!("allowed by {}", self.policies.join(", "))
        } else if self.policies.is_empty() {
            "no policy permits this request (default deny)".to_owned()
        } else {
            format!("forbidden by policy {}", self.policies.join(", "))
        }
    }
}

/// Who is asking: an attested workload or a task.
#[derive(Debug, Clone, Copy)]
pub enum Principal<'a> {
    /// A workload attested by platform evidence or a join token.
    Workload(&'a WorkloadIdentity),
    /// A task, by its task token.
    Task(&'a TaskIdentity),
}

/// A loaded policy set.
#[derive(Debug)]
pub struct LoadedPolicies {
    set: PolicySet,
    /// Content hash of the source files.
    pub fingerprint: String,
    /// How many policies.
    pub count: usize,
}

/// Cedar policies plus the schema, swapped atomically on reload.
pub struct PolicyEngine {
    dir: PathBuf,
    schema: Schema,
    authorizer: Authorizer,
    current: ArcSwap<LoadedPolicies>,
    workload_type: EntityTypeName,
    task_type: EntityTypeName,
    audience_type: EntityTypeName,
    role_type: EntityTypeName,
    svid_type: EntityTypeName,
    cloud_type: EntityTypeName,
    certificate_role_type: EntityTypeName,
    upstream_type: EntityTypeName,
    subject_type: EntityTypeName,
    exchange_action: EntityUid,
    fetch_svid_action: EntityUid,
    issue_action: EntityUid,
    start_task_action: EntityUid,
    approve_action: EntityUid,
    act_for_action: EntityUid,
    cloud_action: EntityUid,
    certificate_action: EntityUid,
    proxy_action: EntityUid,
    /// Signalled contexts, once the server has them.
    signalled: std::sync::OnceLock<Arc<dyn SignalledFacts>>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Loads and validates the policies in `dir`.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let loaded = load_dir(dir, &schema)?;
        let parse = |s: &str| EntityTypeName::from_str(s).map_err(|e| PolicyError::Schema(e.to_string()));
        let action = |name: &str| {
            EntityUid::from_str(&format!(r#"Mayfly::Action::"{name}""#)).map_err(|e| PolicyError::Schema(e.to_string()))
        };
        Ok(Self {
            dir: dir.to_owned(),
            authorizer: Authorizer::new(),
            current: ArcSwap::from_pointee(loaded),
            workload_type: parse("Mayfly::Workload")?,
            task_type: parse("Mayfly::Task")?,
            audience_type: parse("Mayfly::Audience")?,
            role_type: parse("Mayfly::Role")?,
            svid_type: parse("Mayfly::Svid")?,
            cloud_type: parse("Mayfly::Cloud")?,
            certificate_role_type: parse("Mayfly::CertificateRole")?,
            upstream_type: parse("Mayfly::Upstream")?,
            subject_type: parse("Mayfly::Subject")?,
            exchange_action: action("exchange")?,
            fetch_svid_action: action("fetch_svid")?,
            issue_action: action("issue")?,
            start_task_action: action("start_task")?,
            approve_action: action("approve")?,
            act_for_action: action("act_for")?,
            cloud_action: action("cloud")?,
            certificate_action: action("certificate")?,
            proxy_action: action("proxy")?,
            signalled: std::sync::OnceLock::new(),
            schema,
        })
    }

    /// Makes every decision also answer to what signals said about the principal (see
    /// [`SignalledFacts`]). Set once, at start-up; later calls are ignored.
    pub fn use_signalled_facts(&self, facts: Arc<dyn SignalledFacts>) {
        let _ = self.signalled.set(facts);
    }

    /// `decide` on the principal as attested and, when signals changed its context, again
    /// with the signalled facts over it: allowed only if both allow.
    fn decide_with_signals(
        &self,
        principal: Principal<'_>,
        now: i64,
        decide: impl Fn(Principal<'_>) -> Decision,
    ) -> Decision {
        let attested = decide(principal);
        let Some(facts) = self.signalled.get().filter(|f| !f.is_empty()) else { return attested };
        if !attested.allowed {
            return attested;
        }
        let subject = match principal {
            Principal::Workload(w) => w.spiffe_id.to_string(),
            // A task's tags are its starter's attributes: what was said about the starter counts.
            Principal::Task(t) => match t.actors.last() {
                Some(root) => root.clone(),
                None => return attested,
            },
        };
        let Some(signalled) = facts.signalled(&subject, now) else { return attested };
        let in_context = match principal {
            Principal::Workload(w) => {
                let mut w = w.clone();
                w.attributes.extend(signalled);
                decide(Principal::Workload(&w))
            }
            Principal::Task(t) => {
                let mut t = t.clone();
                t.attributes.extend(signalled);
                decide(Principal::Task(&t))
            }
        };
        if in_context.allowed { attested } else { in_context }
    }

    /// The directory policies come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policies in force.
    pub fn current(&self) -> Arc<LoadedPolicies> {
        self.current.load_full()
    }

    /// The content hash of the directory as it is now on disk.
    pub fn fingerprint_on_disk(&self) -> Result<String, PolicyError> {
        read_sources(&self.dir).map(|files| fingerprint(&files))
    }

    /// Reloads from disk. On error the policies in force stay; `Ok(None)` means nothing changed.
    pub fn reload(&self) -> Result<Option<Arc<LoadedPolicies>>, PolicyError> {
        let loaded = load_dir(&self.dir, &self.schema)?;
        if loaded.fingerprint == self.current.load().fingerprint {
            return Ok(None);
        }
        let loaded = Arc::new(loaded);
        self.current.store(loaded.clone());
        Ok(Some(loaded))
    }

    /// Decides a token-exchange request.
    pub fn decide_exchange(&self, req: &ExchangeRequest<'_>) -> Decision {
        self.decide_with_signals(req.principal, req.now, |principal| {
            self.decide_exchange_as(&ExchangeRequest { principal, ..req.clone() })
        })
    }

    fn decide_exchange_as(&self, req: &ExchangeRequest<'_>) -> Decision {
        self.decide(|| {
            let resource = EntityUid::from_type_name_and_id(self.audience_type.clone(), EntityId::new(req.audience));
            let build = || {
                let (principal, mut entities) = self.principal(req.principal)?;
                entities.push(Entity::new_no_attrs(resource.clone(), Default::default()));
                Ok((principal, entity_set(entities)?))
            };
            let (principal, entities) = match req.principal {
                Principal::Workload(w) => remembered_exchange_entities(w, req.audience, build)?,
                Principal::Task(_) => build()?,
            };
            let context = context([
                ("scopes", texts(req.scopes.iter().map(String::as_str))),
                ("ttl_seconds", long(req.ttl_seconds)),
                ("source_ip", ip_value(req.source_ip)?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
                ("dpop", boolean(req.dpop)),
                ("mtls", boolean(req.mtls)),
                ("max_uses", long(req.max_uses)),
            ]);
            Ok((principal, self.exchange_action.clone(), resource, context, entities))
        })
    }

    /// Decides a database-credential request.
    pub fn decide_issue(&self, req: &IssueRequest<'_>) -> Decision {
        self.decide_with_signals(req.principal, req.now, |principal| {
            self.decide_issue_as(&IssueRequest { principal, ..req.clone() })
        })
    }

    fn decide_issue_as(&self, req: &IssueRequest<'_>) -> Decision {
        self.decide(|| {
            let (principal, mut entities) = self.principal(req.principal)?;
            let id = format!("{}/{}", req.database, req.role);
            let resource = EntityUid::from_type_name_and_id(self.role_type.clone(), EntityId::new(&id));
            let attrs = [
                ("database".to_owned(), string(req.database)),
                ("kind".to_owned(), string(req.kind)),
                ("role".to_owned(), string(req.role)),
            ];
            let attrs = attrs.into_iter().collect();
            entities.push(Entity::new(resource.clone(), attrs, Default::default()).map_err(|e| e.to_string())?);
            let context = context([
                ("scopes", texts([])),
                ("ttl_seconds", long(req.ttl_seconds)),
                ("source_ip", ip_value(req.source_ip)?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
            ]);
            Ok((principal, self.issue_action.clone(), resource, context, entity_set(entities)?))
        })
    }

    /// Decides a request for a cloud token or cloud credentials.
    pub fn decide_cloud(&self, req: &CloudRequest<'_>) -> Decision {
        self.decide_with_signals(req.principal, req.now, |principal| {
            self.decide_cloud_as(&CloudRequest { principal, ..req.clone() })
        })
    }

    fn decide_cloud_as(&self, req: &CloudRequest<'_>) -> Decision {
        self.decide(|| {
            let (principal, mut entities) = self.principal(req.principal)?;
            let resource = EntityUid::from_type_name_and_id(self.cloud_type.clone(), EntityId::new(req.profile));
            let attrs = [
                ("kind".to_owned(), string(req.kind)),
                ("name".to_owned(), string(req.profile)),
                ("audience".to_owned(), string(req.audience)),
            ];
            let attrs = attrs.into_iter().collect();
            entities.push(Entity::new(resource.clone(), attrs, Default::default()).map_err(|e| e.to_string())?);
            let context = context([
                ("scopes", texts([])),
                ("ttl_seconds", long(req.ttl_seconds)),
                ("exchange", boolean(req.exchange)),
                ("source_ip", ip_value(req.source_ip)?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
            ]);
            Ok((principal, self.cloud_action.clone(), resource, context, entity_set(entities)?))
        })
    }

    /// Decides a request for an X.509 certificate of a certificate role.
    pub fn decide_certificate(&self, req: &CertificateRequest<'_>) -> Decision {
        self.decide_with_signals(req.principal, req.now, |principal| {
            self.decide_certificate_as(&CertificateRequest { principal, ..req.clone() })
        })
    }

    fn decide_certificate_as(&self, req: &CertificateRequest<'_>) -> Decision {
        self.decide(|| {
            let (principal, mut entities) = self.principal(req.principal)?;
            let resource =
                EntityUid::from_type_name_and_id(self.certificate_role_type.clone(), EntityId::new(req.role));
            let attrs = [("name".to_owned(), string(req.role))].into_iter().collect();
            entities.push(Entity::new(resource.clone(), attrs, Default::default()).map_err(|e| e.to_string())?);
            let context = context([
                ("scopes", texts([])),
                ("dns_names", texts(req.dns_names.iter().map(String::as_str))),
                ("ttl_seconds", long(req.ttl_seconds)),
                ("source_ip", ip_value(req.source_ip)?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
            ]);
            Ok((principal, self.certificate_action.clone(), resource, context, entity_set(entities)?))
        })
    }

    /// Decides one request a workload sends through the credential-injecting proxy.
    pub fn decide_proxy(&self, req: &ProxyRequest<'_>) -> Decision {
        self.decide_with_signals(req.principal, req.now, |principal| {
            self.decide_proxy_as(&ProxyRequest { principal, ..req.clone() })
        })
    }

    fn decide_proxy_as(&self, req: &ProxyRequest<'_>) -> Decision {
        self.decide(|| {
            let (principal, mut entities) = self.principal(req.principal)?;
            let resource = EntityUid::from_type_name_and_id(self.upstream_type.clone(), EntityId::new(req.upstream));
            let attrs = [("name".to_owned(), string(req.upstream)), ("url".to_owned(), string(req.upstream_url))]
                .into_iter()
                .collect();
            entities.push(Entity::new(resource.clone(), attrs, Default::default()).map_err(|e| e.to_string())?);
            let context = context([
                ("scopes", texts(req.scopes.iter().map(String::as_str))),
                ("method", text(req.method)),
                ("host", text(req.host)),
                ("path", text(req.path)),
                ("query_keys", texts(req.query_keys.iter().map(String::as_str))),
                ("ttl_seconds", long(req.ttl_seconds)),
                ("source_ip", ip_value(req.source_ip)?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
            ]);
            Ok((principal, self.proxy_action.clone(), resource, context, entity_set(entities)?))
        })
    }

    /// Decides a Workload API caller's request for an SVID.
    pub fn decide_fetch_svid(&self, req: &FetchSvidRequest<'_>) -> Decision {
        self.decide_with_signals(Principal::Workload(req.principal), req.now, |principal| {
            let Principal::Workload(w) = principal else { return self.decide_fetch_svid_as(req) };
            self.decide_fetch_svid_as(&FetchSvidRequest { principal: w, ..req.clone() })
        })
    }

    fn decide_fetch_svid_as(&self, req: &FetchSvidRequest<'_>) -> Decision {
        self.decide(|| {
            let (principal, mut entities) = self.principal(Principal::Workload(req.principal))?;
            let resource = EntityUid::from_type_name_and_id(self.svid_type.clone(), EntityId::new(req.profile));
            entities.push(Entity::new_no_attrs(resource.clone(), Default::default()));
            let context = context([
                ("scopes", texts([])),
                ("ttl_seconds", long(req.ttl_seconds)),
                ("audiences", texts(req.audiences.iter().map(String::as_str))),
                ("entry_id", text(req.entry_id)),
                ("source_ip", ip_value(IpAddr::from([127, 0, 0, 1]))?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
            ]);
            Ok((principal, self.fetch_svid_action.clone(), resource, context, entity_set(entities)?))
        })
    }

    /// Decides whether a task may start (with `approved: false`), or could start once approved.
    pub fn decide_start_task(&self, req: &StartTaskRequest<'_>) -> Decision {
        self.decide_with_signals(req.principal, req.now, |principal| {
            self.decide_start_task_as(&StartTaskRequest { principal, ..req.clone() })
        })
    }

    fn decide_start_task_as(&self, req: &StartTaskRequest<'_>) -> Decision {
        self.decide(|| {
            let (principal, mut entities) = self.principal(req.principal)?;
            let (resource, task) = self.task_entity(req.task)?;
            entities.push(task);
            let context = context([
                ("scopes", scope_values(&req.task.task.scope)),
                ("ttl_seconds", long(req.ttl_seconds)),
                ("audiences", texts(req.audiences.iter().map(String::as_str))),
                ("approved", boolean(req.approved)),
                ("source_ip", ip_value(req.source_ip)?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
            ]);
            Ok((principal, self.start_task_action.clone(), resource, context, entity_set(entities)?))
        })
    }

    /// Decides whether a caller may act for a subject that gave no proof (default deny).
    pub fn decide_act_for(&self, req: &ActForRequest<'_>) -> Decision {
        self.decide_with_signals(req.principal, req.now, |principal| {
            self.decide(|| {
                let (principal, mut entities) = self.principal(principal)?;
                let resource = EntityUid::from_type_name_and_id(self.subject_type.clone(), EntityId::new(req.subject));
                let attrs = [("name".to_owned(), string(req.subject))].into_iter().collect();
                entities.push(Entity::new(resource.clone(), attrs, Default::default()).map_err(|e| e.to_string())?);
                let context = context([
                    ("scopes", texts(req.scopes.iter().map(String::as_str))),
                    ("ttl_seconds", long(req.ttl_seconds)),
                    ("source_ip", ip_value(req.source_ip)?),
                    ("now", now_value(req.now)?),
                    ("now_unix", long(req.now)),
                ]);
                Ok((principal, self.act_for_action.clone(), resource, context, entity_set(entities)?))
            })
        })
    }

    /// Decides whether a workload may approve (or deny) a pending task.
    pub fn decide_approve(&self, req: &ApproveRequest<'_>) -> Decision {
        self.decide_with_signals(Principal::Workload(req.approver), req.now, |principal| {
            let Principal::Workload(w) = principal else { return self.decide_approve_as(req) };
            self.decide_approve_as(&ApproveRequest { approver: w, ..req.clone() })
        })
    }

    fn decide_approve_as(&self, req: &ApproveRequest<'_>) -> Decision {
        self.decide(|| {
            let (principal, mut entities) = self.principal(Principal::Workload(req.approver))?;
            let (resource, task) = self.task_entity(req.task)?;
            entities.push(task);
            let context = context([
                ("scopes", scope_values(&req.task.task.scope)),
                ("ttl_seconds", long((req.task.task.expires_at - req.now).max(0))),
                ("source_ip", ip_value(req.source_ip)?),
                ("now", now_value(req.now)?),
                ("now_unix", long(req.now)),
            ]);
            Ok((principal, self.approve_action.clone(), resource, context, entity_set(entities)?))
        })
    }

    /// Runs one authorization. Cedar skips a policy that fails to evaluate; a skipped
    /// `forbid` would fail open, so any evaluation error denies.
    fn decide(&self, build: impl FnOnce() -> Result<RequestParts, String>) -> Decision {
        let built = build().and_then(|(principal, action, resource, context, entities)| {
            // Requests are built here, by construction of the schema's shape: checking each
            // against the schema (a tenth of a decision) is left to debug builds, where
            // every test exercises it. A request that did not fit would fail to evaluate,
            // and an evaluation error denies.
            let schema = cfg!(debug_assertions).then_some(&self.schema);
            let request = Request::new(principal, action, resource, context, schema).map_err(|e| e.to_string())?;
            Ok((request, entities))
        });
        let (request, entities) = match built {
            Ok(b) => b,
            Err(e) => return Decision { allowed: false, policies: Vec::new(), errors: vec![e] },
        };
        let policies = self.current.load();
        let resp = self.authorizer.is_authorized(&request, &policies.set, &entities);
        let allowed = resp.decision() == CedarDecision::Allow && resp.diagnostics().errors().next().is_none();
        let mut decided: Vec<String> = resp.diagnostics().reason().map(|p| p.to_string()).collect();
        decided.sort();
        let errors = resp.diagnostics().errors().map(|e| e.to_string()).collect();
        Decision { allowed, policies: decided, errors }
    }
}

type RequestParts = (EntityUid, EntityUid, EntityUid, Context, Entities);

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::RestrictedExpression;

    /// The context built from values is the one Cedar's evaluator builds from the
    /// equivalent expressions, extension values included.
    #[test]
    fn a_context_of_values_equals_the_evaluated_one() {
        let now = 1_796_132_944;
        for ip in [IpAddr::from([10, 1, 2, 3]), "2001:db8::7".parse().unwrap()] {
            let direct = context([
                ("scopes", texts(["read", "write"])),
                ("ttl_seconds", long(300)),
                ("source_ip", ip_value(ip).unwrap()),
                ("now", now_value(now).unwrap()),
                ("dpop", boolean(true)),
                ("entry_id", text("e-1")),
                ("audiences", texts([])),
            ]);
            let evaluated = Context::from_pairs([
                ("scopes".to_owned(), RestrictedExpression::new_set([string("read"), string("write")])),
                ("ttl_seconds".to_owned(), RestrictedExpression::new_long(300)),
                ("source_ip".to_owned(), RestrictedExpression::new_ip(ip.to_string())),
                ("now".to_owned(), RestrictedExpression::new_datetime(crate::clock::rfc3339(now))),
                ("dpop".to_owned(), RestrictedExpression::new_bool(true)),
                ("entry_id".to_owned(), string("e-1")),
                ("audiences".to_owned(), RestrictedExpression::new_set([])),
            ])
            .unwrap();
            assert_eq!(direct, evaluated);
            // Asked again within the second and from the same address: the remembered values.
            assert_eq!(now_value(now).unwrap(), now_value(now).unwrap());
            assert_ne!(now_value(now).unwrap(), now_value(now + 1).unwrap());
        }
    }

    /// The remembered exchange entities follow the whole identity and the audience:
    /// a changed attribute or another audience is decided on its own entities.
    #[test]
    fn remembered_exchange_entities_follow_attributes_and_audience() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "@id(\"prod-a\")\npermit (principal, action == Mayfly::Action::\"exchange\", resource == Mayfly::Audience::\"a\")\n\
             when { principal.hasTag(\"namespace\") && principal.getTag(\"namespace\") == \"prod\" };\n",
        )
        .unwrap();
        let engine = PolicyEngine::load(dir.path()).unwrap();
        let workload = |ns: &str| WorkloadIdentity {
            spiffe_id: crate::spiffe::SpiffeId::parse("spiffe://td/ns/x/sa/web").unwrap(),
            attestor: "oidc:k8s".into(),
            attributes: [("namespace".to_owned(), ns.to_owned())].into(),
        };
        let decide = |w: &WorkloadIdentity, audience: &str| {
            engine
                .decide_exchange(&ExchangeRequest {
                    principal: Principal::Workload(w),
                    audience,
                    scopes: &[],
                    ttl_seconds: 60,
                    source_ip: IpAddr::from([127, 0, 0, 1]),
                    now: 1_800_000_000,
                    dpop: false,
                    mtls: false,
                    max_uses: 0,
                })
                .allowed
        };
        let (prod, dev) = (workload("prod"), workload("dev"));
        for _ in 0..2 {
            assert!(decide(&prod, "a"));
            assert!(!decide(&dev, "a"), "same SPIFFE ID, another namespace");
            assert!(!decide(&prod, "b"), "another audience");
        }
        // The borrowed key finds what the owned key stored: built once, then remembered.
        let builds = std::cell::Cell::new(0);
        for _ in 0..3 {
            remembered_exchange_entities(&prod, "c", || {
                builds.set(builds.get() + 1);
                Ok((EntityUid::from_str(r#"Mayfly::Audience::"c""#).unwrap(), Entities::empty()))
            })
            .unwrap();
        }
        assert_eq!(builds.get(), 1);
    }
}
