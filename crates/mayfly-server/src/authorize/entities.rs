//! Principals as Cedar entities (workloads, tasks and their actor chains), and the
//! per-thread memos that keep building them off the hottest path.

use cedar_policy::{Entities, Entity, EntityId, EntityUid, RestrictedExpression};

use super::values::{scope_set, string};
use super::{PolicyEngine, Principal};
use crate::attest::WorkloadIdentity;
use crate::attest::task::TaskIdentity;

impl PolicyEngine {
    /// The principal's uid and the entities that describe it.
    pub(super) fn principal(&self, p: Principal<'_>) -> Result<(EntityUid, Vec<Entity>), String> {
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
    pub(super) fn workload_entity(&self, w: &WorkloadIdentity) -> Result<Entity, String> {
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
    pub(super) fn task_entity(&self, t: &TaskIdentity) -> Result<(EntityUid, Entity), String> {
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

/// A per-thread memo: a workload asks again and again with the same attested identity
/// while its evidence lives, from few addresses, for few audiences. Looked up by a key
/// equivalent to the stored one, so a lookup copies nothing.
pub(super) type Memo<K, V> = hashbrown::HashMap<K, V, std::hash::RandomState>;

/// Most entries a memo holds before it starts over. These memos are per thread and
/// lock-free on the hottest path; starting a small one over costs a few rebuilt entries,
/// so a shared evicting cache (with its locking) would cost more than it saves.
pub(super) const REMEMBERED: usize = 1024;

/// Most workload and audience pairs [`EXCHANGE_ENTITIES`] holds before it starts over.
pub(super) const REMEMBERED_PAIRS: usize = 4096;

/// The memo's value for `key`, built (and kept under the key `owned` makes) if it has none;
/// a memo holding `most` entries starts over.
pub(super) fn remembered<K, Q, V, E>(
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
pub(super) fn entity_set(entities: Vec<Entity>) -> Result<Entities, String> {
    Entities::from_entities(entities, None).map_err(|e| e.to_string())
}

/// A workload and an audience, borrowed: looks up an [`EXCHANGE_ENTITIES`] key. It hashes
/// as the owned pair does (a tuple hashes its fields in order; `str` as `String`).
#[derive(Hash)]
pub(super) struct ExchangeKey<'a>(&'a WorkloadIdentity, &'a str);

impl hashbrown::Equivalent<(WorkloadIdentity, String)> for ExchangeKey<'_> {
    fn equivalent(&self, key: &(WorkloadIdentity, String)) -> bool {
        *self.0 == key.0 && self.1 == key.1
    }
}

/// An exchange's principal and entities (the workload and the audience), remembered by
/// the workload's whole identity and the audience: building the set (its hierarchy's
/// closure) was a quarter of a decision.
pub(super) fn remembered_exchange_entities(
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
}
