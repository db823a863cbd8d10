//! Ingestion API against real Postgres: happy paths, idempotency, and every bad-input class
//! (each answered with the contract's error body, and nothing partial written).

mod common;

use common::{error_message, spawn_app, spawn_app_with};
use serde_json::json;

fn items(n: usize) -> serde_json::Value {
    let list: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    json!({ "items": list })
}

#[tokio::test]
async fn items_upsert_get_and_idempotent() {
    let app = spawn_app().await;
    let body = json!({"items": [
        {"id": "i1", "title": "Zelda", "text": "Adventure", "attributes": {"platform": "Switch"}},
        {"id": "i2", "title": "Mario"}
    ]});
    let (s, b) = app.put("/v1/items", body.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"upserted": 2, "changed": 2}));
    // Same batch again: accepted, nothing changes.
    let (s, b) = app.put("/v1/items", body).await;
    assert_eq!((s, b), (200, json!({"upserted": 2, "changed": 0})));
    // A changed title is an update.
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "i2", "title": "Super Mario"}]}),
        )
        .await;
    assert_eq!((s, b["changed"].clone()), (200, json!(1)));

    let (s, b) = app.get("/v1/items/i1").await;
    assert_eq!(s, 200);
    assert_eq!(b["title"], "Zelda");
    assert_eq!(b["attributes"]["platform"], "Switch");
    let (s, b) = app.get("/v1/items/i2").await;
    assert_eq!((s, b["title"].as_str()), (200, Some("Super Mario")));
    let (s, b) = app.get("/v1/items/nope").await;
    assert_eq!(s, 404);
    assert!(error_message(&b, "not_found").contains("nope"));
    assert_eq!(app.count("SELECT count(*) FROM items").await, 2);
}

#[tokio::test]
async fn interactions_history_and_idempotent_resend() {
    let app = spawn_app().await;
    app.put("/v1/items", items(3)).await;
    let batch = json!({"interactions": [
        {"user_id": "u1", "item_id": "i0", "timestamp": "2026-01-01T00:00:00Z"},
        {"user_id": "u1", "item_id": "i2", "kind": "purchase", "value": 2.5, "timestamp": "2026-01-03T00:00:00Z"},
        {"user_id": "u1", "item_id": "i1", "timestamp": "2026-01-02T00:00:00Z"},
        {"user_id": "u2", "item_id": "i1"}
    ]});
    let (s, b) = app.post("/v1/interactions", batch.clone()).await;
    assert_eq!(
        (s, b.clone()),
        (200, json!({"accepted": 4, "duplicates": 0})),
        "{b}"
    );
    // Re-sending timestamped events stores nothing twice; the one without a timestamp is new.
    let (s, b) = app.post("/v1/interactions", batch).await;
    assert_eq!((s, b), (200, json!({"accepted": 4, "duplicates": 3})));
    assert_eq!(app.count("SELECT count(*) FROM interactions").await, 5);

    let (s, b) = app.get("/v1/users/u1/history").await;
    assert_eq!(s, 200, "{b}");
    let ids: Vec<&str> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i0", "i1", "i2"], "newest last");
    assert_eq!(b["history"][2]["kind"], "purchase");
    assert_eq!(b["history"][2]["value"], 2.5);
    assert_eq!(b["history"][0]["title"], "Item 0");

    let (_, b) = app.get("/v1/users/u1/history?limit=2").await;
    let ids: Vec<&str> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["i1", "i2"], "the two most recent, newest last");

    let (s, b) = app.get("/v1/users/ghost/history").await;
    assert_eq!(s, 404);
    error_message(&b, "not_found");
    for bad in ["0", "1001", "abc"] {
        let (s, b) = app.get(&format!("/v1/users/u1/history?limit={bad}")).await;
        assert_eq!(s, 400, "limit={bad}");
        assert!(error_message(&b, "validation_error").contains("limit"));
    }
}

#[tokio::test]
async fn unknown_item_in_interactions_writes_nothing() {
    let app = spawn_app().await;
    app.put("/v1/items", items(2)).await;
    let (s, b) = app
        .post(
            "/v1/interactions",
            json!({"interactions": [
                {"user_id": "u1", "item_id": "i0"},
                {"user_id": "u9", "item_id": "i1"},
                {"user_id": "u1", "item_id": "missing-7"}
            ]}),
        )
        .await;
    assert_eq!(s, 422);
    let msg = error_message(&b, "validation_error");
    assert!(
        msg.contains("interactions[2].item_id") && msg.contains("missing-7"),
        "{msg}"
    );
    assert_eq!(app.count("SELECT count(*) FROM interactions").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM users").await,
        0,
        "no user rows either"
    );
}

