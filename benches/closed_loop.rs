//! The closed loop on Amazon Games (`cargo bench --bench closed_loop`): the app on real
//! Postgres (throwaway embedded cluster) with the whole Amazon Games data set, the replay
//! simulator sending real reranks and clicks (position-based examination), and the test LLM
//! scripted so that a GOOD `p_gen`'s profiles make the ranking place the user's real next item
//! higher than a plain one's (`Model`: both keep the incoming order and move the real item up,
//! GOOD by more places; or, as a contrast, the real item first with probability q, else a
//! random order). The scripted
//! upstream finds the items by id: it maps every candidate and history line of its prompts
//! back to the item through the service's own rendering (`item_text`, `candidate_lines`,
//! `history_block`), so catalogs whose items carry text besides a title work too.
//!
//! Prints, for both designs (`ab` and `interleave`, treatment share 0.5, the same traffic
//! and budget):
//! 1. A/A: 20 seeded runs (two plain versions): how many promote, keep the control, end
//!    inconclusive or void;
//! 2. lifts of +26%, +10% and +5% relative click-through (the GOOD shift solved from the
//!    click model): the share decided within the budget and the requests each decision took
//!    (median, max); then +26% with independent rankings, as a contrast;
//! 3. the sequential sample-ratio check on a deliberately broken split (the label moved to
//!    60/40 under a 50/50 experiment): requests to the void;
//! 4. the loop end to end: production traffic -> logged cases -> autopilot optimization on
//!    logged data -> experiment -> promote, then the worse version as treatment -> the
//!    control stays; requests each step took.
//!
//! `AGP_BENCH_DATA` points at another RecBole folder; `AGP_BENCH_RUNS` changes the 20 runs;
//! `AGP_BENCH_BUDGET` the 10,000 requests per run; `AGP_BENCH_LIFTS` the lifts (e.g. `26,5`);
//! `AGP_BENCH_LOOP=0` skips part 4; `AGP_BENCH_SETTINGS` (JSON) sets the experiments' settings.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use agp_rerank::agp::profile::history_block;
use agp_rerank::agp::rank::{DEFAULT_ITEM_TOKENS, RankMode, candidate_lines};
use agp_rerank::agp::summarize::item_text;
use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::import::Dataset;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::llm::{LlmClient, Role};
use agp_rerank::simulator::{self, ClickModel, Lists, SimOptions};
use agp_rerank::store;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Requests between looks.
const CHUNK: usize = 100;
/// Candidates per list.
const CANDIDATES: usize = 20;

