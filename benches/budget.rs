//! Budget benchmark (`cargo bench --bench budget`): a client loop of reranks (20,000 by
//! default, `AGP_BENCH_RERANKS`) against a 1,000-token interactive budget, on real Postgres
//! with the Amazon Games sample and the test LLM answering at once. Prints the tokens spent
//! against the cap and its bound (one in-flight call per LLM slot), the answers' statuses and
//! fallbacks, and the LLM calls made after the cap was reached.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::TestLlm;
use serde_json::{Value, json};

const CAP: i64 = 1000;
const CLIENTS: usize = 8;

fn main() {
    support::on_embedded_pg("budget", run);
}

async fn run(url: String) {
    let pool = agp_rerank::store::connect(&url, 32).await.expect("connect");
    let (users, items) = support::load_sample(&pool).await;
    let llm = TestLlm::start(support::upstream(0)).await;
    let settings = LlmSettings::single(llm.base_url.clone(), "bench");
    let slots = settings.concurrency;
    let client = LlmClient::new(settings, Some(pool.clone()));
    // Summaries off: a new user's rerank is a profile call and a ranking call.
    let mut config = AppConfig::default();
    config.rerank.summaries = false;
    let base = support::serve_app(AppState::with_llm(pool.clone(), config, client)).await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{base}/v1/budget"))
        .json(&json!({"interactive_tokens_per_hour": CAP}))
        .send()
        .await
        .expect("put budget");
    assert_eq!(r.status(), 200);

    let n: usize = std::env::var("AGP_BENCH_RERANKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let next = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, base, next) = (http.clone(), base.clone(), next.clone());
        let (users, items) = (users.clone(), items.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(usize, u16, String, i64)> = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n {
                    return seen;
                }
                let body = support::rerank_body(&users[k % users.len()], k, &items);
                let r = http
                    .post(format!("{base}/v1/rerank"))
                    .json(&body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status().as_u16();
                let b: Value = r.json().await.unwrap_or(Value::Null);
                let fallback = b["meta"]["fallback"].as_str().unwrap_or("none").to_string();
                let calls = b["meta"]["usage"]["llm_calls"].as_i64().unwrap_or(0);
                seen.push((k, status, fallback, calls));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all.sort_by_key(|s| s.0);
    let secs = started.elapsed().as_secs_f64();
    let r: Value = http
        .get(format!("{base}/v1/budget"))
        .send()
        .await
        .expect("get budget")
        .json()
        .await
        .expect("json");
    let spent = r["interactive"]["tokens_this_hour"].as_i64().unwrap_or(-1);
    let (calls, tokens): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(tokens), 0)::int8 FROM llm_spend",
    )
    .fetch_one(&pool)
    .await
    .expect("spend");
    // The largest single call (usage rows reach Postgres through the journal: give it a moment).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let largest: Option<i64> = sqlx::query_scalar(
        "SELECT max(prompt_tokens + completion_tokens)::int8 FROM llm_usage WHERE NOT cache_hit",
    )
    .fetch_one(&pool)
    .await
    .expect("usage");
    let largest = largest.unwrap_or(2 * tokens / calls.max(1));
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut fallbacks: BTreeMap<String, usize> = BTreeMap::new();
    for (_, s, f, _) in &all {
        *statuses.entry(*s).or_default() += 1;
        *fallbacks.entry(f.clone()).or_default() += 1;
    }
    let first_budget = all.iter().position(|s| s.2 == "budget");
    let calls_after: i64 = first_budget
        .map(|i| {
            all[i + CLIENTS.min(all.len() - i)..]
                .iter()
                .map(|s| s.3)
                .sum()
        })
        .unwrap_or(0);
    println!(
        "{n} reranks from {CLIENTS} clients in {secs:.1} s against an interactive budget of {CAP} tokens per hour"
    );
    println!(
        "  LLM tokens spent: {spent} in {calls} upstream calls (bound: cap + {slots} slots x the largest call, {largest} tokens = {})",
        CAP + slots as i64 * largest
    );
    println!("  statuses: {statuses:?}");
    println!("  meta.fallback: {fallbacks:?}");
    println!(
        "  first `budget` answer: request #{}; LLM calls in the answers after it (past the {CLIENTS} in flight): {calls_after}",
        first_budget.map_or(-1, |i| i as i64 + 1)
    );
    println!("  upstream calls the test LLM saw: {}", llm.calls());
}
