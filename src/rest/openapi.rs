//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the JSON shapes, served at `GET /openapi.json`. The error responses every
//! route can give are added here once rather than on each handler.

use utoipa::{
    openapi::{
        path::Operation,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        ContentBuilder, Ref, ResponseBuilder,
    },
    Modify, OpenApi,
};

use super::{admin_routes, error, keys, model, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate REST API",
        description = "API keys for the Envoy / Istio data plane: the KeyAdmin use-cases over JSON. \
                       Authenticate with `Authorization: Bearer <admin token>` (a `service` token names \
                       `owner_id`; an `admin` token may also use `/v1/admin`) or with an owner's own key \
                       holding `keygate:keys` (or a superkey)."
    ),
    paths(
        keys::list, keys::create, keys::scopes, keys::get, keys::update, keys::revoke,
        keys::rotate, keys::usage,
        admin_routes::list_keys, admin_routes::revoke_key, admin_routes::suspend_owner,
        admin_routes::resume_owner, admin_routes::list_audit_events,
        webhooks::list, webhooks::create, webhooks::get, webhooks::update, webhooks::delete,
        webhooks::deliveries, webhooks::redeliver, webhooks::send_test,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, model::State)),
    modifiers(&CommonResponses),
    security(("bearer" = [])),
    tags(
        (name = "api-keys", description = "An owner's keys"),
        (name = "admin", description = "Across owners; admin tokens only"),
        (name = "webhooks", description = "An owner's webhook endpoints and their deliveries"),
    )
)]
pub struct ApiDoc;

/// The bearer scheme and the error statuses shared by every operation.
struct CommonResponses;

/// Status, description, and whether it applies only to operations that take
/// a body.
const ERRORS: [(&str, &str, bool); 10] = [
    ("400", "Malformed JSON (including invalid UTF-8)", true),
    ("401", "No credential, or one that is not valid: unknown token, revoked / expired key", false),
    ("403", "Another owner's key, an admin route with a non-admin caller, a suspended owner, abilities above the calling key's, or a calling key used from outside its allowed_cidrs", false),
    ("404", "No such key, webhook, delivery or route", false),
    ("409", "The key is already revoked or expired", false),
    ("413", "The body exceeds 64 KiB", true),
    ("415", "The body is not JSON", true),
    ("422", "Validation failed: `error.fields` names each offending field", false),
    ("429", "The calling key's rate limit is exhausted (see Retry-After)", false),
    ("503", "The key store is unavailable; retry later", false),
];

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_errors(operation);
            }
        }
    }
}

fn add_errors(operation: &mut Operation) {
    let takes_body = operation.request_body.is_some();
    for (status, description, body_only) in ERRORS {
        if body_only && !takes_body {
            continue;
        }
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(response.into());
    }
}