fn main() {
    support::on_embedded_pg("loop", run);
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How the scripted rankings differ between a plain and a GOOD profile.
#[derive(Debug, Clone, Copy)]
enum Model {
    /// Correlated rankings: both keep the incoming order (the simulator's shuffle), and move
    /// the user's real next item up by `plain` or `good` places (a fractional part is the
    /// probability of one place more). Two prompts of one ranker mostly agree, as real ones do.
    Shift { plain: f64, good: f64 },
    /// Independent rankings: the real item first with probability `plain` or `good`, else a
    /// random order (the bench's earlier model; a contrast).
    First { plain: f64, good: f64 },
}

/// What the scripted LLM knows: the item behind every rendered candidate line and history
/// line, each user's recent history (ids) -> their real next item, and the ranking model.
struct Oracle {
    /// A candidate line's text (after `[n] `) -> item id.
    by_line: HashMap<String, String>,
    /// A history line's text (after `n. `) -> item id.
    by_history_line: HashMap<String, String>,
    /// Hash of the recent history ids -> the real next item id.
    next: HashMap<u64, String>,
    model: Mutex<Model>,
    rng: Mutex<rand::rngs::StdRng>,
}

impl Oracle {
    fn set(&self, model: Model) {
        *self.model.lock().unwrap_or_else(|p| p.into_inner()) = model;
    }

    /// The order of `n` candidates (the target at `target` if known) for a GOOD or plain profile.
    fn order(&self, n: usize, target: Option<usize>, good: bool) -> Vec<usize> {
        let model = *self.model.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut order: Vec<usize> = (0..n).collect();
        match model {
            Model::First { plain, good: g } => {
                order.shuffle(&mut *rng);
                let q = if good { g } else { plain };
                if let Some(t) = target
                    && rng.random::<f64>() < q
                {
                    order.retain(|&i| i != t);
                    order.insert(0, t);
                }
            }
            Model::Shift { plain, good: g } => {
                let s = if good { g } else { plain };
                let places = s.floor() as usize + usize::from(rng.random::<f64>() < s.fract());
                if let Some(t) = target {
                    order.retain(|&i| i != t);
                    order.insert(t.saturating_sub(places), t);
                }
            }
        }
        order
    }

    fn reply(&self, s: &Seen) -> Reply {
        let prompt = s.last_user();
        match s.role() {
            Some(Role::Profile) => {
                let history: Vec<&str> = prompt
                    .lines()
                    .filter_map(|l| l.split_once(". "))
                    .filter(|(n, _)| n.parse::<u32>().is_ok())
                    .filter_map(|(_, t)| self.by_history_line.get(t).map(String::as_str))
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
                let ids: Vec<Option<&String>> = prompt
                    .lines()
                    .filter(|l| l.starts_with('['))
                    .map(|l| l.split_once("] ").and_then(|(_, t)| self.by_line.get(t)))
                    .collect();
                let last: u64 = prompt
                    .split("LAST=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(0);
                let target = self
                    .next
                    .get(&last)
                    .and_then(|t| ids.iter().position(|x| *x == Some(t)));
                let order = self.order(ids.len(), target, prompt.contains("GOOD profile"));
                Reply::json(json!({"ranking": order.iter().map(|i| i + 1).collect::<Vec<_>>()}))
            }
            Some(Role::Optimize) => {
                Reply::text("GOOD: describe this user's taste from these items:\n{{history}}")
            }
            _ => Reply::text("The profile missed which series the user follows."),
        }
    }
}

/// The key of a history: a hash of its item ids, in order.
fn key(ids: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ids.hash(&mut h);
    h.finish()
}

/// The oracle of a data set: every item's lines as the service renders them.
fn oracle(data: &Dataset) -> Oracle {
    let mut by_line = HashMap::new();
    let mut by_history_line = HashMap::new();
    for it in &data.items {
        let text = item_text(&it.title, it.text.as_deref(), it.attributes.as_ref());
        let line = candidate_lines(&[&text], DEFAULT_ITEM_TOKENS, RankMode::Generate);
        if let Some((_, t)) = line.trim_end_matches('\n').split_once("] ") {
            by_line
                .entry(t.to_string())
                .or_insert_with(|| it.id.clone());
        }
        let h = history_block(&[&text]);
        if let Some((_, t)) = h.trim_end_matches('\n').split_once(". ") {
            by_history_line
                .entry(t.to_string())
                .or_insert_with(|| it.id.clone());
        }
    }
    // The simulator sends the last 5 history items; the profile is written from them.
    let next = simulator::users(data)
        .into_iter()
        .map(|u| {
            let recent: Vec<&str> = u.history[u.history.len().saturating_sub(5)..]
                .iter()
                .map(String::as_str)
                .collect();
            (key(&recent), u.target)
        })
        .collect();
    Oracle {
        by_line,
        by_history_line,
        next,
        model: Mutex::new(Model::First {
            plain: 0.0,
            good: 0.0,
        }),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(7)),
    }
}

/// Mean examination of a uniformly placed item in a list of `CANDIDATES` moved up by
/// `places` (whole places).
fn shifted(places: usize) -> f64 {
    let m = ClickModel::default();
    (0..CANDIDATES)
        .map(|p| m.examined(p.saturating_sub(places)))
        .sum::<f64>()
        / CANDIDATES as f64
}

/// The click-through a model gives a plain (`good` false) or GOOD ranking, under the default
/// click model (the real item is the only one clicked).
fn click_through(model: Model, good: bool) -> f64 {
    match model {
        Model::First { plain, good: g } => {
            let q = if good { g } else { plain };
            q + (1.0 - q) * shifted(0)
        }
        Model::Shift { plain, good: g } => {
            let s = if good { g } else { plain };
            let (whole, frac) = (s.floor() as usize, s.fract());
            (1.0 - frac) * shifted(whole) + frac * shifted(whole + 1)
        }
    }
}

/// The model whose GOOD ranking lifts the plain one's click-through by `lift` (relative).
fn with_lift(plain: Model, lift: f64) -> Model {
    let target = click_through(plain, false) * (1.0 + lift);
    let (mut lo, mut hi) = (0.0, CANDIDATES as f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        let m = match plain {
            Model::First { plain, .. } => Model::First {
                plain,
                good: mid.min(1.0),
            },
            Model::Shift { plain, .. } => Model::Shift { plain, good: mid },
        };
        if click_through(m, true) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    match plain {
        Model::First { plain, .. } => Model::First {
            plain,
            good: hi.min(1.0),
        },
        Model::Shift { plain, .. } => Model::Shift { plain, good: hi },
    }
}

/// "median M, max X" of some request counts ("none" when empty).
fn median_max(mut v: Vec<usize>) -> String {
    v.sort_unstable();
    match (v.get(v.len() / 2), v.last()) {
        (Some(m), Some(x)) => format!("median {m}, max {x}"),
        _ => "none".into(),
    }
}

/// Runs `runs` experiments of each design with the rankings of `m`; prints them.
async fn both_designs(
    b: &Bench,
    oracle: &Oracle,
    title: &str,
    m: Model,
    treatment: i64,
    runs: usize,
) -> Vec<Run> {
    oracle.set(m);
    println!(
        "   {title} ({m:?}: click-through {:.3} vs {:.3})",
        click_through(m, true),
        click_through(m, false)
    );
    let mut out = b.series("ab", treatment, runs).await;
    out.extend(b.series("interleave", treatment, runs).await);
    out
}

struct Bench {
    http: reqwest::Client,
    base: String,
    data: Dataset,
    pool: sqlx::PgPool,
    llm: LlmClient,
    seed: AtomicU64,
    budget: usize,
    /// Experiment settings (`AGP_BENCH_SETTINGS`, JSON; default: the defaults).
    settings: Value,
}

/// How one experiment ended.
struct Run {
    status: String,
    /// Requests sent (both designs: all traffic, share 0.5).
    requests: usize,
    /// Requests that took part in the comparison: both arms' (ab), the interleaved ones
    /// (interleave; the others saw the control alone).
    compared: usize,
}

/// The requests an experiment compared, from its figures.
fn compared(e: &Value) -> usize {
    let n = |arm: &str| e["result"][arm]["requests"].as_u64().unwrap_or(0) as usize;
    if e["design"] == "interleave" {
        n("treatment")
    } else {
        n("control") + n("treatment")
    }
}

impl Bench {
    async fn call(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("send").json().await.expect("json")
    }

    async fn simulate(&self, requests: usize) -> simulator::SimReport {
        let o = SimOptions {
            url: self.base.clone(),
            key: None,
            requests,
            users: requests,
            candidates: CANDIDATES,
            lists: Lists::Llmrank,
            history_len: 5,
            click: ClickModel::default(),
            seed: self.seed.fetch_add(1, Ordering::SeqCst),
            concurrency: 8,
            kind: "click".into(),
        };
        simulator::run(&self.data, &o).await.expect("simulate")
    }

    /// Runs an experiment to its decision or the budget. `break_split`: move the label to
    /// 60/40 right after the start (a broken split against the 50/50 plan).
    async fn experiment(
        &self,
        design: &str,
        control: i64,
        treatment: i64,
        break_split: bool,
    ) -> Run {
        let e = self
            .call(
                reqwest::Method::POST,
                "/v1/experiments",
                Some(
                    json!({"design": design, "control": control, "treatment": treatment,
                            "treatment_share": 0.5, "settings": self.settings}),
                ),
            )
            .await;
        let id = e["id"].as_str().expect("experiment id").to_string();
        if break_split {
            self.call(
                reqwest::Method::PUT,
                "/v1/prompts/p_gen/labels/production",
                Some(json!({"split": [{"version": control, "weight": 0.6},
                                      {"version": treatment, "weight": 0.4}]})),
            )
            .await;
        }
        let mut sent = 0;
        loop {
            self.simulate(CHUNK).await;
            sent += CHUNK;
            let e = self
                .call(reqwest::Method::GET, &format!("/v1/experiments/{id}"), None)
                .await;
            let status = e["status"].as_str().unwrap_or("?").to_string();
            if status != "running" {
                return Run {
                    status,
                    requests: sent,
                    compared: compared(&e),
                };
            }
            if sent >= self.budget {
                self.call(
                    reqwest::Method::POST,
                    &format!("/v1/experiments/{id}/stop"),
                    Some(json!({})),
                )
                .await;
                return Run {
                    status: "inconclusive within budget".into(),
                    requests: sent,
                    compared: compared(&e),
                };
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

    /// `runs` experiments of one design; prints the outcomes and the requests to a decision.
    async fn series(&self, design: &str, treatment: i64, runs: usize) -> Vec<Run> {
        let mut out = Vec::new();
        for _ in 0..runs {
            self.set_production(2).await;
            out.push(self.experiment(design, 2, treatment, false).await);
        }
        let mut tally: HashMap<&str, usize> = HashMap::new();
        for r in &out {
            *tally.entry(r.status.as_str()).or_default() += 1;
        }
        let mut keys: Vec<_> = tally.into_iter().collect();
        keys.sort();
        let decided: Vec<&Run> = out
            .iter()
            .filter(|r| matches!(r.status.as_str(), "promoted" | "kept_control"))
            .collect();
        println!(
            "   {design:>10}: {} | decided {}/{runs} | requests to a decision: {} (compared: {})",
            keys.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            decided.len(),
            median_max(decided.iter().map(|r| r.requests).collect()),
            median_max(decided.iter().map(|r| r.compared).collect())
        );
        out
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
    .expect("read the data set");
    store::import::write(&pool, "default", &data.items, &data.interactions, |_| {})
        .await
        .expect("import");
    println!(
        "data: {} ({} items, {} interactions, {} simulated users)",
        path.display(),
        data.items.len(),
        data.interactions.len(),
        simulator::users(&data).len()
    );
    let oracle = Arc::new(oracle(&data));
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
        budget: env_usize("AGP_BENCH_BUDGET", 10_000),
        settings: std::env::var("AGP_BENCH_SETTINGS")
            .ok()
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_else(|| json!({})),
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
    let runs = env_usize("AGP_BENCH_RUNS", 20);
    // Plain rankings move the real item up 3 or 4 places (even odds): two plain versions give
    // different lists of equal quality, so an A/A interleaved test has credited clicks.
    let plain = Model::Shift {
        plain: 3.5,
        good: 3.5,
    };
    println!(
        "\nTreatment share 0.5, budget {} requests, a look every {CHUNK}, alpha 0.05, default settings \
         (min_users 100: per arm, interleave: interleaved users, and 30 with a preference); settings {}.\n\
         Rankings: the incoming order with the real item moved up 3.5 places (plain: click-through {:.3}); \
         a GOOD profile moves it further.",
        b.budget,
        b.settings,
        click_through(plain, false)
    );
    let mut all = Vec::new();

    // 1. A/A.
    println!("\n1. A/A ({runs} runs per design, v2 vs v3, both plain):");
    all.extend(both_designs(&b, &oracle, "A/A", plain, 3, runs).await);

    // 2. Lifts.
    let lifts: Vec<f64> = std::env::var("AGP_BENCH_LIFTS")
        .unwrap_or_else(|_| "26,10,5".into())
        .split(',')
        .filter_map(|x| x.trim().parse::<f64>().ok())
        .collect();
    println!("\n2. lifts ({runs} runs per design, v2 plain vs GOOD v4):");
    for lift in &lifts {
        let m = with_lift(plain, lift / 100.0);
        all.extend(both_designs(&b, &oracle, &format!("+{lift}%"), m, 4, runs).await);
    }
    // The contrast: independent rankings (the real item first with probability q, else a
    // random order), where most clicks land on items both rankings placed at random.
    if let Some(lift) = lifts.first() {
        let independent = Model::First {
            plain: 0.2,
            good: 0.2,
        };
        let m = with_lift(independent, lift / 100.0);
        let title = format!("independent rankings, +{lift}%");
        all.extend(both_designs(&b, &oracle, &title, m, 4, runs).await);
    }
    let voids = all.iter().filter(|r| r.status == "void").count();
    let total = all.len();
    println!("   sample-ratio voids without an imbalance: {voids} of {total} runs");

    // 3. A broken split.
    oracle.set(plain);
    let mut to_void = Vec::new();
    let broken_runs = runs.min(10);
    for _ in 0..broken_runs {
        b.set_production(2).await;
        let r = b.experiment("ab", 2, 3, true).await;
        if r.status == "void" {
            to_void.push(r.requests);
        }
    }
    println!(
        "\n3. broken split (60/40 served under a 50/50 plan), {broken_runs} runs: {} voided; requests to the void: {}",
        to_void.len(),
        median_max(to_void)
    );
    b.set_production(2).await;

    // 4. The loop end to end.
    if env_usize("AGP_BENCH_LOOP", 1) != 0 {
        loop_end_to_end(&b, &oracle).await;
    }
}

async fn loop_end_to_end(b: &Bench, oracle: &Oracle) {
    oracle.set(Model::First {
        plain: 0.2,
        good: 0.5,
    });
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
    let tick = || agp_rerank::cluster::autopilot::tick(&b.pool, "default");
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
        "\n4. the loop on production traffic (plain v2 serving, q = 0.2; GOOD q = 0.5):\n   {sent} requests until the autopilot started: {}",
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
    let r = b.experiment("ab", good, 2, false).await;
    println!(
        "   worse version as treatment (v2 vs production v{good}): {} after {} requests; production p_gen is v{}",
        r.status,
        r.requests,
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
