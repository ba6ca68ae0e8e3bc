//! The OpenAPI 3.1 document of the HTTP surface, served at `/api/v1/openapi.json`. It is
//! generated from the handlers' `#[utoipa::path]` annotations and response types as the
//! router is built (every route is registered through `utoipa_axum::routes!`, which adds the
//! route and its operation together), so the document cannot drift from the routes.

use std::sync::Arc;

use axum::Extension;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "waghl",
        description = "Bridges WhatsApp into GoHighLevel. The admin API needs `Authorization: Bearer \
                       $WAGHL_ADMIN_TOKEN`; every error is `{\"error\":{\"code\",\"message\"}}`. Routes tagged \
                       `pages` answer HTML for people; `sim` routes exist only with WAGHL_WA_BACKEND=sim.",
    ),
    modifiers(&AdminBearer),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "locations", description = "Admin API: locations, their GHL connection and queues"),
        (name = "sessions", description = "Admin API: WhatsApp sessions and pairing"),
        (name = "messages", description = "Admin API: both message queues, replaying dead messages"),
        (name = "webhooks", description = "GHL's webhooks (signed by GHL, or carrying ?key=$WAGHL_WEBHOOK_KEY)"),
        (name = "pages", description = "HTML for people: console, install, pairing page, GHL Custom Page"),
        (name = "sim", description = "Control of the simulated WhatsApp (WAGHL_WA_BACKEND=sim only)"),
    )
)]
struct ApiDoc;

/// The admin token as an HTTP bearer scheme, named `admin` in operations' `security`.
struct AdminBearer;

impl Modify for AdminBearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("WAGHL_ADMIN_TOKEN"))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("admin", SecurityScheme::Http(scheme));
    }
}

/// The document's skeleton (info, tags, security schemes); operations are added by the routes.
pub fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The `{id}` of a route: a GHL location id (or a message id on `/api/v1/messages/{id}`).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// Letters, digits, `_` and `-`.
    #[allow(dead_code)] // read by the derive only: the handlers take the id through their own extractors
    id: String,
}

/// A string schema limited to `values`, for enums whose Rust type lives outside `http`.
pub fn one_of(values: &[&str]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .into()
}

/// The finished document, serialized once when the router is built.
#[derive(Clone)]
pub struct Document(Arc<String>);

impl Document {
    pub fn new(openapi: &utoipa::openapi::OpenApi) -> Self {
        Self(Arc::new(openapi.to_json().expect("the OpenAPI document serializes")))
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(document))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn document(Extension(document): Extension<Document>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], document.0.as_str().to_owned())
}
