//! The problem answers many operations share, for their `#[utoipa::path(responses(...))]`:
//! each names the statuses that one shared step (admin check, body or query parsing,
//! storage) can answer, so an operation documents what it really answers by listing the
//! steps it takes. List them before an operation's own tuples: a later entry for the same
//! status replaces an earlier one, so an operation's own description wins.

use std::collections::BTreeMap;

use mayfly_proto::PROBLEM_CONTENT_TYPE;
use utoipa::IntoResponses;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

/// A problem document response with this description.
fn problem(description: &str) -> RefOr<Response> {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    ResponseBuilder::new().description(description).content(PROBLEM_CONTENT_TYPE, content).build().into()
}

fn answers(list: &[(&str, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter().map(|(status, description)| ((*status).to_owned(), problem(description))).collect()
}

/// What checking an admin token answers: 401 without a valid one, 503 when storage cannot say.
pub(crate) struct AdminAuth;

impl IntoResponses for AdminAuth {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(&[("401", "Missing or wrong admin token"), ("503", "Storage is unavailable; nothing changed, retry")])
    }
}

/// What reading a JSON body answers: 400 for a body that is not the documented object,
/// 413 above the size limit, 415 for another media type.
pub(crate) struct JsonBody;

impl IntoResponses for JsonBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(&[
            ("400", "The body is not valid JSON of the documented shape, or a field is out of its range"),
            ("413", "The body is larger than 64 KiB"),
            ("415", "The body is not application/json"),
        ])
    }
}

/// What reading an `application/x-www-form-urlencoded` body answers.
pub(crate) struct FormBody;

impl IntoResponses for FormBody {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(&[
            ("400", "The body is not valid form encoding, or a parameter is missing, repeated or malformed"),
            ("413", "The body is larger than 64 KiB"),
            ("415", "The body is not application/x-www-form-urlencoded"),
        ])
    }
}

/// What reading query parameters answers: 400 for one that does not parse or is out of range.
pub(crate) struct BadQuery;

impl IntoResponses for BadQuery {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(&[("400", "A query parameter does not parse or is out of its range")])
    }
}

/// 503: storage (or a key it holds) could not be read or written now.
pub(crate) struct Unavailable;

impl IntoResponses for Unavailable {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        answers(&[("503", "Storage is unavailable; retry")])
    }
}
