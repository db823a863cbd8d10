//! The OpenAPI document, generated from the handlers' annotations. The committed copy in
//! `openapi/openapi.json` is checked against it by a test (`UPDATE_OPENAPI=1` rewrites it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{error, items, jobs, prompts, rerank, service, users};
use crate::catalog;
use crate::store::catalog as store;

/// The whole API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "AGP Rerank", description = "LLM reranking personalized by learned user-profile prompts (AGP). \
        Errors always have the body {\"error\": {\"type\", \"message\"}}."),
    paths(
        service::healthz, service::readyz, service::metrics, service::openapi_json,
        items::upsert_items, items::get_item, items::post_interactions, users::history,
        rerank::rerank, rerank::feedback, rerank::profile,
        prompts::list, prompts::versions, prompts::version, prompts::create_version, prompts::set_label,
        jobs::create_optimization, jobs::get_optimization, jobs::optimization_steps, jobs::cancel_optimization,
        jobs::create_evaluation, jobs::get_evaluation, jobs::cancel_evaluation,
        jobs::create_summaries, jobs::get_summaries,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail, catalog::NewItem, catalog::NewInteraction,
        store::Item, store::HistoryEntry,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "catalog", description = "Items, interactions and user histories"),
        (name = "rerank", description = "Personalized reranking, feedback and profiles"),
        (name = "prompts", description = "The prompt registry: versions, labels, A/B splits"),
        (name = "jobs", description = "AGP optimization and offline evaluation as durable background jobs"),
        (name = "service", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The spec as pretty JSON with a trailing newline (the committed file's format).
pub fn spec_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
