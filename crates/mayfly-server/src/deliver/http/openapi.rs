//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// What the document says besides its paths: those come from the router's own list
/// (`super::api`), so a route cannot be served without being documented.
#[derive(OpenApi)]
#[openapi(
    info(title = "Mayfly", description = "Runtime credential broker for non-human identities."),
    modifiers(&AdminToken)
)]
pub(super) struct ApiDoc;

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
        components.add_security_scheme(
            "proxy_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A Mayfly access token for the audience urn:mayfly:proxy, held by mayfly proxy"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 document of this API, built once from the routes.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| super::api().split_for_parts().1)
}

/// `GET /v1/openapi.json`.
pub async fn document() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(openapi())
}
