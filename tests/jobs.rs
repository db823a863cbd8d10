//! Optimization and evaluation jobs against real Postgres and the scripted test LLM:
//! accept and reject paths in both acceptance modes, leakage rejection, resume after a
//! simulated crash without duplicate versions or steps, cancel, metrics that match
//! hand-computed values, and the HTTP API.

mod common;

use common::{candidate_values as values, llm_step as step};

use std::sync::Arc;
use std::time::Duration;

use agp_rerank::catalog::{NewInteraction, NewItem};
use agp_rerank::eval::{Holdout, UserSeq, metrics};
use agp_rerank::jobs::{self, WorkerOptions};
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::serving::{RerankSettings, Reranker};
use agp_rerank::store::{self, jobs as jobs_db};
use serde_json::{Value, json};
use sqlx::PgPool;

/// 200 items "Item N"; 60 users whose history is low-numbered items and whose last item is a
/// high-numbered one, so "highest number first" finds the held-out item.
fn dataset() -> (Vec<NewItem>, Vec<NewInteraction>, Vec<UserSeq>) {
    let items: Vec<NewItem> = (0..200)
        .map(|i| NewItem {
            id: format!("i{i}"),
            title: format!("Item {i}"),
            text: None,
            attributes: None,
        })
        .collect();
    let mut inters = Vec::new();
    let mut seqs = Vec::new();
    for u in 0..60 {
        let mut seq: Vec<String> = (0..5)
            .map(|k| format!("i{}", (u * 7 + k * 13) % 100))
            .collect();
        seq.dedup();
        seq.push(format!("i{}", 190 + u % 10));
        for it in &seq {
            inters.push(NewInteraction {
                user_id: format!("user{u:03}"),
                item_id: it.clone(),
                kind: None,
                value: None,
                timestamp: None,
            });
        }
        seqs.push(UserSeq {
            user_id: format!("user{u:03}"),
            items: seq,
        });
    }
    (items, inters, seqs)
}

/// Profiles written by a prompt containing GOOD make the ranker sort by number descending
/// (finding the held-out item); anything else makes it sort ascending.
fn script(candidate: &'static str) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s: &Seen| match step(s) {
        "sum" => Reply::text("a summary"),
        "gen" => Reply::text(if s.last_user().contains("GOOD") {
            "profile: wants high numbers"
        } else {
            "profile: wants low numbers"
        }),
        "rank" => {
            let v = values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            if s.last_user().contains("high numbers") {
                idx.sort_by_key(|&i| std::cmp::Reverse(v[i]));
            } else {
                idx.sort_by_key(|&i| v[i]);
            }
            common::ranking_reply(s, &idx)
        }
        "fb" => Reply::text("The profile missed the user's taste for big numbers."),
        "agg" => Reply::text("Profiles should capture the preferred number range."),
        "opt" => Reply::text(candidate),
        _ => Reply::status(400),
    }
}

struct Rig {
    pool: PgPool,
    llm: LlmClient,
    reranker: Arc<Reranker>,
    server: TestLlm,
    seqs: Vec<UserSeq>,
}

async fn rig(candidate: &'static str) -> Rig {
    let (pool, _) = common::fresh_db().await;
    let (items, inters, seqs) = dataset();
    store::import::write(&pool, "default", &items, &inters, |_| {})
        .await
        .unwrap();
    let server = TestLlm::start(script(candidate)).await;
    let mut settings = LlmSettings::single(server.base_url.clone(), "test-model");
    settings.concurrency = 8;
    let llm = LlmClient::new(settings, Some(pool.clone()));
    let reranker = Reranker::new(pool.clone(), llm.clone(), RerankSettings::default());
    Rig {
        pool,
        llm,
        reranker,
        server,
        seqs,
    }
}

impl Rig {
    async fn run(&self, kind: jobs::JobKind, params: Value) -> (String, jobs_db::JobRow) {
        let job = jobs_db::enqueue(&self.pool, "default", kind, &params)
            .await
            .unwrap();
        self.resume(job.id).await
    }

