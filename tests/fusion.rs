//! Blends end to end (real router, real Postgres, the scripted test LLM): each built-in ranker
//! answering alone on a hand-built catalog, the fusion arithmetic of the default and other
//! blends, blend versions, labels, A/B splits and request overrides, and blends that make no
//! LLM call at all.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agp_rerank::config::AppConfig;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use common::{TestApp, candidate_values as values, error_message, llm_step as step, result_ids};
use serde_json::{Value, json};

struct Rig {
    app: TestApp,
    /// Ranking calls the upstream received.
    ranks: Arc<AtomicUsize>,
    /// The upstream ranks in reverse incoming order instead of highest number first.
    reversed: Arc<AtomicBool>,
    _llm: TestLlm,
}

/// Items i0..i59 "Item N"; histories a [1, 2], b [1, 2], c [1, 3], d [4, 5], e [2], u [4]:
/// counts i1 3, i2 3, i3 1, i4 2, i5 1; i5 co-occurs with i4 only.
async fn rig() -> Rig {
    let ranks = Arc::new(AtomicUsize::new(0));
    let reversed = Arc::new(AtomicBool::new(false));
    let (r2, rev2) = (ranks.clone(), reversed.clone());
    let llm = TestLlm::start(move |s: &Seen| match step(s) {
        "rank" => {
            r2.fetch_add(1, Ordering::SeqCst);
            let v = values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            if rev2.load(Ordering::SeqCst) {
                idx.reverse();
            } else {
                idx.sort_by_key(|&i| std::cmp::Reverse(v[i]));
            }
            Reply::json(json!({"ranking": idx.iter().map(|i| i + 1).collect::<Vec<_>>()}))
        }
        _ => Reply::text("a short text"),
    })
    .await;
    let settings = LlmSettings::single(llm.base_url.clone(), "test-model");
    let app = common::spawn_app_with_llm(AppConfig::default(), settings).await;
    let items: Vec<Value> = (0..60)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    let mut inters = Vec::new();
    for (user, seq) in [
        ("a", &[1, 2][..]),
        ("b", &[1, 2]),
        ("c", &[1, 3]),
        ("d", &[4, 5]),
        ("e", &[2]),
        ("u", &[4]),
    ] {
        for (k, i) in seq.iter().enumerate() {
            inters.push(json!({"user_id": user, "item_id": format!("i{i}"),
                               "timestamp": format!("2026-01-0{}T00:00:00Z", k + 1)}));
        }
    }
    let (s, b) = app
        .post("/v1/interactions", json!({"interactions": inters}))
        .await;
    assert_eq!(s, 200, "{b}");
    Rig {
        app,
        ranks,
        reversed,
        _llm: llm,
    }
}

