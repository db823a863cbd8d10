//! Refresh-ahead benchmark (`cargo bench --bench refresh`): returning users whose history
//! changed, with and without `--refresh-ahead`, on real Postgres with the Amazon Games sample
//! and a scripted upstream that answers every call after a fixed delay (`AGP_BENCH_DELAY_MS`,
//! 300; summaries off). Each user: a first rerank (profile stored), one new interaction, a pause
//! (`AGP_BENCH_THINK_MS`, 1500: the user coming back), then the measured rerank. Prints LLM
//! calls per measured rerank, where its profile came from, and its latency p50/p90.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::TestLlm;
use agp_rerank::serving::refresh::RefreshOptions;
use serde_json::{Value, json};

const USERS: usize = 40;
const WAVE: usize = 10;

fn env_ms(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    support::on_embedded_pg("refresh", run);
}

async fn run(url: String) {
    let pool = agp_rerank::store::connect(&url, 32).await.expect("connect");
    let (users, items) = support::load_sample(&pool).await;
    let delay = env_ms("AGP_BENCH_DELAY_MS", 300);
    let think = Duration::from_millis(env_ms("AGP_BENCH_THINK_MS", 1500));
    let llm = TestLlm::start(support::upstream(delay)).await;
    println!(
        "returning users whose history changed: {USERS} per setting, {WAVE} at a time, upstream {delay} ms per call, \
         {} ms between the new interaction and the rerank",
        think.as_millis()
    );
    for (name, refresh, who) in [
        ("without refresh ahead", false, &users[..USERS]),
        ("with refresh ahead", true, &users[USERS..2 * USERS]),
    ] {
        let mut settings = LlmSettings::single(llm.base_url.clone(), "bench");
        settings.concurrency = 64;
        // Summaries off: the scripted upstream writes the same text for every item, which
        // would make every history look alike (a profile is keyed by its history's texts).
        let mut config = AppConfig::default();
        config.rerank.summaries = false;
        config.refresh = refresh.then(|| RefreshOptions {
            per_second: 100.0,
            concurrent: WAVE,
            ..Default::default()
        });
        let client = LlmClient::new(settings, Some(pool.clone()));
        let base = support::serve_app(AppState::with_llm(pool.clone(), config, client)).await;
        let http = reqwest::Client::new();
        let mut rows: Vec<(i64, String, f64)> = Vec::new();
        for wave in who.chunks(WAVE) {
            let tasks: Vec<_> = wave
                .iter()
                .enumerate()
                .map(|(k, u)| {
                    let (http, base, items, u) =
                        (http.clone(), base.clone(), items.clone(), u.clone());
                    tokio::spawn(async move {
                        let rerank = |k: usize| {
                            let body = support::rerank_body(&u, k, &items);
                            let (http, url) = (http.clone(), format!("{base}/v1/rerank"));
                            async move {
                                let t = Instant::now();
                                let b: Value = http
                                    .post(url)
                                    .json(&body)
                                    .send()
                                    .await
                                    .expect("send")
                                    .json()
                                    .await
                                    .expect("json");
                                (b, t.elapsed().as_secs_f64() * 1000.0)
                            }
                        };
                        rerank(k).await;
                        let item = &items[(k * 31 + 17) % items.len()];
                        let r = http
                            .post(format!("{base}/v1/interactions"))
                            .json(&json!({"interactions": [{"user_id": u, "item_id": item}]}))
                            .send()
                            .await
                            .expect("interactions");
                        assert_eq!(r.status(), 200);
                        tokio::time::sleep(think).await;
                        let (b, ms) = rerank(k + 1).await;
                        assert!(b["meta"]["fallback"].is_null(), "{b}");
                        let calls = b["meta"]["usage"]["llm_calls"].as_i64().unwrap_or(-1);
                        let source = b["meta"]["profile_source"]
                            .as_str()
                            .unwrap_or("none")
                            .to_string();
                        (calls, source, ms)
                    })
                })
                .collect();
            for t in tasks {
                rows.push(t.await.expect("user"));
            }
        }
        let mut ms: Vec<f64> = rows.iter().map(|r| r.2).collect();
        ms.sort_by(f64::total_cmp);
        let mut sources: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rows {
            *sources.entry(r.1.clone()).or_default() += 1;
        }
        let calls = rows.iter().map(|r| r.0).sum::<i64>() as f64 / rows.len() as f64;
        println!(
            "  {name:<22} LLM calls per rerank {calls:.2}, latency p50 {:.0} ms, p90 {:.0} ms, profile_source {sources:?}",
            ms[ms.len() / 2],
            ms[ms.len() * 9 / 10]
        );
    }
}
