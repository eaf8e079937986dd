//! Authorization: Cedar policies decide every request at the moment of use.
//!
//! Policies come from a directory of `*.cedar` files and are validated against
//! [`SCHEMA`] when they load. Default deny. A reload that fails keeps the
//! policies in force and reports why.

pub mod config;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use cedar_policy_core::ast::{self as cedar_ast, Value};
use sha2::{Digest, Sha256};

use crate::attest::WorkloadIdentity;
pub use crate::attest::contexts::SignalledFacts;
use crate::attest::task::TaskIdentity;

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
    subject_type: EntityTypeName,
    exchange_action: EntityUid,
    fetch_svid_action: EntityUid,
    issue_action: EntityUid,
    start_task_action: EntityUid,
    approve_action: EntityUid,
    act_for_action: EntityUid,
    /// Signalled contexts, once the server has them.
    signalled: std::sync::OnceLock<Arc<dyn SignalledFacts>>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Parses the built-in schema.
pub fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA).map(|(s, _)| s).map_err(|e| PolicyError::Schema(e.to_string()))
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
            subject_type: parse("Mayfly::Subject")?,
            exchange_action: action("exchange")?,
            fetch_svid_action: action("fetch_svid")?,
            issue_action: action("issue")?,
            start_task_action: action("start_task")?,
            approve_action: action("approve")?,
            act_for_action: action("act_for")?,
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

    /// The principal's uid and the entities that describe it.
    fn principal(&self, p: Principal<'_>) -> Result<(EntityUid, Vec<Entity>), String> {
        match p {
            Principal::Workload(w) => {
                let entity = WORKLOAD_ENTITIES.with_borrow_mut(|memo| {
                    remembered(memo, REMEMBERED, w, || w.clone(), || self.workload_entity(w))
                })?;
                Ok((entity.uid(), vec![entity]))
            }
            Principal::Task(t) => {
                let (uid, entity) = self.task_entity(t)?;
                Ok((uid, vec![entity]))
            }
        }
    }

    /// A workload as a Cedar entity: its SPIFFE ID's parts and attestor as attributes,
    /// its attested attributes as tags.
    fn workload_entity(&self, w: &WorkloadIdentity) -> Result<Entity, String> {
        let id = &w.spiffe_id;
        let uid = EntityUid::from_type_name_and_id(self.workload_type.clone(), EntityId::new(id.to_string()));
        let attrs = [
            ("spiffe_id".to_owned(), string(&id.to_string())),
            ("trust_domain".to_owned(), string(id.trust_domain())),
            ("path".to_owned(), string(id.path())),
            ("attestor".to_owned(), string(&w.attestor)),
        ];
        let tags = w.attributes.iter().map(|(k, v)| (k.clone(), string(v)));
        Entity::new_with_tags(uid, attrs, [], tags).map_err(|e| e.to_string())
    }

    /// A task as a Cedar entity: a member of every actor in its chain.
    fn task_entity(&self, t: &TaskIdentity) -> Result<(EntityUid, Entity), String> {
        let id = t.spiffe_id.to_string();
        let uid = EntityUid::from_type_name_and_id(self.task_type.clone(), EntityId::new(&id));
        let mut attrs = vec![
            ("spiffe_id".to_owned(), string(&id)),
            ("trust_domain".to_owned(), string(t.spiffe_id.trust_domain())),
            ("path".to_owned(), string(t.spiffe_id.path())),
            ("attestor".to_owned(), string("task")),
            ("task_id".to_owned(), string(&t.task.id)),
            ("purpose".to_owned(), string(&t.task.purpose)),
            ("creator".to_owned(), string(&t.task.creator)),
            ("depth".to_owned(), RestrictedExpression::new_long(t.task.depth)),
            ("scopes".to_owned(), scope_set(&t.task.scope)),
        ];
        if let Some(obo) = &t.task.on_behalf_of {
            attrs.push(("on_behalf_of".to_owned(), string(obo)));
        }
        let parents = t.actors.iter().map(|actor| {
            let ty = if TaskIdentity::is_task_id(actor) { &self.task_type } else { &self.workload_type };
            EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(actor))
        });
        let tags = t.attributes.iter().map(|(k, v)| (k.clone(), string(v)));
        let entity = Entity::new_with_tags(uid.clone(), attrs, parents, tags).map_err(|e| e.to_string())?;
        Ok((uid, entity))
    }
}

