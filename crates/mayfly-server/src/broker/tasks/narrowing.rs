//! A sub-task only narrows: what it may ask of its parent, decided without I/O.

use crate::broker::{BrokerError, Forbidden, InvalidScope, InvalidTarget};
use crate::ledger::TaskRecord;

/// What a new sub-task asks for.
#[derive(Debug)]
pub struct Asked<'a> {
    /// The scopes named in the request (`None`: none named, the parent's are inherited).
    pub scopes: Option<Vec<String>>,
    /// The audiences named (empty: the parent's, or any when the parent has no limit).
    pub audiences: Vec<String>,
    /// The subject the sub-task would act for.
    pub on_behalf_of: &'a Option<String>,
}

/// The scopes and audiences of a sub-task of `parent`: within the parent's, never wider;
/// nested at most `max_depth` deep; acting for the parent's subject only.
pub fn narrow_to_parent(
    parent: &TaskRecord,
    asked: Asked<'_>,
    max_depth: u32,
) -> Result<(Vec<String>, Vec<String>), BrokerError> {
    if parent.depth >= i64::from(max_depth) {
        return Err(Forbidden::TooDeep { max: max_depth, parent: parent.id.clone(), depth: parent.depth }.into());
    }
    let parent_scopes: Vec<&str> = parent.scope.split_whitespace().collect();
    let scopes = asked.scopes.unwrap_or_else(|| parent_scopes.iter().map(|s| (*s).to_owned()).collect());
    if let Some(bad) = scopes.iter().find(|s| !parent_scopes.contains(&s.as_str())) {
        return Err(InvalidScope::WiderThanParent { scope: bad.clone(), parent: parent.id.clone() }.into());
    }
    let mut audiences = asked.audiences;
    if let Some(parent_auds) = parent.audience_list() {
        if audiences.is_empty() {
            audiences = parent_auds;
        } else if let Some(bad) = audiences.iter().find(|a| !parent_auds.contains(a)) {
            return Err(InvalidTarget::WiderThanParent { audience: bad.clone(), parent: parent.id.clone() }.into());
        }
    }
    if asked.on_behalf_of.is_some() && *asked.on_behalf_of != parent.on_behalf_of {
        return Err(Forbidden::SubjectChanged.into());
    }
    Ok((scopes, audiences))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::TaskState;

    fn parent(scope: &str, audiences: Option<&[&str]>, depth: i64, on_behalf_of: Option<&str>) -> TaskRecord {
        TaskRecord {
            id: "p".into(),
            parent_id: None,
            path: "p".into(),
            depth,
            creator: "spiffe://td/w".into(),
            on_behalf_of: on_behalf_of.map(str::to_owned),
            actor: "{}".into(),
            attributes: "{}".into(),
            purpose: "test".into(),
            scope: scope.into(),
            audiences: audiences.map(|a| serde_json::json!(a).to_string()),
            created_at: 0,
            expires_at: 100,
            state: TaskState::Active,
            approval_deadline: None,
            decided_by: None,
            decided_at: None,
            ended_at: None,
            end_reason: None,
        }
    }

    fn ask(scopes: Option<&[&str]>, audiences: &[&str]) -> Asked<'static> {
        Asked {
            scopes: scopes.map(|s| s.iter().map(|x| x.to_string()).collect()),
            audiences: audiences.iter().map(|x| x.to_string()).collect(),
            on_behalf_of: &None,
        }
    }

    #[test]
    fn a_sub_task_inherits_or_narrows_its_parents_scopes_and_audiences() {
        let p = parent("read write", Some(&["https://a", "https://b"]), 1, None);
        let (scopes, auds) = narrow_to_parent(&p, ask(None, &[]), 4).unwrap();
        assert_eq!((scopes, auds), (vec!["read".into(), "write".into()], vec!["https://a".into(), "https://b".into()]));
        let (scopes, auds) = narrow_to_parent(&p, ask(Some(&["read"]), &["https://b"]), 4).unwrap();
        assert_eq!((scopes, auds), (vec!["read".to_owned()], vec!["https://b".to_owned()]));
        // An empty scope list asks for nothing, which is narrower still.
        assert_eq!(narrow_to_parent(&p, ask(Some(&[]), &[]), 4).unwrap().0, Vec::<String>::new());
        // A parent without audience limits leaves the sub-task's as asked.
        let open = parent("read", None, 1, None);
        assert_eq!(narrow_to_parent(&open, ask(None, &["https://z"]), 4).unwrap().1, vec!["https://z".to_owned()]);
    }

    #[test]
    fn a_sub_task_never_widens_nests_too_deep_or_changes_its_subject() {
        let p = parent("read", Some(&["https://a"]), 1, Some("user:alice"));
        let wider = narrow_to_parent(&p, ask(Some(&["read", "delete"]), &[]), 4).unwrap_err();
        assert!(
            matches!(&wider, BrokerError::InvalidScope(InvalidScope::WiderThanParent { scope, parent })
                if scope == "delete" && *parent == p.id),
            "{wider:?}"
        );
        let elsewhere = narrow_to_parent(&p, ask(None, &["https://evil"]), 4).unwrap_err();
        assert!(
            matches!(&elsewhere, BrokerError::InvalidTarget(InvalidTarget::WiderThanParent { audience, .. })
                if audience == "https://evil"),
            "{elsewhere:?}"
        );
        let deep = narrow_to_parent(&parent("read", None, 4, None), ask(None, &[]), 4).unwrap_err();
        assert!(matches!(&deep, BrokerError::Forbidden(Forbidden::TooDeep { max: 4, depth: 4, .. })), "{deep:?}");
        assert!(deep.to_string().contains("at most 4 deep"), "{deep}");
        let bob = Some("user:bob".to_owned());
        let other = narrow_to_parent(&p, Asked { on_behalf_of: &bob, ..ask(None, &[]) }, 4).unwrap_err();
        assert!(matches!(&other, BrokerError::Forbidden(Forbidden::SubjectChanged)), "{other:?}");
        let alice = Some("user:alice".to_owned());
        assert!(narrow_to_parent(&p, Asked { on_behalf_of: &alice, ..ask(None, &[]) }, 4).is_ok());
    }
}
