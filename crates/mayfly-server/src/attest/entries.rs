//! Registration entries: which local processes (by their attested selectors) get
//! which SPIFFE ID from the Workload API. Entries come from the config file
//! (read-only at run time) and from the admin API (stored in the ledger).

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mayfly_proto::{EntryInfo, EntrySpec};
use tokio::sync::watch;

use crate::ledger::{LedgerError, Store, StoredEntry};
use crate::spiffe::SpiffeId;

/// Most selectors on one entry.
const MAX_SELECTORS: usize = 16;
/// Most extra Cedar attributes on one entry.
const MAX_ATTRIBUTES: usize = 32;
/// Most DNS names on one entry.
const MAX_DNS_NAMES: usize = 16;
/// Longest SVID lifetime any configuration allows: 7 days.
pub const MAX_SVID_TTL_SECS: u64 = 7 * 24 * 3600;
/// Selector names that name the caller's user or group: every entry needs one, because
/// a process of another user could otherwise pass for a trusted executable (same pid
/// after an exec, or a reused pid); within one user, processes can already read each
/// other's memory, so that is the boundary attestation can hold.
const ACCOUNT_SELECTORS: [&str; 4] = ["uid", "gid", "user", "group"];
/// SPIFFE ID paths Mayfly gives out itself (tasks).
const RESERVED_PATHS: [&str; 1] = ["/task"];
/// Selector names the unix attestor produces.
const UNIX_SELECTORS: [&str; 6] = ["uid", "gid", "user", "group", "path", "sha256"];

/// Where an entry is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySource {
    /// The config file: changed by editing it and restarting.
    Config,
    /// The admin API or `mayfly entries`.
    Api,
}

/// A validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id.
    pub id: String,
    /// The SPIFFE ID it grants.
    pub spiffe_id: SpiffeId,
    /// Its definition.
    pub spec: EntrySpec,
    /// Config or API.
    pub source: EntrySource,
    /// Unix seconds.
    pub created_at: i64,
}

impl Entry {
    /// Whether a caller with these selectors matches (it has every selector of the entry).
    pub fn matches(&self, selectors: &BTreeSet<String>) -> bool {
        self.spec.selectors.iter().all(|s| selectors.contains(s))
    }

    /// As the admin API shows it.
    pub fn info(&self) -> EntryInfo {
        EntryInfo {
            id: self.id.clone(),
            spec: self.spec.clone(),
            source: match self.source {
                EntrySource::Config => "config",
                EntrySource::Api => "api",
            }
            .to_owned(),
            created_at: self.created_at,
        }
    }
}

/// Why an entry was refused or not found.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The definition is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No entry has this id.
    #[error("no registration entry has id {0:?}")]
    NotFound(String),
    /// An entry with the same SPIFFE ID and selectors exists.
    #[error("entry {0} already grants this SPIFFE ID to these selectors")]
    Duplicate(String),
    /// The entry comes from the config file.
    #[error("entry {0} is defined in the config file; edit the file and restart to change it")]
    ReadOnly(String),
    /// Storage failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The registration entries in force; readers never wait.
pub struct Entries {
    store: Arc<dyn Store>,
    trust_domain: String,
    max_ttl_secs: u64,
    config: Vec<Arc<Entry>>,
    all: ArcSwap<Vec<Arc<Entry>>>,
    /// Bumped on every change, so Workload API streams re-evaluate their callers.
    changed: watch::Sender<u64>,
    /// Serialises create and delete.
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries").field("count", &self.all.load().len()).finish_non_exhaustive()
    }
}

