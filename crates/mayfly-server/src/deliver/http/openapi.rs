//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Mayfly", description = "Runtime credential broker for non-human identities."),
    paths(
        super::token::exchange,
        super::tasks::start,
        super::tasks::list,
        super::tasks::show,
        super::tasks::end,
        super::tasks::attest,
        super::tasks::approve,
        super::tasks::deny,
        super::credentials::issue,
        super::credentials::renew,
        super::credentials::revoke,
        super::credentials::list,
        super::admin::create_join_token,
        super::admin::create_admin_token,
        super::admin::list_admin_tokens,
        super::admin::revoke_admin_token,
        super::admin::list_keys,
        super::admin::rotate_keys,
        super::workload::list_entries,
        super::workload::create_entry,
        super::workload::show_entry,
        super::workload::delete_entry,
        super::workload::bundle,
        super::workload::rotate_authorities,
        super::introspect::introspect,
        super::introspect::feed,
        super::introspect::stream,
        super::records::revoke,
        super::records::lift,
        super::records::leases,
        super::records::audit,
        super::records::audit_verify,
        super::checkpoints::list,
        super::checkpoints::latest,
        super::checkpoints::keys,
        super::discovery::jwks,
        super::discovery::openid_configuration,
        super::discovery::healthz,
        super::discovery::readyz,
        super::signals::receive,
    ),
    modifiers(&AdminToken)
)]
struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "task_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The task's own task token, or an ancestor task's"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "verifier_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A Mayfly access token for the audience urn:mayfly:introspect"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}
