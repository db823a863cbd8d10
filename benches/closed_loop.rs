//! The closed loop on Amazon Games (`cargo bench --bench closed_loop`): the app on real
//! Postgres (throwaway embedded cluster) with the whole Amazon Games data set, the replay
//! simulator sending real reranks and clicks, and the test LLM scripted so that profiles from a
//! GOOD `p_gen` make the ranking put the user's real next item first more often than a plain
//! one (with probability q, else a random order).
//!
//! Prints:
//! 1. 20 seeded A/A experiments (two plain versions, q = 0.2 both): how many promote, keep the
//!    control or end inconclusive within the budget, at alpha 0.05;
//! 2. 20 experiments with a treatment whose click-through is ~20% higher (q = 0.2 vs 0.274):
//!    the share that promote within the budget, and the requests each decision took;
//! 3. the loop end to end: production traffic -> logged cases -> autopilot optimization on
//!    logged data -> experiment -> promote, then the worse version as treatment -> the
//!    control stays; requests each step took.
//!
//! `AGP_BENCH_DATA` points at another RecBole folder; `AGP_BENCH_RUNS` changes the 20 runs.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::import::Dataset;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::llm::{LlmClient, Role};
use agp_rerank::sim::{self, ClickModel, Lists, SimOptions};
use agp_rerank::store;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Requests per experiment before it is called inconclusive.
const BUDGET: usize = 6000;
/// Requests between looks.
const CHUNK: usize = 300;

fn main() {
    support::on_embedded_pg("loop", run);
}

