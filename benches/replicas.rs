//! Several `agp serve` replicas on one Postgres (`cargo bench --bench replicas`; build the
//! release binary first: `cargo build --release --bin agp`). A throwaway embedded Postgres
//! with the Amazon Games sample, an instant test upstream, release replicas each with its own
//! journal folder, and a load of concurrent reranks (20 candidates) spread over the replicas.
//!
//! 1. Throughput and latency: 1 replica vs 2, each with and without a blend experiment
//!    running (its split, the inbox entries its log rows make, the leader folding every 5 s).
//! 2. kill -9 under load: 3 replicas, experiments started one after another (each ends
//!    "inconclusive" after a few dozen users), the leader killed half-way: how long until
//!    another replica leads, answered reranks missing after the killed one restarts on its
//!    journal (goal 0), and that no experiment was decided twice (each one moved the label
//!    exactly twice: split at its start, back at its end).
//!
//! Flags: `--secs N` (per throughput run, default 15), `--clients N` (default 32),
//! `--kill-secs N` (the kill run, default 30), `--bin PATH`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agp_rerank::llm::test_server::TestLlm;
use serde_json::{Value, json};
use sqlx::PgPool;

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(name: &str, default: u64) -> u64 {
    flag(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Replica {
    child: Option<Child>,
    base: String,
    port: u16,
    data_dir: PathBuf,
}

async fn start(bin: &Path, url: &str, llm: &str, root: &Path, i: usize) -> Replica {
    let port = support::free_port();
    let data_dir = root.join(format!("replica{i}"));
    let child = support::replica(bin, url, llm, &data_dir, port, &[]);
    let base = format!("http://127.0.0.1:{port}");
    support::wait_ready(&base).await;
    Replica {
        child: Some(child),
        base,
        port,
        data_dir,
    }
}

async fn leader_says(http: &reqwest::Client, base: &str) -> Option<String> {
    let r = http
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let b: Value = r.json().await.ok()?;
    b["checks"]["leader"].as_str().map(str::to_string)
}

/// Result of a load run.
struct Load {
    ids: Vec<String>,
    latencies_ms: Vec<f64>,
    errors: usize,
    secs: f64,
}

/// `clients` concurrent clients for `secs`, each sending to the replicas in turn (a client
/// whose replica fails moves on to the next one).
async fn load(
    bases: Vec<String>,
    users: &[String],
    items: &[String],
    clients: usize,
    secs: u64,
) -> Load {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let started = Instant::now();
    let stop_at = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let (http, bases) = (http.clone(), bases.clone());
            let (users, items) = (users.to_vec(), items.to_vec());
            tokio::spawn(async move {
                let (mut ids, mut lat, mut errors) = (Vec::new(), Vec::new(), 0usize);
                let mut k = w;
                while Instant::now() < stop_at {
                    let base = &bases[k % bases.len()];
                    let body = support::rerank_body(&users[k % users.len()], k, &items);
                    let t = Instant::now();
                    let r = http
                        .post(format!("{base}/v1/rerank"))
                        .json(&body)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    k += clients;
                    let Ok(r) = r else {
                        errors += 1;
                        continue;
                    };
                    if r.status() != 200 {
                        errors += 1;
                        continue;
                    }
                    let Ok(v) = r.json::<Value>().await else {
                        errors += 1;
                        continue;
                    };
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    ids.push(v["id"].as_str().unwrap_or_default().to_string());
                }
                (ids, lat, errors)
            })
        })
        .collect();
    let mut out = Load {
        ids: Vec::new(),
        latencies_ms: Vec::new(),
        errors: 0,
        secs: 0.0,
    };
    for t in tasks {
        let (ids, lat, errors) = t.await.unwrap_or_default();
        out.ids.extend(ids);
        out.latencies_ms.extend(lat);
        out.errors += errors;
    }
    out.secs = started.elapsed().as_secs_f64();
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.expect("post");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn main() {
    support::on_embedded_pg("replicas", run);
}

async fn run(url: String) {
    let bin = flag("--bin")
        .map(PathBuf::from)
        .unwrap_or_else(support::release_bin);
    assert!(
        bin.is_file(),
        "build it first: cargo build --release --bin agp"
    );
    let secs = num("--secs", 15);
    let clients = num("--clients", 32) as usize;
    let kill_secs = num("--kill-secs", 30);
    let pool = agp_rerank::store::connect(&url, 4).await.expect("connect");
    let (users, items) = support::load_sample(&pool).await;
    let llm = TestLlm::start(support::upstream(0)).await;
    let root = tempfile::tempdir().expect("temp dir");
    let http = reqwest::Client::new();

    println!(
        "replicas on one Postgres: instant upstream, 20 candidates, {clients} clients, {secs} s per run, 2 cores shared by replicas, Postgres, upstream and load"
    );
    println!(
        "{:>8} {:>11} | {:>9} {:>8} {:>8} {:>7}",
        "replicas", "experiment", "reranks/s", "p50 ms", "p99 ms", "errors"
    );
    let mut by = std::collections::BTreeMap::new();
    let mut n_replica = 0;
    for n in [1usize, 2] {
        let mut replicas = Vec::new();
        for _ in 0..n {
            replicas.push(start(&bin, &url, &llm.base_url, root.path(), n_replica).await);
            n_replica += 1;
        }
        let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
        for experiment in [false, true] {
            let running = if experiment {
                let (_, v) = post(
                    &http,
                    format!("{}/v1/blends/versions", bases[0]),
                    json!({"weights": {"llm": 1, "incoming": 2}}),
                )
                .await;
                let (s, e) = post(
                    &http,
                    format!("{}/v1/experiments", bases[0]),
                    json!({
                    "name": "blend", "treatment": v["version"], "treatment_share": 0.5,
                    "settings": {"min_users": 10000000, "max_users": 10000000, "srm_alpha": 0,
                                 "guardrails": {"min_requests": 10000000}}}),
                )
                .await;
                assert_eq!(s, 201, "{e}");
                Some(e["id"].as_str().unwrap_or_default().to_string())
            } else {
                None
            };
            // Warm-up: profiles and caches of every user on every replica.
            let _ = load(bases.clone(), &users, &items, clients, 3).await;
            let mut l = load(bases.clone(), &users, &items, clients, secs).await;
            let rate = l.latencies_ms.len() as f64 / l.secs;
            println!(
                "{:>8} {:>11} | {:>9.0} {:>8.2} {:>8.2} {:>7}",
                n,
                if experiment { "running" } else { "none" },
                rate,
                pct(&mut l.latencies_ms, 0.5),
                pct(&mut l.latencies_ms, 0.99),
                l.errors
            );
            by.insert((n, experiment), rate);
            if let Some(id) = running {
                let (s, _) = post(
                    &http,
                    format!("{}/v1/experiments/{id}/stop", bases[0]),
                    json!({}),
                )
                .await;
                assert_eq!(s, 200);
            }
        }
        for r in replicas {
            if let Some(c) = r.child {
                support::stop(c, false);
            }
        }
    }
    println!(
        "2 replicas / 1 replica: {:.2} (no experiment), {:.2} (experiment running); experiment running / none: {:.2} (1 replica), {:.2} (2 replicas)",
        by[&(2, false)] / by[&(1, false)],
        by[&(2, true)] / by[&(1, true)],
        by[&(1, true)] / by[&(1, false)],
        by[&(2, true)] / by[&(2, false)]
    );

    kill_run(
        &bin,
        &url,
        &llm.base_url,
        root.path(),
        &users,
        &items,
        clients,
        kill_secs,
        &pool,
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn kill_run(
    bin: &Path,
    url: &str,
    llm: &str,
    root: &Path,
    users: &[String],
    items: &[String],
    clients: usize,
    secs: u64,
    pool: &PgPool,
) {
    let http = reqwest::Client::new();
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(start(bin, url, llm, root, 10 + i).await);
    }
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let since = chrono::Utc::now();
    // Experiments one after another, each ending "inconclusive" after 20 users per arm.
    let cycling = Arc::new(AtomicBool::new(true));
    let driver = {
        let (http, bases, cycling) = (http.clone(), bases.clone(), cycling.clone());
        tokio::spawn(async move {
            let mut started = 0usize;
            let mut k = 0usize;
            while cycling.load(Ordering::Relaxed) {
                let base = &bases[k % bases.len()];
                k += 1;
                let body = json!({"name": "blend", "control": 1, "treatment": 2, "treatment_share": 0.5,
                                  "settings": {"min_users": 20, "max_users": 20}});
                if let Ok(r) = http
                    .post(format!("{base}/v1/experiments"))
                    .json(&body)
                    .send()
                    .await
                    && r.status() == 201
                {
                    started += 1;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            started
        })
    };
    let load_task = {
        let (bases, users, items) = (bases.clone(), users.to_vec(), items.to_vec());
        tokio::spawn(async move { load(bases, &users, &items, clients, secs).await })
    };
    tokio::time::sleep(Duration::from_secs(secs / 2)).await;
    // Kill the leader.
    let mut leader = None;
    for (i, b) in bases.iter().enumerate() {
        if leader_says(&http, b).await.as_deref() == Some("this process") {
            leader = Some(i);
        }
    }
    let leader = leader.expect("one replica leads");
    if let Some(mut c) = replicas[leader].child.take() {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
    }
    let killed_at = Instant::now();
    let took = loop {
        let mut found = None;
        for (i, b) in bases.iter().enumerate() {
            if i != leader && leader_says(&http, b).await.as_deref() == Some("this process") {
                found = Some(killed_at.elapsed());
            }
        }
        if let Some(t) = found {
            break Some(t);
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let l = load_task.await.expect("load");
    cycling.store(false, Ordering::Relaxed);
    let started = driver.await.unwrap_or(0);
    // The killed replica comes back on its data dir and drains what its journal held.
    let r = &mut replicas[leader];
    r.child = Some(support::replica(bin, url, llm, &r.data_dir, r.port, &[]));
    support::wait_ready(&r.base).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM UNNEST($1::text[]) AS x WHERE NOT EXISTS (SELECT 1 FROM rerank_requests r WHERE r.id = x)",
        )
        .bind(&l.ids)
        .fetch_one(pool)
        .await
        .expect("count");
        if n == 0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Each experiment moved the label twice (split, then back) or once if still running.
    let (ended, running): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status <> 'running'), count(*) FILTER (WHERE status = 'running')
         FROM experiments WHERE started_at >= $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await
    .expect("experiments");
    let moves: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM prompt_label_history WHERE name = 'blend' AND label = 'production' AND moved_at >= $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await
    .expect("moves");
    println!(
        "kill -9 of the leader (1 of 3 replicas) after {} s under load: {} answered in {:.0} s ({} errors while its clients moved on), missing after it restarted: {missing}",
        secs / 2,
        l.ids.len(),
        l.secs,
        l.errors
    );
    match took {
        Some(t) => println!("  another replica led {} ms after the kill", t.as_millis()),
        None => println!("  NOBODY took over within 30 s"),
    }
    println!(
        "  experiments: {started} started by the driver, {ended} ended, {running} running; label moves {moves} (expected {}: {})",
        2 * ended + running,
        if moves == 2 * ended + running {
            "none decided twice"
        } else {
            "MISMATCH"
        }
    );
    for r in replicas {
        if let Some(c) = r.child {
            support::stop(c, false);
        }
    }
}
