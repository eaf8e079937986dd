//! Loading policies: the directory's `*.cedar` files, their fingerprint, validation
//! against the built-in schema.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use sha2::{Digest, Sha256};

use super::{LoadedPolicies, PolicyError, SCHEMA};

/// Parses the built-in schema.
pub fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA).map(|(s, _)| s).map_err(|e| PolicyError::Schema(e.to_string()))
}

pub(super) fn read_sources(dir: &Path) -> Result<BTreeMap<String, String>, PolicyError> {
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

pub(super) fn fingerprint(files: &BTreeMap<String, String>) -> String {
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
pub(super) fn load_dir(dir: &Path, schema: &Schema) -> Result<LoadedPolicies, PolicyError> {
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
