//! Online experiments end to end (real router, real Postgres, the scripted test LLM, the
//! replay simulator sending real feedback): a better treatment is promoted, a worse one keeps
//! the control, a treatment that falls back is rolled back by the guardrail, a person can
//! stop one; the label follows each decision; bad requests are refused.

mod common;

use std::time::Duration;

use agp_rerank::catalog::{NewInteraction, NewItem};
use agp_rerank::config::AppConfig;
use agp_rerank::import::Dataset;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::sim::{self, ClickModel, Lists, SimOptions};
use common::{TestApp, candidate_values, llm_step, ranking_reply};
use serde_json::{Value, json};

/// 300 items "Item N"; 200 users whose history is low-numbered items and whose next item is
/// high-numbered, so "highest number first" puts it on top.
fn dataset() -> Dataset {
    let items = (0..300)
        .map(|i| NewItem {
            id: format!("i{i}"),
            title: format!("Item {i}"),
            text: None,
            attributes: None,
        })
        .collect();
    let mut interactions = Vec::new();
    for u in 0..200 {
        let mut seq: Vec<String> = (0..3)
            .map(|k| format!("i{}", (u * 7 + k * 11) % 100))
            .collect();
        seq.dedup();
        seq.push(format!("i{}", 250 + u % 50));
        for item_id in seq {
            interactions.push(NewInteraction {
                user_id: format!("user{u:03}"),
                item_id,
                kind: None,
                value: None,
                timestamp: None,
            });
        }
    }
    Dataset {
        items,
        interactions,
        notes: Vec::new(),
    }
}

/// Profiles say what their prompt asked for; rankings sort by number, highest first for a
/// GOOD profile (the real item on top), lowest first otherwise. A FAIL prompt's profile call
/// is refused (the rerank falls back).
fn script(s: &Seen) -> Reply {
    match llm_step(s) {
        "gen" if s.last_user().contains("FAIL") => Reply::status(400),
        "gen" if s.last_user().contains("GOOD") => Reply::text("profile: GOOD"),
        "gen" => Reply::text("profile: plain"),
        "rank" => {
            let v = candidate_values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            if s.last_user().contains("GOOD") {
                idx.sort_by_key(|&i| std::cmp::Reverse(v[i]));
            } else {
                idx.sort_by_key(|&i| v[i]);
            }
            ranking_reply(s, &idx)
        }
        _ => Reply::text("a summary"),
    }
}

struct Rig {
    app: TestApp,
    data: Dataset,
    _llm: TestLlm,
}

async fn rig() -> Rig {
    let llm = TestLlm::start(script).await;
    let mut settings = LlmSettings::single(llm.base_url.clone(), "test-model");
    settings.timeout = Duration::from_secs(2);
    settings.retry.max_attempts = 1;
    let mut config = AppConfig::default();
    config.rerank.summaries = false;
    let app = common::spawn_app_with_llm(config, settings).await;
    let data = dataset();
    agp_rerank::store::import::write(
        &app.pool,
        "default",
        &data.items,
        &data.interactions,
        |_| {},
    )
    .await
    .unwrap();
    // The LLM alone decides the order.
    let (_, b) = app
        .post("/v1/blends/versions", json!({"weights": {"llm": 1}}))
        .await;
    app.put(
        "/v1/blends/labels/production",
        json!({"version": b["version"]}),
    )
    .await;
    for (text, expected) in [
        ("GOOD {{history}}", 2),
        ("plain {{history}}", 3),
        ("FAIL {{history}}", 4),
    ] {
        let (s, b) = app
            .post("/v1/prompts/p_gen/versions", json!({"template": text}))
            .await;
        assert_eq!((s, b["version"].as_i64()), (201, Some(expected)), "{b}");
    }
    Rig {
        app,
        data,
        _llm: llm,
    }
}

impl Rig {
    async fn simulate(&self, requests: usize, seed: u64) -> sim::SimReport {
        let o = SimOptions {
            url: self.app.base.clone(),
            key: None,
            requests,
            users: 200,
            candidates: 10,
            lists: Lists::Llmrank,
            history_len: 5,
            click: ClickModel::default(),
            seed,
            concurrency: 4,
            kind: "click".into(),
        };
        let r = sim::run(&self.data, &o).await.unwrap();
        assert_eq!(r.failures, 0, "{r:?}");
        r
    }

    async fn production(&self) -> Value {
        let (_, b) = self.app.get("/v1/prompts").await;
        let list = if b.is_array() {
            b
        } else {
            b["prompts"].clone()
        };
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "p_gen")
            .and_then(|p| {
                p["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|l| l["label"] == "production")
                    .cloned()
            })
            .unwrap_or(Value::Null)
    }

