//! LLM budgets on real Postgres: one interactive budget shared by two `agp serve` processes
//! (spend summed, the cap held within one in-flight call per slot, the window rolling over),
//! reranks under a spent budget answering 200 with `budget` and no LLM call (strict ones too),
//! and a job paused by a spent background budget that resumes when the budget is raised.

mod common;

use std::time::{Duration, Instant};

use agp_rerank::config::AppConfig;
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::TestLlm;
use common::proc::{Proc, free_port, wait_ready};
use serde_json::{Value, json};

/// LLM slots per process (the client's default concurrency).
const SLOTS: i64 = 4;

async fn rerank(client: &reqwest::Client, base: &str, user: &str, strict: bool) -> Value {
    let body = json!({"user_id": user, "strict": strict,
        "candidates": [{"id": "i5"}, {"id": "i6"}, {"id": "i7"}, {"id": "i8"}]});
    let r = client
        .post(format!("{base}/v1/rerank"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "every answer is 200 under a budget");
    r.json().await.unwrap()
}

async fn budget(client: &reqwest::Client, base: &str) -> Value {
    let r = client
        .get(format!("{base}/v1/budget"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interactive_budget_is_shared_by_two_processes_and_holds_until_the_window_rolls() {
    let (pool, db_url) = common::fresh_db().await;
    let llm = TestLlm::start(common::reversing_llm).await;
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let bases: Vec<String> = (0..2)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let mut procs = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        let data = dir.path().join(format!("p{i}"));
        let mut c = common::proc::agp(&data);
        c.args(["serve", "--listen", base.trim_start_matches("http://")])
            .env("DATABASE_URL", &db_url)
            .env("AGP_LLM_BASE_URL", &llm.base_url)
            .env("AGP_SUMMARIES", "false")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        let mut p = Proc::spawned(c.spawn().expect("spawn agp serve"));
        wait_ready(&client, base, &mut p).await;
        procs.push(p);
    }
    common::seed_http(&client, &bases[0], 12, 2, 400).await;
    const CAP: i64 = 1000;
    let r = client
        .put(format!("{}/v1/budget", bases[0]))
        .json(&json!({"interactive_tokens_per_hour": CAP}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["interactive_tokens_per_hour"], CAP);
    assert!(b["interactive_tokens_per_day"].is_null());
    // Every replica sees the change within the limits' cache time.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // 8 clients, 4 on each process, new users (each rerank writes a profile and ranks).
    let mut tasks = Vec::new();
    for c in 0..8usize {
        let (client, base) = (client.clone(), bases[c % 2].clone());
        tasks.push(tokio::spawn(async move {
            let mut budget_answers = 0;
            let mut largest_call = 0i64;
            for k in 0..50usize {
                let b = rerank(&client, &base, &format!("u{}", c * 50 + k), false).await;
                let usage = &b["meta"]["usage"];
                let tokens = usage["prompt_tokens"].as_i64().unwrap_or(0)
                    + usage["completion_tokens"].as_i64().unwrap_or(0);
                let calls = usage["llm_calls"].as_i64().unwrap_or(1).max(1);
                largest_call = largest_call.max(tokens / calls + 1);
                if b["meta"]["fallback"] == "budget" {
                    budget_answers += 1;
                }
            }
            (budget_answers, largest_call)
        }));
    }
    let mut budget_answers = 0;
    let mut largest_call = 0;
    for t in tasks {
        let (n, l) = t.await.unwrap();
        budget_answers += n;
        largest_call = largest_call.max(l);
    }
    let spent = budget(&client, &bases[1]).await["interactive"]["tokens_this_hour"]
        .as_i64()
        .unwrap();
    let bound = CAP + 2 * SLOTS * largest_call;
    eprintln!(
        "spent {spent} tokens against a cap of {CAP} (bound {bound}); {budget_answers}/400 answers fell back with `budget`"
    );
    assert!(spent >= CAP, "the traffic reaches the cap: {spent}");
    assert!(
        spent <= bound,
        "spent {spent} > cap + one call per slot ({bound})"
    );
    assert!(budget_answers > 300, "{budget_answers}");

    // Spent: no LLM call at all, on either process, strict requests included.
    let before = llm.calls();
    for (i, base) in bases.iter().enumerate() {
        for strict in [false, true] {
            let b = rerank(&client, base, &format!("u{}", 390 + i), strict).await;
            assert_eq!(b["meta"]["fallback"], "budget", "{b}");
            assert_eq!(b["results"].as_array().unwrap().len(), 4);
        }
    }
    assert_eq!(llm.calls(), before, "no LLM call under a spent budget");

    // The window rolls: this hour's spend becomes last hour's, and the LLM answers again.
    sqlx::query("UPDATE llm_spend SET hour = hour - interval '1 hour'")
        .execute(&pool)
        .await
        .unwrap();
    for base in &bases {
        let b = rerank(&client, base, "u399", false).await;
        assert!(b["meta"]["fallback"].is_null(), "{b}");
    }
    assert!(llm.calls() > before);
    for p in procs {
        common::proc::terminate(p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_background_budget_pauses_a_job_until_the_budget_is_raised() {
    let llm = TestLlm::start(common::reversing_llm).await;
    let settings = LlmSettings::single(llm.base_url.clone(), "test-model");
    let app = common::spawn_app_with_llm(AppConfig::default(), settings.clone()).await;
    let items: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    // The background budget: 10 tokens an hour, already spent.
    let (s, _) = app
        .put("/v1/budget", json!({"background_tokens_per_hour": 10}))
        .await;
    assert_eq!(s, 200);
    sqlx::query(
        "INSERT INTO llm_spend (project, class, hour, tokens, calls)
         VALUES ('default', 'background', date_trunc('hour', now()), 10, 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (s, b) = app.post("/v1/summaries", json!({})).await;
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    // A worker in its own client (another replica's view of the budget).
    let worker_llm = LlmClient::new(settings, Some(app.pool.clone()));
    let reranker = agp_rerank::serving::Reranker::new(
        app.pool.clone(),
        worker_llm.clone(),
        Default::default(),
    );
    let workers = agp_rerank::jobs::Workers::spawn(1, &app.pool, &worker_llm, &reranker);

    let wait_for = |want: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (_, j) = app.get(&format!("/v1/summaries/{id}")).await;
                let done = match want {
                    "paused" => j["status"] == "running" && !j["paused"].is_null(),
                    _ => j["status"] == want,
                };
                if done {
                    return j;
                }
                assert!(Instant::now() < deadline, "job never {want}: {j}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let j = wait_for("paused").await;
    let reason = j["paused"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("background") && reason.contains("10 tokens per hour"),
        "{reason}"
    );
    assert!(j["paused"]["until"].is_string());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(llm.calls(), 0, "a paused job makes no LLM call");

    // Raised (unlimited): the job resumes within the limits' cache time and finishes.
    let (s, _) = app.put("/v1/budget", json!({})).await;
    assert_eq!(s, 200);
    let j = wait_for("succeeded").await;
    assert!(j["paused"].is_null(), "{j}");
    assert!(
        llm.calls() >= 6,
        "the summaries were written: {}",
        llm.calls()
    );
    workers.stop().await;
}

#[tokio::test]
async fn the_budget_is_validated() {
    let app = common::spawn_app().await;
    let (s, b) = app
        .put("/v1/budget", json!({"interactive_tokens_per_hour": -1}))
        .await;
    assert_eq!(s, 422);
    assert!(common::error_message(&b, "validation_error").contains("interactive_tokens_per_hour"));
    let (s, b) = app.put("/v1/budget", json!({"tokens": 5})).await;
    assert!(s == 400 || s == 422, "{s} {b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("tokens"),
        "{b}"
    );
    let (s, b) = app.get("/v1/budget").await;
    assert_eq!(s, 200);
    assert!(b["interactive_tokens_per_hour"].is_null());
    assert_eq!(b["interactive"]["tokens_this_hour"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_prices_calls_by_model_and_holds() {
    let llm = TestLlm::start(common::reversing_llm).await;
    let mut settings = LlmSettings::single(llm.base_url.clone(), "test-model");
    // 1,000 per million tokens, in and out: a thousandth per token.
    let (_, price) = agp_rerank::llm::config::Price::parse("test-model=1000:1000").unwrap();
    settings.prices.insert("test-model".into(), price);
    let mut config = AppConfig::default();
    config.rerank.summaries = false;
    let app = common::spawn_app_with_llm(config, settings).await;
    common::seed_http(&app.client, &app.base, 12, 2, 60).await;
    const CAP: f64 = 0.5;
    let (s, b) = app
        .put("/v1/budget", json!({"interactive_cost_per_hour": CAP}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["interactive_cost_per_hour"], CAP);

    // New users one after another (a profile and a ranking each) until the cost cap answers.
    let mut capped_at = None;
    for u in 0..60 {
        let b = rerank(&app.client, &app.base, &format!("u{u}"), false).await;
        if b["meta"]["fallback"] == "budget" {
            assert_eq!(b["meta"]["usage"]["llm_calls"], 0, "{b}");
            capped_at = Some(u);
            break;
        }
    }
    let capped_at = capped_at.expect("the cost cap was never reached");
    let b = budget(&app.client, &app.base).await;
    let (tokens, cost) = (
        b["interactive"]["tokens_this_hour"].as_i64().unwrap(),
        b["interactive"]["cost_this_hour"].as_f64().unwrap(),
    );
    // Sequential calls: the cap is crossed by the last call's cost at most.
    assert!(
        (CAP..CAP + 0.5).contains(&cost),
        "cost {cost} after {capped_at} users"
    );
    assert!(
        (cost - tokens as f64 / 1000.0).abs() < 1e-9,
        "{cost} for {tokens} tokens"
    );
    // A strict rerank is not an error either.
    let b = rerank(&app.client, &app.base, "u59", true).await;
    assert_eq!(b["meta"]["fallback"], "budget", "{b}");

    let (s, b) = app
        .put("/v1/budget", json!({"background_cost_per_day": -0.5}))
        .await;
    assert_eq!(s, 422);
    assert!(common::error_message(&b, "validation_error").contains("background_cost_per_day"));
}
