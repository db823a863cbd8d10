//! Bearer-key auth with a master key and scoped, revocable keys stored hashed.

mod common;

use agp_rerank::auth::{self, Scope};
use agp_rerank::config::{AppConfig, Secret};
use agp_rerank::store;
use common::{error_message, spawn_app_with};
use serde_json::json;

const MASTER: &str = "test-master-key";

async fn key(app: &common::TestApp, scope: Scope) -> (String, String) {
    let (secret, prefix, hash) = auth::generate_key();
    store::keys::insert(
        &app.pool,
        "default",
        "t",
        scope.as_str(),
        &prefix,
        &hash,
        None,
        None,
    )
    .await
    .unwrap();
    (secret, prefix)
}

async fn call(
    app: &common::TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = app.client.request(method, app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn keys_scopes_and_revocation() {
    let app = spawn_app_with(AppConfig {
        master_key: Some(Secret::new(MASTER)),
        ..Default::default()
    })
    .await;
    let items = json!({"items": [{"id": "i1", "title": "T"}]});
    let put = reqwest::Method::PUT;
    let get = reqwest::Method::GET;

    let (s, b) = call(&app, get.clone(), "/v1/items/i1", None, None).await;
    assert_eq!(s, 401);
    assert!(error_message(&b, "unauthorized").contains("Bearer"));
    let (s, b) = call(&app, get.clone(), "/v1/items/i1", Some("agp_wrong"), None).await;
    assert_eq!(s, 401);
    error_message(&b, "unauthorized");
    // Service endpoints stay open for probes.
    assert_eq!(call(&app, get.clone(), "/healthz", None, None).await.0, 200);

    let (s, _) = call(
        &app,
        put.clone(),
        "/v1/items",
        Some(MASTER),
        Some(items.clone()),
    )
    .await;
    assert_eq!(s, 200, "master key is admin");

    let (read, _) = key(&app, Scope::Read).await;
    assert_eq!(
        call(&app, get.clone(), "/v1/items/i1", Some(&read), None)
            .await
            .0,
        200
    );
    let (s, b) = call(
        &app,
        put.clone(),
        "/v1/items",
        Some(&read),
        Some(items.clone()),
    )
    .await;
    assert_eq!(s, 403);
    assert!(error_message(&b, "forbidden").contains("`read`"));

    let (rerank, prefix) = key(&app, Scope::Rerank).await;
    assert_eq!(
        call(
            &app,
            put.clone(),
            "/v1/items",
            Some(&rerank),
            Some(items.clone())
        )
        .await
        .0,
        200
    );

    // Keys are stored hashed: the secret appears nowhere in the table.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE key_hash = $1 AND position($2 in prefix) = 0",
    )
    .bind(auth::hash_key(&rerank))
    .bind(&rerank)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    assert_eq!(store::keys::revoke(&app.pool, &prefix).await.unwrap(), 1);
    let (s, b) = call(&app, get.clone(), "/v1/items/i1", Some(&rerank), None).await;
    assert_eq!(s, 401);
    assert!(error_message(&b, "unauthorized").contains("revoked"));
}

#[tokio::test]
async fn the_scheme_is_case_insensitive_and_two_authorization_headers_are_refused() {
    let app = spawn_app_with(AppConfig {
        master_key: Some(Secret::new(MASTER)),
        ..Default::default()
    })
    .await;
    let (read, _) = key(&app, Scope::Read).await;
    let get = |values: Vec<String>| {
        let mut req = app.client.get(app.url("/v1/items/nothing"));
        for v in values {
            req = req.header("authorization", v);
        }
        async move {
            let resp = req.send().await.unwrap();
            let s = resp.status().as_u16();
            (
                s,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // RFC 7235: the scheme is case-insensitive (404: authenticated, no such item).
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (s, b) = get(vec![format!("{scheme} {read}")]).await;
        assert_eq!(s, 404, "{scheme}: {b}");
    }
    let (s, b) = get(vec![format!("Basic {read}")]).await;
    assert_eq!(s, 401, "{b}");
    // Two headers: which one counts would be a guess.
    let (s, b) = get(vec![format!("Bearer {read}"), format!("Bearer {MASTER}")]).await;
    assert_eq!(s, 400, "{b}");
    assert!(error_message(&b, "validation_error").contains("more than one"));
}
