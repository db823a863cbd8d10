//! No answered rerank is lost from the request log: not to `kill -9` of the serving process
//! (the journal is on disk before the answer leaves, and the next process drains it), and
//! not to Postgres going away (reranks keep answering from the caches, and the rows are
//! written once it is back).

mod common;

use std::time::{Duration, Instant};

use agp_rerank::app::AppState;
use agp_rerank::config::AppConfig;
use agp_rerank::llm::LlmClient;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::TestLlm;
use common::proc::{free_port, postmaster, start_on, wait_ready};
use common::proxy::PgProxy;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn rerank_body(k: usize, users: usize) -> Value {
    let c: Vec<Value> = (0..10)
        .map(|j| json!({"id": format!("i{}", (k + j * 3) % 30)}))
        .collect();
    json!({"user_id": format!("u{}", k % users), "candidates": c})
}

/// Connects straight to the embedded cluster of a data dir (what a DBA would see).
async fn embedded_pool(data_dir: &std::path::Path) -> sqlx::PgPool {
    let (_, port) = postmaster(data_dir).expect("a running cluster");
    let password = std::fs::read_to_string(data_dir.join("pg-password")).unwrap();
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("agp")
        .password(password.trim())
        .database("agp");
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .unwrap()
}

/// Answered ids not (yet) in `rerank_requests`.
async fn missing(pool: &sqlx::PgPool, ids: &[String]) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT x FROM UNNEST($1::text[]) AS x WHERE NOT EXISTS (SELECT 1 FROM rerank_requests r WHERE r.id = x)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_rerank_survives_kill_9_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let llm = TestLlm::start(common::reversing_llm).await;
    let client = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let env = [("AGP_LLM_BASE_URL", llm.base_url.as_str())];
    let mut server = start_on(&data_dir, &listen, &env);
    wait_ready(&client, &base, &mut server).await;
    let users = 20;
    common::seed_http(&client, &base, 30, 3, users).await;

    // 8 clients send reranks as fast as they can; the server is killed mid-flight.
    let stop_at = Instant::now() + Duration::from_millis(2500);
    let clients: Vec<_> = (0..8)
        .map(|w| {
            let (client, url) = (client.clone(), format!("{base}/v1/rerank"));
            tokio::spawn(async move {
                let mut answered = Vec::new();
                let mut k = w;
                loop {
                    let r = client.post(&url).json(&rerank_body(k, users)).send().await;
                    let Ok(r) = r else { break };
                    if r.status() != 200 {
                        break;
                    }
                    let Ok(v) = r.json::<Value>().await else {
                        break;
                    };
                    let calls = v["meta"]["usage"]["llm_calls"].as_i64().unwrap_or(0);
                    answered.push((v["id"].as_str().unwrap_or_default().to_string(), calls));
                    k += 8;
                    if Instant::now() > stop_at + Duration::from_secs(10) {
                        break;
                    }
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep_until(stop_at.into()).await;
    // SAFETY: SIGKILL to our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGKILL) };
    let _ = server.take().wait();
    let mut answered: Vec<(String, i64)> = Vec::new();
    for c in clients {
        answered.extend(c.await.unwrap());
    }
    assert!(answered.len() > 50, "only {} answered", answered.len());
    let ids: Vec<String> = answered.iter().map(|(id, _)| id.clone()).collect();

    // The next process on this data dir writes out what the dead one journaled.
    let mut server = start_on(&data_dir, &listen, &env);
    wait_ready(&client, &base, &mut server).await;
    let pool = embedded_pool(&data_dir).await;
    let since = Instant::now();
    let mut left = missing(&pool, &ids).await;
    while !left.is_empty() && since.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = missing(&pool, &ids).await;
    }
    eprintln!(
        "answered {} reranks before kill -9; {} missing from the log after the restart",
        ids.len(),
        left.len()
    );
    assert!(
        left.is_empty(),
        "{} answered reranks lost: {:?}",
        left.len(),
        &left[..left.len().min(5)]
    );
    // Their LLM usage rows were journaled before them, so they are there too.
    let usage: Vec<(String, i64)> = sqlx::query_as(
        "SELECT request_id, count(*) FROM llm_usage WHERE request_id = ANY($1) AND NOT cache_hit GROUP BY request_id",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    let usage: std::collections::HashMap<String, i64> = usage.into_iter().collect();
    for (id, calls) in &answered {
        assert!(
            usage.get(id).copied().unwrap_or(0) >= *calls,
            "usage rows of {id}: {:?} < {calls}",
            usage.get(id)
        );
    }
    common::proc::terminate(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reranks_answer_while_postgres_is_away_and_their_rows_arrive_after() {
    let (direct, db_url) = common::fresh_db().await;
    let opts: PgConnectOptions = db_url.parse().unwrap();
    let proxy = PgProxy::start(opts.get_host().to_string(), opts.get_port()).await;
    let via_proxy = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(opts.clone().port(proxy.port))
        .await
        .unwrap();
    let llm = TestLlm::start(common::reversing_llm).await;
    let client = LlmClient::new(
        LlmSettings::single(llm.base_url.clone(), "test-model"),
        Some(via_proxy.clone()),
    );
    let app = common::spawn_state(
        move |_| AppState::with_llm(via_proxy, AppConfig::default(), client),
        Default::default(),
    )
    .await;
    common::seed_http(&app.client, &app.base, 30, 3, 2).await;
    // Let the seed's cache invalidations arrive before the caches are warmed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = rerank_body(0, 2);
    let (s, b) = app.post("/v1/rerank", body.clone()).await;
    assert_eq!((s, &b["meta"]["fallback"]), (200, &Value::Null), "{b}");

    // Postgres goes away for this app.
    proxy.set_down(true);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (s, b) = app.post("/v1/rerank", body.clone()).await;
        assert_eq!(s, 200, "{b}");
        assert!(
            b["meta"]["fallback"].is_null(),
            "answered by the LLM from the caches: {b}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    assert_eq!(missing(&direct, &ids).await.len(), 5, "not in Postgres yet");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pending: f64 = metrics
        .lines()
        .find(|l| l.starts_with("agp_journal_pending_bytes"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(pending > 0.0, "pending rows are exported: {pending}");

    // It comes back: the journaled rows are written without anyone asking.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    let since = Instant::now();
    let mut left = missing(&direct, &ids).await;
    while !left.is_empty() && since.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = missing(&direct, &ids).await;
    }
    assert!(
        left.is_empty(),
        "still missing after Postgres came back: {left:?}"
    );
}

/// A dead process's journal whose first file was already drained (and deleted) is still
/// drained completely by the next process: the recovery starts at the first file left.
#[tokio::test]
async fn a_dead_journal_with_drained_files_is_recovered_from_its_first_file_left() {
    use agp_rerank::store::journal::{Journal, JournalOptions, Record};
    use agp_rerank::store::rerank::RerankLogRow;
    let (pool, _) = common::fresh_db().await;
    let root = tempfile::tempdir().unwrap();
    let dead = root.path().join("12345-deadbeef");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("lock"), b"").unwrap();
    let row = |i: usize| {
        Record::Rerank(RerankLogRow {
            id: format!("rr_dead_{i}"),
            created_at: chrono::Utc::now(),
            project: "default".into(),
            user_id: "u".into(),
            candidates: json!(["a", "b"]),
            result_order: json!(["b", "a"]),
            prompt_version: Some(1),
            prompt_versions: json!({}),
            profile_id: None,
            model: None,
            fallback: None,
            repaired: false,
            latency_ms: 1,
            usage: json!({}),
            blend: json!({"version": 1, "weights": {"llm": 1.0}}),
            history: json!(["c"]),
            teams: None,
        })
    };
    // Two files left, starting at offset 5000 (the first file, 0..5000, is gone).
    let lines = |r: std::ops::Range<usize>| -> Vec<u8> {
        r.flat_map(|i| {
            let mut l = serde_json::to_vec(&row(i)).unwrap();
            l.push(b'\n');
            l
        })
        .collect()
    };
    let a = lines(0..3);
    std::fs::write(dead.join(format!("{:020}.log", 5000)), &a).unwrap();
    std::fs::write(
        dead.join(format!("{:020}.log", 5000 + a.len())),
        lines(3..5),
    )
    .unwrap();

    let journal = Journal::open(
        pool.clone(),
        JournalOptions {
            dir: Some(root.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    let since = Instant::now();
    let ids: Vec<String> = (0..5).map(|i| format!("rr_dead_{i}")).collect();
    let mut left = missing(&pool, &ids).await;
    while !left.is_empty() && since.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = missing(&pool, &ids).await;
    }
    assert!(left.is_empty(), "not recovered: {left:?}");
    while dead.exists() && since.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dead.exists(), "the dead journal is removed once drained");
    journal.close().await;
}
