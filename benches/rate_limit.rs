//! Rate-limit benchmark (`cargo build --release --bin agp && cargo bench --bench rate_limit`):
//! three release `agp serve` replicas on one Postgres, the Amazon Games sample, an instant
//! test upstream. (1) One key limited to 50 requests/s (burst 50), a client sending reranks
//! at 200/s for `AGP_BENCH_SECS` (30) across the replicas in turn: the accepted rate
//! cluster-wide. (2) Rerank latency p50/p99 of 8 clients for 10 s with an unlimited key and
//! with a key whose limit is on but never reached (the cost of the check itself).

mod support;

use std::time::{Duration, Instant};

use agp_rerank::llm::test_server::TestLlm;

const MASTER: &str = "rate-limit-bench-master-key";

fn main() {
    support::on_embedded_pg("rate_limit", run);
}

async fn key(pool: &sqlx::PgPool, rate: Option<(f64, i32)>) -> String {
    let (secret, prefix, hash) = agp_rerank::auth::generate_key();
    agp_rerank::store::keys::insert(
        pool,
        "default",
        "bench",
        "rerank",
        &prefix,
        &hash,
        rate.map(|r| r.0),
        rate.map(|r| r.1),
    )
    .await
    .expect("key");
    secret
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(url: String) {
    let bin = support::release_bin();
    assert!(
        bin.is_file(),
        "build it first: cargo build --release --bin agp"
    );
    let secs: u64 = std::env::var("AGP_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let pool = agp_rerank::store::connect(&url, 4).await.expect("connect");
    let (users, items) = support::load_sample(&pool).await;
    let llm = TestLlm::start(support::upstream(0)).await;
    let root = tempfile::tempdir().expect("temp dir");
    let mut children = Vec::new();
    let mut bases = Vec::new();
    for i in 0..3 {
        let port = support::free_port();
        children.push(support::replica(
            &bin,
            &url,
            &llm.base_url,
            &root.path().join(format!("r{i}")),
            port,
            &[("AGP_MASTER_KEY", MASTER), ("AGP_SUMMARIES", "false")],
        ));
        let base = format!("http://127.0.0.1:{port}");
        support::wait_ready(&base).await;
        bases.push(base);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");

    // (1) 200 requests/s against a 50/s key, for `secs`.
    let limited = key(&pool, Some((50.0, 50))).await;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut k = 0usize;
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let (http, base, key) = (http.clone(), bases[k % 3].clone(), limited.clone());
        let body = support::rerank_body(&users[k % users.len()], k, &items);
        sent.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/rerank"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await;
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
        k += 1;
    }
    let sending = started.elapsed().as_secs_f64();
    let (mut ok, mut refused, mut other) = (0usize, 0usize, 0usize);
    for t in sent {
        match t.await.unwrap_or(0) {
            200 => ok += 1,
            429 => refused += 1,
            _ => other += 1,
        }
    }
    // Database round trips the limit cost (each replica's counter of bucket takes).
    let mut takes = 0.0;
    for base in &bases {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        takes += text
            .lines()
            .find(|l| l.starts_with("agp_rate_limit_bucket_takes_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    println!(
        "3 replicas, one key limited to 50/s (burst 50), a client at {:.0} requests/s for {sending:.1} s, replicas in turn:",
        k as f64 / sending
    );
    println!(
        "  accepted {ok} ({:.1}/s; {:+.1}% from 50/s), 429 {refused}, other {other}",
        ok as f64 / sending,
        100.0 * (ok as f64 / sending - 50.0) / 50.0
    );
    println!(
        "  bucket round trips to Postgres: {takes:.0} for {k} requests ({:.2} per request)",
        takes / k.max(1) as f64
    );

    // (2) latency with limits off (unlimited key) vs on (a limit never reached).
    let unlimited = key(&pool, None).await;
    let roomy = key(&pool, Some((100_000.0, 100_000))).await;
    for (name, key) in [("limit off", unlimited), ("limit on, not reached", roomy)] {
        let stop = Instant::now() + Duration::from_secs(10);
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let (http, bases, key) = (http.clone(), bases.clone(), key.clone());
                let (users, items) = (users.clone(), items.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut k = w;
                    while Instant::now() < stop {
                        let body = support::rerank_body(&users[k % users.len()], k, &items);
                        let t = Instant::now();
                        let r = http
                            .post(format!("{}/v1/rerank", bases[k % 3]))
                            .bearer_auth(&key)
                            .json(&body)
                            .send()
                            .await;
                        if r.is_ok_and(|r| r.status() == 200) {
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        k += 8;
                    }
                    lat
                })
            })
            .collect();
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap_or_default());
        }
        let n = lat.len();
        println!(
            "  reranks, 8 clients, 10 s, {name:<22}: {n} answered, p50 {:.2} ms, p99 {:.2} ms",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
    for c in children {
        support::stop(c, false);
    }
}
