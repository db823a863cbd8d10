//! The web console in a real headless Chromium (Debian's `chromium` + `chromium-driver`)
//! against the real app on real Postgres, keys on: log in with a key, open prompts, diff two
//! versions, be refused a promotion with a read key and promote with an admin key, start an
//! evaluation and see it reach "succeeded" without reloading, its report and chart, and a
//! playground rerank. Skips with a message when the browser is missing, unless
//! `AGP_REQUIRE_BROWSER` is set (CI sets it). `AGP_CONSOLE_SCREENSHOTS=dir` saves a 1280x800
//! screenshot of every page there.

mod common;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use agp_rerank::auth::{self, Scope};
use agp_rerank::catalog::{NewInteraction, NewItem};
use agp_rerank::config::{AppConfig, Secret};
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use common::{candidate_values, llm_step, ranking_reply};
use serde_json::json;
use webdriver::Browser;

fn script(s: &Seen) -> Reply {
    match llm_step(s) {
        "rank" => {
            let v = candidate_values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by_key(|&i| std::cmp::Reverse(v[i]));
            ranking_reply(s, &idx)
        }
        _ => Reply::text("Likes high-numbered items."),
    }
}

async fn key(pool: &sqlx::PgPool, scope: Scope) -> String {
    let (secret, prefix, hash) = auth::generate_key();
    agp_rerank::store::keys::insert(pool, "default", "console", scope.as_str(), &prefix, &hash)
        .await
        .unwrap();
    secret
}

