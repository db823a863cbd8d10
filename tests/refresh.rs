//! Profiles refreshed ahead of time, on real Postgres: new interactions start a background
//! profile write that the user's next rerank uses (one LLM call, `meta.profile_source:
//! "refreshed_ahead"`), and a refresh racing an inline write makes one profile call, not two;
//! `agp import --refresh-profiles` writes the imported users' profiles (and only when asked).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agp_rerank::config::AppConfig;
use agp_rerank::llm::Role;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, Seen, TestLlm};
use agp_rerank::serving::refresh::RefreshOptions;
use serde_json::{Value, json};

/// The app with refresh ahead on (or off), summaries off, over a reversing LLM whose
/// profile answers take `profile_ms`; counts the profile calls.
async fn app(refresh: bool, profile_ms: u64) -> (common::TestApp, TestLlm, Arc<AtomicUsize>) {
    let profiles = Arc::new(AtomicUsize::new(0));
    let seen = profiles.clone();
    let llm = TestLlm::start(move |s: &Seen| {
        if s.role() == Some(Role::Profile) {
            seen.fetch_add(1, Ordering::SeqCst);
            return Reply::text("Likes tactical games.").after(profile_ms);
        }
        common::reversing_llm(s)
    })
    .await;
    let mut config = AppConfig::default();
    config.rerank.summaries = false;
    config.refresh = refresh.then(|| RefreshOptions {
        per_second: 100.0,
        ..Default::default()
    });
    let settings = LlmSettings::single(llm.base_url.clone(), "test-model");
    let app = common::spawn_app_with_llm(config, settings).await;
    let items: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    (app, llm, profiles)
}

async fn interact(app: &common::TestApp, user: &str, item: &str) {
    let (s, b) = app
        .post(
            "/v1/interactions",
            json!({"interactions": [{"user_id": user, "item_id": item}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

async fn rerank(app: &common::TestApp, user: &str) -> Value {
    let (s, b) = app
        .post(
            "/v1/rerank",
            json!({"user_id": user, "candidates": [{"id": "i5"}, {"id": "i6"}, {"id": "i7"}]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["meta"]["fallback"].is_null(), "{b}");
    b
}

/// Waits until `n` profiles written by a refresh are stored.
async fn refreshed(app: &common::TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app
        .count("SELECT count(*) FROM user_profiles WHERE written_by = 'ahead'")
        .await
        < n
    {
        assert!(Instant::now() < deadline, "no refresh after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_next_rerank_uses_the_profile_refreshed_ahead_with_one_llm_call() {
    let (app, _llm, profiles) = app(true, 0).await;
    interact(&app, "u1", "i0").await;
    refreshed(&app, 1).await;
    let b = rerank(&app, "u1").await;
    assert_eq!(b["meta"]["profile_source"], "refreshed_ahead", "{b}");
    assert_eq!(b["meta"]["usage"]["llm_calls"], 1, "the ranking only: {b}");
    // A returning user whose history changed: refreshed again, still one call.
    interact(&app, "u1", "i1").await;
    refreshed(&app, 2).await;
    let b = rerank(&app, "u1").await;
    assert_eq!(b["meta"]["profile_source"], "refreshed_ahead", "{b}");
    assert_eq!(b["meta"]["usage"]["llm_calls"], 1, "{b}");
    assert_eq!(profiles.load(Ordering::SeqCst), 2);
    // The same history again: the stored profile, no new refresh needed.
    let b = rerank(&app, "u1").await;
    assert_eq!(b["meta"]["usage"]["llm_calls"], 1, "{b}");
    assert_eq!(profiles.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_refresh_ahead_a_changed_history_is_written_inline() {
    let (app, _llm, profiles) = app(false, 0).await;
    interact(&app, "u1", "i0").await;
    let b = rerank(&app, "u1").await;
    assert_eq!(b["meta"]["profile_source"], "inline", "{b}");
    assert_eq!(
        b["meta"]["usage"]["llm_calls"], 2,
        "profile and ranking: {b}"
    );
    let b = rerank(&app, "u1").await;
    assert_eq!(b["meta"]["profile_source"], "fresh", "{b}");
    assert_eq!(b["meta"]["usage"]["llm_calls"], 1, "{b}");
    assert_eq!(profiles.load(Ordering::SeqCst), 1);
    // The history changed: the profile is written inline again.
    interact(&app, "u1", "i1").await;
    let b = rerank(&app, "u1").await;
    assert_eq!(b["meta"]["profile_source"], "inline", "{b}");
    assert_eq!(b["meta"]["usage"]["llm_calls"], 2, "{b}");
    assert_eq!(profiles.load(Ordering::SeqCst), 2);
    assert_eq!(
        app.count("SELECT count(*) FROM user_profiles WHERE written_by = 'ahead'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_refresh_racing_an_inline_write_makes_one_profile_call() {
    // Profile answers take 800 ms: the rerank arrives while the refresh is writing.
    let (app, _llm, profiles) = app(true, 800).await;
    interact(&app, "u2", "i3").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = rerank(&app, "u2").await;
    // Normally the refresh started first and the rerank joined its call; on a very slow
    // machine the rerank may start the write and the refresh join it. Either way: one call.
    let calls = match b["meta"]["profile_source"].as_str() {
        Some("refreshed_ahead") => 1,
        Some("inline") => 2,
        other => panic!("the rerank joined a write, got {other:?}: {b}"),
    };
    assert_eq!(b["meta"]["usage"]["llm_calls"], calls, "{b}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        profiles.load(Ordering::SeqCst),
        1,
        "one profile call, not two"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM user_profiles").await,
        1,
        "one stored profile"
    );
}

/// `agp import data/example.jsonl` into the app's database with `extra` flags and `env`.
fn import(app: &common::TestApp, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/data/example.jsonl");
    common::proc::agp(dir.path())
        .args(["import", "--format", "jsonl", example])
        .args(extra)
        .env("DATABASE_URL", &app.db_url)
        .envs(env.iter().copied())
        .output()
        .expect("agp import")
}

// Multi-threaded: the test LLM answers while this thread waits for `agp import`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_refreshes_its_users_profiles_only_when_asked() {
    let (app, llm, profiles) = app(false, 0).await;
    let env = [
        ("AGP_LLM_BASE_URL", llm.base_url.as_str()),
        ("AGP_LLM_MODEL", "test-model"),
        ("AGP_SUMMARIES", "false"),
    ];
    // Off by default: an import spends nothing on profiles.
    let out = import(&app, &["--project", "plain"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(profiles.load(Ordering::SeqCst), 0);
    assert_eq!(app.count("SELECT count(*) FROM user_profiles").await, 0);

    // Asked without an LLM: refused before anything is written.
    let out = import(&app, &["--project", "nollm", "--refresh-profiles"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an LLM"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        app.count("SELECT count(*) FROM items WHERE project = 'nollm'")
            .await,
        0
    );

    // Asked: one profile per imported user, written ahead; their first rerank makes one call.
    let out = import(&app, &["--refresh-profiles"], &env);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("profiles: 2 written"),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(profiles.load(Ordering::SeqCst), 2);
    assert_eq!(
        app.count("SELECT count(*) FROM user_profiles WHERE written_by = 'ahead'")
            .await,
        2
    );
    for user in ["u1", "u2"] {
        let b = rerank(&app, user).await;
        assert_eq!(b["meta"]["profile_source"], "refreshed_ahead", "{b}");
        assert_eq!(b["meta"]["usage"]["llm_calls"], 1, "the ranking only: {b}");
    }
    assert_eq!(profiles.load(Ordering::SeqCst), 2);
}