impl Entries {
    /// Validates the config's entries and loads the stored ones.
    pub async fn load(
        store: Arc<dyn Store>,
        trust_domain: &str,
        max_ttl_secs: u64,
        config: &[(Option<String>, EntrySpec)],
    ) -> Result<Self, EntryError> {
        let now = crate::clock::now_unix();
        let mut config_entries: Vec<Arc<Entry>> = Vec::new();
        for (i, (id, spec)) in config.iter().enumerate() {
            let (spiffe_id, spec) = validate(spec, trust_domain, max_ttl_secs)
                .map_err(|e| EntryError::Invalid(format!("workload_api.entries[{i}]: {e}")))?;
            let id = id.clone().unwrap_or_else(|| config_entry_id(&spec));
            if config_entries.iter().any(|e| e.id == id) {
                return Err(EntryError::Invalid(format!("workload_api.entries[{i}]: id {id:?} is used twice")));
            }
            config_entries.push(Arc::new(Entry { id, spiffe_id, spec, source: EntrySource::Config, created_at: now }));
        }
        let this = Self {
            store,
            trust_domain: trust_domain.to_owned(),
            max_ttl_secs,
            config: config_entries,
            all: ArcSwap::from_pointee(Vec::new()),
            changed: watch::channel(0).0,
            writes: tokio::sync::Mutex::new(()),
        };
        this.reload().await?;
        Ok(this)
    }

    /// Re-reads the stored entries (another replica may have changed them); notifies streams on a change.
    pub async fn reload(&self) -> Result<(), EntryError> {
        // Serialised with this replica's own writes: a reload that read the store before a
        // create committed must not publish its older list over the create's (or read the
        // new row and have the create add it a second time).
        let _guard = self.writes.lock().await;
        let mut all = self.config.clone();
        for row in self.store.workload_entries().await? {
            match serde_json::from_str::<EntrySpec>(&row.spec)
                .map_err(|e| e.to_string())
                .and_then(|spec| validate(&spec, &self.trust_domain, self.max_ttl_secs).map_err(|e| e.to_string()))
            {
                Ok((spiffe_id, spec)) => all.push(Arc::new(Entry {
                    id: row.id,
                    spiffe_id,
                    spec,
                    source: EntrySource::Api,
                    created_at: row.created_at,
                })),
                Err(e) => {
                    tracing::warn!(entry = %row.id, error = %e, "stored registration entry is not valid; skipped")
                }
            }
        }
        if **self.all.load() != all {
            self.publish(all);
        }
        Ok(())
    }

    /// Swaps the entries in and tells the streams.
    fn publish(&self, all: Vec<Arc<Entry>>) {
        self.all.store(Arc::new(all));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Every entry.
    pub fn list(&self) -> Arc<Vec<Arc<Entry>>> {
        self.all.load_full()
    }

    /// One entry by id.
    pub fn get(&self, id: &str) -> Option<Arc<Entry>> {
        self.all.load().iter().find(|e| e.id == id).cloned()
    }

    /// The entries a caller with these selectors matches, in a stable order (config first).
    pub fn matching(&self, selectors: &BTreeSet<String>) -> Vec<Arc<Entry>> {
        self.all.load().iter().filter(|e| e.matches(selectors)).cloned().collect()
    }

    /// Whether any entry selects on `unix:<name>` (executables are hashed only when one does).
    pub fn uses_selector(&self, name: &str) -> bool {
        let prefix = format!("unix:{name}:");
        self.all.load().iter().any(|e| e.spec.selectors.iter().any(|s| s.starts_with(&prefix)))
    }

    /// Changes as they happen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Validates and stores a new entry.
    pub async fn create(&self, spec: &EntrySpec) -> Result<Arc<Entry>, EntryError> {
        let (spiffe_id, spec) = validate(spec, &self.trust_domain, self.max_ttl_secs).map_err(EntryError::Invalid)?;
        let _guard = self.writes.lock().await;
        if let Some(dup) =
            self.all.load().iter().find(|e| e.spec.spiffe_id == spec.spiffe_id && e.spec.selectors == spec.selectors)
        {
            return Err(EntryError::Duplicate(dup.id.clone()));
        }
        let entry = Entry {
            id: format!("ent_{}", crate::ids::time_ordered_id()),
            spiffe_id,
            spec,
            source: EntrySource::Api,
            created_at: crate::clock::now_unix(),
        };
        let spec_json = serde_json::to_string(&entry.spec).map_err(|e| EntryError::Invalid(e.to_string()))?;
        self.store
            .insert_workload_entry(&StoredEntry { id: entry.id.clone(), spec: spec_json, created_at: entry.created_at })
            .await?;
        let entry = Arc::new(entry);
        let mut all = (**self.all.load()).clone();
        all.retain(|e| e.id != entry.id);
        all.push(entry.clone());
        self.publish(all);
        Ok(entry)
    }

    /// Deletes an API entry. Streams drop its SVIDs at once.
    pub async fn delete(&self, id: &str) -> Result<Arc<Entry>, EntryError> {
        let _guard = self.writes.lock().await;
        let entry = self.get(id).ok_or_else(|| EntryError::NotFound(id.to_owned()))?;
        if entry.source == EntrySource::Config {
            return Err(EntryError::ReadOnly(id.to_owned()));
        }
        if !self.store.delete_workload_entry(id).await? {
            return Err(EntryError::NotFound(id.to_owned()));
        }
        let all: Vec<_> = self.all.load().iter().filter(|e| e.id != id).cloned().collect();
        self.publish(all);
        Ok(entry)
    }
}

/// A config entry's id when it names none: stable across restarts while the entry is unchanged.
fn config_entry_id(spec: &EntrySpec) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(spec).unwrap_or_default();
    format!("cfg_{}", &hex::encode(sha2::Sha256::digest(json))[..16])
}

