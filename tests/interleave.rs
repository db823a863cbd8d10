//! Interleaved experiments end to end (real router, real Postgres, the scripted test LLM):
//! the served list is the team-draft merge of both arms' rankings (seeded by the request id,
//! teams logged per position), clicks credit the teams, late feedback moves a request from a
//! loss to a tie, an interleaved experiment is promoted through the API with its cost in the
//! figures, a blend experiment ranks once, and a deliberately broken split is voided by the
//! sequential sample-ratio check.

mod common;

use std::time::Duration;

use agp_rerank::experiment::interleave::{Team, encode_teams, seed, team_draft};
use agp_rerank::experiment::{self, Observed};
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::serving::choose_arm;
use agp_rerank::store::prompts::SplitArm;
use common::{TestApp, candidate_values, llm_step, ranking_reply, result_ids};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Profiles say which way their prompt sorts; rankings sort the candidates' numbers
/// ascending for an ASC profile, descending for a DESC one.
fn script(s: &Seen) -> Reply {
    match llm_step(s) {
        "gen" if s.last_user().contains("DESC") => Reply::text("profile: DESC"),
        "gen" => Reply::text("profile: ASC"),
        "rank" => {
            let v = candidate_values(s);
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by_key(|&i| v[i]);
            if s.last_user().contains("profile: DESC") {
                idx.reverse();
            }
            ranking_reply(s, &idx)
        }
        _ => Reply::text("a summary"),
    }
}

/// p_gen v2 sorts ascending, v3 descending; blend v1 is the LLM alone, v2 the incoming order.
async fn rig() -> (TestApp, TestLlm) {
    let (app, llm) = common::spawn_app_scripted(script).await;
    let items: Vec<Value> = (0..30)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    let inters: Vec<Value> = (0..300)
        .flat_map(|u| {
            [20, 21].map(|i| json!({"user_id": format!("u{u}"), "item_id": format!("i{i}")}))
        })
        .collect();
    let (s, b) = app
        .post("/v1/interactions", json!({"interactions": inters}))
        .await;
    assert_eq!(s, 200, "{b}");
    for (weights, v) in [(json!({"llm": 1}), 2), (json!({"incoming": 1}), 3)] {
        let (s, b) = app
            .post("/v1/blends/versions", json!({"weights": weights}))
            .await;
        assert_eq!((s, b["version"].as_i64()), (201, Some(v)), "{b}");
    }
    app.put("/v1/blends/labels/production", json!({"version": 2}))
        .await;
    for (text, v) in [("ASC {{history}}", 2), ("DESC {{history}}", 3)] {
        let (s, b) = app
            .post("/v1/prompts/p_gen/versions", json!({"template": text}))
            .await;
        assert_eq!((s, b["version"].as_i64()), (201, Some(v)), "{b}");
    }
    app.put("/v1/prompts/p_gen/labels/production", json!({"version": 2}))
        .await;
    (app, llm)
}

async fn start(app: &TestApp, body: Value) -> String {
    let (s, e) = app.post("/v1/experiments", body).await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["status"], "running");
    e["id"].as_str().unwrap().to_string()
}

/// Candidates i0..i9 in a shuffled order (seeded per user).
fn candidates(user: usize) -> Vec<usize> {
    let mut c: Vec<usize> = (0..10).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(user as u64);
    for i in (1..c.len()).rev() {
        c.swap(i, rng.random_range(0..=i));
    }
    c
}