    async fn start(&self, control: i64, treatment: i64) -> String {
        let (s, b) = self
            .app
            .post(
                "/v1/experiments",
                json!({"control": control, "treatment": treatment, "treatment_share": 0.5,
                       "settings": {"min_users": 30, "guardrails": {"min_requests": 20}}}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b["id"].as_str().unwrap().to_string()
    }

    async fn read(&self, id: &str) -> Value {
        let (s, b) = self.app.get(&format!("/v1/experiments/{id}")).await;
        assert_eq!(s, 200, "{b}");
        b
    }
}

#[tokio::test]
async fn a_better_treatment_is_promoted_and_a_worse_one_keeps_the_control() {
    let r = rig().await;
    let id = r.start(3, 2).await;
    let prod = r.production().await;
    assert!(prod["split"].is_array(), "the label is split: {prod}");
    // Until min_users per arm: continue.
    r.simulate(20, 1).await;
    let e = r.read(&id).await;
    assert_eq!(e["status"], "running", "{e}");
    let sim = r.simulate(300, 2).await;
    assert!(
        sim.by_version.contains_key(&2) && sim.by_version.contains_key(&3),
        "{sim:?}"
    );
    let e = r.read(&id).await;
    assert_eq!(e["status"], "promoted", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("treatment better"));
    let t = &e["result"]["treatment"];
    let c = &e["result"]["control"];
    assert!(
        t["click_through"].as_f64() > c["click_through"].as_f64(),
        "{e}"
    );
    assert!(t["mrr"].as_f64() > c["mrr"].as_f64());
    assert!(t["users"].as_u64() >= Some(30) && c["users"].as_u64() >= Some(30));
    assert!(
        e["result"]["look"]["interval"][0].as_f64() > Some(0.0),
        "{e}"
    );
    assert!(e["p_value"].as_f64() < Some(0.05));
    assert_eq!(r.production().await["version"], 2);

    // Now the plain version as treatment against the GOOD one: the control stays.
    let id = r.start(2, 3).await;
    r.simulate(300, 3).await;
    let e = r.read(&id).await;
    assert_eq!(e["status"], "kept_control", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("treatment worse"));
    assert_eq!(r.production().await["version"], 2);
}

#[tokio::test]
async fn a_guardrail_rolls_back_a_treatment_that_falls_back() {
    let r = rig().await;
    let id = r.start(2, 4).await;
    r.simulate(120, 4).await;
    let e = r.read(&id).await;
    assert_eq!(e["status"], "rolled_back", "{e}");
    assert!(
        e["reason"].as_str().unwrap().contains("fallback rate"),
        "{e}"
    );
    assert_eq!(e["result"]["treatment"]["fallback_rate"], 1.0);
    assert_eq!(r.production().await["version"], 2);
}

#[tokio::test]
async fn a_person_can_stop_one_and_bad_requests_are_refused() {
    let r = rig().await;
    let id = r.start(1, 2).await;
    // One experiment per label at a time.
    let (s, b) = r
        .app
        .post("/v1/experiments", json!({"control": 1, "treatment": 3}))
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = r
        .app
        .post(&format!("/v1/experiments/{id}/stop"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "stopped");
    assert_eq!(r.production().await["version"], 1);
    let (s, list) = r.app.get("/v1/experiments").await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    for (body, needle) in [
        (json!({"treatment": 1}), "different versions"),
        (json!({"treatment": 99}), "no version 99"),
        (
            json!({"treatment": 2, "treatment_share": 1.5}),
            "treatment_share",
        ),
        (
            json!({"treatment": 2, "settings": {"alpha": 2}}),
            "settings.alpha",
        ),
        (
            json!({"treatment": 2, "settings": {"min_users": 500, "max_users": 100}}),
            "max_users",
        ),
        (json!({"treatment": 2, "label": "bad label!"}), "label"),
        (
            json!({"treatment": 2, "label": "nowhere"}),
            "does not point at one version",
        ),
        (json!({"treatment": 2, "name": "p_rank"}), "name"),
    ] {
        let (s, b) = r.app.post("/v1/experiments", body.clone()).await;
        assert_eq!(s, 422, "{body} -> {b}");
        assert!(
            common::error_message(&b, "validation_error").contains(needle),
            "{needle}: {b}"
        );
    }
    let (s, _) = r
        .app
        .get("/v1/experiments/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(s, 404);
}