/// Checks an entry and returns it normalised (selectors sorted and deduplicated).
pub fn validate(spec: &EntrySpec, trust_domain: &str, max_ttl_secs: u64) -> Result<(SpiffeId, EntrySpec), String> {
    let id = SpiffeId::parse(&spec.spiffe_id).map_err(|e| format!("spiffe_id: {e}"))?;
    if crate::spiffe::is_reserved(&id) {
        return Err(format!("spiffe_id {id} lies under a reserved prefix (task/, agent/)"));
    }
    if id.trust_domain() != trust_domain {
        return Err(format!("spiffe_id must be in trust domain {trust_domain:?}"));
    }
    if id.path().is_empty() {
        return Err("spiffe_id needs a path: a workload's SPIFFE ID is never the bare trust domain".into());
    }
    if let Some(p) = RESERVED_PATHS.iter().find(|p| id.path() == **p || id.path().starts_with(&format!("{p}/"))) {
        return Err(format!("spiffe_id: paths under {p} are Mayfly's own (tasks)"));
    }
    if spec.selectors.is_empty() || spec.selectors.len() > MAX_SELECTORS {
        return Err(format!("an entry has 1 to {MAX_SELECTORS} selectors"));
    }
    let mut selectors = spec.selectors.clone();
    for s in &selectors {
        check_selector(s)?;
    }
    selectors.sort();
    selectors.dedup();
    let names_account = |s: &String| s.split(':').nth(1).is_some_and(|n| ACCOUNT_SELECTORS.contains(&n));
    if !selectors.iter().any(names_account) {
        return Err("an entry needs a unix:uid, unix:gid, unix:user or unix:group selector".into());
    }
    if let Some(h) = &spec.hint
        && (h.is_empty() || h.len() > 64 || h.chars().any(char::is_control))
    {
        return Err("hint is 1 to 64 printable characters".into());
    }
    if spec.dns_names.len() > MAX_DNS_NAMES {
        return Err(format!("at most {MAX_DNS_NAMES} dns_names"));
    }
    for name in &spec.dns_names {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').enumerate().all(|(i, l)| {
                (i == 0 && l == "*")
                    || (!l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
            });
        if !ok {
            return Err(format!(
                "dns_names: {name:?} is not a lowercase DNS name (a wildcard only as the first label)"
            ));
        }
    }
    for (what, ttl) in [("x509_svid_ttl", spec.x509_svid_ttl), ("jwt_svid_ttl", spec.jwt_svid_ttl)] {
        if ttl.is_some_and(|t| t == 0 || t > max_ttl_secs) {
            return Err(format!("{what} is 1 to {max_ttl_secs} seconds (workload_api.max_svid_ttl)"));
        }
    }
    if spec.attributes.len() > MAX_ATTRIBUTES {
        return Err(format!("at most {MAX_ATTRIBUTES} attributes"));
    }
    for (k, v) in &spec.attributes {
        if k.is_empty() || k.len() > 64 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            return Err(format!("attribute name {k:?}: use 1 to 64 letters, digits, '_' or '.'"));
        }
        if v.len() > 256 {
            return Err(format!("attribute {k}: values are at most 256 bytes"));
        }
    }
    Ok((id, EntrySpec { selectors, ..spec.clone() }))
}

