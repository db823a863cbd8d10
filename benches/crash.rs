//! Crash benchmark (`scripts/crash.sh`): `kill -9` of the release `agp serve` under load,
//! several runs. Each run: a fresh data dir with the Amazon Games sample, an instant test
//! upstream, 8 concurrent clients sending reranks for `--secs` seconds, then SIGKILL; a new
//! server on the same data dir; then every request id that was answered 200 is looked up in
//! `rerank_requests`. Prints answered vs logged per run (goal: 0 missing).
//!
//! Flags: `--runs N` (default 5), `--secs N` (default 6), `--clients N` (default 8),
//! `--bin PATH` (default target/release/agp; another build, to compare).

mod support;

use std::time::{Duration, Instant};

use agp_rerank::llm::test_server::TestLlm;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = flag("--runs", 5);
    let secs = flag("--secs", 6);
    let clients = flag("--clients", 8) as usize;
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .iter()
        .position(|a| a == "--bin")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(support::release_bin);
    assert!(
        bin.is_file(),
        "build it first: cargo build --release --bin agp"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("kill -9 under load: {runs} runs, {clients} clients, {secs} s each, instant upstream");
    let mut total_missing = 0;
    for run in 1..=runs {
        let (answered, missing) = rt.block_on(one_run(&bin, secs, clients));
        total_missing += missing;
        println!(
            "  run {run}: answered {answered}, in the log after restart {}, missing {missing}",
            answered - missing
        );
    }
    println!("missing in all runs: {total_missing}");
}

async fn one_run(bin: &std::path::Path, secs: u64, clients: usize) -> (usize, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let (users, items) = support::import_sample(bin, &data_dir);
    let users: Vec<String> = users.into_iter().take(100).collect();
    let llm = TestLlm::start(support::upstream(0)).await;
    let (server, base) = support::serve(bin, &data_dir, &llm.base_url).await;
    let http = reqwest::Client::new();
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let (http, url) = (http.clone(), format!("{base}/v1/rerank"));
            let (users, items) = (users.clone(), items.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut k = w;
                loop {
                    let b = support::rerank_body(&users[k % users.len()], k, &items);
                    let Ok(r) = http.post(&url).json(&b).send().await else {
                        break;
                    };
                    if r.status() != 200 {
                        break;
                    }
                    let Ok(v) = r.json::<Value>().await else {
                        break;
                    };
                    ids.push(v["id"].as_str().unwrap_or_default().to_string());
                    k += clients;
                }
                ids
            })
        })
        .collect();
    tokio::time::sleep_until(stop_at.into()).await;
    support::stop(server, true);
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap_or_default());
    }
    let (server, _) = support::serve(bin, &data_dir, &llm.base_url).await;
    let pool = embedded_pool(&data_dir).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM UNNEST($1::text[]) AS x WHERE NOT EXISTS (SELECT 1 FROM rerank_requests r WHERE r.id = x)",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await
        .expect("count");
        if n == 0 || Instant::now() > deadline {
            break n as usize;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    pool.close().await;
    support::stop(server, false);
    (ids.len(), missing)
}

async fn embedded_pool(data_dir: &std::path::Path) -> sqlx::PgPool {
    let pid = std::fs::read_to_string(data_dir.join("pg/postmaster.pid")).expect("postmaster.pid");
    let port: u16 = pid
        .lines()
        .nth(3)
        .and_then(|l| l.trim().parse().ok())
        .expect("port");
    let password = std::fs::read_to_string(data_dir.join("pg-password")).expect("password");
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            PgConnectOptions::new()
                .host("127.0.0.1")
                .port(port)
                .username("agp")
                .password(password.trim())
                .database("agp"),
        )
        .await
        .expect("connect")
}
