//! Server time of every console page with the whole Amazon Games data imported (`cargo bench
//! --bench console`): the app on real Postgres (throwaway embedded cluster), 2,000 reranks and
//! an evaluation job's report in the log so the overview, jobs and report reads have data, then
//! each page's requests timed 30 times (the page's server time is the sum of its requests,
//! made one after another as the script does). Prints p50 and max per page.

mod support;

use std::time::Instant;

use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, TestLlm};
use agp_rerank::store;
use serde_json::{Value, json};

fn main() {
    support::on_embedded_pg("console", run);
}

async fn run(url: String) {
    let pool = store::connect(&url, 16).await.expect("connect");
    agp_rerank::app::prepare_database(&pool)
        .await
        .expect("migrate");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/amazon-games");
    let data = agp_rerank::import::read(
        agp_rerank::import::Format::Recbole,
        std::slice::from_ref(&path),
    )
    .expect("read Amazon Games");
    store::import::write(&pool, "default", &data.items, &data.interactions, |_| {})
        .await
        .expect("import");
    let llm_server = TestLlm::start(|s| {
        let k = s.last_user().lines().filter(|l| l.starts_with('[')).count();
        if k > 0 {
            Reply::json(json!({"ranking": (1..=k).collect::<Vec<_>>()}))
        } else {
            Reply::text("Likes tactical RPGs.")
        }
    })
    .await;
    let mut settings = LlmSettings::single(llm_server.base_url.clone(), "bench");
    settings.concurrency = 64;
    let llm = LlmClient::new(settings, Some(pool.clone()));
    let base = support::serve_app(AppState::with_llm(
        pool.clone(),
        AppConfig::default(),
        llm.clone(),
    ))
    .await;
    let http = reqwest::Client::new();
    let get = |p: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}{p}")).send().await.expect("send");
            assert!(r.status().is_success(), "{p}: {}", r.status());
            r.bytes().await.expect("body").len()
        }
    };
    // Activity: 2,000 reranks of 20 candidates, and one evaluation job with its report.
    let users = agp_rerank::simulator::users(&data);
    for (k, u) in users.iter().take(2000).enumerate() {
        let c: Vec<Value> = (0..20)
            .map(|j| json!({"id": data.items[(k * 31 + j * 17) % data.items.len()].id}))
            .collect();
        http.post(format!("{base}/v1/rerank"))
            .json(&json!({"user_id": u.id, "candidates": c}))
            .send()
            .await
            .expect("rerank");
    }
    let job: Value = http
        .post(format!("{base}/v1/evaluations"))
        .json(&json!({"train_users": 0, "validation_users": 0, "test_users": 200, "methods": ["base", "popularity", "item_knn"]}))
        .send()
        .await
        .expect("eval")
        .json()
        .await
        .expect("json");
    let id = job["id"].as_str().expect("job id").to_string();
    support::run_queued_jobs(&pool, &llm, true).await;
    let user = &users[0].id;
    let pages: Vec<(&str, Vec<String>)> = vec![
        (
            "console assets",
            vec![
                "/console".into(),
                "/console/app.js".into(),
                "/console/app.css".into(),
            ],
        ),
        ("overview", vec!["/v1/console/overview".into()]),
        (
            "prompts",
            vec!["/v1/prompts".into(), "/v1/prompts/p_gen/versions".into()],
        ),
        ("jobs list", vec!["/v1/console/jobs".into()]),
        (
            "job report",
            vec![
                "/v1/console/jobs".into(),
                format!("/v1/evaluations/{id}"),
                format!("/v1/console/jobs/{id}/chart.svg"),
            ],
        ),
        ("experiments", vec!["/v1/experiments".into()]),
        (
            "playground user",
            vec![
                format!("/v1/users/{user}/history"),
                format!("/v1/users/{user}/profile"),
            ],
        ),
    ];
    println!(
        "server time per console page, {} items / {} interactions / 2,000 logged reranks, 30 loads each:",
        data.items.len(),
        data.interactions.len()
    );
    println!("| page | p50 ms | max ms |");
    for (name, reqs) in pages {
        let mut times = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            for r in &reqs {
                get(r.clone()).await;
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {name} | {:.1} | {:.1} |",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
