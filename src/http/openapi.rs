//! The OpenAPI document, generated from the handlers' annotations, and the routes that serve
//! it: `/openapi.json` and the docs page `/docs`. The committed copy in `openapi/openapi.json`
//! is checked against it by a test (`UPDATE_OPENAPI=1` rewrites it).

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::state::AppState;
use super::{
    autopilot, blends, budget, console, error, experiments, items, jobs, prompts, rerank, service,
    users,
};
use crate::catalog;
use crate::store::catalog as store;

/// Routes of this area (no auth: the docs must work without a key).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
        .route("/docs/rapidoc-min.js", get(rapidoc_js))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "OpenAPI document"), (status = 500, body = error::ErrorBody)))]
pub async fn openapi_json() -> impl IntoResponse {
    axum::Json(spec())
}

const DOCS_HTML: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>AGP Rerank API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script type="module" src="/docs/rapidoc-min.js"></script></head>
<body><rapi-doc spec-url="/openapi.json" render-style="read" show-header="false"
 allow-try="true" allow-server-selection="false" theme="light"
 regular-font="system-ui, sans-serif" mono-font="ui-monospace, monospace"></rapi-doc></body></html>"#;

/// Interactive API docs (RapiDoc, served from the binary: works offline).
pub async fn docs() -> Html<&'static str> {
    Html(DOCS_HTML)
}

static RAPIDOC_JS: &[u8] = include_bytes!("../../assets/docs/rapidoc-min.js");

async fn rapidoc_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        RAPIDOC_JS,
    )
}

/// The whole API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "AGP Rerank", description = "LLM reranking personalized by learned user-profile prompts (AGP). \
        Errors always have the body {\"error\": {\"type\", \"message\"}}."),
    paths(
        service::healthz, service::readyz, service::metrics, openapi_json,
        items::upsert_items, items::get_item, items::post_interactions, users::history,
        rerank::rerank, rerank::feedback, rerank::profile,
        prompts::list, prompts::versions, prompts::version, prompts::create_version, prompts::set_label,
        blends::list, blends::version, blends::create_version, blends::set_label,
        jobs::create_optimization, jobs::get_optimization, jobs::optimization_steps, jobs::cancel_optimization,
        jobs::create_evaluation, jobs::get_evaluation, jobs::cancel_evaluation,
        jobs::create_summaries, jobs::get_summaries,
        experiments::create, experiments::list, experiments::read, experiments::stop,
        autopilot::read, autopilot::set,
        budget::read, budget::set,
        console::overview, console::jobs, console::chart, console::report_md, console::load_sample,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail, catalog::NewItem, catalog::NewInteraction,
        store::Item, store::HistoryEntry, crate::agp::prompt::PromptName,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "catalog", description = "Items, interactions and user histories"),
        (name = "rerank", description = "Personalized reranking, feedback and profiles"),
        (name = "prompts", description = "The prompt registry: versions, labels, A/B splits"),
        (name = "blends", description = "How the LLM ranking is fused with the incoming order and built-in rankers: versions, labels, A/B splits"),
        (name = "budget", description = "LLM token budgets per hour and day for reranks and for jobs, and the spend against them"),
        (name = "console", description = "What the web console at /console reads besides the API: overview, recent jobs, report files, the bundled sample"),
        (name = "experiments", description = "Online experiments on a label: arms, always-valid decision, guardrails"),
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

/// The spec as served and committed: the generated document plus the contract details that
/// the annotations cannot say (see `contract_details`).
pub fn spec() -> &'static serde_json::Value {
    static SPEC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let mut v = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        contract_details(&mut v);
        v
    })
}

