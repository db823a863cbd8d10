//! Log-probability ranking (one output token per window) against the scripted test server
//! returning log-probabilities, through `POST /v1/rerank`: the order read from the
//! alternatives, ties, missing letters appended, letters the tokenizer splits, windows over
//! 60 candidates, the fallback to generation when no log-probabilities come back, the mode
//! chosen by request, blend and server; and the prefix-cache layout of the ranking prompt.

mod common;

use std::time::Duration;

use agp_rerank::agp::rank::{RankMode, RankOptions};
use agp_rerank::config::AppConfig;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::retry::RetryPolicy;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use common::{TestApp, candidate_values, llm_step, ranking_reply, result_ids};
use serde_json::{Value, json};

/// Profiles and summaries echo a fixed text; rankings put the highest "Item N" first, in
/// whichever form the call asks for.
fn highest_first(s: &Seen) -> Reply {
    match llm_step(s) {
        "rank" => {
            let v = candidate_values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by_key(|&i| std::cmp::Reverse(v[i]));
            ranking_reply(s, &idx)
        }
        _ => Reply::text("likes high numbers"),
    }
}

struct Rig {
    app: TestApp,
    llm: TestLlm,
}

async fn rig_with(
    config: AppConfig,
    script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> Rig {
    let llm = TestLlm::start(script).await;
    let mut settings = LlmSettings::single(llm.base_url.clone(), "test-model");
    settings.timeout = Duration::from_millis(2000);
    settings.retry = RetryPolicy {
        max_attempts: 1,
        ..Default::default()
    };
    let app = common::spawn_app_with_llm(config, settings).await;
    // The LLM alone decides (the default blend also weighs the incoming order).
    let (s, b) = app
        .post("/v1/blends/versions", json!({"weights": {"llm": 1}}))
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = app
        .put(
            "/v1/blends/labels/production",
            json!({"version": b["version"]}),
        )
        .await;
    assert_eq!(s, 200);
    let items: Vec<Value> = (0..120)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    let inters: Vec<Value> = [3, 5, 7]
        .iter()
        .map(|i| json!({"user_id": "u1", "item_id": format!("i{i}")}))
        .collect();
    assert_eq!(
        app.post("/v1/interactions", json!({"interactions": inters}))
            .await
            .0,
        200
    );
    Rig { app, llm }
}

/// The default configuration with these ranking settings.
fn with_rank(f: impl FnOnce(&mut RankOptions)) -> AppConfig {
    let mut c = AppConfig::default();
    f(&mut c.rerank.rank);
    c
}

async fn rig() -> Rig {
    rig_with(AppConfig::default(), highest_first).await
}

fn ids(range: impl Iterator<Item = usize>) -> Vec<Value> {
    range.map(|i| json!({"id": format!("i{i}")})).collect()
}

/// The ranking calls' request bodies.
fn rank_calls(llm: &TestLlm) -> Vec<Value> {
    llm.requests()
        .into_iter()
        .filter(|b| {
            b["messages"][0]["content"]
                .as_str()
                .is_some_and(|c| c.contains("ranks candidate items"))
        })
        .collect()
}

#[tokio::test]
async fn logprobs_mode_orders_by_the_alternatives_with_one_output_token() {
    let r = rig().await;
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids([10, 40, 20, 30].into_iter()), "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(result_ids(&b), ["i40", "i30", "i20", "i10"]);
    assert_eq!(b["meta"]["rank"]["mode"], "logprobs");
    assert_eq!(b["meta"]["rank"]["calls"], 1);
    assert_eq!(b["meta"]["rank"]["windows_without_logprobs"], 0);
    assert_eq!(b["meta"]["repaired"], false);
    let calls = rank_calls(&r.llm);
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call["max_tokens"], 1);
    assert_eq!(call["logprobs"], true);
    assert_eq!(call["top_logprobs"], 4);
    assert!(call.get("response_format").is_none());
    let prompt = call["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("[A] Item 10\n[B] Item 40\n"), "{prompt}");
    assert!(
        prompt.trim_end().ends_with("letter (A to D) only."),
        "{prompt}"
    );

    // Generation mode on the same list: same order, the whole permutation written out.
    let (s, g) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids([10, 40, 20, 30].into_iter()), "rank_mode": "generate"}),
        )
        .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(result_ids(&g), result_ids(&b));
    assert_eq!(g["meta"]["rank"]["mode"], "generate");
    let last = rank_calls(&r.llm).pop().unwrap();
    assert!(last.get("logprobs").is_none() && last["max_tokens"].as_u64() > Some(1));
    assert!(g["meta"]["usage"]["completion_tokens"].as_u64() > Some(1));
    // With the profile cached, a log-probability rerank is one call of one output token.
    let (_, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids([10, 40, 20, 30].into_iter()), "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(b["meta"]["usage"]["llm_calls"], 1, "{b}");
    assert_eq!(b["meta"]["usage"]["completion_tokens"], 1, "{b}");
}

