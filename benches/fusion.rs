//! The rankers and the tuned fusion on the real Amazon Games data (`cargo bench --bench
//! fusion`; `-- --quick` for fewer users): evaluation jobs as the service runs them, against
//! embedded Postgres and scripted upstreams.
//!
//! 1. llmrank protocol (target + 19 random items), NDCG@10 of random, popularity and item-kNN
//!    for 200, 6,000 and all users as test users: leave-one-out makes popularity independent
//!    of how many users are evaluated.
//!    200 users are a small sample: that row is the mean and spread over 10 seeds.
//! 2. "Never worse": under both protocols, with an upstream that returns the candidates
//!    reversed, one that returns a random order, and one that is informative (an oracle puts
//!    the held-out item first for half the users, a random order for the rest), the fused
//!    method (weights tuned on validation users) against the best non-LLM component.
//! 3. Goodreads: an evaluation with 2,000+ test users (no LLM method, then with one), and the
//!    catalog lookup of every item such an evaluation touches.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use agp_rerank::import::{self, Format};
use agp_rerank::jobs::{self, WorkerOptions};
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::llm::{LlmClient, Role};
use agp_rerank::serving::{RerankSettings, Reranker};
use agp_rerank::store::{self, jobs as jobs_db};
use serde_json::{Value, json};
use sqlx::PgPool;

const REVERSED: u8 = 0;
const RANDOM: u8 = 1;
const INFORMATIVE: u8 = 2;

fn h(s: &str) -> u64 {
    agp_rerank::hash::stable_hash(s)
}

/// A permutation of 0..k seeded by `seed`.
fn shuffled(k: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..k).collect();
    let mut x = seed;
    for i in (1..k).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        idx.swap(i, (x >> 33) as usize % (i + 1));
    }
    idx
}

fn flat(t: &str) -> String {
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The scripted upstream. `oracle` maps a user's recent titles (as the ranking prompt lists
/// them, one per line) to the title of the item held out from that user.
fn script(
    mode: Arc<AtomicU8>,
    oracle: Arc<HashMap<String, String>>,
) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s: &Seen| {
        if s.role() != Some(Role::Rank) {
            return Reply::text("Likes varied games.");
        }
        let prompt = s.last_user();
        let cands: Vec<&str> = prompt
            .lines()
            .filter(|l| l.starts_with('['))
            .map(|l| l.split_once("] ").map_or("", |x| x.1))
            .collect();
        let k = cands.len();
        let order = match mode.load(Ordering::SeqCst) {
            REVERSED => (0..k).rev().collect(),
            RANDOM => shuffled(k, h(&prompt)),
            _ => {
                let recent: Vec<&str> = prompt
                    .lines()
                    .filter_map(|l| {
                        let (n, rest) = l.split_once(". ")?;
                        n.parse::<usize>().ok().map(|_| rest)
                    })
                    .collect();
                let key = recent.join("\n");
                let mut order = shuffled(k, h(&prompt));
                if let Some(target) = oracle.get(&key)
                    && h(&key).is_multiple_of(2)
                    && let Some(t) = cands.iter().position(|c| {
                        !c.is_empty() && target.starts_with(c) && c.len() >= target.len().min(40)
                    })
                {
                    order.retain(|&i| i != t);
                    order.insert(0, t);
                }
                order
            }
        };
        Reply::json(json!({"ranking": order.iter().map(|i| i + 1).collect::<Vec<_>>()}))
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    support::on_embedded_pg("fusion", |url| run(url, quick));
}

struct Bench {
    pool: PgPool,
    llm: LlmClient,
    reranker: Arc<Reranker>,
}

impl Bench {
    /// Runs an evaluation job of the default project to the end; its report and wall time.
    async fn eval(&self, params: Value) -> (Value, f64) {
        self.eval_in("default", params).await
    }

    /// Runs an evaluation job of `project` to the end; its report and wall time.
    async fn eval_in(&self, project: &str, params: Value) -> (Value, f64) {
        let job = jobs_db::enqueue(&self.pool, project, jobs::JobKind::Evaluation, &params)
            .await
            .expect("enqueue");
        let opts = WorkerOptions::new(0);
        let claimed = jobs_db::claim(&self.pool, &opts.id, 600, Some(job.id))
            .await
            .expect("claim")
            .expect("job");
        let t = Instant::now();
        let status = jobs::execute(
            self.pool.clone(),
            self.llm.clone(),
            self.reranker.clone(),
            claimed,
            &opts,
            None,
        )
        .await;
        let wall = t.elapsed().as_secs_f64();
        let row = jobs_db::get(&self.pool, project, job.id, None)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(status, jobs::JobStatus::Succeeded, "{:?}", row.error);
        (row.result.expect("report"), wall)
    }
}

fn method<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["methods"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["method"] == name))
        .unwrap_or(&Value::Null)
}

