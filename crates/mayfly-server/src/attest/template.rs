//! SPIFFE ID templates: `ns/{namespace}/sa/{serviceaccount}` filled from attested attributes.
//!
//! A claim value fills exactly one path segment: a value with `/` (GitHub's `ref`) or
//! other characters a segment cannot hold is refused, or escaped when the issuer's
//! `claim_segments = "escape"`. Otherwise `sub = "a/b"` would add segments and slip past
//! prefix policies, prefix revocations and signal senders' scopes. Templates never produce
//! IDs under the reserved `task/` and `agent/` prefixes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::AttestError;
use crate::spiffe::SpiffeId;

/// What becomes of a claim value that does not fit in one SPIFFE ID path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimSegments {
    /// The evidence is refused with a clear error (the default).
    #[default]
    Refuse,
    /// Every byte outside `[A-Za-z0-9.-]` is written `_XX` (uppercase hex; `_` itself is
    /// `_5F`), so distinct values stay distinct: `feature/x` becomes `feature_2Fx`.
    Escape,
}

/// Checks a template's syntax (balanced braces, non-empty names) without attributes.
pub fn check(template: &str) -> Result<(), String> {
    render_with(template, |_| Some("x".to_owned())).map(|_| ())
}

/// Fills a template and validates the result as a SPIFFE ID in `trust_domain`.
pub fn render(
    template: &str,
    trust_domain: &str,
    attributes: &BTreeMap<String, String>,
    segments: ClaimSegments,
) -> Result<SpiffeId, AttestError> {
    let path = render_with(template, |name| {
        let value = attributes.get(name)?;
        Some(match segments {
            ClaimSegments::Refuse => value.clone(),
            ClaimSegments::Escape => escape(value),
        })
    })
    .map_err(AttestError::Mapping)?;
    // Each filled value must still be one segment: checked on the values, not the path.
    if segments == ClaimSegments::Refuse {
        for name in placeholders(template) {
            if let Some(v) = attributes.get(name)
                && !fits_one_segment(v)
            {
                return Err(AttestError::Mapping(format!(
                    "claim {name:?} ({:?}) does not fit in one SPIFFE ID path segment: it has '/' or characters \
                     outside [A-Za-z0-9._-]; set claim_segments = \"escape\" on this issuer to escape such values",
                    v.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    let id = SpiffeId::new(trust_domain, &path).map_err(|e| AttestError::Mapping(e.to_string()))?;
    if crate::spiffe::is_reserved(&id) {
        return Err(AttestError::Mapping(format!(
            "{id} lies under a reserved prefix (task/, agent/): identity templates cannot produce it"
        )));
    }
    Ok(id)
}

/// Whether a value can be one SPIFFE ID path segment as it is.
fn fits_one_segment(v: &str) -> bool {
    !v.is_empty() && v != "." && v != ".." && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// A value as one segment: bytes outside `[A-Za-z0-9.-]` as `_XX`; a value of only dots
/// (`.`, `..` are not segments) has its dots escaped too.
fn escape(v: &str) -> String {
    let only_dots = !v.is_empty() && v.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if (b.is_ascii_alphanumeric() || b == b'-' || b == b'.') && !(only_dots && b == b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The placeholder names of a well-formed template.
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template.split('{').skip(1).filter_map(|part| part.split_once('}').map(|(name, _)| name))
}

fn render_with(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("unclosed '{{' in template {template:?}"))?;
        let name = &after[..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("bad placeholder in template {template:?}"));
        }
        let value = lookup(name).ok_or_else(|| format!("attribute {name:?} is missing from the evidence"))?;
        if value.is_empty() {
            return Err(format!("attribute {name:?} is empty"));
        }
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unmatched '}}' in template {template:?}"));
    }
    out.push_str(rest);
    Ok(out.trim_start_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn renders_and_validates() {
        let a = attrs(&[("namespace", "prod"), ("serviceaccount", "web")]);
        let id = render("ns/{namespace}/sa/{serviceaccount}", "td", &a, ClaimSegments::Refuse).unwrap();
        assert_eq!(id.to_string(), "spiffe://td/ns/prod/sa/web");
        let a = attrs(&[("namespace", "../x"), ("serviceaccount", "web")]);
        assert!(render("ns/{namespace}/sa/{serviceaccount}", "td", &a, ClaimSegments::Refuse).is_err());
        assert!(render("ns/{missing}", "td", &a, ClaimSegments::Refuse).is_err());
        assert!(check("ns/{a").is_err());
        assert!(check("ns/}a").is_err());
        assert!(check("ns/{a}/x").is_ok());
    }

    #[test]
    fn a_claim_stays_in_its_segment() {
        let a = attrs(&[("sub", "a/b")]);
        let refused = render("gen/{sub}", "td", &a, ClaimSegments::Refuse).unwrap_err().to_string();
        assert!(refused.contains("one SPIFFE ID path segment") && refused.contains("claim_segments"), "{refused}");
        let id = render("gen/{sub}", "td", &a, ClaimSegments::Escape).unwrap();
        assert_eq!(id.to_string(), "spiffe://td/gen/a_2Fb");
        // Escaping keeps values apart: `a_2Fb` itself is escaped differently from `a/b`.
        let lookalike = render("gen/{sub}", "td", &attrs(&[("sub", "a_2Fb")]), ClaimSegments::Escape).unwrap();
        assert_eq!(lookalike.to_string(), "spiffe://td/gen/a_5F2Fb");
        for (v, want) in [("..", "_2E_2E"), (".", "_2E"), ("a.b-c", "a.b-c"), ("é", "_C3_A9")] {
            let id = render("gen/{sub}", "td", &attrs(&[("sub", v)]), ClaimSegments::Escape).unwrap();
            assert_eq!(id.path(), format!("/gen/{want}"), "{v}");
        }
    }

    #[test]
    fn reserved_prefixes_cannot_be_produced() {
        for (template, v) in [("{sub}/x", "task"), ("{sub}/x", "agent"), ("task/{sub}", "x"), ("agent/{sub}", "x")] {
            let e = render(template, "td", &attrs(&[("sub", v)]), ClaimSegments::Escape).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{template} {v}: {e}");
        }
        assert!(render("{sub}/x", "td", &attrs(&[("sub", "tasks")]), ClaimSegments::Refuse).is_ok());
    }
}