#[tokio::test]
async fn ties_keep_the_incoming_order_and_missing_letters_follow() {
    // Alternatives: C and A tie (equal log-probabilities), E is far behind, B and D absent;
    // " A" with a leading space and "▁C" with a sentencepiece marker are split letters.
    let r = rig_with(AppConfig::default(), |s: &Seen| match llm_step(s) {
        "rank" => Reply::first_token(&[
            ("\u{2581}C", -0.7),
            (" A", -0.7),
            ("The", -0.2),
            ("E", -4.0),
        ]),
        _ => Reply::text("a profile"),
    })
    .await;
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids([1, 2, 3, 4, 5].into_iter()), "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(result_ids(&b), ["i1", "i3", "i5", "i2", "i4"]);
    assert_eq!(b["meta"]["repaired"], true);
    assert!(b["meta"]["fallback"].is_null());

    // No letter at all among the alternatives: unusable, the fallback order answers.
    r.llm.set_script(|s: &Seen| match llm_step(s) {
        "rank" => Reply::first_token(&[("The", -0.1), ("I", -1.0)]),
        _ => Reply::text("a profile"),
    });
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids([1, 2, 3].into_iter()), "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["meta"]["fallback"], "unusable_output");
    assert_eq!(result_ids(&b), ["i1", "i2", "i3"]);
}

#[tokio::test]
async fn windows_over_sixty_candidates_hold_at_most_twenty_letters() {
    let r = rig().await;
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids(0..65), "top_n": 10, "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let expected: Vec<String> = (55..65).rev().map(|i| format!("i{i}")).collect();
    assert_eq!(result_ids(&b), expected, "the ten best climb to the top");
    // windows of 20 with step 10, bottom up: 45-65, 35-55, 25-45, 15-35, 5-25, 0-20
    assert_eq!(b["meta"]["rank"]["calls"], 6);
    for call in rank_calls(&r.llm) {
        let prompt = call["messages"][1]["content"].as_str().unwrap();
        let letters = prompt.lines().filter(|l| l.starts_with('[')).count();
        assert_eq!(letters, 20);
        assert_eq!(call["top_logprobs"], 20);
        assert!(prompt.contains("[T] ") && !prompt.contains("[U] "));
    }
    // A window setting above 20 is capped in this mode only.
    let r = rig_with(with_rank(|o| o.window = 40), highest_first).await;
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids(0..30), "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["meta"]["rank"]["calls"], 2);
    assert_eq!(result_ids(&b)[0], "i29");
}

#[tokio::test]
async fn a_server_without_logprobs_gets_the_window_again_in_generation_mode() {
    // A server that ignores `logprobs`: it answers the best letter as text.
    let r = rig_with(AppConfig::default(), |s: &Seen| match llm_step(s) {
        "rank" if s.top_logprobs() > 0 => Reply::text("B"),
        "rank" => {
            let v = candidate_values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by_key(|&i| std::cmp::Reverse(v[i]));
            Reply::json(json!({"ranking": idx.iter().map(|i| i + 1).collect::<Vec<_>>()}))
        }
        _ => Reply::text("a profile"),
    })
    .await;
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids([10, 40, 20].into_iter()), "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(result_ids(&b), ["i40", "i20", "i10"]);
    assert_eq!(b["meta"]["rank"]["mode"], "logprobs");
    assert_eq!(b["meta"]["rank"]["calls"], 2);
    assert_eq!(b["meta"]["rank"]["windows_without_logprobs"], 1);
    let calls = rank_calls(&r.llm);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["max_tokens"], 1);
    assert!(calls[1].get("logprobs").is_none() && calls[1].get("response_format").is_some());
    assert!(
        calls[1]["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("[1] Item 10")
    );
}

