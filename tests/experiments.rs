//! Online experiments end to end (real router, real Postgres, the scripted test LLM, the
//! replay simulator sending real feedback): a better treatment is promoted, a worse one keeps
//! the control, a treatment that falls back is rolled back by the guardrail, a person can
//! stop one; the label follows each decision; bad requests are refused.

mod common;

use agp_rerank::catalog::{NewInteraction, NewItem};
use agp_rerank::experiment;
use agp_rerank::import::Dataset;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::simulator::{self, ClickModel, Lists, SimOptions};
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
/// GOOD profile (the real item on top, mostly), keep the incoming (random) order otherwise. A
/// FAIL prompt's profile call is refused (the rerank falls back). The optimizer's update
/// proposes a GOOD prompt.
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
            }
            ranking_reply(s, &idx)
        }
        "fb" => Reply::text("The profile missed the user's taste for recent releases."),
        "agg" => Reply::text("Profiles should capture which releases the user follows."),
        "opt" => Reply::text("GOOD: describe this user's taste from these items:\n{{history}}"),
        _ => Reply::text("a summary"),
    }
}

struct Rig {
    app: TestApp,
    data: Dataset,
    llm: TestLlm,
}

async fn rig() -> Rig {
    let (app, llm) = common::spawn_app_scripted(script).await;
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
    Rig { app, data, llm }
}

