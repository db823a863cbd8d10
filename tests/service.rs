//! Service plumbing: probes, metrics, request ids, JSON 404s, docs, and the committed OpenAPI spec.

mod common;

use common::{error_message, spawn_app, spawn_app_with};
use serde_json::json;

#[tokio::test]
async fn probes_answer() {
    let app = spawn_app().await;
    let (s, b) = app.get("/healthz").await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ok")));
    let (s, b) = app.get("/readyz").await;
    assert_eq!((s, b["checks"]["database"].as_str()), (200, Some("ok")));
    let llm = b["checks"]["llm"].as_str().unwrap_or_default();
    assert!(
        llm.starts_with("not configured") && llm.contains("AGP_LLM_BASE_URL"),
        "{llm}"
    );
}

#[tokio::test]
async fn readyz_reports_a_closed_database() {
    let app = spawn_app().await;
    app.pool.close().await;
    let (s, b) = app.get("/readyz").await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["status"], "unavailable");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    app.get("/v1/items/missing-one").await;
    app.get("/v1/items/missing-two").await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("agp_http_requests_total")
                && l.contains("route=\"/v1/items/{id}\"")
                && l.contains("status=\"404\"")
        })
        .unwrap_or_else(|| panic!("no counter line in:\n{text}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "{line}");
    assert!(
        text.contains("agp_http_request_duration_seconds_bucket"),
        "histogram exported"
    );
}

#[tokio::test]
async fn request_ids_are_set_and_propagated() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("generated id")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "uuid: {id}");
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn unknown_routes_get_json_404() {
    let app = spawn_app().await;
    let (s, b) = app.get("/v1/nothing-here").await;
    assert_eq!(s, 404);
    assert!(error_message(&b, "not_found").contains("/v1/nothing-here"));
}

#[tokio::test]
async fn request_timeout_answers_503_json() {
    let config = agp_rerank::config::AppConfig {
        request_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let app = spawn_app_with(config).await;
    // Hold a lock on the items table so the write has to wait past the timeout.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE items IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (s, b) = app
        .put("/v1/items", json!({"items": [{"id": "i1", "title": "t"}]}))
        .await;
    let waited = started.elapsed();
    tx.rollback().await.unwrap();
    assert_eq!(s, 503, "{b}");
    assert!(error_message(&b, "unavailable").contains("AGP_REQUEST_TIMEOUT_MS"));
    assert!(
        waited >= std::time::Duration::from_millis(300)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    // The abandoned write left nothing behind.
    assert_eq!(app.count("SELECT count(*) FROM items").await, 0);
}

#[tokio::test]
async fn docs_page_is_served_offline() {
    let app = spawn_app().await;
    let html = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("/openapi.json") && html.contains("/docs/rapidoc-min.js"));
    let js = app
        .client
        .get(app.url("/docs/rapidoc-min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.bytes().await.unwrap().len() > 100_000);
    let (s, spec) = app.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(spec["paths"]["/v1/items"]["put"].is_object());
    assert!(spec["paths"]["/v1/interactions"]["post"].is_object());
}

/// The committed `openapi/openapi.json` must match the code. `UPDATE_OPENAPI=1` rewrites it.
#[test]
fn committed_openapi_matches_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let generated = agp_rerank::http::openapi::spec_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date with the code; run `UPDATE_OPENAPI=1 cargo test --test service` \
         (or `agp openapi --out openapi/openapi.json`) and commit the result"
    );
}
