//! Signalled contexts: what context-change signals said about workloads, by SPIFFE ID.
//! Read on every decision (through [`SignalledFacts`], which policy asks): signalled facts
//! can only take access away. Kept in the ledger, so every replica sees them.

use std::collections::BTreeMap;

/// What signals said about subjects' contexts, as policy sees it (`authorize` asks it). Signalled facts can
/// only take access away: a request is allowed only if policy allows it both on the
/// attested attributes alone and with the signalled ones laid over them, so no signal
/// turns a denial into an issuance (a move is decided in the new context, and a
/// `tier=prod` claim from a signal sender cannot grant what the evidence did not).
pub trait SignalledFacts: Send + Sync {
    /// Whether nothing is signalled (the common case: nothing to look up).
    fn is_empty(&self) -> bool;
    /// The signalled attributes of `subject` in force at `now`, if any.
    fn signalled(&self, subject: &str, now: i64) -> Option<BTreeMap<String, String>>;
}

/// What signals said about workloads' contexts, by SPIFFE ID: laid over the attested
/// attributes of each later request from that workload until it expires, so evidence
/// from before a move cannot get new credentials in the old context. Reads never wait.
pub struct SubjectContexts {
    store: std::sync::Arc<dyn crate::ledger::Store>,
    ttl_secs: i64,
    by_subject: arc_swap::ArcSwap<std::collections::HashMap<String, Overlay>>,
}

/// A signalled context and when it stops counting.
type Overlay = (BTreeMap<String, String>, i64);

impl std::fmt::Debug for SubjectContexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectContexts").field("count", &self.by_subject.load().len()).finish_non_exhaustive()
    }
}

impl SignalledFacts for SubjectContexts {
    fn is_empty(&self) -> bool {
        self.by_subject.load().is_empty()
    }

    fn signalled(&self, subject: &str, now: i64) -> Option<BTreeMap<String, String>> {
        match self.by_subject.load().get(subject) {
            Some((attrs, expires_at)) if *expires_at > now => Some(attrs.clone()),
            _ => None,
        }
    }
}

impl SubjectContexts {
    /// Loads the contexts in force; a signalled context lasts `ttl_secs`.
    pub async fn load(
        store: std::sync::Arc<dyn crate::ledger::Store>,
        ttl_secs: i64,
    ) -> Result<Self, crate::ledger::LedgerError> {
        let this = Self { store, ttl_secs, by_subject: Default::default() };
        this.reload().await?;
        Ok(this)
    }

    /// Re-reads them (another replica may have recorded one).
    pub async fn reload(&self) -> Result<(), crate::ledger::LedgerError> {
        let now = crate::clock::now_unix();
        let rows = self.store.subject_contexts(now).await?;
        let map = rows
            .into_iter()
            .filter_map(|r| {
                let attributes = r.attribute_map().ok()?;
                Some((r.subject, (attributes, r.expires_at)))
            })
            .collect();
        self.by_subject.store(std::sync::Arc::new(map));
        Ok(())
    }

    /// Records what a signal said about `subject`, over what earlier signals said.
    pub async fn record(
        &self,
        subject: &str,
        changed: &BTreeMap<String, String>,
    ) -> Result<(), crate::ledger::LedgerError> {
        let now = crate::clock::now_unix();
        let mut attrs = match self.by_subject.load().get(subject) {
            Some((a, expires_at)) if *expires_at > now => a.clone(),
            _ => BTreeMap::new(),
        };
        attrs.extend(changed.iter().map(|(k, v)| (k.clone(), v.clone())));
        let row = crate::ledger::StoredSubjectContext {
            subject: subject.to_owned(),
            attributes: serde_json::to_string(&attrs).unwrap_or_else(|_| "{}".into()),
            updated_at: now,
            expires_at: now + self.ttl_secs,
        };
        self.store.put_subject_context(&row).await?;
        let mut map = (**self.by_subject.load()).clone();
        map.insert(subject.to_owned(), (attrs, row.expires_at));
        self.by_subject.store(std::sync::Arc::new(map));
        Ok(())
    }
}
