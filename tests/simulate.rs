//! `agp import --hold-out-last` and `agp simulate` (the real binary) against the real app on
//! real Postgres, with the shipped Amazon Games sample: the simulator refuses a service that
//! already holds the users' held-out items and runs after a hold-out import; a blend experiment
//! is reported per arm, and item-kNN no longer finds nearly every held-out item once it cannot
//! see them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use agp_rerank::import::{self, Format};
use agp_rerank::simulator::{self, ClickModel, Lists, SimOptions};
use common::TestApp;
use common::proc::{agp, ok};
use serde_json::{Value, json};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/amazon-games-sample")
}

/// `agp import` of the sample into the app's database; its standard output.
fn import(app: &TestApp, dir: &Path, hold_out: bool) -> String {
    let mut c = agp(dir);
    c.arg("--database-url")
        .arg(&app.db_url)
        .args(["import", "--format", "recbole"])
        .arg(sample());
    if hold_out {
        c.arg("--hold-out-last");
    }
    ok(c.output().unwrap())
}

/// `agp simulate` of the sample against the app (off the runtime, which serves the app).
async fn simulate(app: &TestApp, dir: &Path, extra: &[&str]) -> Output {
    let mut c = agp(dir);
    c.args(["simulate", "--format", "recbole"])
        .arg(sample())
        .args(["--url", &app.base, "--concurrency", "2"])
        .args(extra);
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON report of a `simulate --json` that must succeed.
fn report(out: Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn the_simulator_refuses_a_service_that_holds_the_held_out_items() {
    let dir = tempfile::tempdir().unwrap();

    // Everything imported: every sampled user's held-out item is in the service.
    let leaky = common::spawn_app().await;
    import(&leaky, dir.path(), false);
    let out = simulate(&leaky, dir.path(), &["--requests", "40"]).await;
    let err = stderr(&out);
    assert!(!out.status.success(), "a leak is refused: {err}");
    assert!(
        err.contains("held-out item of 20 of 20 sampled users")
            && err.contains("agp import --hold-out-last")
            && err.contains("--allow-leak"),
        "{err}"
    );
    // --allow-leak: it runs, with a warning.
    let out = simulate(
        &leaky,
        dir.path(),
        &["--requests", "40", "--allow-leak", "--json"],
    )
    .await;
    assert!(stderr(&out).contains("WARNING"), "{}", stderr(&out));
    let r = report(out);
    assert_eq!(
        (r["requests"].as_u64(), r["failures"].as_u64()),
        (Some(40), Some(0)),
        "{r}"
    );

    // A hold-out import: the service holds every interaction but the 300 targets.
    let honest = common::spawn_app().await;
    let said = import(&honest, dir.path(), true);
    assert!(said.contains("held out 300 interactions"), "{said}");
    let data = import::read(Format::Recbole, &[sample()]).unwrap();
    assert_eq!(
        honest.count("SELECT count(*) FROM interactions").await as usize,
        data.interactions.len() - 300
    );
    let out = simulate(&honest, dir.path(), &["--requests", "40", "--json"]).await;
    assert!(
        stderr(&out).contains("none of 20 sampled users"),
        "{}",
        stderr(&out)
    );
    let r = report(out);
    assert_eq!(
        (r["requests"].as_u64(), r["failures"].as_u64()),
        (Some(40), Some(0)),
        "{r}"
    );

    // One planned user's held-out item sent afterwards: that one is found.
    let o = SimOptions {
        url: honest.base.clone(),
        key: None,
        requests: 40,
        users: 500,
        candidates: 20,
        lists: Lists::Llmrank,
        history_len: 20,
        click: ClickModel::default(),
        seed: 1,
        concurrency: 1,
        kind: "click".into(),
    };
    let planned = simulator::planned_users(&data, &o);
    let user = &planned[7];
    let (s, b) = honest
        .post(
            "/v1/interactions",
            json!({"interactions": [{"user_id": user.id, "item_id": user.target}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let check = simulator::check_leak(&data, &o, simulator::LEAK_SAMPLE)
        .await
        .unwrap();
    assert_eq!(check.sampled, 20);
    assert_eq!(check.leaking, vec![(user.id.clone(), user.target.clone())]);
    let out = simulate(&honest, dir.path(), &["--requests", "40"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("of 1 of 20 sampled users"),
        "{}",
        stderr(&out)
    );
}

/// A blend experiment between the caller's order and item-kNN; the per-arm report of 300
/// simulated requests.
async fn blend_experiment(hold_out: bool) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_app().await;
    import(&app, dir.path(), hold_out);
    for (weights, version) in [(json!({"incoming": 1}), 2), (json!({"item_knn": 1}), 3)] {
        let (s, b) = app
            .post("/v1/blends/versions", json!({"weights": weights}))
            .await;
        assert_eq!((s, b["version"].as_i64()), (201, Some(version)), "{b}");
    }
    let (s, b) = app
        .put("/v1/blends/labels/production", json!({"version": 2}))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app
        .post(
            "/v1/experiments",
            json!({"name": "blend", "control": 2, "treatment": 3, "treatment_share": 0.5,
                   "settings": {"min_users": 10000}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let mut args = vec!["--requests", "300", "--users", "300", "--json"];
    if !hold_out {
        args.push("--allow-leak");
    }
    let r = report(simulate(&app, dir.path(), &args).await);
    assert_eq!(
        (r["requests"].as_u64(), r["failures"].as_u64()),
        (Some(300), Some(0)),
        "{r}"
    );
    eprintln!("hold-out {hold_out}: {:#}", r["by_arm"]);
    let arms = r["by_arm"].as_object().unwrap();
    let keys: Vec<&str> = arms.keys().map(String::as_str).collect();
    assert_eq!(keys, ["p_gen v1 · blend v2", "p_gen v1 · blend v3"], "{r}");
    let total: u64 = arms.values().map(|a| a["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 300);
    for a in arms.values() {
        let n = a["requests"].as_f64().unwrap();
        assert!(n >= 100.0, "a 50/50 split of 300 users: {r}");
        let ctr = a["click_through"].as_f64().unwrap();
        assert!((ctr - a["clicked_requests"].as_f64().unwrap() / n).abs() < 1e-12);
        assert!(a["hr_at_k"].as_f64().unwrap() >= a["click_through"].as_f64().unwrap() - 1e-12);
    }
    r
}

#[tokio::test]
async fn a_blend_experiment_is_reported_per_arm_and_item_knn_cannot_see_the_future() {
    let mrr = |r: &Value, arm: &str| r["by_arm"][arm]["mrr"].as_f64().unwrap();
    let (incoming, knn) = ("p_gen v1 · blend v2", "p_gen v1 · blend v3");

    // The set-up: item-kNN fit on the held-out items finds nearly all of them.
    let leaky = blend_experiment(false).await;
    assert!(mrr(&leaky, knn) > 0.9, "{leaky}");

    // Held out: item-kNN is far from finding every item (on this 300-user sample the
    // co-occurrence model is sparse: it lands near the caller's shuffled order). The caller's
    // order does not depend on what the service holds.
    let honest = blend_experiment(true).await;
    let (i, k) = (mrr(&honest, incoming), mrr(&honest, knn));
    assert!(i < 0.35, "the caller's order is a random one: {honest}");
    assert!(
        (i - mrr(&leaky, incoming)).abs() < 1e-12,
        "{leaky} {honest}"
    );
    assert!(k < 0.5, "incoming {i}, item-kNN {k}: {honest}");
}
