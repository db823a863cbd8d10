//! Rate limits per key and per project, on real Postgres: one key's limit shared by two
//! `agp serve` processes (429 with `Retry-After` and the contract's error body beyond it,
//! cluster-wide), refilled over time, and other keys untouched; a project's limit held by all
//! its keys together, other projects untouched, lifted at once.

mod common;

use std::time::{Duration, Instant};

use common::proc::{Proc, free_port, wait_ready};
use serde_json::Value;

const MASTER: &str = "rate-limit-test-master-key";

/// `agp keys create` against the database; returns the key's secret.
fn create_key(dir: &std::path::Path, db_url: &str, extra: &[&str]) -> String {
    let args: Vec<&str> = ["keys", "create", "--scope", "read"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    agp_ok(dir, db_url, &args).trim().to_string()
}

/// `agp` with these arguments against the database; returns its standard output.
fn agp_ok(dir: &std::path::Path, db_url: &str, args: &[&str]) -> String {
    let out = common::proc::agp(dir)
        .args(args)
        .env("DATABASE_URL", db_url)
        .output()
        .expect("agp");
    assert!(
        out.status.success(),
        "agp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An `agp serve` process with auth on; returns it and its base URL once ready.
async fn serve(dir: &std::path::Path, db_url: &str, client: &reqwest::Client) -> (Proc, String) {
    let base = format!("http://127.0.0.1:{}", free_port());
    let mut c = common::proc::agp(dir);
    c.args(["serve", "--listen", base.trim_start_matches("http://")])
        .env("DATABASE_URL", db_url)
        .env("AGP_MASTER_KEY", MASTER)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    let mut p = Proc::spawned(c.spawn().expect("spawn agp serve"));
    wait_ready(client, &base, &mut p).await;
    (p, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_keys_limit_and_answer_429_with_retry_after() {
    let (_pool, db_url) = common::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let limited = create_key(
        dir.path(),
        &db_url,
        &["--rate-per-second", "5", "--burst", "5"],
    );
    let free = create_key(dir.path(), &db_url, &[]);
    let client = reqwest::Client::new();
    let mut procs = Vec::new();
    let mut bases = Vec::new();
    for i in 0..2 {
        let (p, base) = serve(&dir.path().join(format!("p{i}")), &db_url, &client).await;
        procs.push(p);
        bases.push(base);
    }
    let get = |base: &str, key: &str| {
        client
            .get(format!("{base}/v1/prompts"))
            .bearer_auth(key)
            .send()
    };

    // 60 requests as fast as they come, alternating between the processes.
    let started = Instant::now();
    let (mut ok, mut limited_answers) = (0u32, 0u32);
    for k in 0..60 {
        let r = get(&bases[k % 2], &limited).await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited_answers += 1;
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
                let b: Value = r.json().await.unwrap();
                let msg = common::error_message(&b, "rate_limited");
                assert!(msg.contains("5 requests per second"), "{msg}");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // The burst, what accrued meanwhile, and at most one token held by each process.
    let most = 5.0 + 5.0 * secs + 2.0;
    eprintln!("{ok} of 60 admitted in {secs:.2} s (at most {most:.1}); {limited_answers} refused");
    assert!(ok >= 5, "the burst is admitted: {ok}");
    assert!(f64::from(ok) <= most, "{ok} admitted > {most:.1}");
    assert_eq!(ok + limited_answers, 60);
    // Both processes refused: the limit is the cluster's, not a process's.
    let refused_on = |base: &str| {
        let base = base.to_string();
        let (client, key) = (client.clone(), limited.clone());
        async move {
            for _ in 0..20 {
                let r = client
                    .get(format!("{base}/v1/prompts"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                if r.status() == 429 {
                    return true;
                }
            }
            false
        }
    };
    assert!(refused_on(&bases[0]).await && refused_on(&bases[1]).await);

    // Another key is not limited by it.
    for base in &bases {
        assert_eq!(get(base, &free).await.unwrap().status(), 200);
    }
    // The bucket refills: after a wait, the key is admitted again.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(get(&bases[1], &limited).await.unwrap().status(), 200);
    for p in procs {
        common::proc::terminate(p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_limit_holds_for_all_its_keys_together() {
    let (_pool, db_url) = common::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        create_key(dir.path(), &db_url, &["--project", "team"]),
        create_key(dir.path(), &db_url, &["--project", "team"]),
    );
    let other = create_key(dir.path(), &db_url, &[]);
    let said = agp_ok(
        dir.path(),
        &db_url,
        &[
            "keys",
            "project-rate",
            "team",
            "--rate-per-second",
            "4",
            "--burst",
            "4",
        ],
    );
    assert!(said.contains("4 requests per second"), "{said}");
    let client = reqwest::Client::new();
    let (p, base) = serve(&dir.path().join("p"), &db_url, &client).await;
    let status = |key: &str| {
        let req = client.get(format!("{base}/v1/prompts")).bearer_auth(key);
        async move { req.send().await.unwrap() }
    };

    // 40 requests alternating between the project's two unlimited keys.
    let started = Instant::now();
    let mut ok = 0u32;
    for k in 0..40 {
        let r = status(if k % 2 == 0 { &a } else { &b }).await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                let body: Value = r.json().await.unwrap();
                let msg = common::error_message(&body, "rate_limited");
                assert!(
                    msg.contains("project") && msg.contains("4 requests per second"),
                    "{msg}"
                );
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let most = 4.0 + 4.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        ok >= 4 && f64::from(ok) <= most,
        "{ok} admitted, at most {most:.1}"
    );
    // Another project's key is not limited by it.
    for _ in 0..10 {
        assert_eq!(status(&other).await.status(), 200);
    }
    // Lifted: the project's keys are admitted again at once.
    let said = agp_ok(dir.path(), &db_url, &["keys", "project-rate", "team"]);
    assert!(said.contains("unlimited"), "{said}");
    for key in [&a, &b, &a, &b, &a, &b] {
        assert_eq!(status(key).await.status(), 200);
    }
    // An unknown project is an error, not a silent no-op.
    let out = common::proc::agp(dir.path())
        .args(["keys", "project-rate", "nope", "--rate-per-second", "1"])
        .env("DATABASE_URL", &db_url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no project"));
    common::proc::terminate(p).await;
}
