//! Generation vs log-probability ranking on the real local model (`cargo bench --bench
//! rank_modes`): the app on real Postgres (throwaway embedded cluster) with the Amazon Games
//! sample, and llama-server + SmolLM2-135M (`scripts/setup-local-llm.sh`), one slot, CPU.
//!
//! Prints, for 20 candidates and returning users (profiles written in a warm-up):
//! 1. end-to-end p50/p99 over 50 reranks per mode (the modes interleaved, so both see the
//!    same machine load), completion and prompt tokens per rerank, and the p50 ratio;
//! 2. prompt tokens per 20-candidate rerank with a candidate text budget of 75 tokens (about
//!    the 300 characters the prompt took before the budget) and with the default 40;
//! 3. the server's cached prompt tokens on a user's second rerank with different candidates,
//!    with the previous `p_rank` layout (profile, candidates, instructions) and the current one
//!    (instructions, profile, candidates, answer format).
//!
//! `AGP_BENCH_RERANKS` changes the reranks per mode (default 50).

mod support;

use std::time::{Duration, Instant};

use agp_rerank::agp::prompt::{LEGACY_P_RANK, PromptName, default_template};
use agp_rerank::agp::rank::RankMode;
use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::local::{LOCAL_MODEL_NAME, LocalLlm, LocalOptions};
use agp_rerank::store;
use serde_json::{Value, json};

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let opts = LocalOptions::new(None, None, port, 2);
    if !opts.available() {
        eprintln!("local model not set up: run scripts/setup-local-llm.sh");
        std::process::exit(2);
    }
    support::on_embedded_pg("modes", |url| run(url, opts));
}

/// A running app with one configuration.
struct App {
    http: reqwest::Client,
    base: String,
}

impl App {
    async fn start(state: AppState) -> App {
        App {
            http: reqwest::Client::new(),
            base: support::serve_app(state).await,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.http
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    }

    async fn rerank(&self, user: &str, cands: &[String], mode: RankMode) -> (f64, Value) {
        let c: Vec<Value> = cands.iter().map(|id| json!({"id": id})).collect();
        let body = json!({"user_id": user, "candidates": c, "rank_mode": mode.as_str()});
        let t = Instant::now();
        let r = self.call(reqwest::Method::POST, "/v1/rerank", body).await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(r["meta"]["fallback"].is_null(), "{r}");
        (ms, r)
    }

    /// Points `production` of `p_rank` at a new version with this template.
    async fn use_rank_template(&self, template: &str) {
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/prompts/p_rank/versions",
                json!({"template": template}),
            )
            .await;
        let l = self
            .call(
                reqwest::Method::PUT,
                "/v1/prompts/p_rank/labels/production",
                json!({"version": v["version"]}),
            )
            .await;
        assert!(l.get("error").is_none(), "{l}");
    }
}

fn usage(r: &Value, key: &str) -> f64 {
    r["meta"]["usage"][key].as_f64().unwrap_or(0.0)
}

