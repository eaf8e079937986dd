//! SPIFFE ID templates: `ns/{namespace}/sa/{serviceaccount}` filled from attested attributes.

use std::collections::BTreeMap;

use super::AttestError;
use crate::spiffe::SpiffeId;

/// Checks a template's syntax (balanced braces, non-empty names) without attributes.
pub fn check(template: &str) -> Result<(), String> {
    render_with(template, |_| Some("x".to_owned())).map(|_| ())
}

/// Fills a template and validates the result as a SPIFFE ID in `trust_domain`.
pub fn render(
    template: &str,
    trust_domain: &str,
    attributes: &BTreeMap<String, String>,
) -> Result<SpiffeId, AttestError> {
    let path = render_with(template, |name| attributes.get(name).cloned()).map_err(AttestError::Mapping)?;
    SpiffeId::new(trust_domain, &path).map_err(|e| AttestError::Mapping(e.to_string()))
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

    #[test]
    fn renders_and_validates() {
        let attrs = BTreeMap::from([("namespace".into(), "prod".into()), ("serviceaccount".into(), "web".into())]);
        let id = render("ns/{namespace}/sa/{serviceaccount}", "td", &attrs).unwrap();
        assert_eq!(id.to_string(), "spiffe://td/ns/prod/sa/web");
        let attrs = BTreeMap::from([("namespace".into(), "../x".into()), ("serviceaccount".into(), "web".into())]);
        assert!(render("ns/{namespace}/sa/{serviceaccount}", "td", &attrs).is_err(), "path traversal refused");
        assert!(render("ns/{missing}", "td", &attrs).is_err());
        assert!(check("ns/{a").is_err());
        assert!(check("ns/}a").is_err());
        assert!(check("ns/{a}/x").is_ok());
    }
}