async fn rerank(app: &TestApp, user: usize) -> Value {
    let cands: Vec<Value> = candidates(user)
        .iter()
        .map(|i| json!({"id": format!("i{i}")}))
        .collect();
    let (s, b) = app
        .post(
            "/v1/rerank",
            json!({"user_id": format!("u{user}"), "candidates": cands}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b
}

fn number(id: &str) -> usize {
    id.trim_start_matches('i').parse().unwrap()
}

fn teams(b: &Value) -> Vec<Team> {
    serde_json::from_value(b["meta"]["interleaving"]["teams"].clone()).unwrap()
}

async fn click(app: &TestApp, b: &Value, user: usize, item: &str) {
    let (s, r) = app
        .post(
            "/v1/feedback",
            json!({"request_id": b["id"], "user_id": format!("u{user}"), "item_id": item, "kind": "click"}),
        )
        .await;
    assert!(s == 200 || s == 201, "{s} {r}");
}

async fn read(app: &TestApp, id: &str) -> Value {
    let (s, e) = app.get(&format!("/v1/experiments/{id}")).await;
    assert_eq!(s, 200, "{e}");
    e
}

/// The logged row's teams and prompt versions (waits for the journal to drain it).
async fn logged_row(app: &TestApp, id: &str) -> (Option<String>, Value) {
    for _ in 0..100 {
        let row: Option<(Option<String>, Value)> =
            sqlx::query_as("SELECT teams, prompt_versions FROM rerank_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        if let Some(r) = row {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("request {id} never reached the log");
}

#[tokio::test]
async fn an_interleaved_list_is_the_team_draft_merge_of_both_rankings() {
    let (app, _llm) = rig().await;
    start(
        &app,
        json!({"design": "interleave", "control": 2, "treatment": 3, "treatment_share": 0.8}),
    )
    .await;
    let (mut interleaved, mut control_only) = (0, 0);
    for user in 0..30 {
        let b = rerank(&app, user).await;
        let ids = result_ids(&b);
        let cands = candidates(user);
        let index = |id: &str| cands.iter().position(|c| *c == number(id)).unwrap();
        if b["meta"]["interleaving"].is_null() {
            // Outside the share: the control (ascending) alone.
            control_only += 1;
            let values: Vec<usize> = ids.iter().map(|i| number(i)).collect();
            assert!(values.windows(2).all(|w| w[0] < w[1]), "{b}");
            assert_eq!(b["meta"]["prompt"]["version"], 2);
            continue;
        }
        interleaved += 1;
        let m = &b["meta"]["interleaving"];
        assert_eq!(
            (
                m["name"].as_str(),
                m["control"].as_i64(),
                m["treatment"].as_i64()
            ),
            (Some("p_gen"), Some(2), Some(3)),
            "{b}"
        );
        // Both arms' top items in the first two places.
        let top2: Vec<usize> = ids[..2].iter().map(|i| number(i)).collect();
        assert!(top2.contains(&0) && top2.contains(&9), "{b}");
        // Each team's items keep their ranking's relative order.
        let t = teams(&b);
        assert_eq!(t.len(), 10);
        for (team, ascending) in [(Team::Control, true), (Team::Treatment, false)] {
            let v: Vec<usize> = ids
                .iter()
                .zip(&t)
                .filter(|(_, x)| **x == team)
                .map(|(i, _)| number(i))
                .collect();
            assert!(
                v.windows(2).all(|w| (w[0] < w[1]) == ascending),
                "{team:?}: {v:?}"
            );
        }
        // Exactly the team-draft merge with the request's coins (a replay is identical).
        let asc: Vec<usize> = (0..10).map(|v| index(&format!("i{v}"))).collect();
        let desc: Vec<usize> = asc.iter().rev().copied().collect();
        let merged = team_draft(&asc, &desc, seed(b["id"].as_str().unwrap()));
        let served: Vec<usize> = ids.iter().map(|i| index(i)).collect();
        assert_eq!((merged.order, merged.teams.clone()), (served, t.clone()));
        // Two rankings (and two profiles, unless cached: every user here has one history).
        let calls = b["meta"]["usage"]["llm_calls"].as_u64().unwrap();
        assert!(calls == 2 || calls == 4, "{b}");
        // The log keeps the team of every position.
        let logged = logged_row(&app, b["id"].as_str().unwrap()).await;
        assert_eq!(logged.0, Some(encode_teams(&t)));
        assert_eq!(logged.1["p_gen"], 3);
    }
    assert!(
        interleaved >= 15 && control_only >= 1,
        "{interleaved} interleaved, {control_only} control only"
    );
    // One interleaved experiment per project.
    let (s, b) = app
        .post(
            "/v1/experiments",
            json!({"name": "blend", "design": "interleave", "control": 2, "treatment": 3}),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interleaved"),
        "{b}"
    );
}

#[tokio::test]
async fn clicks_credit_the_teams_and_late_feedback_turns_a_loss_into_a_tie() {
    let (app, _llm) = rig().await;
    let id = start(
        &app,
        json!({"design": "interleave", "control": 2, "treatment": 3, "treatment_share": 0.99}),
    )
    .await;
    // Two requests of one interleaved user.
    let user = (0..300)
        .find(|u| {
            let arms = [
                SplitArm {
                    version: 2,
                    weight: 0.01,
                },
                SplitArm {
                    version: 3,
                    weight: 0.99,
                },
            ];
            choose_arm("p_gen/production", &format!("u{u}"), &arms) == Some(3)
        })
        .unwrap();
    let first = rerank(&app, user).await;
    let second = rerank(&app, user).await;
    let team_item = |b: &Value, team: Team| {
        result_ids(b)
            .into_iter()
            .zip(teams(b))
            .find(|(_, t)| *t == team)
            .map(|(i, _)| i)
            .unwrap()
    };
    // The first: a click on the treatment's item (a win).
    click(&app, &first, user, &team_item(&first, Team::Treatment)).await;
    // The second: a click on the control's item (a loss)...
    click(&app, &second, user, &team_item(&second, Team::Control)).await;
    let e = read(&app, &id).await;
    let m = &e["result"]["treatment"]["interleaving"];
    assert_eq!(
        (m["wins"].as_u64(), m["losses"].as_u64(), m["ties"].as_u64()),
        (Some(1), Some(1), Some(0)),
        "{e}"
    );
    assert_eq!(m["preference_users"], 1);
    assert_eq!(m["preference"], 0.0);
    assert_eq!(
        (m["control_clicks"].as_u64(), m["treatment_clicks"].as_u64()),
        (Some(1), Some(1))
    );
    // ...then, later, one on its treatment item too: the request is now a tie.
    click(&app, &second, user, &team_item(&second, Team::Treatment)).await;
    let e = read(&app, &id).await;
    let m = &e["result"]["treatment"]["interleaving"];
    assert_eq!(
        (m["wins"].as_u64(), m["losses"].as_u64(), m["ties"].as_u64()),
        (Some(1), Some(0), Some(1)),
        "{e}"
    );
    assert_eq!(m["preference"], 1.0, "(1 win - 0 losses) / 1");
    assert_eq!(
        (m["control_clicks"].as_u64(), m["treatment_clicks"].as_u64()),
        (Some(1), Some(2))
    );
    // The same figures from the whole log.
    let row = agp_rerank::store::experiments::get(&app.pool, "default", id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let observed = agp_rerank::store::experiments::observed_full(&app.pool, "default", &row)
        .await
        .unwrap();
    let t: Vec<&Observed> = observed.iter().filter(|o| o.treatment).collect();
    let whole = experiment::arm_metrics(3, &t, 10).interleaving.unwrap();
    assert_eq!(serde_json::to_value(&whole).unwrap(), *m);
}

/// Sends `users` interleaved users a request each; each clicks the highest-numbered of the
/// first three shown with probability `p_high`, else the lowest (the DESC treatment's items
/// are the high ones).
async fn traffic(app: &TestApp, users: std::ops::Range<usize>, p_high: f64, seed: u64) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut sent = 0;
    for user in users {
        let b = rerank(app, user).await;
        sent += 1;
        let mut top: Vec<String> = result_ids(&b).into_iter().take(3).collect();
        top.sort_by_key(|i| number(i));
        let item = if rng.random::<f64>() < p_high {
            top.last()
        } else {
            top.first()
        };
        click(app, &b, user, item.unwrap()).await;
    }
    sent
}

#[tokio::test]
async fn an_interleaved_experiment_is_promoted_end_to_end_with_its_cost_in_the_figures() {
    let (app, _llm) = rig().await;
    let id = start(
        &app,
        json!({"design": "interleave", "control": 2, "treatment": 3, "treatment_share": 0.5,
               "settings": {"min_users": 30, "guardrails": {"min_requests": 20}}}),
    )
    .await;
    let mut e = Value::Null;
    for round in 0..6 {
        traffic(&app, round * 40..(round + 1) * 40, 0.75, round as u64).await;
        e = read(&app, &id).await;
        if e["status"] != "running" {
            break;
        }
    }
    assert_eq!(e["status"], "promoted", "{e}");
    assert_eq!(e["design"], "interleave");
    let reason = e["reason"].as_str().unwrap();
    assert!(reason.contains("per-user preference"), "{reason}");
    let m = &e["result"]["treatment"]["interleaving"];
    assert!(m["preference"].as_f64().unwrap() > 0.2, "{e}");
    assert!(m["preference_users"].as_u64().unwrap() >= 30, "{e}");
    assert!(m["wins"].as_u64() > m["losses"].as_u64());
    // The cost: two rankings (and profiles, cached here: one history for every user) per
    // interleaved request, one for the control alone; the token guardrail allows it.
    let (c, t) = (&e["result"]["control"], &e["result"]["treatment"]);
    let calls = |a: &Value| a["llm_calls_per_rerank"].as_f64().unwrap();
    assert!((calls(t) / calls(c) - 2.0).abs() < 0.1, "{e}");
    let tokens = |a: &Value| a["tokens_per_rerank"].as_f64().unwrap();
    assert!(tokens(t) > 1.5 * tokens(c), "{e}");
    // The history for the chart, and the label now points at the treatment.
    assert!(!e["result"]["history"].as_array().unwrap().is_empty());
    assert!(e["srm_p"].as_f64().unwrap() > 0.001);
    let (_, p) = app.get("/v1/prompts").await;
    let prod = p
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "p_gen"))
        .and_then(|x| x["labels"].as_array())
        .and_then(|l| l.iter().find(|l| l["label"] == "production"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(prod["version"], 3, "{p}");
    assert!(prod.get("interleave").is_none(), "{prod}");
}

#[tokio::test]
async fn an_interleaved_blend_experiment_ranks_once() {
    let (app, llm) = rig().await;
    // The incoming order (treatment) against the LLM's ascending order (control).
    let id = start(
        &app,
        json!({"name": "blend", "design": "interleave", "control": 2, "treatment": 3, "treatment_share": 0.99}),
    )
    .await;
    let before = llm.calls();
    let mut merged = 0;
    for user in 0..10 {
        let b = rerank(&app, user).await;
        if b["meta"]["interleaving"].is_null() {
            continue;
        }
        merged += 1;
        assert_eq!(b["meta"]["interleaving"]["name"], "blend");
        assert_eq!(b["meta"]["blend"]["version"], 3);
        // The LLM's top (i0) and the incoming top are the first two.
        let ids = result_ids(&b);
        let incoming_top = format!("i{}", candidates(user)[0]);
        assert!(
            ids[..2].contains(&"i0".to_string()) && ids[..2].contains(&incoming_top),
            "{b}"
        );
        assert!(
            b["meta"]["usage"]["llm_calls"].as_u64().unwrap_or(0) <= 2,
            "{b}"
        );
    }
    assert!(merged >= 8);
    assert!(
        llm.calls() - before <= 20,
        "one profile and one ranking per request"
    );
    let e = read(&app, &id).await;
    assert_eq!(e["status"], "running", "{e}");
}

#[tokio::test]
async fn a_deliberately_broken_split_is_voided_by_the_sequential_check() {
    let (app, _llm) = rig().await;
    let id = start(
        &app,
        json!({"control": 2, "treatment": 3, "treatment_share": 0.5,
               "settings": {"min_users": 100000, "max_users": 100000}}),
    )
    .await;
    // Someone moves the label under the experiment: 80/20 served against a 50/50 plan.
    let (s, b) = app
        .put(
            "/v1/prompts/p_gen/labels/production",
            json!({"split": [{"version": 2, "weight": 0.8}, {"version": 3, "weight": 0.2}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let mut e = Value::Null;
    let mut users = 0;
    while users < 300 {
        for user in users..users + 20 {
            rerank(&app, user).await;
        }
        users += 20;
        e = read(&app, &id).await;
        if e["status"] != "running" {
            break;
        }
    }
    assert_eq!(e["status"], "void", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("sample ratio mismatch"),
        "{e}"
    );
    assert!(e["srm_p"].as_f64().unwrap() < 0.001, "{e}");
    assert!(users <= 300, "voided after {users} users");
}