/// The spec as pretty JSON with a trailing newline (the committed file's format).
pub fn spec_json() -> String {
    let mut s =
        serde_json::to_string_pretty(spec()).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// Fills in what the handlers' annotations leave implicit, in one place:
/// - named patterns (`"ID"`, `"TEXT"`, `"NO_NUL"`, `"LABEL"`) become their regexes;
/// - probes, metrics and this document need no key (`security: []`);
/// - every `/v1` operation documents the answers every route can give: 400 (malformed
///   request, control characters in the path), 401 and 403 (keys), 500, 503 (request
///   timeout, database down), and 413/422 when it takes a body;
/// - path and query parameters get the limits the handlers enforce.
fn contract_details(spec: &mut serde_json::Value) {
    use serde_json::{Value, json};
    expand_patterns(spec);
    flatten_all_of(spec);
    let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for op in ops.values_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            if !path.starts_with("/v1") {
                op.insert("security".into(), json!([]));
                continue;
            }
            let has_body = op.contains_key("requestBody");
            let mut standard = vec![
                (
                    "400",
                    "Malformed request: bad JSON or content type, control characters in the path or query, a bad query value",
                ),
                (
                    "401",
                    "No or unknown API key (only when AGP_MASTER_KEY is set)",
                ),
                ("403", "The key's scope does not allow this call"),
                ("500", "Internal error (details in the server log)"),
                (
                    "503",
                    "The request took longer than AGP_REQUEST_TIMEOUT_MS, or the database is not answering",
                ),
            ];
            if has_body {
                standard.push(("413", "Body larger than AGP_MAX_BODY_BYTES"));
                standard.push((
                    "422",
                    "The body breaks a rule; the message names the field and the limit",
                ));
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(responses) = responses {
                for (code, text) in standard {
                    responses.entry(code).or_insert_with(|| {
                        json!({"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
                    });
                }
            }
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut() {
                    constrain_parameter(path, p);
                }
            }
        }
    }
}

/// The schema of a path parameter, by name, as the handlers check it.
fn constrain_parameter(path: &str, p: &mut serde_json::Value) {
    use serde_json::json;
    let name = p.get("name").and_then(|n| n.as_str()).unwrap_or("");
    let in_path = p.get("in").and_then(|n| n.as_str()) == Some("path");
    let schema = match (name, in_path) {
        ("id", true) if path.starts_with("/v1/items") || path.starts_with("/v1/users") => {
            json!({"type": "string", "minLength": 1, "pattern": crate::catalog::ID_PATTERN})
        }
        ("label", true) => json!({"type": "string", "pattern": crate::catalog::LABEL_PATTERN}),
        ("version", true) => {
            json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": i32::MAX})
        }
        ("name", true) => json!({"$ref": "#/components/schemas/PromptName"}),
        _ => return,
    };
    p["schema"] = schema;
}

/// Writes schemas made with `#[serde(flatten)]` (an `allOf` of the flattened struct and the
/// rest) as one object: an `allOf` of closed objects would forbid each part's fields in the
/// other, so no request could match it.
fn flatten_all_of(spec: &mut serde_json::Value) {
    use serde_json::{Map, Value};
    let Some(schemas) = spec
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    let resolve = |part: &Value| -> Option<Value> {
        let r = part
            .get("$ref")
            .or_else(|| part.pointer("/oneOf/0/$ref"))
            .and_then(Value::as_str);
        match r {
            Some(r) => schemas.get(r.rsplit('/').next()?).cloned(),
            None => Some(part.clone()),
        }
    };
    let Some(target) = spec
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for schema in target.values_mut() {
        let Some(parts) = schema.get("allOf").and_then(Value::as_array).cloned() else {
            continue;
        };
        let mut properties = Map::new();
        let mut required: Vec<Value> = Vec::new();
        for part in parts.iter().filter_map(resolve) {
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                properties.extend(p.clone());
            }
            if let Some(r) = part.get("required").and_then(Value::as_array) {
                required.extend(r.iter().cloned());
            }
        }
        let description = schema.get("description").cloned();
        let mut merged = Map::new();
        merged.insert("type".into(), "object".into());
        if let Some(d) = description {
            merged.insert("description".into(), d);
        }
        merged.insert("properties".into(), Value::Object(properties));
        if !required.is_empty() {
            merged.insert("required".into(), Value::Array(required));
        }
        merged.insert("additionalProperties".into(), Value::Bool(false));
        *schema = Value::Object(merged);
    }
}

/// Replaces named patterns anywhere in the document.
fn expand_patterns(v: &mut serde_json::Value) {
    use crate::catalog::{ID_PATTERN, LABEL_PATTERN, NO_NUL_PATTERN, TEXT_PATTERN};
    match v {
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::String(p)) = o.get_mut("pattern") {
                let full = match p.as_str() {
                    "ID" => Some(ID_PATTERN),
                    "TEXT" => Some(TEXT_PATTERN),
                    "NO_NUL" => Some(NO_NUL_PATTERN),
                    "LABEL" => Some(LABEL_PATTERN),
                    _ => None,
                };
                if let Some(full) = full {
                    *p = full.to_string();
                }
            }
            o.values_mut().for_each(expand_patterns);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(expand_patterns),
        _ => {}
    }
}