fn ndcg(report: &Value, name: &str) -> f64 {
    method(report, name)["mean"]["ndcg_10"]
        .as_f64()
        .unwrap_or(f64::NAN)
        * 100.0
}

async fn run(url: String, quick: bool) {
    let pool = store::connect(&url, 16).await.expect("connect");
    agp_rerank::app::prepare_database(&pool)
        .await
        .expect("migrate");
    let games = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/amazon-games");
    let t = Instant::now();
    let data = import::read(Format::Recbole, std::slice::from_ref(&games))
        .expect("read ../shared/data/amazon-games");
    store::import::write(&pool, "default", &data.items, &data.interactions, |_| {})
        .await
        .expect("import");
    store::catalog::set_source(
        &pool,
        "default",
        agp_rerank::store::states::HistoryOrder::Chronological,
        "amazon-games (recbole)",
    )
    .await
    .expect("source");
    let users = oracle(&data);
    let distinct: std::collections::HashSet<&str> = data
        .interactions
        .iter()
        .map(|i| i.user_id.as_str())
        .collect();
    println!(
        "Amazon Games: {} items, {} interactions, {} users; imported in {:.1} s",
        data.items.len(),
        data.interactions.len(),
        distinct.len(),
        t.elapsed().as_secs_f64()
    );

    let mode = Arc::new(AtomicU8::new(REVERSED));
    let server = TestLlm::start(script(mode.clone(), Arc::new(users))).await;
    // One model name per upstream behaviour, so the LLM cache never answers for another.
    let bench = |model: &str| {
        let mut settings = LlmSettings::single(server.base_url.clone(), model);
        settings.concurrency = 16;
        settings.reserved_interactive = 0;
        let llm = LlmClient::new(settings, Some(pool.clone()));
        let reranker = Reranker::new(pool.clone(), llm.clone(), RerankSettings::default());
        Bench {
            pool: pool.clone(),
            llm,
            reranker,
        }
    };
    let b = bench("scripted");

    println!("\n1. llmrank, 20 candidates, NDCG@10 x 100 (seed 7)");
    println!(
        "{:>12} {:>8} {:>10} {:>9} {:>13} {:>7}",
        "test users", "random", "popularity", "item_knn", "item_knn_all", "time"
    );
    let sizes: &[(usize, usize, usize)] = if quick {
        &[(100, 50, 200)]
    } else {
        &[(100, 50, 200), (100, 50, 6000), (0, 0, 100_000)]
    };
    for &(train, val, test) in sizes {
        let seeds: Vec<u64> = if test <= 200 {
            (1..=10).collect()
        } else {
            vec![7]
        };
        let (r, wall) = b
            .eval(json!({"train_users": train, "validation_users": val, "test_users": test, "seeds": seeds,
                         "methods": ["random", "popularity", "item_knn", "item_knn_all"]}))
            .await;
        let n = method(&r, "popularity")["per_seed"][0]["metrics"]["n"].clone();
        let cell = |m: &str| {
            let sd = method(&r, m)["std"]["ndcg_10"].as_f64().unwrap_or(0.0) * 100.0;
            if seeds.len() > 1 {
                format!("{:.1}±{sd:.1}", ndcg(&r, m))
            } else {
                format!("{:.1}", ndcg(&r, m))
            }
        };
        println!(
            "{:>12} {:>8} {:>10} {:>9} {:>13} {:>6.1}s{}",
            n,
            cell("random"),
            cell("popularity"),
            cell("item_knn"),
            cell("item_knn_all"),
            wall,
            if seeds.len() > 1 {
                "  (10 seeds: mean ± sd)"
            } else {
                ""
            }
        );
    }

    println!(
        "\n2. never worse than the best non-LLM component: fused (tuned on validation users) vs its parts, NDCG@10 x 100"
    );
    println!(
        "{:<10} {:<12} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {:>7}  tuned weights",
        "protocol", "upstream", "users", "base", "pop", "knn", "llm", "fused", "Δ best"
    );
    for (protocol, val, test) in [("llmrank", 500, 2000), ("base-topk", 3000, 12000)] {
        let (val, test) = if quick {
            (val / 5, test / 5)
        } else {
            (val, test)
        };
        for (name, m) in [
            ("reversed", REVERSED),
            ("random", RANDOM),
            ("informative", INFORMATIVE),
        ] {
            mode.store(m, Ordering::SeqCst);
            let (r, _) = bench(name)
                .eval(json!({"protocol": protocol, "train_users": 0, "validation_users": val,
                             "test_users": test, "summaries": false,
                             "methods": ["base", "popularity", "item_knn", "llm_no_profile", "fused"]}))
                .await;
            let best = ["base", "popularity", "item_knn"]
                .into_iter()
                .map(|x| ndcg(&r, x))
                .fold(f64::MIN, f64::max);
            let weights = r["data_notes"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .find(|n| n.contains("fused (LLM"))
                })
                .and_then(|n| n.split_once("weights ").map(|x| x.1))
                .and_then(|n| n.split_once(" tuned").map(|x| x.0))
                .unwrap_or("?")
                .to_string();
            println!(
                "{:<10} {:<12} {:>6} {:>6.1} {:>6.1} {:>8.1} {:>8.1} {:>6.1} {:>+7.1}  {}",
                protocol,
                name,
                method(&r, "fused")["per_seed"][0]["metrics"]["n"],
                ndcg(&r, "base"),
                ndcg(&r, "popularity"),
                ndcg(&r, "item_knn"),
                ndcg(&r, "llm_no_profile"),
                ndcg(&r, "fused"),
                ndcg(&r, "fused") - best,
                weights
            );
        }
    }
    mode.store(RANDOM, Ordering::SeqCst);
    goodreads(&bench("random"), quick).await;
}

