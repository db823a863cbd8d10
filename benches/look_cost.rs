//! What a running experiment costs as its traffic grows (`cargo bench --bench look_cost`):
//! a real app on a throwaway embedded Postgres with the Amazon Games sample, a blend
//! experiment that never decides, and the leader (`cluster::Election`) running in this
//! process as in `agp serve`. Logged reranks of 20 candidates (a tenth with a click) are
//! written through the same statements the journal drain and `POST /v1/feedback` use, in
//! 5,000-row batches; at each size it prints:
//! - `GET /v1/experiments/{id}` (fold what is pending, look, store the look) and the leader's
//!   pass over every running experiment, median of 20, with nothing pending and with 5 s of
//!   traffic at 1,000 reranks/s pending;
//! - the look as it was before the statistics were folded (the whole log read and reduced),
//!   once, for comparison;
//! - the leader process's and Postgres's CPU while idle for 30 s (passes every 5 s);
//! - bytes per logged rerank and per feedback row.
//!
//! Then a day of log 31 days old, dropped by the retention pass: the table before and after.
//!
//! Flags: `--sizes 10000,100000,1000000` (cumulative logged requests), `--idle-secs 30`.

mod support;

use std::time::{Duration, Instant};

use agp_rerank::app::AppState;
use agp_rerank::cluster::{Election, LeaderOptions, looker};
use agp_rerank::config::AppConfig;
use agp_rerank::experiment;
use agp_rerank::store::{self, experiment_stats, experiments, partitions, rerank};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    support::on_embedded_pg("look-cost", run);
}

struct Traffic {
    users: Vec<String>,
    items: Vec<String>,
    written: usize,
    seed: u64,
}