impl Rig {
    async fn simulate(&self, requests: usize, seed: u64) -> simulator::SimReport {
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
        let r = simulator::run(&self.data, &o).await.unwrap();
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

    /// The figures the decision was made on (folded incrementally) against a recomputation
    /// over the whole log of the simulated traffic, and the decision that one gives.
    async fn check_decided_as_the_whole_log_would(&self, e: &Value) {
        let id = e["id"].as_str().unwrap().parse().unwrap();
        let row = agp_rerank::store::experiments::get(&self.app.pool, "default", id)
            .await
            .unwrap()
            .unwrap();
        let observed =
            agp_rerank::store::experiments::observed_full(&self.app.pool, "default", &row)
                .await
                .unwrap();
        let (t, c): (Vec<_>, Vec<_>) = observed.iter().partition(|o| o.treatment);
        let k = row.settings.k;
        let whole = [
            experiment::arm_metrics(row.control, &c, k),
            experiment::arm_metrics(row.treatment, &t, k),
        ];
        for (arm, w) in ["control", "treatment"].iter().zip(&whole) {
            let folded = &e["result"][arm];
            let w = serde_json::to_value(w).unwrap();
            for (name, x) in w.as_object().unwrap() {
                let (x, y) = (x.as_f64().unwrap(), folded[name].as_f64().unwrap());
                assert!(
                    (x - y).abs() < 1e-9,
                    "{arm}.{name}: whole log {x}, folded {y}"
                );
            }
        }
        // The same look over the whole log's figures decides the same.
        let previous: f64 = e["result"]["look"]["p_value"].as_f64().unwrap();
        let plan = experiment::Plan {
            previous_p: previous,
            ..row.plan()
        };
        let look = experiment::look(&whole[0], &whole[1], &plan);
        let outcome = serde_json::to_value(look.outcome).unwrap();
        let status = e["status"].as_str().unwrap();
        let expected = match status {
            "promoted" => "promote",
            "kept_control" => "keep_control",
            "rolled_back" => "roll_back",
            other => other,
        };
        assert_eq!(outcome, expected, "{look:?}");
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
    r.check_decided_as_the_whole_log_would(&e).await;

    // Now the plain version as treatment against the GOOD one: the control stays.
    let id = r.start(2, 3).await;
    r.simulate(300, 3).await;
    let e = r.read(&id).await;
    assert_eq!(e["status"], "kept_control", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("treatment worse"));
    r.check_decided_as_the_whole_log_would(&e).await;
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
    r.check_decided_as_the_whole_log_would(&e).await;
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

#[tokio::test]
async fn the_logged_protocol_reads_production_traffic_split_by_time() {
    use agp_rerank::eval::cases::prepare_logged;
    use agp_rerank::eval::params::DataParams;
    let r = rig().await;
    // The GOOD prompt serves everyone: the real item comes first and is nearly always clicked.
    r.app
        .put("/v1/prompts/p_gen/labels/production", json!({"version": 2}))
        .await;
    let sim = r.simulate(80, 5).await;
    assert!(sim.clicked_requests >= 45, "{sim:?}");
    // Something that happens after the requests: a new interaction of a user whose request
    // was clicked.
    let (clicked_id, user, hist): (String, String, Value) = sqlx::query_as(
        "SELECT r.id, r.user_id, r.history FROM rerank_requests r JOIN feedback f ON f.request_id = r.id
         ORDER BY r.created_at LIMIT 1",
    )
    .fetch_one(&r.app.pool)
    .await
    .unwrap();
    let (s, _) = r
        .app
        .post(
            "/v1/interactions",
            json!({"interactions": [{"user_id": user, "item_id": "i299"}]}),
        )
        .await;
    assert_eq!(s, 200);
    // A "view" on one request that had no click, and a second click on another.
    let (no_click,): (String,) = sqlx::query_as(
        "SELECT r.id FROM rerank_requests r WHERE NOT EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = r.id)
         ORDER BY r.created_at LIMIT 1",
    )
    .fetch_optional(&r.app.pool)
    .await
    .unwrap()
    .unwrap_or_default();

    let kinds = vec!["click".to_string()];
    let logged = agp_rerank::store::rerank::logged_cases(&r.app.pool, "default", &kinds)
        .await
        .unwrap();
    assert_eq!(logged.len(), sim.clicked_requests);
    let p = DataParams {
        train_users: 20,
        validation_users: 10,
        test_users: 10,
        positive_kinds: kinds.clone(),
        protocol: agp_rerank::eval::Protocol::Logged,
        ..DataParams::default()
    };
    let prep = prepare_logged(logged.clone(), &[], &p).unwrap();
    assert_eq!(
        (prep.train.len(), prep.validation.len(), prep.test.len()),
        (20, 10, 10)
    );
    // Split by time: the test cases are the newest requests, validation just before them.
    let mut by_time = logged.clone();
    by_time.sort_by_key(|c| c.at);
    let n = by_time.len();
    let newest: Vec<&str> = by_time[n - 10..]
        .iter()
        .map(|c| c.user_id.as_str())
        .collect();
    let test_users: Vec<&str> = prep.test.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(test_users, newest);
    let validation: Vec<&str> = prep.validation.iter().map(|c| c.user_id.as_str()).collect();
    let before: Vec<&str> = by_time[n - 20..n - 10]
        .iter()
        .map(|c| c.user_id.as_str())
        .collect();
    assert_eq!(validation, before);
    // The history is what the service used for the request: never the later interaction,
    // never the target itself; the list is the caller's.
    for c in prep.train.iter().chain(&prep.validation).chain(&prep.test) {
        assert!(!c.history.contains(&"i299".to_string()));
        assert!(!c.history.contains(&c.target));
        assert!(c.candidates.contains(&c.target));
        assert_eq!(c.candidates.len(), 10);
    }
    let first = logged
        .iter()
        .find(|c| c.request_id == clicked_id)
        .expect("the clicked request is a case");
    assert_eq!(json!(first.history), hist);
    assert_eq!(first.user_id, user);

    // Feedback kinds: only "view" counts -> one case (if a request had no click).
    if !no_click.is_empty() {
        let (s, b) = r
            .app
            .post(
                "/v1/feedback",
                json!({"request_id": no_click, "user_id": sqlx::query_scalar::<_, String>(
                    "SELECT user_id FROM rerank_requests WHERE id = $1").bind(&no_click)
                    .fetch_one(&r.app.pool).await.unwrap(),
                    "item_id": sqlx::query_scalar::<_, String>(
                    "SELECT candidates->>0 FROM rerank_requests WHERE id = $1").bind(&no_click)
                    .fetch_one(&r.app.pool).await.unwrap(), "kind": "view"}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let views =
            agp_rerank::store::rerank::logged_cases(&r.app.pool, "default", &["view".into()])
                .await
                .unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].request_id, no_click);
    }

    // Too few cases: a clear 422 through the API, with the counts.
    for path in ["/v1/evaluations", "/v1/optimizations"] {
        let (s, b) = r
            .app
            .post(
                path,
                json!({"protocol": "logged", "train_users": 100, "validation_users": 50, "test_users": 200,
                       "positive_kinds": ["click"]}),
            )
            .await;
        assert_eq!(s, 422, "{b}");
        let m = common::error_message(&b, "validation_error");
        assert!(
            m.contains("needs 350 logged reranks") && m.contains(&format!("there are {n}")),
            "{m}"
        );
    }
    assert!(
        prepare_logged(
            logged,
            &[],
            &DataParams {
                test_users: 1000,
                ..p
            }
        )
        .is_err()
    );
}

/// Runs every queued job of the project to its end, as a worker would.
async fn run_jobs(r: &Rig) {
    use agp_rerank::jobs::{self, WorkerOptions};
    let mut settings = LlmSettings::single(r.llm.base_url.clone(), "test-model");
    settings.concurrency = 8;
    let llm = agp_rerank::llm::LlmClient::new(settings, Some(r.app.pool.clone()));
    let rerank = agp_rerank::serving::RerankSettings {
        summaries: false,
        ..Default::default()
    };
    let reranker = agp_rerank::serving::Reranker::new(r.app.pool.clone(), llm.clone(), rerank);
    let opts = WorkerOptions::new(0);
    while let Some(job) = agp_rerank::store::jobs::claim(&r.app.pool, &opts.id, 30, None)
        .await
        .unwrap()
    {
        jobs::execute(
            r.app.pool.clone(),
            llm.clone(),
            reranker.clone(),
            job,
            &opts,
            None,
        )
        .await;
    }
}

async fn autopilot(r: &Rig) -> Value {
    agp_rerank::cluster::autopilot::tick(&r.app.pool, "default")
        .await
        .unwrap();
    let (s, b) = r.app.get("/v1/autopilot").await;
    assert_eq!(s, 200, "{b}");
    b
}

#[tokio::test]
async fn the_autopilot_closes_the_loop_and_only_an_experiment_moves_the_label() {
    let r = rig().await;
    // Off by default.
    let ap = autopilot(&r).await;
    assert_eq!(ap["enabled"], false);
    let settings = json!({"min_new_positives": 30, "treatment_share": 0.5,
        "optimization": {"train_users": 20, "validation_users": 20, "test_users": 10, "batch_size": 10,
                         "verify_steps": 1, "summaries": false, "positive_kinds": ["click"]},
        "experiment": {"min_users": 30}});
    let (s, b) = r
        .app
        .put(
            "/v1/autopilot",
            json!({"enabled": true, "settings": settings}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["settings"]["optimization"]["protocol"], "logged");
    assert_eq!(b["logged_cases_needed"], 50);

    // Production traffic on the manual prompt (the incoming order): feedback arrives.
    // (about 29% of requests are clicked: the real item is examined at a random rank)
    let sim = r.simulate(320, 11).await;
    assert!(sim.clicked_requests >= 50, "{sim:?}");
    // Paused: nothing starts however much feedback there is.
    r.app.put("/v1/autopilot", json!({"enabled": false})).await;
    let ap = autopilot(&r).await;
    assert!(ap["runs"].as_array().unwrap().is_empty(), "{ap}");
    assert!(ap["new_positives"].as_i64() >= Some(30), "{ap}");
    r.app.put("/v1/autopilot", json!({"enabled": true})).await;

    // On: an optimization on logged data starts.
    let ap = autopilot(&r).await;
    let run = &ap["runs"][0];
    assert_eq!(run["status"], "optimizing", "{ap}");
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("new positive feedback")
    );
    run_jobs(&r).await;
    let (_, job) = r
        .app
        .get(&format!(
            "/v1/optimizations/{}",
            run["job_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["params"]["protocol"], "logged");
    assert!(job["params"]["promote_to"].is_null());

    // Its candidate beat production on logged validation: an experiment, not a promotion.
    let ap = autopilot(&r).await;
    let run = &ap["runs"][0];
    assert_eq!(run["status"], "experimenting", "{ap}");
    assert!(
        run["reason"].as_str().unwrap().contains("beat production"),
        "{run}"
    );
    let production = r.production().await;
    assert!(
        production["split"].is_array(),
        "split, not moved: {production}"
    );
    let exp_id = run["experiment_id"].as_str().unwrap().to_string();
    let (_, e) = r.app.get(&format!("/v1/experiments/{exp_id}")).await;
    assert_eq!(e["source"], "autopilot");
    let candidate = e["treatment"].as_i64().unwrap();
    assert_eq!(e["control"], 1);

    // Traffic decides; the experiment's decision moves the label; the run ends with it.
    let before = r.simulate(300, 12).await;
    assert!(before.by_version.contains_key(&candidate), "{before:?}");
    let e = r.read(&exp_id).await;
    assert_eq!(e["status"], "promoted", "{e}");
    assert_eq!(r.production().await["version"], candidate);
    let ap = autopilot(&r).await;
    assert_eq!(ap["runs"][0]["status"], "done", "{ap}");
    assert!(
        ap["runs"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("promoted")
    );
}
