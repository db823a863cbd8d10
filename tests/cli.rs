//! The `agp` binary end to end, on its embedded defaults: serve answers the probes, stops
//! cleanly on SIGTERM, keeps data across restarts, and import/keys work on the same data dir
//! (also while the server runs, by adopting its cluster).

mod common;

use std::path::Path;

use common::proc::{Proc, agp, free_port, ok, start_on, terminate, wait_ready};

fn start(data_dir: &Path, port: u16, master_key: Option<&str>) -> Proc {
    let env: Vec<(&str, &str)> = master_key
        .map(|k| ("AGP_MASTER_KEY", k))
        .into_iter()
        .collect();
    start_on(data_dir, &format!("127.0.0.1:{port}"), &env)
}

#[tokio::test]
async fn serve_restart_import_and_keys_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("agp-data");
    let client = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    let mut server = start(&data_dir, port, None);
    wait_ready(&client, &base, &mut server).await;
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = client
        .put(format!("{base}/v1/items"))
        .json(&serde_json::json!({"items": [{"id": "keep-me", "title": "Persistent"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Import next to the running server: it adopts the running cluster.
    let jsonl = dir.path().join("small.jsonl");
    std::fs::write(
        &jsonl,
        "{\"item\": {\"id\": \"a\", \"title\": \"A\"}}\n{\"item\": {\"id\": \"b\", \"title\": \"B\"}}\n\
         {\"interaction\": {\"user_id\": \"u1\", \"item_id\": \"a\"}}\n{\"interaction\": {\"user_id\": \"u1\", \"item_id\": \"b\"}}\n",
    )
    .unwrap();
    let out = ok(agp(&data_dir)
        .args(["import", "--format", "jsonl"])
        .arg(&jsonl)
        .output()
        .unwrap());
    assert!(
        out.contains("2 interactions (2 new, 0 already present)"),
        "{out}"
    );
    let hist: serde_json::Value = client
        .get(format!("{base}/v1/users/u1/history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        hist["history"].as_array().map(|a| a.len()),
        Some(2),
        "{hist}"
    );
    // Re-running the import changes nothing.
    let out = ok(agp(&data_dir)
        .args(["import", "--format", "jsonl"])
        .arg(&jsonl)
        .output()
        .unwrap());
    assert!(out.contains("(0 new, 2 already present)"), "{out}");

    terminate(server).await;
    assert!(
        !data_dir.join("pg/postmaster.pid").exists(),
        "the embedded Postgres was stopped with the server"
    );

    // A key made by the CLI works against a server started with a master key.
    let key = ok(agp(&data_dir)
        .args(["keys", "create", "--scope", "read", "--name", "ci"])
        .output()
        .unwrap());
    let key = key.trim().to_string();
    assert!(key.starts_with("agp_"), "{key}");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // A host name is resolved (`localhost`), and a master key turns auth on.
    let mut server = start_on(
        &data_dir,
        &format!("localhost:{port}"),
        &[("AGP_MASTER_KEY", "master-secret-0123456789")],
    );
    wait_ready(&client, &base, &mut server).await;
    let r = client
        .get(format!("{base}/v1/items/keep-me"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "data survives a restart");
    let item: serde_json::Value = r.json().await.unwrap();
    assert_eq!(item["title"], "Persistent");
    let r = client
        .get(format!("{base}/v1/items/keep-me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "auth is on with a master key");
    terminate(server).await;

    let prefix = &key[..12];
    ok(agp(&data_dir)
        .args(["keys", "revoke", prefix])
        .output()
        .unwrap());
    let listed = ok(agp(&data_dir).args(["keys", "list"]).output().unwrap());
    assert!(
        listed.contains("revoked") && !listed.contains(&key),
        "{listed}"
    );
}

#[test]
fn dev_mode_refuses_non_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = agp(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AGP_MASTER_KEY"), "{err}");
}

#[test]
fn serve_refuses_settings_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let refuse = |extra: &[&str], env: &[(&str, &str)], expect: &str| {
        let mut c = agp(dir.path());
        c.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{extra:?} {env:?} should be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{expect:?} not in: {err}");
    };
    refuse(&[], &[("AGP_MASTER_KEY", "x")], "at least 16");
    refuse(
        &[
            "--request-timeout-ms",
            "30000",
            "--rerank-deadline-ms",
            "30000",
        ],
        &[],
        "must exceed AGP_RERANK_DEADLINE_MS",
    );
    refuse(
        &["--request-timeout-ms", "3000"],
        &[],
        "must exceed AGP_RERANK_DEADLINE_MS (5000)",
    );
    let out = agp(dir.path())
        .args(["serve", "--listen", "no-such-host.invalid:80"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[test]
fn import_rejects_bad_files_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("d");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, b"{\"item\": {\"id\": \"a\", \"title\": \"A\"}}\n{\"item\": {\"id\": \"b\", \"title\": \"\xff\xfe\"}}\n").unwrap();
    let out = agp(&data_dir)
        .args(["import", "--format", "jsonl"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains('2'),
        "names file and line: {err}"
    );
    let dangling = dir.path().join("dangling.jsonl");
    std::fs::write(&dangling, "{\"item\": {\"id\": \"a\", \"title\": \"A\"}}\n{\"interaction\": {\"user_id\": \"u\", \"item_id\": \"zzz\"}}\n").unwrap();
    let out = agp(&data_dir)
        .args(["import", "--format", "jsonl"])
        .arg(&dangling)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("zzz"));
}