/// What the scripted LLM knows: each user's history (the titles the profile is written from,
/// hashed) -> their real next title, and the probability of ranking it first for plain and
/// GOOD profiles (in millionths).
struct Oracle {
    next: HashMap<u64, String>,
    q_plain: AtomicU64,
    q_good: AtomicU64,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Oracle {
    fn set(&self, plain: f64, good: f64) {
        self.q_plain.store((plain * 1e6) as u64, Ordering::SeqCst);
        self.q_good.store((good * 1e6) as u64, Ordering::SeqCst);
    }

    fn reply(&self, s: &Seen) -> Reply {
        let prompt = s.last_user();
        match s.role() {
            Some(Role::Profile) => {
                let history: Vec<&str> = prompt
                    .lines()
                    .filter_map(|l| l.split_once(". "))
                    .filter(|(n, _)| n.parse::<u32>().is_ok())
                    .map(|(_, t)| t)
                    .collect();
                let last = key(&history);
                let marker = if prompt.contains("GOOD") {
                    "GOOD"
                } else {
                    "plain"
                };
                Reply::text(format!("{marker} profile. LAST={last}"))
            }
            Some(Role::Rank) => {
                let titles: Vec<&str> = prompt
                    .lines()
                    .filter(|l| l.starts_with('['))
                    .map(|l| l.split_once("] ").map(|(_, t)| t).unwrap_or(""))
                    .collect();
                let last: u64 = prompt
                    .split("LAST=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(0);
                let q = if prompt.contains("GOOD profile") {
                    self.q_good.load(Ordering::SeqCst)
                } else {
                    self.q_plain.load(Ordering::SeqCst)
                } as f64
                    / 1e6;
                let mut order: Vec<usize> = (0..titles.len()).collect();
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                order.shuffle(&mut *rng);
                if rng.random::<f64>() < q
                    && let Some(target) = self.next.get(&last)
                    && let Some(t) = titles.iter().position(|x| x == target)
                {
                    order.retain(|&i| i != t);
                    order.insert(0, t);
                }
                Reply::json(json!({"ranking": order.iter().map(|i| i + 1).collect::<Vec<_>>()}))
            }
            Some(Role::Optimize) => {
                Reply::text("GOOD: describe this user's taste from these items:\n{{history}}")
            }
            _ => Reply::text("The profile missed which series the user follows."),
        }
    }
}

/// The key of a history: a hash of its titles (whitespace flattened), in order.
fn key(titles: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in titles {
        t.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .hash(&mut h);
    }
    h.finish()
}

struct Bench {
    http: reqwest::Client,
    base: String,
    data: Dataset,
    pool: sqlx::PgPool,
    llm: LlmClient,
    seed: AtomicU64,
}

impl Bench {
    async fn call(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("send").json().await.expect("json")
    }

    async fn simulate(&self, requests: usize) -> sim::SimReport {
        let o = SimOptions {
            url: self.base.clone(),
            key: None,
            requests,
            users: requests,
            candidates: 20,
            lists: Lists::Llmrank,
            history_len: 5,
            click: ClickModel::default(),
            seed: self.seed.fetch_add(1, Ordering::SeqCst),
            concurrency: 8,
            kind: "click".into(),
        };
        sim::run(&self.data, &o).await.expect("simulate")
    }

    /// Runs an experiment to its decision or the budget: (status, requests, CTR control, CTR treatment).
    async fn experiment(&self, control: i64, treatment: i64) -> (String, usize, f64, f64) {
        let e = self
            .call(
                reqwest::Method::POST,
                "/v1/experiments",
                Some(json!({"control": control, "treatment": treatment, "treatment_share": 0.5})),
            )
            .await;
        let id = e["id"].as_str().expect("experiment id").to_string();
        let mut sent = 0;
        loop {
            self.simulate(CHUNK).await;
            sent += CHUNK;
            let e = self
                .call(reqwest::Method::GET, &format!("/v1/experiments/{id}"), None)
                .await;
            let ctr = |arm: &str| {
                e["result"][arm]["user_click_through"]
                    .as_f64()
                    .unwrap_or(0.0)
            };
            let status = e["status"].as_str().unwrap_or("?").to_string();
            if status != "running" {
                return (status, sent, ctr("control"), ctr("treatment"));
            }
            if sent >= BUDGET {
                self.call(
                    reqwest::Method::POST,
                    &format!("/v1/experiments/{id}/stop"),
                    Some(json!({})),
                )
                .await;
                return (
                    "inconclusive within budget".into(),
                    sent,
                    ctr("control"),
                    ctr("treatment"),
                );
            }
        }
    }

    async fn set_production(&self, version: i64) {
        self.call(
            reqwest::Method::PUT,
            "/v1/prompts/p_gen/labels/production",
            Some(json!({"version": version})),
        )
        .await;
    }
}

async fn run(url: String) {
    let pool = store::connect(&url, 16).await.expect("connect");
    agp_rerank::app::prepare_database(&pool)
        .await
        .expect("migrate");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = std::env::var("AGP_BENCH_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/data/amazon-games"));
    let data = agp_rerank::import::read(
        agp_rerank::import::Format::Recbole,
        std::slice::from_ref(&path),
    )
    .expect("read Amazon Games");
    store::import::write(&pool, "default", &data.items, &data.interactions, |_| {})
        .await
        .expect("import");
    let titles: HashMap<&str, &str> = data
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.title.as_str()))
        .collect();
    let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    // The simulator sends the last 5 history items; the profile is written from them.
    let next: HashMap<u64, String> = sim::users(&data)
        .into_iter()
        .filter_map(|u| {
            let recent = &u.history[u.history.len().saturating_sub(5)..];
            let names: Vec<&str> = recent
                .iter()
                .map(|i| titles.get(i.as_str()).copied())
                .collect::<Option<_>>()?;
            Some((key(&names), flat(titles.get(u.target.as_str())?)))
        })
        .collect();
    println!(
        "data: {} ({} items, {} interactions, {} simulated users)",
        path.display(),
        data.items.len(),
        data.interactions.len(),
        sim::users(&data).len()
    );
    let oracle = Arc::new(Oracle {
        next,
        q_plain: AtomicU64::new(0),
        q_good: AtomicU64::new(0),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(7)),
    });
    let o = oracle.clone();
    let server = TestLlm::start(move |s| o.reply(s)).await;
    let mut settings = LlmSettings::single(server.base_url.clone(), "bench");
    settings.concurrency = 64;
    let llm = LlmClient::new(settings, Some(pool.clone()));
    let mut config = AppConfig::default();
    config.rerank.summaries = false;
    let base = support::serve_app(AppState::with_llm(pool.clone(), config, llm.clone())).await;
    let b = Bench {
        http: reqwest::Client::new(),
        base,
        data,
        pool,
        llm,
        seed: AtomicU64::new(100),
    };
    // The LLM alone orders; two plain versions and a GOOD one.
    let v = b
        .call(
            reqwest::Method::POST,
            "/v1/blends/versions",
            Some(json!({"weights": {"llm": 1}})),
        )
        .await;
    b.call(
        reqwest::Method::PUT,
        "/v1/blends/labels/production",
        Some(json!({"version": v["version"]})),
    )
    .await;
    for t in [
        "plain A:\n{{history}}",
        "plain B:\n{{history}}",
        "GOOD:\n{{history}}",
    ] {
        b.call(
            reqwest::Method::POST,
            "/v1/prompts/p_gen/versions",
            Some(json!({"template": t})),
        )
        .await;
    }
    let runs: usize = std::env::var("AGP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);

    // 1. A/A.
    oracle.set(0.2, 0.2);
    let mut tally: HashMap<String, usize> = HashMap::new();
    let mut ctrs = Vec::new();
    for _ in 0..runs {
        let (status, _, c, t) = b.experiment(2, 3).await;
        *tally.entry(status).or_default() += 1;
        ctrs.push((c, t));
    }
    println!(
        "\n1. {runs} A/A experiments (v2 vs v3, both plain, q = 0.2), alpha 0.05, budget {BUDGET} requests, a look every {CHUNK}:"
    );
    let mut keys: Vec<_> = tally.iter().collect();
    keys.sort();
    for (k, n) in keys {
        println!("   {k}: {n}");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "   mean per-user click-through: control {:.3}, treatment {:.3}",
        mean(&ctrs.iter().map(|c| c.0).collect::<Vec<_>>()),
        mean(&ctrs.iter().map(|c| c.1).collect::<Vec<_>>())
    );

    // 2. A 20% lift.
    oracle.set(0.2, 0.274);
    let mut tally: HashMap<String, usize> = HashMap::new();
    let (mut used, mut ctrs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (status, sent, c, t) = b.experiment(2, 4).await;
        if status == "promoted" {
            used.push(sent);
        }
        *tally.entry(status).or_default() += 1;
        ctrs.push((c, t));
    }
    let (c, t) = (
        mean(&ctrs.iter().map(|c| c.0).collect::<Vec<_>>()),
        mean(&ctrs.iter().map(|c| c.1).collect::<Vec<_>>()),
    );
    println!(
        "\n2. {runs} experiments, v2 (q = 0.2) vs GOOD v4 (q = 0.274): per-user click-through {c:.3} vs {t:.3} ({:+.0}% relative)",
        100.0 * (t / c - 1.0)
    );
    let mut keys: Vec<_> = tally.iter().collect();
    keys.sort();
    for (k, n) in keys {
        println!("   {k}: {n}");
    }
    used.sort();
    if !used.is_empty() {
        println!(
            "   requests to promote: median {}, min {}, max {}",
            used[used.len() / 2],
            used[0],
            used[used.len() - 1]
        );
    }

    // 3. The loop end to end.
    loop_end_to_end(&b, &oracle).await;
}

