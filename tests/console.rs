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

/// Profiles from the seed `p_gen` (v1) like low-numbered items, from the test's v2 high ones;
/// rankings follow the profile (so an interleaved v1 vs v2 list mixes two real orders).
fn script(s: &Seen) -> Reply {
    match llm_step(s) {
        "rank" => {
            let v = candidate_values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by_key(|&i| std::cmp::Reverse(v[i]));
            if s.last_user().contains("low-numbered") {
                idx.reverse();
            }
            ranking_reply(s, &idx)
        }
        "gen" if !s.last_user().contains("favourite kinds") => {
            Reply::text("Likes low-numbered items.")
        }
        _ => Reply::text("Likes high-numbered items."),
    }
}

async fn key(pool: &sqlx::PgPool, scope: Scope) -> String {
    let (secret, prefix, hash) = auth::generate_key();
    agp_rerank::store::keys::insert(
        pool,
        "default",
        "console",
        scope.as_str(),
        &prefix,
        &hash,
        None,
        None,
    )
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

/// POSTs `body` (or nothing) with a key; the status and JSON answer.
async fn call(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.post(url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// GETs with a key; the status and JSON answer.
async fn get(http: &reqwest::Client, url: &str, key: &str) -> (u16, serde_json::Value) {
    let r = http.get(url).bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
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
    // An admin key sees the LLM budget (unlimited, nothing spent yet).
    let budget = b.wait_text("#budget-table", "unlimited", 10).await;
    assert!(
        budget.contains("interactive") && budget.contains("background"),
        "{budget}"
    );
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
            source: agp_rerank::store::states::VersionSource::Api,
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
    // A read key does not (the budget is the admin's).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let hidden = b
        .script("return document.querySelector('#budget-table') === null")
        .await;
    assert_eq!(hidden, serde_json::json!(true));

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
    let (s, ab) = call(
        &http,
        &app.url("/v1/experiments"),
        &admin,
        Some(json!({"control": 2, "treatment": 1, "treatment_share": 0.5})),
    )
    .await;
    assert_eq!(s, 201, "{ab}");
    let ab_id = ab["id"].as_str().unwrap().to_string();
    assert_eq!(ab["design"], "ab", "{ab}");
    for u in 0..30 {
        let (s, r) = call(
            &http,
            &app.url("/v1/rerank"),
            &admin,
            Some(json!({"user_id": format!("u{u}"), "candidates": [{"id": "i5"}, {"id": "i90"}, {"id": "i40"}]})),
        )
        .await;
        assert_eq!(s, 200, "{r}");
        assert!(r["meta"].get("interleaving").is_none(), "an A/B list: {r}");
    }
    // One look (a read looks first): its figures and one history point.
    let (s, ab) = get(&http, &app.url(&format!("/v1/experiments/{ab_id}")), &admin).await;
    assert_eq!(s, 200, "{ab}");
    assert_eq!(
        ab["result"]["history"].as_array().map(Vec::len),
        Some(1),
        "{ab}"
    );
    b.click("#nav-experiments").await;
    b.wait_text("#exp", "p_gen on production: v2 vs v1", 10)
        .await;
    let page = b.wait_text("#exp", "per-user click-through", 10).await;
    assert!(page.contains("design: ab"), "{page}");
    assert!(page.contains("LLM calls / rerank"), "{page}");
    assert!(page.contains("sample-ratio p ="), "{page}");
    let ab_sel = format!("[id='exp-{ab_id}']");
    let ab_text = b.text(&ab_sel).await;
    assert!(ab_text.contains("not enough looks yet"), "{ab_text}");
    shot(&b, "experiments", None).await;

    // Stop it; an interleaved experiment on the same label: 90% of users see v2 and v1 merged
    // by team-draft interleaving, and a click on an item credits the team that supplied it.
    let (s, stopped) = call(
        &http,
        &app.url(&format!("/v1/experiments/{ab_id}/stop")),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    let (s, il) = call(
        &http,
        &app.url("/v1/experiments"),
        &admin,
        Some(json!({"design": "interleave", "control": 2, "treatment": 1, "treatment_share": 0.9})),
    )
    .await;
    assert_eq!(s, 201, "{il}");
    assert_eq!(il["design"], "interleave", "{il}");
    let il_id = il["id"].as_str().unwrap().to_string();
    let il_url = app.url(&format!("/v1/experiments/{il_id}"));
    // Three batches of users (the history keeps a point per 10 more users), a read after each.
    let (mut interleaved, mut wins, mut losses) = (0, 0, 0);
    let mut il = json!(null);
    for batch in [0..13, 13..26, 26..40] {
        for u in batch {
            let user = format!("u{u}");
            let (s, r) = call(
                &http,
                &app.url("/v1/rerank"),
                &admin,
                Some(json!({"user_id": user, "candidates": [{"id": "i5"}, {"id": "i90"}, {"id": "i40"}]})),
            )
            .await;
            assert_eq!(s, 200, "{r}");
            let Some(teams) = r["meta"]["interleaving"]["teams"].as_array() else {
                continue;
            };
            interleaved += 1;
            let results = r["results"].as_array().unwrap();
            assert_eq!(teams.len(), results.len(), "a team per result: {r}");
            // A click on the first or second result: team-draft puts one item of each team
            // there, so both teams win some requests.
            let pos = u % 2;
            match teams[pos].as_str() {
                Some("treatment") => wins += 1,
                Some("control") => losses += 1,
                // Both rankings had it at this rank: the click credits neither.
                Some("both") => {}
                t => panic!("team {t:?}: {r}"),
            }
            let (s, f) = call(
                &http,
                &app.url("/v1/feedback"),
                &admin,
                Some(json!({"request_id": r["id"], "user_id": user, "item_id": results[pos]["id"], "kind": "click"})),
            )
            .await;
            assert_eq!((s, &f["recorded"]), (200, &json!(true)), "{f}");
        }
        let (s, e) = get(&http, &il_url, &admin).await;
        assert_eq!(s, 200, "{e}");
        il = e;
    }
    assert!(
        interleaved >= 20,
        "{interleaved} of 40 users interleaved at a 0.9 share"
    );
    assert!(wins > 0 && losses > 0, "{wins} wins, {losses} losses");
    assert_eq!(il["status"], "running", "{il}");
    let team = &il["result"]["treatment"]["interleaving"];
    assert_eq!(
        (&team["wins"], &team["losses"], &team["ties"]),
        (&json!(wins), &json!(losses), &json!(0)),
        "the clicks credited to the teams: {il}"
    );
    assert_eq!(
        il["result"]["treatment"]["users"],
        json!(interleaved),
        "{il}"
    );
    let points = il["result"]["history"].as_array().map_or(0, Vec::len);
    assert!(points >= 3, "a history point per batch: {il}");

    // The page: the design, the interleaved column, the teams' figures and the chart.
    // (Through the overview, once it has loaded: the same link again is no navigation.)
    b.click("#nav-overview").await;
    b.wait_text("#ov", "interactions", 10).await;
    b.click("#nav-experiments").await;
    let il_sel = format!("[id='exp-{il_id}']");
    let text = b.wait_text(&il_sel, "design: interleave", 10).await;
    for needle in [
        "team-draft interleaving",
        "control only",
        "interleaved (v2 + v1)",
        "preference for the treatment",
        "LLM calls / rerank",
        "sample-ratio p =",
        "wins: requests whose clicks favoured the treatment",
        "losses: requests whose clicks favoured the control",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    let cell = |row: &str| {
        format!("return document.querySelector(\"{il_sel} .team-{row} td.num\").textContent")
    };
    assert_eq!(b.script(&cell("wins")).await, json!(wins.to_string()));
    assert_eq!(b.script(&cell("losses")).await, json!(losses.to_string()));
    assert_eq!(
        b.script(&cell("preference_users")).await,
        json!(team["preference_users"].to_string())
    );
    let charts = b
        .script("return document.querySelectorAll('.exp-chart svg').length")
        .await;
    assert!(
        charts.as_u64() >= Some(1),
        "no experiment chart drawn: {charts}"
    );
    let chart = b
        .script(&format!(
            "const s = document.querySelector(\"[id='exp-chart-{il_id}'] svg\");
             return s && [s.querySelector('title').textContent,
                          s.querySelectorAll('.difference circle').length,
                          s.querySelectorAll('.p-value circle').length]"
        ))
        .await;
    assert_eq!(
        chart,
        json!([
            "p_gen on production, v2 vs v1 (interleaved): preference and p-value by users",
            points,
            points
        ]),
        "a dot per look in both panels"
    );
    shot(&b, "experiments-interleaved", Some(&il_sel)).await;
    shot(
        &b,
        "experiments-chart",
        Some(&format!("[id='exp-chart-{il_id}']")),
    )
    .await;

    // The overview after this activity: reranks and LLM calls of the last hour.
    b.click("#nav-overview").await;
    b.wait_text("#ov", "rank", 10).await;
    shot(&b, "overview", None).await;

    b.quit().await;
    workers.stop().await;
}
