//! Authorization: Cedar policies decide every request at the moment of use.
//!
//! Policies come from a directory of `*.cedar` files and are validated against
//! [`SCHEMA`] when they load. Default deny. A reload that fails keeps the
//! policies in force and reports why.

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
use sha2::{Digest, Sha256};

use crate::attest::WorkloadIdentity;

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

/// What a token-exchange request asks for, as policy sees it.
#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    /// The attested caller.
    pub identity: &'a WorkloadIdentity,
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
    audience_type: EntityTypeName,
    exchange_action: EntityUid,
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
        Ok(Self {
            dir: dir.to_owned(),
            authorizer: Authorizer::new(),
            current: ArcSwap::from_pointee(loaded),
            workload_type: parse("Mayfly::Workload")?,
            audience_type: parse("Mayfly::Audience")?,
            exchange_action: EntityUid::from_str(r#"Mayfly::Action::"exchange""#)
                .map_err(|e| PolicyError::Schema(e.to_string()))?,
            schema,
        })
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
        match self.build_exchange(req) {
            Ok((request, entities)) => {
                let policies = self.current.load();
                let resp = self.authorizer.is_authorized(&request, &policies.set, &entities);
                // Cedar skips a policy that fails to evaluate; a skipped `forbid` would fail
                // open, so any evaluation error denies.
                let allowed = resp.decision() == CedarDecision::Allow && resp.diagnostics().errors().next().is_none();
                let ids = |it: &mut dyn Iterator<Item = &PolicyId>| it.map(|p| p.to_string()).collect::<Vec<_>>();
                let mut decided = ids(&mut resp.diagnostics().reason());
                decided.sort();
                let errors = resp.diagnostics().errors().map(|e| e.to_string()).collect();
                Decision { allowed, policies: decided, errors }
            }
            Err(e) => Decision { allowed: false, policies: Vec::new(), errors: vec![e] },
        }
    }

    fn build_exchange(&self, req: &ExchangeRequest<'_>) -> Result<(Request, Entities), String> {
        let id = &req.identity.spiffe_id;
        let principal = EntityUid::from_type_name_and_id(self.workload_type.clone(), EntityId::new(id.to_string()));
        let resource = EntityUid::from_type_name_and_id(self.audience_type.clone(), EntityId::new(req.audience));
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let attrs = [
            ("spiffe_id".to_owned(), s(&id.to_string())),
            ("trust_domain".to_owned(), s(id.trust_domain())),
            ("path".to_owned(), s(id.path())),
            ("attestor".to_owned(), s(&req.identity.attestor)),
        ];
        let tags = req.identity.attributes.iter().map(|(k, v)| (k.clone(), s(v)));
        let workload = Entity::new_with_tags(principal.clone(), attrs, [], tags).map_err(|e| e.to_string())?;
        let audience = Entity::new_no_attrs(resource.clone(), Default::default());
        let entities = Entities::from_entities([workload, audience], None).map_err(|e| e.to_string())?;
        let context = Context::from_pairs([
            ("scopes".to_owned(), RestrictedExpression::new_set(req.scopes.iter().map(|x| s(x)))),
            ("ttl_seconds".to_owned(), RestrictedExpression::new_long(req.ttl_seconds)),
            ("source_ip".to_owned(), RestrictedExpression::new_ip(req.source_ip.to_string())),
            ("now".to_owned(), RestrictedExpression::new_datetime(crate::clock::rfc3339(req.now))),
            ("now_unix".to_owned(), RestrictedExpression::new_long(req.now)),
        ])
        .map_err(|e| e.to_string())?;
        let request = Request::new(principal, self.exchange_action.clone(), resource, context, Some(&self.schema))
            .map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
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