type RequestParts = (EntityUid, EntityUid, EntityUid, Context, Entities);

/// A per-thread memo: a workload asks again and again with the same attested identity
/// while its evidence lives, from few addresses, for few audiences. Looked up by a key
/// equivalent to the stored one, so a lookup copies nothing.
type Memo<K, V> = hashbrown::HashMap<K, V, std::hash::RandomState>;

/// Most entries a memo holds before it starts over. These memos are per thread and
/// lock-free on the hottest path; starting a small one over costs a few rebuilt entries,
/// so a shared evicting cache (with its locking) would cost more than it saves.
const REMEMBERED: usize = 1024;

/// Most workload and audience pairs [`EXCHANGE_ENTITIES`] holds before it starts over.
const REMEMBERED_PAIRS: usize = 4096;

/// The memo's value for `key`, built (and kept under the key `owned` makes) if it has none;
/// a memo holding `most` entries starts over.
fn remembered<K, Q, V, E>(
    memo: &mut Memo<K, V>,
    most: usize,
    key: &Q,
    owned: impl FnOnce() -> K,
    build: impl FnOnce() -> Result<V, E>,
) -> Result<V, E>
where
    K: Eq + std::hash::Hash,
    Q: std::hash::Hash + hashbrown::Equivalent<K> + ?Sized,
    V: Clone,
{
    if let Some(v) = memo.get(key) {
        return Ok(v.clone());
    }
    let v = build()?;
    if memo.len() >= most {
        memo.clear();
    }
    memo.insert(owned(), v.clone());
    Ok(v)
}

/// Entities as one set (Cedar computes the hierarchy's closure here).
fn entity_set(entities: Vec<Entity>) -> Result<Entities, String> {
    Entities::from_entities(entities, None).map_err(|e| e.to_string())
}

/// A workload and an audience, borrowed: looks up an [`EXCHANGE_ENTITIES`] key. It hashes
/// as the owned pair does (a tuple hashes its fields in order; `str` as `String`).
#[derive(Hash)]
struct ExchangeKey<'a>(&'a WorkloadIdentity, &'a str);

impl hashbrown::Equivalent<(WorkloadIdentity, String)> for ExchangeKey<'_> {
    fn equivalent(&self, key: &(WorkloadIdentity, String)) -> bool {
        *self.0 == key.0 && self.1 == key.1
    }
}

/// An exchange's principal and entities (the workload and the audience), remembered by
/// the workload's whole identity and the audience: building the set (its hierarchy's
/// closure) was a quarter of a decision.
fn remembered_exchange_entities(
    w: &WorkloadIdentity,
    audience: &str,
    build: impl FnOnce() -> Result<(EntityUid, Entities), String>,
) -> Result<(EntityUid, Entities), String> {
    EXCHANGE_ENTITIES.with_borrow_mut(|memo| {
        remembered(memo, REMEMBERED_PAIRS, &ExchangeKey(w, audience), || (w.clone(), audience.to_owned()), build)
    })
}

thread_local! {
    /// See [`remembered_exchange_entities`].
    static EXCHANGE_ENTITIES: std::cell::RefCell<Memo<(WorkloadIdentity, String), (EntityUid, Entities)>> =
        Default::default();
    /// Workloads as Cedar entities, by everything they are made of.
    static WORKLOAD_ENTITIES: std::cell::RefCell<Memo<WorkloadIdentity, Entity>> = Default::default();
    /// Recent `ip(…)` values: evaluating one parses the address and, before that, the
    /// extension's name with Cedar's full parser, which cost more than the rest of a
    /// request's context.
    static IP_VALUES: std::cell::RefCell<Memo<IpAddr, Value>> = Default::default();
    /// The `datetime(…)` value of the current second, for the same reason.
    static NOW_VALUE: std::cell::RefCell<Option<(i64, Value)>> = const { std::cell::RefCell::new(None) };
}

/// `ip("<addr>")`, evaluated.
fn ip_value(ip: IpAddr) -> Result<Value, String> {
    IP_VALUES.with_borrow_mut(|memo| {
        remembered(memo, REMEMBERED, &ip, || ip, || evaluated(RestrictedExpression::new_ip(ip.to_string())))
    })
}