impl Traffic {
    fn next(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// `n` logged reranks answered at `at`, arms by a hash of the user as the label split does.
    fn rows(
        &mut self,
        n: usize,
        at: DateTime<Utc>,
        control: i32,
        treatment: i32,
    ) -> Vec<rerank::RerankLogRow> {
        (0..n)
            .map(|_| {
                let k = self.written;
                self.written += 1;
                let pick = self.next() as usize % self.users.len();
                let user = self.users[pick].clone();
                let start = self.next() as usize;
                let order: Vec<String> = (0..20)
                    .map(|j| self.items[(start + j * 13) % self.items.len()].clone())
                    .collect();
                let version = if agp_rerank::hash::stable_hash(&user).is_multiple_of(2) {
                    control
                } else {
                    treatment
                };
                rerank::RerankLogRow {
                    id: format!("rr_bench_{k}"),
                    created_at: at,
                    project: "default".into(),
                    user_id: user,
                    candidates: json!(order),
                    result_order: json!(order),
                    prompt_version: Some(1),
                    prompt_versions: json!({"p_gen": 1, "p_rank": 2}),
                    profile_id: Some(uuid::Uuid::new_v4()),
                    model: Some("bench".into()),
                    fallback: None,
                    repaired: false,
                    latency_ms: 2 + (self.next() % 40) as i32,
                    usage: json!({"llm_calls": 1, "prompt_tokens": 900, "completion_tokens": 60, "cache_hits": 0}),
                    blend: json!({"version": version, "weights": {"llm": 1.0, "incoming": 1.0}}),
                    history: json!(["a", "b", "c", "d", "e"]),
                    teams: None,
                }
            })
            .collect()
    }
}

/// Writes `n` reranks (and a click on a tenth) through the journal drain's and the feedback
/// handler's statements.
async fn write(pool: &PgPool, t: &mut Traffic, n: usize, at: DateTime<Utc>, arms: (i32, i32)) {
    let mut left = n;
    while left > 0 {
        let rows = t.rows(left.min(5_000), at, arms.0, arms.1);
        left -= rows.len();
        rerank::insert_rerank_logs(pool, &rows)
            .await
            .expect("insert log");
        let mut clicks = Vec::new();
        for r in &rows {
            if t.next().is_multiple_of(7) {
                let shown: Vec<String> =
                    serde_json::from_value(r.result_order.clone()).unwrap_or_default();
                let pick = (t.next() % 5) as usize;
                clicks.push((r.id.clone(), r.user_id.clone(), shown[pick].clone()));
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in clicks.chunks(clicks.len().div_ceil(8).max(1)) {
            let (pool, chunk) = (pool.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for (id, user, item) in chunk {
                    rerank::insert_feedback(&pool, "default", &id, at, &user, &item, "click")
                        .await
                        .expect("feedback");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU seconds used so far by this process and by each Postgres process (by pid).
fn cpu_seconds() -> (f64, std::collections::HashMap<String, f64>) {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = |path: &std::path::Path| -> Option<(String, f64)> {
        let s = std::fs::read_to_string(path).ok()?;
        let close = s.rfind(')')?;
        let comm = s[s.find('(')? + 1..close].to_string();
        let f: Vec<&str> = s[close + 2..].split(' ').collect();
        let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((comm, t / ticks))
    };
    let me = stat(std::path::Path::new("/proc/self/stat")).map_or(0.0, |x| x.1);
    let mut pg = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some((comm, t)) = stat(&e.path().join("stat"))
            && comm == "postgres"
        {
            pg.insert(e.file_name().to_string_lossy().to_string(), t);
        }
    }
    (me, pg)
}

async fn run(url: String) {
    let pool = store::connect(&url, 16).await.expect("connect");
    let (users, items) = support::load_sample(&pool).await;
    let base = support::serve_app(AppState::new(pool.clone(), AppConfig::default())).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.post(url).json(&body).send().await.expect("post");
            let s = r.status();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            assert!(s.is_success(), "{s}: {b}");
            b
        }
    };
    let v = post(
        "/v1/blends/versions",
        json!({"weights": {"llm": 1, "incoming": 1, "popularity": 1}}),
    )
    .await;
    let treatment = v["version"].as_i64().expect("version") as i32;
    let e = post(
        "/v1/experiments",
        json!({"name": "blend", "control": 1, "treatment": treatment, "treatment_share": 0.5,
               "settings": {"min_users": 10000000, "max_users": 10000000, "srm_alpha": 0,
                            "guardrails": {"min_requests": 10000000}}}),
    )
    .await;
    let id: uuid::Uuid = e["id"].as_str().expect("id").parse().expect("uuid");
    let arms = (1, treatment);
    let election = Election::spawn(pool.clone(), LeaderOptions::default());
    let sizes: Vec<usize> = flag("--sizes")
        .unwrap_or_else(|| "10000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let idle_secs: u64 = flag("--idle-secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    println!(
        "look cost vs logged requests: blend experiment that never decides, Amazon Games sample ({} users, {} items), 20 candidates per rerank, a click on ~1 in 7",
        users.len(),
        items.len()
    );
    println!(
        "{:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>10} | {:>8} {:>8} | {:>7} {:>7}",
        "logged",
        "GET ms",
        "pass ms",
        "GET+5s ms",
        "pass+5s",
        "before ms",
        "agp CPU%",
        "pg CPU%",
        "B/req",
        "B/fb"
    );
    let mut t = Traffic {
        users,
        items,
        written: 0,
        seed: 0x0123_4567_89AB_CDEF,
    };
    let row = |pool: PgPool| async move {
        experiments::get(&pool, "default", id)
            .await
            .expect("get")
            .expect("experiment")
    };
    for size in sizes {
        let load = Instant::now();
        while (t.written as f64) < size as f64 * 0.999 {
            let n = size.saturating_sub(t.written).clamp(1, 50_000);
            write(&pool, &mut t, n, Utc::now(), arms).await;
        }
        let loaded_in = load.elapsed();
        let loaded_at = Utc::now();
        // The leader catches up (it folds every 5 s) and vacuums the inbox (after large folds,
        // at most once a minute; or autovacuum does): the state a long-running service is in.
        let settle = Instant::now();
        loop {
            let pending = experiment_stats::pending(&pool, id).await.expect("pending");
            let vacuumed: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT greatest(last_vacuum, last_autovacuum) FROM pg_stat_user_tables WHERE relname = 'experiment_inbox'",
            )
            .fetch_one(&pool)
            .await
            .expect("vacuum time");
            if pending == 0 && vacuumed.is_some_and(|v| v > loaded_at) {
                break;
            }
            if settle.elapsed() > Duration::from_secs(150) {
                println!("  (the inbox was not vacuumed within 150 s of the load)");
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let settled_in = settle.elapsed();
        let get = || async {
            let started = Instant::now();
            let r = http
                .get(format!("{base}/v1/experiments/{id}"))
                .send()
                .await
                .expect("get");
            assert!(r.status().is_success());
            started.elapsed().as_secs_f64() * 1e3
        };
        let pass = || async {
            let started = Instant::now();
            looker::look_all(&pool).await;
            started.elapsed().as_secs_f64() * 1e3
        };
        let mut gets = Vec::new();
        let mut passes = Vec::new();
        for _ in 0..20 {
            gets.push(get().await);
            passes.push(pass().await);
        }
        // The look before folding: the whole log since the start, reduced.
        let e = row(pool.clone()).await;
        let started = Instant::now();
        let observed = experiments::observed_full(&pool, "default", &e)
            .await
            .expect("observed");
        let (tr, co): (Vec<_>, Vec<_>) = observed.iter().partition(|o| o.treatment);
        let c = experiment::arm_metrics(e.control, &co, e.settings.k);
        let tm = experiment::arm_metrics(e.treatment, &tr, e.settings.k);
        let _ = experiment::look(&c, &tm, &e.plan());
        let before_ms = started.elapsed().as_secs_f64() * 1e3;
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM rerank_requests")
            .fetch_one(&pool)
            .await
            .expect("count");
        let fb: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback")
            .fetch_one(&pool)
            .await
            .expect("count");
        let bytes = partitions::table_bytes(&pool, "rerank_requests")
            .await
            .expect("bytes");
        let fb_bytes = partitions::table_bytes(&pool, "feedback")
            .await
            .expect("bytes");
        // With 5 s of traffic at 1,000 reranks/s pending (written, not yet folded); the
        // leader in this process folds too, as it would.
        let mut gets_pending = Vec::new();
        let mut passes_pending = Vec::new();
        for i in 0..6 {
            write(&pool, &mut t, 5_000, Utc::now(), arms).await;
            if i % 2 == 0 {
                gets_pending.push(get().await);
            } else {
                passes_pending.push(pass().await);
            }
        }
        while experiment_stats::pending(&pool, id).await.expect("pending") > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Idle: the leader passes every 5 s, nothing else.
        let (me0, pg0) = cpu_seconds();
        let idle = Instant::now();
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let (me1, pg1) = cpu_seconds();
        let secs = idle.elapsed().as_secs_f64();
        println!(
            "{:>9} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>10.0} | {:>8.2} {:>8.2} | {:>7} {:>7}   (loaded in {:.0} s, settled in {:.0} s)",
            logged,
            median(gets),
            median(passes),
            median(gets_pending),
            median(passes_pending),
            before_ms,
            100.0 * (me1 - me0) / secs,
            100.0
                * pg1
                    .iter()
                    .map(|(pid, t)| t - pg0.get(pid).copied().unwrap_or(0.0))
                    .sum::<f64>()
                / secs,
            bytes / logged.max(1),
            fb_bytes / fb.max(1),
            loaded_in.as_secs_f64(),
            settled_in.as_secs_f64()
        );
    }
    let looks = row(pool.clone()).await;
    println!(
        "experiment still running after {} looks (status {}); arms: {}",
        looks.looks,
        looks.status,
        looks
            .result
            .map(|r| format!(
                "{} / {} requests",
                r["control"]["requests"], r["treatment"]["requests"]
            ))
            .unwrap_or_default()
    );
    election.stop().await;

    // Retention: a day 31 days old, then the pass that keeps 30 days.
    let old = Utc::now() - chrono::Duration::days(31);
    partitions::ensure(&pool, old.date_naive(), old.date_naive())
        .await
        .expect("partition");
    write(&pool, &mut t, 100_000, old, arms).await;
    let before = partitions::table_bytes(&pool, "rerank_requests")
        .await
        .expect("bytes");
    let rows_before: i64 = sqlx::query_scalar("SELECT count(*) FROM rerank_requests")
        .fetch_one(&pool)
        .await
        .expect("count");
    let started = Instant::now();
    let m = partitions::maintain(&pool, Utc::now().date_naive(), 30)
        .await
        .expect("maintain");
    let took = started.elapsed();
    let after = partitions::table_bytes(&pool, "rerank_requests")
        .await
        .expect("bytes");
    let rows_after: i64 = sqlx::query_scalar("SELECT count(*) FROM rerank_requests")
        .fetch_one(&pool)
        .await
        .expect("count");
    println!(
        "retention (30 days): dropped {:?} in {} ms; rerank_requests {} rows / {:.1} MB -> {} rows / {:.1} MB",
        m.dropped,
        took.as_millis(),
        rows_before,
        before as f64 / 1e6,
        rows_after,
        after as f64 / 1e6
    );
}