/// Part 3: Goodreads into its own project, evaluations of 2,000+ test users, item lookups.
async fn goodreads(b: &Bench, quick: bool) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/goodreads");
    let t = Instant::now();
    let data = import::read(Format::Goodreads, std::slice::from_ref(&dir))
        .expect("read ../shared/data/goodreads");
    agp_rerank::app::ensure_project(&b.pool, "goodreads")
        .await
        .expect("project");
    store::import::write(
        &b.pool,
        "goodreads",
        &data.items,
        &data.interactions,
        |_| {},
    )
    .await
    .expect("import");
    store::catalog::set_source(
        &b.pool,
        "goodreads",
        agp_rerank::store::states::HistoryOrder::Unordered,
        "goodreads",
    )
    .await
    .expect("source");
    println!(
        "\n3. Goodreads: {} items, {} interactions; imported in {:.1} s",
        data.items.len(),
        data.interactions.len(),
        t.elapsed().as_secs_f64()
    );
    let test = if quick { 500 } else { 2500 };
    let (r, wall) = b
        .eval_in(
            "goodreads",
            json!({"train_users": 0, "validation_users": 0, "test_users": test,
                   "methods": ["base", "random", "popularity", "item_knn", "item_knn_all"]}),
        )
        .await;
    println!(
        "   {} test users, 5 non-LLM methods: {wall:.1} s (popularity {:.1}, item_knn {:.1}, item_knn_all {:.1})",
        method(&r, "base")["per_seed"][0]["metrics"]["n"],
        ndcg(&r, "popularity"),
        ndcg(&r, "item_knn"),
        ndcg(&r, "item_knn_all")
    );
    let (r, wall) = b
        .eval_in(
            "goodreads",
            json!({"train_users": 0, "validation_users": 0, "test_users": test, "summaries": false,
                   "methods": ["base", "llm_no_profile"]}),
        )
        .await;
    println!(
        "   {} test users, base + llm_no_profile (scripted upstream, every item of every list loaded): {wall:.1} s, {} LLM calls",
        method(&r, "base")["per_seed"][0]["metrics"]["n"],
        method(&r, "llm_no_profile")["cost"]["llm_calls"]
    );
    let refs: Vec<agp_rerank::serving::ItemRef> = data
        .items
        .iter()
        .map(|i| agp_rerank::serving::ItemRef {
            id: i.id.clone(),
            title: None,
            text: None,
        })
        .collect();
    let t = Instant::now();
    let loaded = b
        .reranker
        .load_items("goodreads", &refs, "items")
        .await
        .expect("load");
    println!(
        "   catalog lookup of all {} items at once (cold caches): {:.0} ms",
        loaded.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
}

/// Each user's last 5 history titles (one per line, as the ranking prompt lists them) ->
/// the title of the held-out (last) item.
fn oracle(data: &import::Dataset) -> HashMap<String, String> {
    let titles: HashMap<&str, String> = data
        .items
        .iter()
        .map(|i| (i.id.as_str(), flat(&i.title)))
        .collect();
    let mut seqs: Vec<(&str, Vec<&str>)> = Vec::new();
    for it in &data.interactions {
        match seqs.last_mut() {
            Some((u, s)) if *u == it.user_id => s.push(&it.item_id),
            _ => seqs.push((&it.user_id, vec![&it.item_id])),
        }
    }
    let mut out = HashMap::new();
    for (_, s) in seqs {
        if s.len() < 2 {
            continue;
        }
        let (target, history) = s.split_last().expect("two items");
        let start = history.len().saturating_sub(5);
        let key = history[start..]
            .iter()
            .map(|id| titles.get(id).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(key, titles.get(target).cloned().unwrap_or_default());
    }
    out
}
