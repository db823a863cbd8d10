//! Soak benchmark (`scripts/soak.sh`): the release `agp serve` as a child process on its own
//! embedded Postgres with the Amazon Games sample, an OpenAI-compatible test upstream that
//! answers every call after D ms, and reranks sent at a fixed rate (open loop: a slow answer
//! never slows the sender) for a bounded time, per upstream delay. Prints, per phase: sent,
//! answered 200, errors, fallbacks, end-to-end latency p50/p99/max, the server's RSS before
//! and after the load.
//!
//! Flags: `--rate N` (reranks per second, default 200), `--secs N` (per phase, default 60),
//! `--delays 0,200` (upstream delays in ms), `--users N` (distinct users, default 200),
//! `--bin PATH` (default target/release/agp).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agp_rerank::llm::test_server::TestLlm;
use serde_json::Value;

struct Opts {
    rate: f64,
    secs: u64,
    delays: Vec<u64>,
    users: usize,
    bin: PathBuf,
}

fn opts() -> Opts {
    let mut o = Opts {
        rate: 200.0,
        secs: 60,
        delays: vec![0, 200],
        users: 200,
        bin: support::release_bin(),
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--rate" => o.rate = v.parse().expect("--rate N"),
            "--secs" => o.secs = v.parse().expect("--secs N"),
            "--users" => o.users = v.parse().expect("--users N"),
            "--bin" => o.bin = PathBuf::from(v),
            "--delays" => {
                o.delays = v
                    .split(',')
                    .map(|d| d.trim().parse().expect("--delays 0,200"))
                    .collect()
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Sample {
    status: u16,
    ms: f64,
    fallback: Option<String>,
}

fn main() {
    let o = opts();
    assert!(
        o.bin.is_file(),
        "{} not found: build it with `cargo build --release --bin agp`",
        o.bin.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "soak: {} reranks/s for {} s per phase, 20 candidates, {} returning users, release agp at {}",
        o.rate,
        o.secs,
        o.users,
        o.bin.display()
    );
    for &delay in &o.delays {
        rt.block_on(phase(&o, delay));
    }
}

async fn phase(o: &Opts, delay: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let (mut users, items) = support::import_sample(&o.bin, &data_dir);
    users.truncate(o.users);
    let llm = TestLlm::start(support::upstream(delay)).await;
    let (server, base) = support::serve(&o.bin, &data_dir, &llm.base_url).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .expect("client");
    let body = support::rerank_body;

    // Warm-up: every user's profile is written once (steady state: one LLM call per rerank).
    let warm_started = Instant::now();
    for chunk in users.chunks(32) {
        let calls = chunk.iter().enumerate().map(|(k, u)| {
            let (http, url, b) = (
                http.clone(),
                format!("{base}/v1/rerank"),
                body(u, k, &items),
            );
            async move {
                http.post(url)
                    .json(&b)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        for r in futures_util::future::join_all(calls).await {
            assert_eq!(r.ok(), Some(200), "warm-up rerank");
        }
    }
    let rss_start = rss_kb(server.id());

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let started = Instant::now();
    let total = (o.rate * o.secs as f64) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for k in 0..total {
        tick.tick().await;
        let (http, url) = (http.clone(), format!("{base}/v1/rerank"));
        let b = body(&users[k % users.len()], k + 1000, &items);
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .timeout(Duration::from_secs(60))
                .json(&b)
                .send()
                .await;
            let (status, fallback) = match r {
                Ok(r) => {
                    let s = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (s, v["meta"]["fallback"].as_str().map(str::to_string))
                }
                Err(_) => (0, None),
            };
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
            s.push(Sample {
                status,
                ms,
                fallback,
            });
        }));
    }
    let send_secs = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let rss_end = rss_kb(server.id());
    support::stop(server, false);

    let s = samples.lock().unwrap_or_else(|p| p.into_inner());
    let mut ms: Vec<f64> = s.iter().filter(|x| x.status == 200).map(|x| x.ms).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let errors = s.iter().filter(|x| x.status != 200).count();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut fallbacks: BTreeMap<String, usize> = BTreeMap::new();
    for x in s.iter() {
        *by_status.entry(x.status).or_default() += 1;
        if let Some(f) = &x.fallback {
            *fallbacks.entry(f.clone()).or_default() += 1;
        }
    }
    println!("\nupstream answering in {delay} ms");
    println!(
        "  warm-up: {} users' first reranks in {:.1} s",
        users.len(),
        warm_started.elapsed().as_secs_f64() - started.elapsed().as_secs_f64()
    );
    println!(
        "  sent {} in {:.1} s ({:.0}/s); answered 200: {}; errors: {errors} {:?}; fallbacks: {:?}",
        s.len(),
        send_secs,
        s.len() as f64 / send_secs,
        ms.len(),
        by_status
            .iter()
            .filter(|(k, _)| **k != 200)
            .collect::<BTreeMap<_, _>>(),
        fallbacks
    );
    println!(
        "  latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  RSS of agp serve: {:.1} MB before the load, {:.1} MB after",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
}