#[tokio::test]
async fn the_mode_comes_from_the_request_then_the_blend_then_the_server() {
    let r = rig_with(with_rank(|o| o.mode = RankMode::Logprobs), highest_first).await;
    let body = |extra: Value| {
        let mut b = json!({"user_id": "u1", "candidates": ids([1, 2].into_iter())});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let mode = |b: &Value| b["meta"]["rank"]["mode"].as_str().unwrap().to_string();
    let (_, b) = r.app.post("/v1/rerank", body(json!({}))).await;
    assert_eq!(mode(&b), "logprobs", "server default: {b}");
    // A blend version that says generate.
    let (s, v) = r
        .app
        .post(
            "/v1/blends/versions",
            json!({"weights": {"llm": 1}, "rank_mode": "generate"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, got) = r
        .app
        .get(&format!("/v1/blends/versions/{}", v["version"]))
        .await;
    assert_eq!(s, 200);
    assert_eq!(got["rank_mode"], "generate");
    let (_, b) = r
        .app
        .post(
            "/v1/rerank",
            body(json!({"blend": {"version": v["version"]}})),
        )
        .await;
    assert_eq!(mode(&b), "generate", "{b}");
    assert_eq!(b["meta"]["blend"]["rank_mode"], "generate");
    // The request wins over the blend.
    let (_, b) = r
        .app
        .post(
            "/v1/rerank",
            body(json!({"blend": {"version": v["version"]}, "rank_mode": "logprobs"})),
        )
        .await;
    assert_eq!(mode(&b), "logprobs", "{b}");
    // Bad values are refused with the contract body.
    let (s, b) = r
        .app
        .post("/v1/rerank", body(json!({"rank_mode": "fast"})))
        .await;
    assert_eq!(s, 422, "{b}");
    assert!(common::error_message(&b, "validation_error").contains("rank_mode"));
    let (s, b) = r
        .app
        .post(
            "/v1/blends/versions",
            json!({"weights": {"llm": 1}, "rank_mode": "sometimes"}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    // A blend without the LLM makes no ranking call and reports no rank.
    let (_, b) = r
        .app
        .post(
            "/v1/rerank",
            body(json!({"blend": {"weights": {"incoming": 1}}, "rank_mode": "logprobs"})),
        )
        .await;
    assert!(b["meta"]["rank"].is_null(), "{b}");
}

/// Cached prompt tokens of the second of two reranks of one user with different candidates
/// (the test server simulates a one-slot prefix cache: the characters shared with the
/// previous prompt, as tokens).
async fn second_rerank_cached_tokens(r: &Rig) -> (u64, u64) {
    let (s, _) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids(20..40)}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids(60..80)}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    (
        b["meta"]["usage"]["cached_tokens"].as_u64().unwrap(),
        b["meta"]["usage"]["prompt_tokens"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn the_ranking_prompt_puts_what_a_user_shares_first_and_candidates_last() {
    let r = rig().await;
    let (after, prompt_tokens) = second_rerank_cached_tokens(&r).await;
    let last = rank_calls(&r.llm).pop().unwrap();
    let prompt = last["messages"][1]["content"].as_str().unwrap().to_string();
    let profile_at = prompt.find("likes high numbers").unwrap();
    let first_candidate = prompt.find("[1] ").unwrap();
    let instructions = prompt.find("Rank candidate items").unwrap();
    assert!(instructions < profile_at && profile_at < first_candidate);
    assert!(prompt.trim_end().ends_with("numbers once."), "{prompt}");
    // Everything before the first candidate line was cached.
    let system = last["messages"][0]["content"].as_str().unwrap();
    let shared_chars = "<system>".len() + system.len() + "<user>".len() + first_candidate;
    assert!(after as usize >= shared_chars / 4 - 1, "{after} cached");
    assert!(after < prompt_tokens);

    // The layout before (the profile first, then candidates, then the instructions) shares
    // less: the instructions came after the candidates.
    let (s, v) = r
        .app
        .post(
            "/v1/prompts/p_rank/versions",
            json!({"template": agp_rerank::agp::prompt::LEGACY_P_RANK}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = r
        .app
        .put(
            "/v1/prompts/p_rank/labels/production",
            json!({"version": v["version"]}),
        )
        .await;
    assert_eq!(s, 200);
    let (before, _) = second_rerank_cached_tokens(&r).await;
    assert!(before < after, "legacy layout {before} vs {after} cached");
}

#[tokio::test]
async fn item_texts_are_cut_to_the_token_budget_title_first() {
    let r = rig_with(with_rank(|o| o.max_item_tokens = 6), highest_first).await;
    let long = "word ".repeat(200);
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": [
                {"id": "x1", "title": "Item 1 Zelda", "text": long},
                {"id": "x2", "title": "Item 2 Mario", "text": "a short text"}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let prompt = rank_calls(&r.llm).pop().unwrap()["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let lines: Vec<&str> = prompt.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(lines, ["[1] Item 1 Zelda | word", "[2] Item 2 Mario | a"]);
}

#[tokio::test]
async fn projects_on_the_untouched_old_default_move_to_the_new_layout() {
    use agp_rerank::agp::prompt::{LEGACY_P_RANK, PromptName, default_template};
    let app = common::spawn_app().await;
    let pool = &app.pool;
    agp_rerank::app::ensure_project(pool, "edited")
        .await
        .unwrap();
    // Both projects as an earlier release seeded them; "edited" then got its own version.
    sqlx::query("UPDATE prompt_versions SET template = $1 WHERE name = 'p_rank' AND version = 1")
        .bind(LEGACY_P_RANK)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO prompt_versions (project, name, version, template, source)
         VALUES ('edited', 'p_rank', 2, 'mine {{candidates}}', 'api')",
    )
    .execute(pool)
    .await
    .unwrap();
    for _ in 0..2 {
        agp_rerank::app::prepare_database(pool).await.unwrap();
    }
    let rows: Vec<(String, i32, String, String)> = sqlx::query_as(
        "SELECT v.project, v.version, v.template, v.source FROM prompt_versions v
         WHERE v.name = 'p_rank' ORDER BY v.project, v.version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let current = default_template(PromptName::PRank).to_string();
    assert_eq!(
        rows,
        vec![
            ("default".into(), 1, LEGACY_P_RANK.into(), "seed".into()),
            ("default".into(), 2, current, "seed".into()),
            ("edited".into(), 1, LEGACY_P_RANK.into(), "seed".into()),
            (
                "edited".into(),
                2,
                "mine {{candidates}}".into(),
                "api".into()
            ),
        ]
    );
    let production: Vec<(String, i32)> = sqlx::query_as(
        "SELECT project, version FROM prompt_labels
         WHERE name = 'p_rank' AND label = 'production' ORDER BY project",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        production,
        vec![("default".into(), 2), ("edited".into(), 1)]
    );
}

#[tokio::test]
async fn shuffled_repeats_work_in_log_probability_mode() {
    let r = rig_with(with_rank(|o| o.repeats = 3), highest_first).await;
    let (s, b) = r
        .app
        .post(
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": ids([5, 50, 15, 25, 35].into_iter()), "rank_mode": "logprobs"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(result_ids(&b), ["i50", "i35", "i25", "i15", "i5"]);
    assert_eq!(b["meta"]["rank"]["calls"], 3);
    // Each repeat saw the candidates in another order.
    let orders: Vec<String> = rank_calls(&r.llm)
        .iter()
        .map(|c| {
            let p = c["messages"][1]["content"].as_str().unwrap();
            p.lines()
                .filter(|l| l.starts_with('['))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    assert_eq!(orders.len(), 3);
    assert!(
        orders[0] != orders[1] || orders[1] != orders[2],
        "{orders:?}"
    );
}