impl Rig {
    /// Reranks `ids` for `user` with `extra` fields merged into the body.
    async fn rerank(&self, user: &str, ids: &[u32], extra: Value) -> Value {
        let mut body = json!({
            "user_id": user,
            "candidates": ids.iter().map(|i| json!({"id": format!("i{i}")})).collect::<Vec<_>>(),
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (s, b) = self.app.post("/v1/rerank", body).await;
        assert_eq!(s, 200, "{b}");
        b
    }
}

fn weights(w: Value) -> Value {
    json!({"blend": {"weights": w}})
}

#[tokio::test]
async fn each_ranker_answers_alone_without_calling_the_llm() {
    let r = rig().await;
    let cands = [3, 5, 1];
    let incoming = r.rerank("u", &cands, weights(json!({"incoming": 1}))).await;
    assert_eq!(result_ids(&incoming), ["i3", "i5", "i1"]);
    // counts i3 1, i5 1, i1 3: i1, then the tie in incoming order
    let popularity = r
        .rerank("u", &cands, weights(json!({"popularity": 1})))
        .await;
    assert_eq!(result_ids(&popularity), ["i1", "i3", "i5"]);
    // item-kNN from u's history [i4]: only i5 co-occurs with i4; then popularity (i1 3, i3 1).
    // The project's model is fit in the background on first use: until then the component
    // is skipped, and the answer says so.
    let mut fitted = None;
    for _ in 0..100 {
        let b = r.rerank("u", &cands, weights(json!({"item_knn": 1}))).await;
        if b["meta"]["blend"]["skipped"].is_null() {
            fitted = Some(b);
            break;
        }
        assert_eq!(b["meta"]["blend"]["skipped"], json!(["item_knn"]), "{b}");
        assert_eq!(
            result_ids(&b),
            ["i3", "i5", "i1"],
            "nothing to fuse: incoming"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = fitted.expect("the item-kNN model was fit");
    assert_eq!(result_ids(&b), ["i5", "i1", "i3"], "{b}");
    for b in [&incoming, &popularity, &b] {
        assert_eq!(b["meta"]["usage"]["llm_calls"], 0);
        assert_eq!(b["meta"]["model"], Value::Null);
        assert_eq!(b["meta"]["profile_id"], Value::Null);
        assert_eq!(b["meta"]["fallback"], Value::Null);
        assert_eq!(b["meta"]["blend"]["version"], Value::Null);
    }
    assert_eq!(r.ranks.load(Ordering::SeqCst), 0, "no ranking call at all");
    // The log row says which blend answered (it reaches Postgres through the journal).
    let mut logged: Option<Value> = None;
    for _ in 0..250 {
        logged = sqlx::query_scalar("SELECT blend FROM rerank_requests WHERE id = $1")
            .bind(b["id"].as_str().unwrap())
            .fetch_optional(&r.app.pool)
            .await
            .unwrap()
            .flatten();
        if logged.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logged = logged.expect("the log row arrived");
    assert_eq!(logged["weights"]["item_knn"], 1.0, "{logged}");
    assert_eq!(logged["version"], Value::Null, "{logged}");
}

#[tokio::test]
async fn the_default_blend_fuses_the_llm_with_the_incoming_order() {
    let r = rig().await;
    // Candidates i10 i30 i20 i40; the LLM ranks i40 i30 i20 i10 (indices 3 1 2 0).
    // Borda points over 4: LLM c3 1, c1 2/3, c2 1/3, c0 0; incoming c0 1, c1 2/3, c2 1/3, c3 0.
    let cands = [10, 30, 20, 40];
    // Default (v1): llm 1 + incoming 1: c1 2/3, c0 = c3 = 1/2 (tie: incoming), c2 1/3.
    let b = r.rerank("u", &cands, json!({})).await;
    assert_eq!(result_ids(&b), ["i30", "i10", "i40", "i20"], "{b}");
    assert_eq!(b["meta"]["blend"]["version"], 1);
    assert_eq!(b["meta"]["blend"]["weights"]["llm"], 1.0);
    assert_eq!(b["meta"]["blend"]["weights"]["incoming"], 1.0);
    assert_eq!(b["meta"]["fallback"], Value::Null);
    // llm 2 + incoming 1: c1 = c3 = 2/3 (tie: incoming), c0 = c2 = 1/3 (tie: incoming).
    let b = r
        .rerank("u", &cands, weights(json!({"llm": 2, "incoming": 1})))
        .await;
    assert_eq!(result_ids(&b), ["i30", "i40", "i10", "i20"], "{b}");
    // The LLM alone.
    let b = r.rerank("u", &cands, weights(json!({"llm": 1}))).await;
    assert_eq!(result_ids(&b), ["i40", "i30", "i20", "i10"]);
    // An upstream that reverses the list cancels out against the incoming order.
    r.reversed.store(true, Ordering::SeqCst);
    let b = r.rerank("u", &cands, json!({})).await;
    assert_eq!(result_ids(&b), ["i10", "i30", "i20", "i40"], "{b}");
    // A user without history: no LLM call; the incoming order takes the LLM's place.
    let before = r.ranks.load(Ordering::SeqCst);
    let b = r.rerank("nobody", &cands, json!({})).await;
    assert_eq!(b["meta"]["fallback"], "cold_start");
    assert_eq!(b["meta"]["blend"]["skipped"], json!(["llm"]));
    assert_eq!(result_ids(&b), ["i10", "i30", "i20", "i40"]);
    assert_eq!(r.ranks.load(Ordering::SeqCst), before);
}

/// The contract's maximum weight (1000) holds to the last digit of the body: a weight the
/// smallest step above it is refused like any other weight out of range, as a stored version
/// and as a request's weights; 1000 itself is accepted.
#[tokio::test]
async fn a_weight_just_above_the_maximum_is_refused() {
    let app = common::spawn_app().await;
    let post = |path: &'static str, body: String| {
        app.raw(
            reqwest::Method::POST,
            path,
            "application/json",
            body.into_bytes(),
        )
    };
    for w in [
        "1000.0000000000001",
        "1000.0000000000002",
        "1000.00000000001",
    ] {
        let (s, b) = post(
            "/v1/blends/versions",
            format!(r#"{{"weights": {{"llm": {w}}}}}"#),
        )
        .await;
        assert_eq!(s, 422, "{w} -> {b}");
        let m = error_message(&b, "validation_error");
        assert!(m.contains("weights.llm must be between 0 and 1000"), "{m}");
        let (s, b) = post(
            "/v1/rerank",
            format!(
                r#"{{"user_id": "u", "candidates": [{{"id": "a"}}, {{"id": "b"}}], "blend": {{"weights": {{"incoming": {w}}}}}}}"#
            ),
        )
        .await;
        assert_eq!(s, 422, "{w} -> {b}");
        let m = error_message(&b, "validation_error");
        assert!(m.contains("blend.weights.incoming must be between"), "{m}");
    }
    for w in ["1000", "1000.0", "999.9999999999999"] {
        let (s, b) = post(
            "/v1/blends/versions",
            format!(r#"{{"weights": {{"llm": {w}}}}}"#),
        )
        .await;
        assert_eq!(s, 201, "{w} -> {b}");
    }
}

#[tokio::test]
async fn blend_versions_labels_splits_and_overrides() {
    let r = rig().await;
    let app = &r.app;
    let (s, b) = app.get("/v1/blends").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["versions"].as_array().unwrap().len(), 1);
    assert_eq!(b["versions"][0]["source"], "seed");
    assert_eq!(b["labels"][0]["label"], "production");
    assert_eq!(b["labels"][0]["version"], 1);
    let (_, prompts) = app.get("/v1/prompts").await;
    assert!(
        prompts
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "blend"),
        "{prompts}"
    );

    for (body, needle) in [
        (
            json!({"weights": {"llm": -1}}),
            "weights.llm must be between 0 and 1000",
        ),
        (json!({"weights": {"incoming": 5000}}), "weights.incoming"),
        (json!({"weights": {}}), "at least one positive"),
        (json!({"weights": {"bm25": 1}}), "bm25"),
    ] {
        let (s, b) = app.post("/v1/blends/versions", body.clone()).await;
        assert_eq!(s, 422, "{body} -> {b}");
        assert!(
            error_message(&b, "validation_error").contains(needle),
            "{b}"
        );
    }
    let (s, b) = app
        .post(
            "/v1/blends/versions",
            json!({"weights": {"incoming": 1}, "message": "no LLM"}),
        )
        .await;
    assert_eq!((s, b["version"].as_i64()), (201, Some(2)), "{b}");
    let (s, b) = app.get("/v1/blends/versions/2").await;
    assert_eq!((s, &b["weights"]["incoming"]), (200, &json!(1.0)), "{b}");
    assert_eq!(b["message"], "no LLM");
    assert_eq!(app.get("/v1/blends/versions/99").await.0, 404);

    // Request overrides: by version, by label, by weights; bad selectors.
    let cands = [10, 30, 20];
    let b = r
        .rerank("u", &cands, json!({"blend": {"version": 2}}))
        .await;
    assert_eq!(b["meta"]["blend"]["version"], 2);
    assert_eq!(b["meta"]["usage"]["llm_calls"], 0);
    for (blend, needle) in [
        (
            json!({"label": "nope"}),
            "blend label \"nope\" does not exist",
        ),
        (json!({"version": 7}), "blend version 7 does not exist"),
        (
            json!({"label": "production", "version": 1}),
            "one of label, version or weights",
        ),
        (json!({}), "needs a label, a version or weights"),
        (json!({"weights": {"llm": 0}}), "at least one positive"),
    ] {
        let (s, b) = app
            .post(
                "/v1/rerank",
                json!({"user_id": "u", "candidates": [{"id": "i1"}], "blend": blend}),
            )
            .await;
        assert_eq!(s, 422, "{blend} -> {b}");
        assert!(
            error_message(&b, "validation_error").contains(needle),
            "{b}"
        );
    }

    // Labels: a named one, an A/B split (stable per user), promote and roll back production.
    let (s, b) = app
        .put("/v1/blends/labels/canary", json!({"version": 2}))
        .await;
    assert_eq!(s, 200, "{b}");
    let b = r
        .rerank("u", &cands, json!({"blend": {"label": "canary"}}))
        .await;
    assert_eq!(b["meta"]["blend"]["version"], 2);
    assert_eq!(
        app.put("/v1/blends/labels/canary", json!({"version": 9}))
            .await
            .0,
        422
    );
    let (s, _) = app
        .put(
            "/v1/blends/labels/ab",
            json!({"split": [{"version": 1, "weight": 1}, {"version": 2, "weight": 1}]}),
        )
        .await;
    assert_eq!(s, 200);
    let mut seen = std::collections::HashSet::new();
    for u in ["a", "b", "c", "d", "e", "u"] {
        let first = r.rerank(u, &cands, json!({"blend": {"label": "ab"}})).await;
        let again = r.rerank(u, &cands, json!({"blend": {"label": "ab"}})).await;
        assert_eq!(
            first["meta"]["blend"]["version"],
            again["meta"]["blend"]["version"]
        );
        seen.insert(first["meta"]["blend"]["version"].as_i64());
    }
    assert_eq!(seen.len(), 2, "both arms serve: {seen:?}");

    let before = r.ranks.load(Ordering::SeqCst);
    assert_eq!(
        app.put("/v1/blends/labels/production", json!({"version": 2}))
            .await
            .0,
        200
    );
    let b = r.rerank("u", &cands, json!({})).await;
    assert_eq!(b["meta"]["blend"]["version"], 2);
    assert_eq!(result_ids(&b), ["i10", "i30", "i20"]);
    assert_eq!(
        r.ranks.load(Ordering::SeqCst),
        before,
        "a production blend without the LLM"
    );
    assert_eq!(
        app.put("/v1/blends/labels/production", json!({"version": 1}))
            .await
            .0,
        200
    );
    let b = r.rerank("u", &cands, json!({})).await;
    assert_eq!(b["meta"]["blend"]["version"], 1);
    assert!(
        r.ranks.load(Ordering::SeqCst) > before,
        "rolled back: the LLM ranks again"
    );
}