/// `unix:<name>:<value>` with a name the unix attestor produces and a value of the right shape.
fn check_selector(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("selector {s:?}: {why}"));
    let Some(("unix", rest)) = s.split_once(':') else {
        return bad("selectors have the form unix:<name>:<value> (the unix attestor is the only one on this socket)");
    };
    let Some((name, value)) = rest.split_once(':') else {
        return bad("selectors have the form unix:<name>:<value>");
    };
    if value.is_empty() || value.len() > 1024 {
        return bad("the value is 1 to 1024 bytes");
    }
    match name {
        "uid" | "gid" if value.parse::<u32>().map(|n| n.to_string()).as_deref() != Ok(value) => {
            bad("uid and gid are numbers written without sign or leading zeros")
        }
        "sha256" if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            bad("sha256 is 64 lowercase hex digits")
        }
        "path" if !value.starts_with('/') => bad("path is absolute"),
        n if !UNIX_SELECTORS.contains(&n) => bad(&format!("unknown name; use one of {}", UNIX_SELECTORS.join(", "))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, selectors: &[&str]) -> EntrySpec {
        EntrySpec {
            spiffe_id: id.into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            hint: None,
            dns_names: vec![],
            x509_svid_ttl: None,
            jwt_svid_ttl: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn validates_entries() {
        let td = "example.org";
        let (_, ok) =
            validate(&spec("spiffe://example.org/api", &["unix:uid:1000", "unix:path:/bin/a:b"]), td, 3600).unwrap();
        assert_eq!(ok.selectors, vec!["unix:path:/bin/a:b", "unix:uid:1000"]);
        for (id, sels) in [
            ("spiffe://other.org/api", vec!["unix:uid:1"]),
            ("spiffe://example.org", vec!["unix:uid:1"]),
            ("spiffe://example.org/api", vec![]),
            ("spiffe://example.org/api", vec!["unix:uid:abc"]),
            ("spiffe://example.org/api", vec!["k8s:ns:prod"]),
            ("spiffe://example.org/api", vec!["unix:colour:red"]),
            ("spiffe://example.org/api", vec!["unix:sha256:ABC"]),
            ("spiffe://example.org/api", vec!["unix:path:relative"]),
            ("spiffe://example.org/api", vec!["unix:uid"]),
            ("spiffe://example.org/api", vec!["unix:uid:01000"]),
            ("spiffe://example.org/api", vec!["unix:uid:+1"]),
            ("spiffe://example.org/api", vec!["unix:path:/usr/bin/api"]),
            ("spiffe://example.org/task/x", vec!["unix:uid:1"]),
        ] {
            assert!(validate(&spec(id, &sels), td, 3600).is_err(), "{id} {sels:?} should be refused");
        }
    }

    #[test]
    fn an_entry_matches_a_superset_of_its_selectors() {
        let (id, s) =
            validate(&spec("spiffe://example.org/api", &["unix:uid:1", "unix:gid:2"]), "example.org", 3600).unwrap();
        let e = Entry { id: "e".into(), spiffe_id: id, spec: s, source: EntrySource::Api, created_at: 0 };
        let caller = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(e.matches(&caller(&["unix:uid:1", "unix:gid:2", "unix:path:/x"])));
        assert!(!e.matches(&caller(&["unix:uid:1"])));
    }
}