async fn loop_end_to_end(b: &Bench, oracle: &Oracle) {
    oracle.set(0.2, 0.5);
    b.set_production(2).await;
    let settings = json!({"min_new_positives": 600, "treatment_share": 0.5,
        "optimization": {"train_users": 100, "validation_users": 100, "test_users": 50, "batch_size": 10,
                         "verify_steps": 1, "summaries": false, "positive_kinds": ["click"]}});
    b.call(
        reqwest::Method::PUT,
        "/v1/autopilot",
        Some(json!({"enabled": true, "settings": settings})),
    )
    .await;
    let tick = || agp_rerank::jobs::autopilot::tick(&b.pool, "default");
    let mut sent = 0;
    let status = |ap: &Value| ap["runs"][0]["status"].as_str().unwrap_or("").to_string();
    let get_ap = || b.call(reqwest::Method::GET, "/v1/autopilot", None);
    let mut ap = get_ap().await;
    while status(&ap) != "optimizing" {
        b.simulate(CHUNK).await;
        sent += CHUNK;
        tick().await.expect("tick");
        ap = get_ap().await;
        assert!(sent < 20_000, "the autopilot never started: {ap}");
    }
    println!(
        "\n3. the loop on production traffic (plain v2 serving, q = 0.2; GOOD q = 0.5):\n   {sent} requests until the autopilot started: {}",
        ap["runs"][0]["reason"].as_str().unwrap_or("")
    );
    let t = std::time::Instant::now();
    support::run_queued_jobs(&b.pool, &b.llm, false).await;
    tick().await.expect("tick");
    ap = get_ap().await;
    println!(
        "   optimization on logged data in {:.1} s -> {}: {}",
        t.elapsed().as_secs_f64(),
        status(&ap),
        ap["runs"][0]["reason"].as_str().unwrap_or("")
    );
    let Some(exp) = ap["runs"][0]["experiment_id"].as_str().map(str::to_string) else {
        return;
    };
    let mut sent = 0;
    let e = loop {
        b.simulate(CHUNK).await;
        sent += CHUNK;
        let e = b
            .call(
                reqwest::Method::GET,
                &format!("/v1/experiments/{exp}"),
                None,
            )
            .await;
        if e["status"] != "running" || sent >= 20_000 {
            break e;
        }
    };
    tick().await.expect("tick");
    println!(
        "   experiment: {} after {sent} requests ({}); production p_gen is now v{}",
        e["status"],
        e["reason"].as_str().unwrap_or(""),
        production(b).await
    );
    b.call(
        reqwest::Method::PUT,
        "/v1/autopilot",
        Some(json!({"enabled": false})),
    )
    .await;
    // The worse version as treatment against the promoted one.
    let good = production(b).await;
    let (status, sent, c, t) = b.experiment(good, 2).await;
    println!(
        "   worse version as treatment (v2 vs production v{good}): {status} after {sent} requests \
         (per-user click-through {t:.3} vs {c:.3}); production p_gen is v{}",
        production(b).await
    );
}

async fn production(b: &Bench) -> i64 {
    let list = b.call(reqwest::Method::GET, "/v1/prompts", None).await;
    let list = if list.is_array() {
        list
    } else {
        list["prompts"].clone()
    };
    list.as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "p_gen"))
        .and_then(|p| {
            p["labels"]
                .as_array()?
                .iter()
                .find(|l| l["label"] == "production")
                .cloned()
        })
        .and_then(|l| l["version"].as_i64())
        .unwrap_or(0)
}