async fn run(url: String, opts: LocalOptions) {
    let pool = store::connect(&url, 8).await.expect("connect");
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
    let cands = |k: usize| -> Vec<String> {
        (0..20)
            .map(|j| items[(k * 37 + j * 13) % items.len()].clone())
            .collect()
    };

    let local = LocalLlm::start(opts).await.expect("start llama-server");
    let mut settings = LlmSettings::single(local.base_url(), LOCAL_MODEL_NAME);
    settings.timeout = Duration::from_secs(300);
    settings.concurrency = 1;
    let client = LlmClient::new(settings, Some(pool.clone()));
    let config = |item_tokens: usize| {
        let mut c = AppConfig::default();
        c.rerank.deadline = Duration::from_secs(600);
        c.rerank.summaries = false;
        c.rerank.rank.max_item_tokens = item_tokens;
        c
    };
    let app = App::start(AppState::with_llm(pool.clone(), config(40), client.clone())).await;
    let wide = App::start(AppState::with_llm(pool.clone(), config(75), client.clone())).await;
    // The LLM alone: what is measured is the ranking call.
    let b = app
        .call(
            reqwest::Method::POST,
            "/v1/blends/versions",
            json!({"weights": {"llm": 1}}),
        )
        .await;
    app.call(
        reqwest::Method::PUT,
        "/v1/blends/labels/production",
        json!({"version": b["version"]}),
    )
    .await;

    let warm: Vec<String> = users.iter().take(10).cloned().collect();
    let t = Instant::now();
    for (k, u) in warm.iter().enumerate() {
        app.rerank(u, &cands(1000 + k), RankMode::Logprobs).await;
    }
    println!(
        "warm-up: profiles of {} users written in {:.1} s",
        warm.len(),
        t.elapsed().as_secs_f64()
    );

    // 1. Latency and tokens per mode, interleaved.
    let n: usize = std::env::var("AGP_BENCH_RERANKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let modes = [RankMode::Generate, RankMode::Logprobs];
    let mut ms: [Vec<f64>; 2] = Default::default();
    let mut completion: [Vec<f64>; 2] = Default::default();
    let mut prompt: [Vec<f64>; 2] = Default::default();
    let mut calls: [Vec<f64>; 2] = Default::default();
    for k in 0..n {
        for (m, mode) in modes.iter().enumerate() {
            let (t, r) = app.rerank(&warm[k % warm.len()], &cands(k), *mode).await;
            assert_eq!(r["meta"]["rank"]["windows_without_logprobs"], 0, "{r}");
            ms[m].push(t);
            completion[m].push(usage(&r, "completion_tokens"));
            prompt[m].push(usage(&r, "prompt_tokens"));
            calls[m].push(usage(&r, "llm_calls"));
        }
    }
    println!(
        "\n1. {n} reranks per mode, 20 candidates, returning users (cached profiles), SmolLM2-135M on llama-server (CPU, one slot)"
    );
    println!(
        "   | mode | p50 ms | p99 ms | completion tokens / rerank | prompt tokens / rerank | LLM calls / rerank |"
    );
    for (m, mode) in modes.iter().enumerate() {
        println!(
            "   | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} |",
            mode.as_str(),
            pct(&ms[m], 0.5),
            pct(&ms[m], 0.99),
            mean(&completion[m]),
            mean(&prompt[m]),
            mean(&calls[m]),
        );
    }
    println!(
        "   p50 ratio logprobs / generate: {:.2} (p99 ratio {:.2})",
        pct(&ms[1], 0.5) / pct(&ms[0], 0.5),
        pct(&ms[1], 0.99) / pct(&ms[0], 0.99)
    );

    // 2. Prompt tokens before and after the text budget (the same lists, log-probability mode).
    let mut budget: [Vec<f64>; 2] = Default::default();
    for k in 0..5 {
        for (b, a) in [&wide, &app].iter().enumerate() {
            let (_, r) = a
                .rerank(&warm[k % warm.len()], &cands(500 + k), RankMode::Logprobs)
                .await;
            budget[b].push(usage(&r, "prompt_tokens"));
        }
    }
    println!("\n2. prompt tokens per 20-candidate rerank (5 lists, server-counted)");
    println!(
        "   text budget 75 tokens (about the 300 characters before): {:.0}",
        mean(&budget[0])
    );
    println!(
        "   text budget 40 tokens (default):                          {:.0} ({:.0}% fewer)",
        mean(&budget[1]),
        100.0 * (1.0 - mean(&budget[1]) / mean(&budget[0]))
    );

    // 3. Cached prompt tokens on a user's second rerank with different candidates.
    println!(
        "\n3. a user's second rerank with different candidates, right after the first (5 users, log-probability mode)"
    );
    for (name, template) in [
        ("before: profile, candidates, instructions", LEGACY_P_RANK),
        (
            "after: instructions, profile, candidates, format",
            default_template(PromptName::PRank),
        ),
    ] {
        app.use_rank_template(template).await;
        let (mut cached, mut total) = (Vec::new(), Vec::new());
        for (k, u) in warm.iter().take(5).enumerate() {
            app.rerank(u, &cands(700 + k), RankMode::Logprobs).await;
            let (_, r) = app.rerank(u, &cands(800 + k), RankMode::Logprobs).await;
            cached.push(usage(&r, "cached_tokens"));
            total.push(usage(&r, "prompt_tokens"));
        }
        println!(
            "   {name}: {:.0} of {:.0} prompt tokens cached ({:.0}%)",
            mean(&cached),
            mean(&total),
            100.0 * mean(&cached) / mean(&total)
        );
    }
    local.stop().await;
}
