//! The bridge from Mayfly's values to Cedar's: request contexts built from values (not
//! from JSON text, which Cedar would parse on every decision), with the `ip(…)` and
//! `datetime(…)` values of recent addresses and the current second remembered per thread.

use std::net::IpAddr;
use std::sync::Arc;

use cedar_policy::{Context, RestrictedExpression};
use cedar_policy_core::ast::{self as cedar_ast, Value};

use super::entities::{Memo, REMEMBERED, remembered};

thread_local! {
    /// Recent `ip(…)` values: evaluating one parses the address and, before that, the
    /// extension's name with Cedar's full parser, which cost more than the rest of a
    /// request's context.
    static IP_VALUES: std::cell::RefCell<Memo<IpAddr, Value>> = Default::default();
    /// The `datetime(…)` value of the current second, for the same reason.
    static NOW_VALUE: std::cell::RefCell<Option<(i64, Value)>> = const { std::cell::RefCell::new(None) };
}

/// `ip("<addr>")`, evaluated.
pub(super) fn ip_value(ip: IpAddr) -> Result<Value, String> {
    IP_VALUES.with_borrow_mut(|memo| {
        remembered(memo, REMEMBERED, &ip, || ip, || evaluated(RestrictedExpression::new_ip(ip.to_string())))
    })
}

/// `datetime("<RFC 3339 of now>")`, evaluated.
pub(super) fn now_value(now: i64) -> Result<Value, String> {
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
pub(super) fn evaluated(expr: RestrictedExpression) -> Result<Value, String> {
    let holder = Context::from_pairs([("v".to_owned(), expr)]).map_err(|e| e.to_string())?;
    match holder.as_ref() {
        cedar_ast::Context::Value(attrs) => attrs.get("v").cloned().ok_or_else(|| "extension value missing".to_owned()),
        cedar_ast::Context::RestrictedResidual(_) => Err("extension value did not evaluate".to_owned()),
    }
}

pub(super) fn string(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

pub(super) fn scope_set(scope: &str) -> RestrictedExpression {
    RestrictedExpression::new_set(scope.split_whitespace().map(string))
}

pub(super) fn long(v: i64) -> Value {
    Value::from(v)
}

pub(super) fn boolean(v: bool) -> Value {
    Value::from(v)
}

pub(super) fn text(v: &str) -> Value {
    Value::from(v)
}

pub(super) fn texts<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::set_of_lits(items.into_iter().map(cedar_ast::Literal::from), None)
}

pub(super) fn scope_values(scope: &str) -> Value {
    texts(scope.split_whitespace())
}

/// A request context made of values directly. `Context::from_pairs` would build a record
/// expression and evaluate it, re-parsing every `ip` and `datetime` string: that was a
/// third of a decision. Keys are distinct by construction; debug builds check the whole
/// request against the schema.
pub(super) fn context<const N: usize>(pairs: [(&str, Value); N]) -> Context {
    Context::from(cedar_ast::Context::Value(Arc::new(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())))
}