async fn shot(b: &Browser, name: &str, scroll_to: Option<&str>) {
    if let Ok(dir) = std::env::var("AGP_CONSOLE_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        let js = match scroll_to {
            Some(css) => format!("document.querySelector({css:?}).scrollIntoView()"),
            None => "window.scrollTo(0, 0)".into(),
        };
        b.script(&js).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.screenshot(&std::path::Path::new(&dir).join(format!("{name}.png")))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let llm_server = TestLlm::start(script).await;
    let mut settings = LlmSettings::single(llm_server.base_url.clone(), "test-model");
    settings.concurrency = 8;
    let mut config = AppConfig {
        master_key: Some(Secret::new("console-master")),
        ..Default::default()
    };
    config.rerank.summaries = false;
    let s2 = settings.clone();
    let app = common::spawn_state(
        move |pool| {
            let client = LlmClient::new(s2, Some(pool.clone()));
            agp_rerank::app::AppState::with_llm(pool, config, client)
        },
        Default::default(),
    )
    .await;
    let pool = app.pool.clone();
    let llm = LlmClient::new(settings, Some(pool.clone()));
    let reranker = agp_rerank::serving::Reranker::new(
        pool.clone(),
        llm.clone(),
        agp_rerank::serving::RerankSettings {
            summaries: false,
            ..Default::default()
        },
    );
    let workers = agp_rerank::jobs::Workers::spawn(1, &pool, &llm, &reranker);
    let read = key(&pool, Scope::Read).await;
    let admin = key(&pool, Scope::Admin).await;
    let console = app.url("/console");

    // Without a key: the overview asks for one.
    b.goto(&console).await;
    b.wait_text("#view", "Enter an API key", 10).await;
    // First run, an empty project: the console offers the bundled sample (an admin action).
    b.fill("#key", &admin).await;
    b.click("#save-key").await;
    b.wait_text("#first-run", "This project is empty", 10).await;
    shot(&b, "first-run", None).await;
    b.click("#load-sample").await;
    b.wait_text("#sample-status", "Loaded", 30).await;
    b.wait_text("#items", ",", 10).await; // the overview shows the loaded catalog
    let sample_items: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(sample_items > 1000, "{sample_items}");
    let items: Vec<NewItem> = (0..120)
        .map(|i| NewItem {
            id: format!("i{i}"),
            title: format!("Item {i}"),
            text: None,
            attributes: None,
        })
        .collect();
    let mut inters = Vec::new();
    for u in 0..30 {
        for k in 0..4 {
            inters.push(NewInteraction {
                user_id: format!("u{u}"),
                item_id: format!("i{}", (u * 3 + k * 7) % 60 + if k == 3 { 60 } else { 0 }),
                kind: None,
                value: None,
                timestamp: None,
            });
        }
    }
    agp_rerank::store::import::write(&pool, "default", &items, &inters, |_| {})
        .await
        .unwrap();
    agp_rerank::store::prompts::create_version(
        &pool,
        "default",
        "p_gen",
        "Items the user liked, oldest first:\n{{history}}\nDescribe the user's favourite kinds of items.",
        &agp_rerank::store::prompts::NewVersion {
            message: "shorter, about kinds",
            source: "api",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Log in with the read key: the overview shows the catalog.
    b.fill("#key", &read).await;
    b.click("#save-key").await;
    let total = format!("{}", sample_items + 120);
    let shown = b.wait_text("#items", &total[total.len() - 3..], 10).await;
    assert_eq!(shown.replace(',', ""), total);

    // Prompts: both versions, a diff, and promotion refused with a read key.
    b.click("#nav-prompts").await;
    b.wait_text("#version-table", "v2", 10).await;
    b.click("#diff-button").await;
    let diff = b.wait_text("#diff-view", "favourite", 10).await;
    assert!(diff.contains("Here are the most recent items"), "{diff}");
    let inserted = b
        .script("return document.querySelectorAll('#diff-view ins').length")
        .await;
    assert!(inserted.as_u64() > Some(0), "{inserted}");
    shot(&b, "prompts", None).await;
    b.click(".promote[data-v='2']").await;
    b.wait_text("#prompt-status", "Refused", 10).await;
    let label = agp_rerank::store::prompts::label(&pool, "default", "p_gen", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(label.version, Some(1), "a read key moved nothing");
    // With the admin key the promotion goes through.
    b.fill("#key", &admin).await;
    b.click("#save-key").await;
    b.click("#nav-prompts").await;
    b.wait_text("#version-table", "v2", 10).await;
    b.click(".promote[data-v='2']").await;
    b.wait_text("#prompt-status", "Done", 10).await;
    b.wait_text("#label-production", "v2", 10).await;
    let label = agp_rerank::store::prompts::label(&pool, "default", "p_gen", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(label.version, Some(2));

    // Jobs: start an evaluation from the form; it reaches "succeeded" without a reload.
    b.click("#nav-jobs").await;
    b.fill("#f-test", "10").await;
    b.fill("#f-val", "0").await;
    b.fill("#f-cand", "10").await;
    shot(&b, "jobs", None).await;
    b.click("#start-eval").await;
    b.wait_text("#job-status", "succeeded", 60).await;
    let loads = b
        .script("return performance.getEntriesByType('navigation').length")
        .await;
    assert_eq!(loads, json!(1), "no reload");
    let table = b.wait_text("#report-table", "llm_manual", 10).await;
    assert!(table.contains("popularity"), "{table}");
    let svg = b
        .script("return document.querySelectorAll('#chart svg').length")
        .await;
    assert_eq!(svg, json!(1), "the chart is drawn");
    shot(&b, "job-report", None).await;

    // Experiments page: none yet.
    b.click("#nav-experiments").await;
    b.wait_text("#exp", "No experiments yet", 10).await;

    // Playground: a user's history, then a rerank with its order and meta.
    b.click("#nav-playground").await;
    b.fill("#user", "u3").await;
    b.click("#load-user").await;
    b.wait_text("#history", "Item", 10).await;
    b.fill("#candidates", "i5\ni90\ni40").await;
    b.click("#run-rerank").await;
    let order = b.wait_text("#rerank-results", "i90", 10).await;
    let pos = |id: &str| order.find(id).unwrap_or(usize::MAX);
    // The default blend: the LLM (i90, i40, i5) and the incoming order (i5, i90, i40) equally
    // weighted: i90 0.75, i5 0.5, i40 0.25.
    assert!(pos("i90") < pos("i5") && pos("i5") < pos("i40"), "{order}");
    b.wait_text("#rerank-meta", "prompt_versions", 10).await;
    b.wait_text("#profile", "p_gen v2", 10).await;
    shot(&b, "playground", Some("#rerank-out")).await;

    // An experiment with traffic: its arms and decision on the experiments page.
    let http = reqwest::Client::new();
    let (s, e) = {
        let r = http
            .post(app.url("/v1/experiments"))
            .bearer_auth(&admin)
            .json(&json!({"control": 2, "treatment": 1, "treatment_share": 0.5}))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(s, 201, "{e}");
    for u in 0..30 {
        let r = http
            .post(app.url("/v1/rerank"))
            .bearer_auth(&admin)
            .json(&json!({"user_id": format!("u{u}"), "candidates": [{"id": "i5"}, {"id": "i90"}, {"id": "i40"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    b.click("#nav-experiments").await;
    b.wait_text("#exp", "p_gen on production: v2 vs v1", 10)
        .await;
    b.wait_text("#exp", "per-user click-through", 10).await;
    shot(&b, "experiments", None).await;

    // The overview after this activity: reranks and LLM calls of the last hour.
    b.click("#nav-overview").await;
    b.wait_text("#ov", "rank", 10).await;
    shot(&b, "overview", None).await;

    b.quit().await;
    workers.stop().await;
}