#[tokio::test]
async fn malformed_json_and_wrong_types_get_json_errors() {
    let app = spawn_app().await;
    let (s, b) = app
        .raw(
            reqwest::Method::PUT,
            "/v1/items",
            "application/json",
            b"{\"items\": [".to_vec(),
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_message(&b, "validation_error").contains("malformed JSON"));

    let (s, b) = app
        .put("/v1/items", json!({"items": [{"id": 5, "title": "x"}]}))
        .await;
    assert_eq!(s, 422);
    assert!(
        error_message(&b, "validation_error").contains("items[0].id"),
        "{b}"
    );

    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "a", "title": "x", "colour": "red"}]}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(
        error_message(&b, "validation_error").contains("colour"),
        "{b}"
    );

    let (s, b) = app
        .raw(
            reqwest::Method::PUT,
            "/v1/items",
            "text/plain",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_message(&b, "validation_error").contains("Content-Type"));

    let (s, b) = app
        .post(
            "/v1/interactions",
            json!({"interactions": [{"user_id": "u", "item_id": "i", "timestamp": "yesterday"}]}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(
        error_message(&b, "validation_error").contains("timestamp"),
        "{b}"
    );

    let (s, b) = app
        .post(
            "/v1/interactions",
            json!({"interactions": [{"user_id": "u", "item_id": "i", "value": "high"}]}),
        )
        .await;
    assert_eq!(s, 422);
    error_message(&b, "validation_error");
    assert_eq!(app.count("SELECT count(*) FROM items").await, 0);
}

#[tokio::test]
async fn empty_oversized_and_duplicate_batches() {
    let config = agp_rerank::config::AppConfig {
        limits: agp_rerank::catalog::Limits {
            max_items_per_batch: 5,
            max_interactions_per_batch: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = spawn_app_with(config).await;
    let (s, b) = app.put("/v1/items", json!({"items": []})).await;
    assert_eq!(s, 422);
    assert!(error_message(&b, "validation_error").contains("at least one"));

    let (s, b) = app.put("/v1/items", items(6)).await;
    assert_eq!(s, 422);
    assert!(
        error_message(&b, "validation_error").contains("limit is 5"),
        "{b}"
    );

    let (s, b) = app.put("/v1/items", json!({"items": [{"id": "a", "title": "A"}, {"id": "b", "title": "B"}, {"id": "a", "title": "A2"}]})).await;
    assert_eq!(s, 422);
    assert!(
        error_message(&b, "validation_error").contains("items[2].id \"a\" appears more than once"),
        "{b}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM items").await,
        0,
        "nothing of a rejected batch is written"
    );

    app.put("/v1/items", items(2)).await;
    let ev = json!({"user_id": "u", "item_id": "i0", "timestamp": "2026-01-01T00:00:00Z"});
    let (s, b) = app
        .post(
            "/v1/interactions",
            json!({"interactions": [ev, {"user_id": "u", "item_id": "i1"}, ev]}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(
        error_message(&b, "validation_error").contains("interactions[2] repeats interactions[0]"),
        "{b}"
    );
    let (s, b) = app
        .post("/v1/interactions", json!({"interactions": []}))
        .await;
    assert_eq!(s, 422);
    error_message(&b, "validation_error");
    let four: Vec<_> = (0..4)
        .map(|_| json!({"user_id": "u", "item_id": "i0"}))
        .collect();
    let (s, b) = app
        .post("/v1/interactions", json!({"interactions": four}))
        .await;
    assert_eq!(s, 422);
    assert!(error_message(&b, "validation_error").contains("limit is 3"));
    assert_eq!(app.count("SELECT count(*) FROM interactions").await, 0);
}

#[tokio::test]
async fn over_long_strings_and_bad_attributes() {
    let app = spawn_app().await;
    let long_title = "x".repeat(1001);
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "ok", "title": "fine"}, {"id": "a", "title": long_title}]}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        error_message(&b, "validation_error"),
        "items[1].title is 1001 characters long; the limit is 1000"
    );
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "y".repeat(257), "title": "t"}]}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(
        error_message(&b, "validation_error")
            .contains("items[0].id is 257 characters long; the limit is 256")
    );
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "a", "title": "t", "text": "z".repeat(20_001)}]}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(error_message(&b, "validation_error").contains("items[0].text"));
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "a", "title": "t", "attributes": [1]}]}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(error_message(&b, "validation_error").contains("must be a JSON object"));
    // A number near f64::MAX would be stored exactly by Postgres and not read back.
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "a", "title": "t", "attributes": {"x": [1.7976931348623157e308]}}]}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(error_message(&b, "validation_error").contains("items[0].attributes holds a number"));
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "a", "title": "nul\u{0}byte"}]}),
        )
        .await;
    assert_eq!(s, 422);
    error_message(&b, "validation_error");
    let (s, b) = app
        .post(
            "/v1/interactions",
            json!({"interactions": [{"user_id": "u".repeat(300), "item_id": "ok"}]}),
        )
        .await;
    assert_eq!(s, 422);
    assert!(error_message(&b, "validation_error").contains("interactions[0].user_id"));
    assert_eq!(app.count("SELECT count(*) FROM items").await, 0);
}

#[tokio::test]
async fn oversized_body_is_413_json() {
    let config = agp_rerank::config::AppConfig {
        max_body_bytes: 1024,
        ..Default::default()
    };
    let app = spawn_app_with(config).await;
    let (s, b) = app.put("/v1/items", items(100)).await;
    assert_eq!(s, 413, "{b}");
    assert!(error_message(&b, "payload_too_large").contains("too large"));
}
