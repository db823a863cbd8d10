//! LLM client benchmarks against the in-process test server (`cargo bench --bench llm`):
//! 1. client overhead per call with a zero-latency upstream (p50/p99), next to raw reqwest;
//! 2. throughput with a 200 ms upstream and concurrency limit N, against the ideal N / 0.2 s.

use std::time::{Duration, Instant};

use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, TestLlm};
use agp_rerank::llm::{CallContext, ChatRequest, LlmClient, Message, Role};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn request(i: usize) -> ChatRequest {
    ChatRequest::new(vec![
        Message::system("You rank items for a user. Answer with JSON."),
        Message::user(format!(
            "User profile: likes tactical RPGs.\nCandidates: [1] A [2] B [3] C ... call {i}"
        )),
    ])
}

async fn overhead() {
    let server = TestLlm::always(Reply::text("{\"ranking\": [2, 1, 3]}")).await;
    let mut settings = LlmSettings::single(server.base_url.clone(), "bench");
    settings.cache = false;
    let client = LlmClient::new(settings, None);
    let ctx = CallContext::interactive("default");
    let raw = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url);
    let body =
        serde_json::json!({"model": "bench", "messages": [{"role": "user", "content": "x"}]});
    // Warm up connections.
    for i in 0..200 {
        client
            .chat(Role::Rank, &request(i), &ctx)
            .await
            .expect("warm-up call");
        raw.post(&url)
            .json(&body)
            .send()
            .await
            .expect("raw")
            .bytes()
            .await
            .expect("raw body");
    }
    let n = 3000;
    let mut with_client = Vec::with_capacity(n);
    let mut with_raw = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        client
            .chat(Role::Rank, &request(i), &ctx)
            .await
            .expect("call");
        with_client.push(t.elapsed());
        let t = Instant::now();
        raw.post(&url)
            .json(&body)
            .send()
            .await
            .expect("raw")
            .bytes()
            .await
            .expect("raw body");
        with_raw.push(t.elapsed());
    }
    with_client.sort();
    with_raw.sort();
    println!("overhead: {n} sequential calls to a zero-latency in-process server");
    println!(
        "  LlmClient::chat   p50 {:7.1} us   p99 {:7.1} us",
        pct(&with_client, 0.50),
        pct(&with_client, 0.99)
    );
    println!(
        "  raw reqwest POST  p50 {:7.1} us   p99 {:7.1} us",
        pct(&with_raw, 0.50),
        pct(&with_raw, 0.99)
    );
    println!(
        "  client overhead   p50 {:7.1} us   p99 {:7.1} us  (difference)",
        pct(&with_client, 0.50) - pct(&with_raw, 0.50),
        pct(&with_client, 0.99) - pct(&with_raw, 0.99)
    );
}

async fn throughput(n: usize) {
    let server = TestLlm::always(Reply::text("ok").after(200)).await;
    let mut settings = LlmSettings::single(server.base_url.clone(), "bench");
    settings.cache = false;
    settings.concurrency = n;
    settings.reserved_interactive = 0;
    let client = LlmClient::new(settings, None);
    let calls = n * 10;
    let started = Instant::now();
    let handles: Vec<_> = (0..calls)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.chat(
                    Role::Profile,
                    &request(i),
                    &CallContext::background("default"),
                )
                .await
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task").expect("call");
    }
    let secs = started.elapsed().as_secs_f64();
    let got = calls as f64 / secs;
    let ideal = n as f64 / 0.2;
    println!(
        "  N={n:3}: {calls:4} calls in {secs:5.2} s = {got:7.1} calls/s; ideal N/0.2s = {ideal:6.1}; ratio {:.3}; max in flight {}",
        got / ideal,
        server.max_in_flight()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        overhead().await;
        println!("throughput: upstream answers in 200 ms, concurrency limit N, 10 x N calls");
        for n in [1, 4, 8, 16, 32] {
            throughput(n).await;
        }
    });
}
