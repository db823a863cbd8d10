//! Rerank benchmarks (`cargo bench --bench rerank`): a real app on real Postgres (throwaway
//! embedded cluster) with the Amazon Games sample, and the test LLM server answering at once.
//! Prints: LLM calls per rerank (new and returning user), service-added latency (end-to-end
//! minus time in LLM calls) p50/p99 for 20 candidates with a cached profile, and throughput.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::llm::{LlmClient, Role};
use agp_rerank::store;
use serde_json::{Value, json};

fn instant_llm(s: &Seen) -> Reply {
    if s.role() == Some(Role::Rank) {
        let k = s.last_user().lines().filter(|l| l.starts_with('[')).count();
        Reply::json(json!({"ranking": (1..=k).rev().collect::<Vec<_>>()}))
    } else if s.role() == Some(Role::Profile) {
        Reply::text("Likes tactical RPGs and handheld adventures; avoids sports titles.")
    } else {
        Reply::text("A short summary of the item.")
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    support::on_embedded_pg("rerank", run);
}

async fn run(url: String) {
    let pool = store::connect(&url, 32).await.expect("connect");
    agp_rerank::app::prepare_database(&pool)
        .await
        .expect("migrate");
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/amazon-games-sample");
    let data = agp_rerank::import::read(agp_rerank::import::Format::Recbole, &[sample])
        .expect("read sample");
    store::import::write(&pool, "default", &data.items, &data.interactions, |_| {})
        .await
        .expect("import sample");
    let mut users: Vec<String> = data
        .interactions
        .iter()
        .map(|i| i.user_id.clone())
        .collect();
    users.dedup();
    let items: Vec<String> = data.items.iter().map(|i| i.id.clone()).collect();

    let llm = TestLlm::start(instant_llm).await;
    let mut settings = LlmSettings::single(llm.base_url.clone(), "bench");
    settings.concurrency = 256;
    let client = LlmClient::new(settings, Some(pool.clone()));
    let base = support::serve_app(AppState::with_llm(
        pool.clone(),
        AppConfig::default(),
        client,
    ))
    .await;
    let http = reqwest::Client::new();

    let body = |u: &str, k: usize| {
        let c: Vec<Value> = (0..20)
            .map(|j| json!({"id": items[(k * 7 + j * 13) % items.len()]}))
            .collect();
        json!({"user_id": u, "candidates": c})
    };
    let call = |b: Value| {
        let http = http.clone();
        let url = format!("{base}/v1/rerank");
        async move {
            let r: Value = http
                .post(url)
                .json(&b)
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            r
        }
    };

    // LLM calls per rerank.
    let warm: Vec<String> = users.iter().take(50).cloned().collect();
    let mut new_calls = Vec::new();
    for (k, u) in warm.iter().enumerate() {
        let r = call(body(u, k)).await;
        assert!(r["meta"]["fallback"].is_null(), "{r}");
        new_calls.push(r["meta"]["usage"]["llm_calls"].as_u64().unwrap_or(0));
    }
    let r = call(body(&warm[0], 99)).await;
    println!("LLM calls per rerank");
    println!(
        "  first new user (5-item history, summaries on): {} = 5 summaries + 1 profile + 1 ranking",
        new_calls[0]
    );
    println!(
        "  next {} new users: mean {:.2}, min {}, max {} (summaries are cached per item, so items other users \
         already have cost nothing; shorter histories need fewer)",
        new_calls.len() - 1,
        new_calls[1..].iter().sum::<u64>() as f64 / (new_calls.len() - 1) as f64,
        new_calls[1..].iter().min().unwrap_or(&0),
        new_calls[1..].iter().max().unwrap_or(&0),
    );
    println!(
        "  returning user, unchanged history: {}",
        r["meta"]["usage"]["llm_calls"]
    );

    // Latency, sequential, cached profiles.
    let n = 3000;
    let (mut e2e, mut llm_ms, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..n {
        let b = body(&warm[k % warm.len()], k);
        let t = Instant::now();
        let r = call(b).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(r["meta"]["usage"]["llm_calls"], 1, "{r}");
        let l = r["meta"]["usage"]["llm_ms"].as_f64().unwrap_or(0.0);
        e2e.push(ms);
        llm_ms.push(l);
        added.push(ms - l);
    }
    println!(
        "latency: {n} sequential reranks of 20 candidates, cached profile, instant upstream (ms)"
    );
    println!(
        "  end-to-end     p50 {:.3}  p99 {:.3}",
        pct(&mut e2e, 0.5),
        pct(&mut e2e, 0.99)
    );
    println!(
        "  in LLM calls   p50 {:.3}  p99 {:.3}",
        pct(&mut llm_ms, 0.5),
        pct(&mut llm_ms, 0.99)
    );
    println!(
        "  service-added  p50 {:.3}  p99 {:.3}  (goal p99 <= 5 ms)",
        pct(&mut added, 0.5),
        pct(&mut added, 0.99)
    );

    // Throughput: 32 concurrent clients for 10 s.
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(10);
    let started = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let done = done.clone();
            let warm = warm.clone();
            let items = items.clone();
            let http = http.clone();
            let url = format!("{base}/v1/rerank");
            tokio::spawn(async move {
                let mut k = w;
                while Instant::now() < stop {
                    let c: Vec<Value> = (0..20)
                        .map(|j| json!({"id": items[(k * 7 + j * 13) % items.len()]}))
                        .collect();
                    let b = json!({"user_id": warm[k % warm.len()], "candidates": c});
                    let r = http.post(&url).json(&b).send().await.expect("send");
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    done.fetch_add(1, Ordering::Relaxed);
                    k += 32;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let secs = started.elapsed().as_secs_f64();
    let total = done.load(Ordering::Relaxed);
    println!(
        "throughput: {total} reranks in {secs:.1} s with 32 concurrent clients = {:.0} rerank/s (goal >= 2000; load generator and LLM server share the 2 cores)",
        total as f64 / secs
    );
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM rerank_requests")
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
    println!(
        "  request log rows in Postgres so far: {logged} (each on disk in the journal before its answer, then drained)"
    );
}
