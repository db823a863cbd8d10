//! The embedded Postgres under the real `agp serve` processes: a killed postmaster is
//! restarted by the server itself, and several servers on one data directory share the
//! cluster (stopping one never stops it under another; the last one out stops it).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use agp_rerank::llm::test_server::TestLlm;
use common::proc::{Proc, alive, exits, free_port, postmaster, start_on, terminate, wait_ready};
use serde_json::{Value, json};

struct Server {
    child: Proc,
    base: String,
}

async fn serve(data_dir: &Path, llm: &TestLlm, client: &reqwest::Client) -> Server {
    let port = free_port();
    let mut child = start_on(
        data_dir,
        &format!("127.0.0.1:{port}"),
        &[("AGP_LLM_BASE_URL", llm.base_url.as_str())],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(client, &base, &mut child).await;
    Server { child, base }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn seed(client: &reqwest::Client, base: &str) {
    let items: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    let r = client
        .put(format!("{base}/v1/items"))
        .json(&json!({"items": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inters: Vec<Value> = (0..3)
        .map(|i| json!({"user_id": "u1", "item_id": format!("i{i}")}))
        .collect();
    let (s, b) = post(
        client,
        format!("{base}/v1/interactions"),
        json!({"interactions": inters}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
}

/// A rerank answered by the LLM (no fallback).
async fn rerank_ok(client: &reqwest::Client, base: &str) {
    let (s, b) = post(
        client,
        format!("{base}/v1/rerank"),
        json!({"user_id": "u1", "candidates": [{"id": "i3"}, {"id": "i4"}, {"id": "i5"}],
               "blend": {"weights": {"llm": 1}}}),
    )
    .await;
    assert_eq!((s, &b["meta"]["fallback"]), (200, &Value::Null), "{b}");
    assert_eq!(b["results"][0]["id"], "i5", "the LLM's order: {b}");
}

async fn ready(client: &reqwest::Client, base: &str) -> bool {
    match client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) => r.status() == 200,
        Err(_) => false,
    }
}

/// Kills the postmaster with SIGKILL; returns its pid.
fn kill_postmaster(data_dir: &Path) -> i32 {
    let (pid, _) = postmaster(data_dir).expect("a running postmaster");
    // SAFETY: killing the test's own Postgres.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    pid
}

/// Waits until a new postmaster (not `killed`) runs and every server answers /readyz 200;
/// returns how long it took. (Not "saw a server not ready first": a restart can be quicker
/// than the polling, and a server may never be asked while it was down.)
async fn healed(
    client: &reqwest::Client,
    bases: &[&str],
    since: Instant,
    data_dir: &Path,
    killed: i32,
) -> Duration {
    loop {
        let restarted = postmaster(data_dir).is_some_and(|(pid, _)| pid != killed);
        let mut all = restarted;
        for b in bases {
            all &= ready(client, b).await;
        }
        if all {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "not healed after 20 s (postmaster restarted: {restarted})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_postmaster_is_restarted_by_the_server_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let llm = TestLlm::start(common::reversing_llm).await;
    let client = reqwest::Client::new();
    let a = serve(&data_dir, &llm, &client).await;
    seed(&client, &a.base).await;
    rerank_ok(&client, &a.base).await;
    let (_, port) = postmaster(&data_dir).unwrap();

    let killed_at = Instant::now();
    let old = kill_postmaster(&data_dir);
    let took = healed(&client, &[&a.base], killed_at, &data_dir, old).await;
    eprintln!("healed in {took:?}");
    assert!(took < Duration::from_secs(10), "healed in {took:?}");
    let (pid, new_port) = postmaster(&data_dir).unwrap();
    assert_ne!(pid, old);
    assert_eq!(new_port, port, "same port");
    rerank_ok(&client, &a.base).await;
    // The supervisor notes the cluster is back at its next look (it may have been started by
    // a restart attempt that reported failure while the old one was still going away).
    let mut h = Value::Null;
    for _ in 0..50 {
        h = client
            .get(format!("{}/healthz", a.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if h["checks"]["embedded_postgres"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h["checks"]["embedded_postgres"], "ok", "{h}");
    terminate(a.child).await;
    assert!(exits(pid).await, "the last server out stopped the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_one_data_dir_share_the_cluster_and_the_last_one_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let llm = TestLlm::start(common::reversing_llm).await;
    let client = reqwest::Client::new();
    let a = serve(&data_dir, &llm, &client).await;
    let b = serve(&data_dir, &llm, &client).await;
    seed(&client, &a.base).await;
    rerank_ok(&client, &b.base).await;
    let (pid, port) = postmaster(&data_dir).unwrap();

    // Stopping the server that started the cluster leaves it running for the other.
    terminate(a.child).await;
    assert!(alive(pid), "still running for b");
    assert!(ready(&client, &b.base).await);
    rerank_ok(&client, &b.base).await;

    // A new server joins the same cluster on the same port.
    let a = serve(&data_dir, &llm, &client).await;
    assert_eq!(postmaster(&data_dir).unwrap(), (pid, port));
    rerank_ok(&client, &a.base).await;

    // Both heal after the postmaster is killed (one restarts it, the other sees it back).
    let killed_at = Instant::now();
    let old = kill_postmaster(&data_dir);
    let took = healed(&client, &[&a.base, &b.base], killed_at, &data_dir, old).await;
    eprintln!("healed in {took:?}");
    assert!(took < Duration::from_secs(10), "healed in {took:?}");
    rerank_ok(&client, &a.base).await;
    rerank_ok(&client, &b.base).await;
    let (pid, port2) = postmaster(&data_dir).unwrap();
    assert_eq!(port2, port);

    // kill -9 of a server (left a zombie: not waited for) and a quick restart.
    let mut killed = a.child.take();
    // SAFETY: killing our own child process.
    unsafe { libc::kill(killed.id() as i32, libc::SIGKILL) };
    let a = serve(&data_dir, &llm, &client).await;
    rerank_ok(&client, &a.base).await;
    terminate(b.child).await;
    assert!(alive(pid), "still running for the restarted a");
    rerank_ok(&client, &a.base).await;
    terminate(a.child).await;
    let _ = killed.wait();
    assert!(exits(pid).await, "the last one out stops it");
}