/// `datetime("<RFC 3339 of now>")`, evaluated.
fn now_value(now: i64) -> Result<Value, String> {
    NOW_VALUE.with_borrow_mut(|memo| match memo {
        Some((t, v)) if *t == now => Ok(v.clone()),
        _ => {
            let v = evaluated(RestrictedExpression::new_datetime(crate::clock::rfc3339(now)))?;
            *memo = Some((now, v.clone()));
            Ok(v)
        }
    })
}

/// The value of an extension call, through Cedar's public API (its evaluator checks it).
fn evaluated(expr: RestrictedExpression) -> Result<Value, String> {
    let holder = Context::from_pairs([("v".to_owned(), expr)]).map_err(|e| e.to_string())?;
    match holder.as_ref() {
        cedar_ast::Context::Value(attrs) => attrs.get("v").cloned().ok_or_else(|| "extension value missing".to_owned()),
        cedar_ast::Context::RestrictedResidual(_) => Err("extension value did not evaluate".to_owned()),
    }
}

fn string(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

fn scope_set(scope: &str) -> RestrictedExpression {
    RestrictedExpression::new_set(scope.split_whitespace().map(string))
}

fn long(v: i64) -> Value {
    Value::from(v)
}

fn boolean(v: bool) -> Value {
    Value::from(v)
}

fn text(v: &str) -> Value {
    Value::from(v)
}

fn texts<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::set_of_lits(items.into_iter().map(cedar_ast::Literal::from), None)
}

fn scope_values(scope: &str) -> Value {
    texts(scope.split_whitespace())
}

/// A request context made of values directly. `Context::from_pairs` would build a record
/// expression and evaluate it, re-parsing every `ip` and `datetime` string: that was a
/// third of a decision. Keys are distinct by construction; debug builds check the whole
/// request against the schema.
fn context<const N: usize>(pairs: [(&str, Value); N]) -> Context {
    Context::from(cedar_ast::Context::Value(Arc::new(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())))
}

fn read_sources(dir: &Path) -> Result<BTreeMap<String, String>, PolicyError> {
    let rd = std::fs::read_dir(dir).map_err(|cause| PolicyError::Read { path: dir.to_owned(), cause })?;
    let mut files = BTreeMap::new();
    for entry in rd {
        let entry = entry.map_err(|cause| PolicyError::Read { path: dir.to_owned(), cause })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cedar") || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|cause| PolicyError::Read { path: path.clone(), cause })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files.insert(name, text);
    }
    Ok(files)
}

fn fingerprint(files: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (name, text) in files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_be_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Parses every `*.cedar` file; a policy's id is its `@id("…")` annotation, else `<file>:<n>`.
fn load_dir(dir: &Path, schema: &Schema) -> Result<LoadedPolicies, PolicyError> {
    let files = read_sources(dir)?;
    let mut set = PolicySet::new();
    for (name, text) in &files {
        let parsed =
            PolicySet::from_str(text).map_err(|e| PolicyError::Parse { file: name.clone(), message: e.to_string() })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Parse {
                file: name.clone(),
                message: "policy templates are not supported".into(),
            });
        }
        // `PolicySet` iterates in no fixed order; its default ids are `policy<N>` in
        // source order, so sort by N for stable `<file>:<n>` ids.
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<usize>().unwrap_or(0));
        for (i, p) in policies.into_iter().enumerate() {
            let id = p.annotation("id").map(str::to_owned).unwrap_or_else(|| format!("{name}:{}", i + 1));
            let policy = p.new_id(PolicyId::new(id.clone()));
            set.add(policy).map_err(|_| PolicyError::Parse {
                file: name.clone(),
                message: format!("policy id {id:?} is used twice"),
            })?;
        }
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let msgs: Vec<String> = result.validation_errors().map(|e| format!("  - {e}")).collect();
        return Err(PolicyError::Invalid(msgs.join("\n")));
    }
    let count = set.policies().count();
    Ok(LoadedPolicies { set, fingerprint: fingerprint(&files), count })
}

#[cfg(test)]
mod tests {
    use super::*;

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