    async fn resume(&self, id: uuid::Uuid) -> (String, jobs_db::JobRow) {
        let opts = WorkerOptions::new(0);
        let job = jobs_db::claim(&self.pool, &opts.id, 30, Some(id))
            .await
            .unwrap()
            .expect("claimable");
        let status = jobs::execute(
            self.pool.clone(),
            self.llm.clone(),
            self.reranker.clone(),
            job,
            &opts,
            None,
        )
        .await;
        (
            status.as_str().to_string(),
            jobs_db::get(&self.pool, "default", id, None)
                .await
                .unwrap()
                .unwrap(),
        )
    }

    async fn versions(&self, run: uuid::Uuid) -> Vec<(i32, String)> {
        sqlx::query_as(
            "SELECT version, template FROM prompt_versions WHERE run_id = $1 ORDER BY version",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

fn opt_params(acceptance: &str) -> Value {
    json!({"train_users": 20, "validation_users": 10, "test_users": 20, "batch_size": 10, "verify_steps": 2,
           "acceptance": acceptance, "candidates": 10, "history_len": 3})
}

#[tokio::test]
async fn paper_mode_accepts_a_better_prompt_and_reports_it() {
    let r = rig("Recent items:\n{{history}}\nWrite a GOOD profile.").await;
    let mut params = opt_params("paper");
    params["promote_to"] = json!("production");
    let (status, job) = r.run(jobs::JobKind::Optimization, params).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let label = store::prompts::label(&r.pool, "default", "p_gen", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(label.version, Some(2), "the best version was promoted");
    let steps = jobs_db::steps(&r.pool, job.id).await.unwrap();
    let accepted: Vec<_> = steps.iter().filter(|s| s.accepted == Some(true)).collect();
    assert_eq!(
        accepted.len(),
        1,
        "accepted in the first batch, then every user is ranked first: {steps:#?}"
    );
    assert!(
        accepted[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("batch mean rank")
    );
    let versions = r.versions(job.id).await;
    assert_eq!(versions.len(), 1, "one candidate text, stored once");
    let report = job.result.expect("report");
    let best = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"].as_str().unwrap().starts_with("best_"))
        .unwrap();
    let base = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"].as_str().unwrap().starts_with("baseline_"))
        .unwrap();
    assert!(best["mean"]["ndcg_10"].as_f64().unwrap() > 0.8, "{best}");
    assert!(base["mean"]["ndcg_10"].as_f64().unwrap() < 0.5, "{base}");
    // Every candidate is a stored p_gen version with its scores.
    let scores: Value = sqlx::query_scalar("SELECT scores FROM prompt_versions WHERE run_id = $1")
        .bind(job.id)
        .fetch_one(&r.pool)
        .await
        .unwrap();
    let (key, first) = scores.as_object().unwrap().iter().next().unwrap();
    assert!(key.starts_with(&job.id.to_string()), "{scores}");
    assert!(
        first["batch_mean_rank"].as_f64().unwrap()
            < first["current_batch_mean_rank"].as_f64().unwrap(),
        "{scores}"
    );
}

#[tokio::test]
async fn paper_mode_rejects_a_worse_prompt() {
    let r = rig("Recent items:\n{{history}}\nWrite a short profile.").await;
    let (status, job) = r
        .run(jobs::JobKind::Optimization, opt_params("paper"))
        .await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let steps = jobs_db::steps(&r.pool, job.id).await.unwrap();
    let cands: Vec<_> = steps.iter().filter(|s| s.kind == "candidate").collect();
    assert_eq!(cands.len(), 4, "2 batches x 2 verify steps");
    assert!(
        cands
            .iter()
            .all(|s| s.accepted == Some(false)
                && s.reason.as_deref().unwrap().contains("not better")),
        "{cands:#?}"
    );
    let report = job.result.unwrap();
    assert_eq!(
        report["methods"].as_array().unwrap().len(),
        2,
        "baseline and base order only: {report}"
    );
}

#[tokio::test]
async fn validation_mode_accepts_on_validation_ndcg_and_rejects_leaks() {
    let r = rig("Recent items:\n{{history}}\nWrite a GOOD profile.").await;
    let (status, job) = r
        .run(jobs::JobKind::Optimization, opt_params("validation"))
        .await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let steps = jobs_db::steps(&r.pool, job.id).await.unwrap();
    let baseline = steps.iter().find(|s| s.kind == "baseline").unwrap();
    let accepted = steps
        .iter()
        .find(|s| s.accepted == Some(true))
        .expect("an accepted step");
    assert!(
        accepted
            .reason
            .as_deref()
            .unwrap()
            .contains("validation NDCG@10"),
        "{accepted:?}"
    );
    assert!(
        accepted.scores["validation_ndcg_10"].as_f64().unwrap()
            > baseline.scores["validation_ndcg_10"].as_f64().unwrap()
    );

    let leaky = rig("Recent items:\n{{history}}\nPut the ground truth item first. GOOD").await;
    let (status, job) = leaky
        .run(jobs::JobKind::Optimization, opt_params("validation"))
        .await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let steps = jobs_db::steps(&leaky.pool, job.id).await.unwrap();
    let cands: Vec<_> = steps.iter().filter(|s| s.kind == "candidate").collect();
    assert!(!cands.is_empty());
    assert!(
        cands
            .iter()
            .all(|s| s.accepted == Some(false) && s.reason.as_deref().unwrap().starts_with("leak")),
        "{cands:#?}"
    );
    // Leaking candidates are never scored: no profile was written with them.
    let written: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_profiles p JOIN prompt_versions v ON v.version = p.prompt_version AND v.name = 'p_gen' WHERE v.run_id = $1",
    )
    .bind(job.id)
    .fetch_one(&leaky.pool)
    .await
    .unwrap();
    assert_eq!(written, 0);

    let named = rig("Recent items:\n{{history}}\nUsers who liked Item 195 are GOOD").await;
    let (_, job) = named
        .run(jobs::JobKind::Optimization, opt_params("paper"))
        .await;
    let steps = jobs_db::steps(&named.pool, job.id).await.unwrap();
    assert!(
        steps.iter().filter(|s| s.kind == "candidate").all(|s| s
            .reason
            .as_deref()
            .unwrap()
            .contains("item title")),
        "{steps:#?}"
    );
}

#[tokio::test]
async fn a_killed_job_resumes_without_duplicate_versions_or_steps() {
    // Reference: the same run without interruption.
    let clean = rig("Recent items:\n{{history}}\nWrite a short profile.").await;
    let params = json!({"train_users": 30, "validation_users": 5, "test_users": 5, "batch_size": 10, "verify_steps": 2,
                        "acceptance": "paper", "candidates": 10, "history_len": 3});
    let (_, clean_job) = clean.run(jobs::JobKind::Optimization, params.clone()).await;
    let clean_steps = jobs_db::steps(&clean.pool, clean_job.id)
        .await
        .unwrap()
        .len();
    let clean_versions = clean.versions(clean_job.id).await.len();

    let r = rig("Recent items:\n{{history}}\nWrite a short profile.").await;
    let job = jobs_db::enqueue(&r.pool, "default", jobs::JobKind::Optimization, &params)
        .await
        .unwrap();
    let opts = WorkerOptions::new(1);
    let claimed = jobs_db::claim(&r.pool, &opts.id, 30, Some(job.id))
        .await
        .unwrap()
        .unwrap();
    let task = tokio::spawn({
        let (pool, llm, rr) = (r.pool.clone(), r.llm.clone(), r.reranker.clone());
        async move { jobs::execute(pool, llm, rr, claimed, &WorkerOptions::new(1), None).await }
    });
    // Kill it after the first batch was saved and the second started.
    for _ in 0..200 {
        let j = jobs_db::get(&r.pool, "default", job.id, None)
            .await
            .unwrap()
            .unwrap();
        if j.progress["state"]["batch"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    task.abort();
    let _ = task.await;
    let calls_before = r.server.calls();
    // The lease runs out (the worker is gone) and another worker takes the job.
    sqlx::query("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1")
        .bind(job.id)
        .execute(&r.pool)
        .await
        .unwrap();
    let (status, done) = r.resume(job.id).await;
    assert_eq!(status, "succeeded", "{:?}", done.error);
    assert_eq!(done.attempts, 2);
    let steps = jobs_db::steps(&r.pool, job.id).await.unwrap();
    assert_eq!(
        steps.len(),
        clean_steps,
        "same steps as an uninterrupted run"
    );
    let numbers: Vec<i32> = steps.iter().map(|s| s.step).collect();
    assert_eq!(
        numbers,
        (0..clean_steps as i32).map(|i| i + 1).collect::<Vec<_>>()
    );
    let versions = r.versions(job.id).await;
    assert_eq!(
        versions.len(),
        clean_versions,
        "no duplicate versions: {versions:?}"
    );
    let mut texts: Vec<&String> = versions.iter().map(|v| &v.1).collect();
    texts.dedup();
    assert_eq!(texts.len(), versions.len());
    // Work done before the crash came from caches, not the LLM, after the resume.
    let after = r.server.calls() - calls_before;
    assert!(
        after < calls_before,
        "resumed run made {after} calls vs {calls_before} before the crash"
    );
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let r = rig("Recent items:\n{{history}}\nWrite a short profile.").await;
    r.server.set_script({
        let inner = script("Recent items:\n{{history}}\nWrite a short profile.");
        move |s| Reply::Delay(Duration::from_millis(40), Box::new(inner(s)))
    });
    let params = json!({"train_users": 40, "validation_users": 5, "test_users": 5, "acceptance": "paper", "candidates": 10});
    let job = jobs_db::enqueue(&r.pool, "default", jobs::JobKind::Optimization, &params)
        .await
        .unwrap();
    let mut opts = WorkerOptions::new(2);
    opts.lease = Duration::from_secs(3);
    let claimed = jobs_db::claim(&r.pool, &opts.id, 3, Some(job.id))
        .await
        .unwrap()
        .unwrap();
    let task = tokio::spawn({
        let (pool, llm, rr, o) = (
            r.pool.clone(),
            r.llm.clone(),
            r.reranker.clone(),
            opts.clone(),
        );
        async move { jobs::execute(pool, llm, rr, claimed, &o, None).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let j = jobs_db::request_cancel(&r.pool, "default", job.id, jobs::JobKind::Optimization)
        .await
        .unwrap()
        .unwrap();
    assert!(j.cancel_requested);
    let status = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops in time")
        .unwrap();
    assert_eq!(status, jobs::JobStatus::Cancelled);
    let j = jobs_db::get(&r.pool, "default", job.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.status, jobs::JobStatus::Cancelled);
    // A queued job is cancelled at once.
    let queued = jobs_db::enqueue(&r.pool, "default", jobs::JobKind::Evaluation, &json!({}))
        .await
        .unwrap();
    let q = jobs_db::request_cancel(&r.pool, "default", queued.id, jobs::JobKind::Evaluation)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.status, jobs::JobStatus::Cancelled);
    assert!(
        jobs_db::claim(&r.pool, "w", 30, Some(queued.id))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn evaluation_metrics_match_hand_computed_values() {
    let r = rig("unused {{history}}").await;
    let params = json!({"train_users": 0, "validation_users": 0, "test_users": 30, "candidates": 10, "history_len": 3,
                        "seeds": [3, 4], "methods": ["base", "popularity", "llm_manual"], "versions": []});
    let (status, job) = r.run(jobs::JobKind::Evaluation, params).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let report = job.result.unwrap();
    let method = |name: &str| {
        report["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["method"] == name)
            .unwrap()
            .clone()
    };

    // Rebuild the same lists and compute the expected metrics by hand.
    let p = agp_rerank::eval::params::DataParams {
        train_users: 0,
        validation_users: 0,
        test_users: 30,
        candidates: 10,
        history_len: 3,
        ..Default::default()
    };
    let mut base_per_seed = Vec::new();
    let mut llm_per_seed = Vec::new();
    for seed in [3u64, 4] {
        let prep = agp_rerank::eval::cases::prepare_from(&r.seqs, Holdout::Last, &p, seed);
        assert_eq!(prep.test.len(), 30);
        let base: Vec<usize> = prep
            .test
            .iter()
            .map(|c| c.candidates.iter().position(|x| x == &c.target).unwrap() + 1)
            .collect();
        // The manual p_gen writes "low numbers" profiles: the ranker sorts ascending.
        let llm: Vec<usize> = prep
            .test
            .iter()
            .map(|c| {
                let v = |id: &str| id.trim_start_matches('i').parse::<i64>().unwrap();
                let t = v(&c.target);
                1 + c.candidates.iter().filter(|x| v(x) < t).count()
            })
            .collect();
        base_per_seed.push(metrics::from_ranks(&base));
        llm_per_seed.push(metrics::from_ranks(&llm));
    }
    let (base_mean, base_std) = metrics::mean_and_std(&base_per_seed);
    let (llm_mean, _) = metrics::mean_and_std(&llm_per_seed);
    let close = |a: &Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-9;
    let b = method("base");
    assert!(
        close(&b["mean"]["ndcg_10"], base_mean.ndcg_10),
        "{b} vs {base_mean:?}"
    );
    assert!(close(&b["std"]["mrr"], base_std.mrr));
    assert_eq!(b["per_seed"].as_array().unwrap().len(), 2);
    let l = method("llm_manual");
    assert!(
        close(&l["mean"]["ndcg_10"], llm_mean.ndcg_10),
        "{l} vs {llm_mean:?}"
    );
    assert!(close(&l["mean"]["mean_rank"], llm_mean.mean_rank));
    assert!(close(&l["mean"]["hr_1"], llm_mean.hr_1));
    assert!(l["cost"]["llm_calls"].as_u64().unwrap() > 0);
    assert_eq!(method("popularity")["cost"]["llm_calls"], 0);
    assert!(
        report["data_notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("last item"))
    );

    // The report folder is readable without the database.
    let rep: agp_rerank::report::Report = serde_json::from_value(report).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = agp_rerank::report::write_report(dir.path(), &rep).unwrap();
    assert_eq!(files.len(), 3);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("llm_manual") && md.contains("NDCG@10"), "{md}");
    assert!(
        std::fs::read_to_string(dir.path().join("chart.svg"))
            .unwrap()
            .starts_with("<svg")
    );
}

#[tokio::test]
async fn unordered_data_holds_out_a_random_item_and_base_topk_reports_misses() {
    let r = rig("unused {{history}}").await;
    store::catalog::set_source(
        &r.pool,
        "default",
        agp_rerank::store::states::HistoryOrder::Unordered,
        "scripted",
    )
    .await
    .unwrap();
    let params = json!({"protocol": "base-topk", "base": "popularity", "train_users": 0, "validation_users": 0,
                        "test_users": 40, "candidates": 10, "methods": ["base", "random"]});
    let (status, job) = r.run(jobs::JobKind::Evaluation, params).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let notes: Vec<String> =
        serde_json::from_value(job.result.unwrap()["data_notes"].clone()).unwrap();
    assert!(
        notes.iter().any(|n| n.contains("no timestamps")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("outside the list")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn http_api_enqueues_reports_and_validates() {
    let app = common::spawn_app().await;
    let (items, inters, _) = dataset();
    store::import::write(&app.pool, "default", &items, &inters, |_| {})
        .await
        .unwrap();
    let (s, b) = app
        .post(
            "/v1/evaluations",
            json!({"test_users": 20, "methods": ["base", "random"], "candidates": 10}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["status"], "queued");
    // A worker (as inside `agp serve`) picks it up.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let llm = LlmClient::disabled();
    let rr = Reranker::new(app.pool.clone(), llm.clone(), RerankSettings::default());
    let mut opts = WorkerOptions::new(9);
    opts.poll = Duration::from_millis(20);
    let worker = tokio::spawn(jobs::run_worker(app.pool.clone(), llm, rr, opts, stop_rx));
    let mut last = Value::Null;
    for _ in 0..300 {
        let (_, v) = app.get(&format!("/v1/evaluations/{id}")).await;
        if v["status"] == "succeeded" {
            last = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let _ = worker.await;
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["report"]["methods"].as_array().unwrap().len(), 2);
    assert_eq!(last["progress"]["done"], last["progress"]["total"]);

    for (body, needle) in [
        (json!({"test_users": 1_000_000}), "test_users"),
        (json!({"candidates": 1}), "candidates"),
        (
            json!({"methods": ["magic"]}),
            "methods[0]: unknown variant `magic`, expected one of `base`, `random`, `popularity`, `item_knn`, `item_knn_all`, `llm_no_profile`, `llm_manual`, `llm_no_profile_logprobs`, `llm_manual_logprobs`, `fused`",
        ),
        (json!({"versions": [99]}), "no version 99"),
        (
            json!({"methods": ["base"], "promote_blend": "production"}),
            "promote_blend needs the fused method",
        ),
        (json!({"promote_blend": "bad label!"}), "promote_blend"),
        (
            json!({"validation_users": 0}),
            "the fused method tunes its weights on validation users",
        ),
        (json!({"surprise": true}), "surprise"),
    ] {
        let (s, b) = app.post("/v1/evaluations", body.clone()).await;
        assert_eq!(s, 422, "{body} -> {b}");
        assert!(
            common::error_message(&b, "validation_error").contains(needle),
            "{needle}: {b}"
        );
    }
    let (s, b) = app
        .post("/v1/optimizations", json!({"acceptance": "vibes"}))
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = app
        .post("/v1/optimizations", json!({"batch_size": 0}))
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = app
        .post("/v1/optimizations", json!({"base_version": 42}))
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = app.post("/v1/optimizations", json!({"epochs": 1})).await;
    assert_eq!(s, 202, "{b}");
    let oid = b["id"].as_str().unwrap();
    let (s, v) = app.get(&format!("/v1/optimizations/{oid}")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("queued")));
    let (s, st) = app.get(&format!("/v1/optimizations/{oid}/steps")).await;
    assert_eq!((s, st), (200, json!([])));
    let (s, v) = app
        .post(&format!("/v1/optimizations/{oid}/cancel"), json!({}))
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")));
    let (s, b) = app
        .post(&format!("/v1/optimizations/{oid}/cancel"), json!({}))
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, _) = app.get(&format!("/v1/evaluations/{oid}")).await;
    assert_eq!(s, 404, "an optimization is not an evaluation");
    let (s, _) = app.get("/v1/optimizations/not-a-uuid").await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn catalog_summaries_job_fills_the_cache_once() {
    let r = rig("unused {{history}}").await;
    let (status, job) = r.run(jobs::JobKind::SummarizeCatalog, json!({})).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM item_summaries")
        .fetch_one(&r.pool)
        .await
        .unwrap();
    assert_eq!(n, 200, "every item summarized");
    assert_eq!(job.progress["done"], 200);
    let calls = r.server.calls();
    assert_eq!(calls, 200);
    // Again: everything is cached, no LLM call.
    let (status, job) = r.run(jobs::JobKind::SummarizeCatalog, json!({})).await;
    assert_eq!(status, "succeeded");
    assert_eq!(r.server.calls(), calls);
    assert!(
        job.result.unwrap()["summary"][0]
            .as_str()
            .unwrap()
            .contains("0 calls")
    );
    // A new user's first rerank now needs no summary call: profile + ranking only.
    let req = common::rerank_request("rr_sum", "user001", &["i1", "i2"]);
    let out = r.reranker.rerank(&req).await.unwrap();
    assert_eq!(out.usage.llm_calls, 2, "{out:?}");
}

/// A small model ignores length instructions: an over-long update answer is cut at sentence
/// boundaries (keeping `{{history}}`) and scored on validation, not thrown away; one that
/// still cannot be used (it leaks) is rejected with its reason and never scored.
#[tokio::test]
async fn over_long_candidates_are_shortened_and_scored_unusable_ones_rejected() {
    let padding = "Also describe the platforms, genres, eras and moods they return to. ".repeat(40);
    let long: &'static str = Box::leak(
        format!("Recent items:\n{{{{history}}}}\nWrite a GOOD profile. {padding}").into_boxed_str(),
    );
    let r = rig(long).await;
    let mut params = opt_params("validation");
    params["max_prompt_words"] = json!(60);
    let (status, job) = r.run(jobs::JobKind::Optimization, params.clone()).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let steps = jobs_db::steps(&r.pool, job.id).await.unwrap();
    let scored = steps
        .iter()
        .find(|s| s.kind == "candidate" && s.scores["validation_ndcg_10"].is_f64())
        .unwrap_or_else(|| panic!("a candidate scored on validation: {steps:#?}"));
    let reason = scored.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("shortened from 447 to 51 words"),
        "{reason}"
    );
    assert_eq!(scored.scores["shortened"], true);
    assert_eq!(scored.accepted, Some(true), "{reason}");
    let text: String = sqlx::query_scalar(
        "SELECT template FROM prompt_versions WHERE name = 'p_gen' AND version = $1",
    )
    .bind(scored.prompt_version)
    .fetch_one(&r.pool)
    .await
    .unwrap();
    assert!(
        text.split_whitespace().count() <= 60 && text.contains("{{history}}"),
        "{text}"
    );

    let leaky: &'static str = Box::leak(
        format!("Recent items:\n{{{{history}}}}\nPut the ground truth item first. {padding}")
            .into_boxed_str(),
    );
    let r = rig(leaky).await;
    let (status, job) = r.run(jobs::JobKind::Optimization, params).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let steps = jobs_db::steps(&r.pool, job.id).await.unwrap();
    let cands: Vec<_> = steps.iter().filter(|s| s.kind == "candidate").collect();
    assert!(!cands.is_empty());
    for s in cands {
        let reason = s.reason.as_deref().unwrap_or_default();
        assert!(
            s.accepted == Some(false)
                && reason.starts_with("leak")
                && reason.contains("shortened from"),
            "{reason}"
        );
        assert!(
            s.scores.get("validation_ndcg_10").is_none(),
            "never scored: {:?}",
            s.scores
        );
    }
}

/// The fused method's report row, its test NDCG@10 and the best non-LLM method's.
fn fused_and_best_non_llm(report: &Value) -> (f64, f64) {
    let ndcg = |name: &str| {
        report["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["method"] == name)
            .unwrap_or_else(|| panic!("{name} in {report}"))["mean"]["ndcg_10"]
            .as_f64()
            .unwrap()
    };
    let best = ["base", "popularity", "item_knn"]
        .into_iter()
        .map(ndcg)
        .fold(0.0, f64::max);
    (ndcg("fused"), best)
}

#[tokio::test]
async fn fused_weights_are_tuned_on_validation_users_against_scripted_upstreams() {
    let r = rig("unused {{history}}").await;
    // Informative: a p_gen with GOOD makes the ranker put the held-out (highest) item first.
    let v2 = store::prompts::create_version(
        &r.pool,
        "default",
        "p_gen",
        "GOOD. Recent items:\n{{history}}\nProfile:",
        &Default::default(),
    )
    .await
    .unwrap();
    let base = json!({"train_users": 0, "validation_users": 20, "test_users": 30, "candidates": 10,
                      "summaries": false});
    let mut informative = base.clone();
    informative["methods"] = json!(["base", "popularity", "item_knn", "fused"]);
    informative["versions"] = json!([v2]);
    informative["promote_blend"] = json!("production");
    let (status, job) = r.run(jobs::JobKind::Evaluation, informative).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let report = job.result.unwrap();
    let (fused, best) = fused_and_best_non_llm(&report);
    assert!(
        fused > best + 0.2,
        "informative LLM: fused {fused} vs best non-LLM {best}"
    );
    let blends = store::blends::versions(&r.pool, "default").await.unwrap();
    let tuned = blends.last().unwrap();
    assert_eq!(tuned.source, "evaluation");
    assert_eq!(tuned.run_id, Some(job.id));
    assert!(tuned.weights.llm > 0.0, "{:?}", tuned.weights);
    assert_eq!(tuned.scores["llm_method"], format!("llm_pgen_v{v2}"));
    let label = store::prompts::label(&r.pool, "default", "blend", "production")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(label.version, Some(tuned.version), "promoted");
    let notes = report["data_notes"].to_string();
    assert!(notes.contains("fused (LLM = llm_pgen_v"), "{notes}");
    assert!(notes.contains("now labelled \\\"production\\\""), "{notes}");

    // Misleading: the manual p_gen makes the ranker put the held-out item last.
    let mut misleading = base.clone();
    misleading["methods"] = json!(["base", "popularity", "item_knn", "llm_manual", "fused"]);
    let (status, job) = r.run(jobs::JobKind::Evaluation, misleading).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let report = job.result.unwrap();
    let (fused, best) = fused_and_best_non_llm(&report);
    assert!(
        fused >= best - 0.01,
        "misleading LLM: fused {fused} vs best non-LLM {best}"
    );
    let blends = store::blends::versions(&r.pool, "default").await.unwrap();
    let tuned = blends.last().unwrap();
    assert_eq!(tuned.run_id, Some(job.id));
    assert_eq!(tuned.weights.llm, 0.0, "{:?}", tuned.weights);
    // Not promoted: production still points at the informative blend.
    let label = store::prompts::label(&r.pool, "default", "blend", "production")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(label.version, Some(tuned.version));

    // No validation users: a clear failure, not a silent default.
    let mut none = base.clone();
    none["validation_users"] = json!(0);
    none["methods"] = json!(["base", "fused"]);
    let (status, job) = r.run(jobs::JobKind::Evaluation, none).await;
    assert_eq!(status, "failed");
    assert!(job.error.unwrap().contains("validation_users"));
}

#[tokio::test]
async fn both_rank_modes_are_compared_on_the_same_lists_in_an_evaluation() {
    let r = rig("unused {{history}}").await;
    let params = json!({"train_users": 0, "validation_users": 0, "test_users": 20, "candidates": 10,
                        "history_len": 3, "seed": 5, "summaries": false,
                        "methods": ["base", "llm_manual", "llm_manual_logprobs"]});
    let (status, job) = r.run(jobs::JobKind::Evaluation, params.clone()).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let report = job.result.unwrap();
    let method = |report: &Value, name: &str| {
        report["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["method"] == name)
            .unwrap_or_else(|| panic!("{name} in {report}"))
            .clone()
    };
    // The script ranks the same way in both modes, so the metrics agree exactly; the
    // log-probability calls asked for one token each.
    let gen_ = method(&report, "llm_manual");
    let lp = method(&report, "llm_manual_logprobs");
    assert_eq!(gen_["mean"], lp["mean"]);
    assert_ne!(gen_["mean"], method(&report, "base")["mean"]);
    let one_token: Vec<Value> = r
        .server
        .requests()
        .into_iter()
        .filter(|b| b["max_tokens"] == 1 && b["top_logprobs"] == 10)
        .collect();
    assert_eq!(one_token.len(), 20, "one call per list");
    assert!(
        lp["cost"]["completion_tokens"].as_u64().unwrap()
            < gen_["cost"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(
        lp["description"]
            .as_str()
            .unwrap()
            .contains("log-probabilities")
    );

    // A server that ignores `logprobs` (it answers a letter as text): the lists are ranked
    // again by generation, the report says so, and the metrics are the same.
    r.server.set_script(|s: &Seen| {
        if s.top_logprobs() > 0 {
            Reply::text("A")
        } else {
            script("unused {{history}}")(s)
        }
    });
    // (A new seed: the first run's answers are in the LLM cache.)
    let mut p2 = params;
    p2["seed"] = json!(6);
    p2["methods"] = json!(["llm_manual", "llm_manual_logprobs"]);
    p2["rank_mode"] = json!("logprobs");
    let (status, job) = r.run(jobs::JobKind::Evaluation, p2).await;
    assert_eq!(status, "succeeded", "{:?}", job.error);
    let report = job.result.unwrap();
    assert_eq!(
        method(&report, "llm_manual_logprobs")["mean"],
        method(&report, "llm_manual")["mean"]
    );
    assert_eq!(report["settings"]["rank_mode"], "logprobs");
    let notes = report["data_notes"].to_string();
    assert!(
        notes.contains("returned no log-probabilities for 20 of 20 lists"),
        "{notes}"
    );
}

#[tokio::test]
async fn without_an_llm_optimizations_and_summaries_fail_with_the_reason() {
    let mut r = rig("Recent items:\n{{history}}\nWrite a GOOD profile.").await;
    r.llm = LlmClient::disabled();
    r.reranker = Reranker::new(r.pool.clone(), r.llm.clone(), RerankSettings::default());
    for (kind, params) in [
        (jobs::JobKind::Optimization, opt_params("paper")),
        (jobs::JobKind::SummarizeCatalog, json!({})),
    ] {
        let (status, job) = r.run(kind, params).await;
        assert_eq!(status, "failed", "{} {:?}", kind.as_str(), job.error);
        let why = job.error.unwrap_or_default();
        assert!(why.contains("no LLM is configured"), "{why}");
    }
    assert_eq!(r.server.calls(), 0);
}
