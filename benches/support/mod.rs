//! What the process-level benchmarks share: the release `agp` as a child process on its own
//! data dir with the Amazon Games sample, and a test upstream.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agp_rerank::llm::test_server::{Reply, Seen};
use serde_json::{Value, json};

/// Every role after `delay` ms: rankings reverse the list, the rest is short text.
pub fn upstream(delay: u64) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s: &Seen| {
        let k = s.last_user().lines().filter(|l| l.starts_with('[')).count();
        let r = if k > 0 {
            Reply::json(json!({"ranking": (1..=k).rev().collect::<Vec<_>>()}))
        } else {
            Reply::text("Likes tactical RPGs and handheld adventures; avoids sports titles.")
        };
        if delay > 0 { r.after(delay) } else { r }
    }
}

/// The release `agp` (`cargo build --release --bin agp`), under `CARGO_TARGET_DIR` when set.
pub fn release_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release/agp")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The sample's users and items, imported into `data_dir` with `agp import`.
pub fn import_sample(bin: &Path, data_dir: &Path) -> (Vec<String>, Vec<String>) {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/amazon-games-sample");
    let out = Command::new(bin)
        .env("AGP_LOG", "warn")
        .env_remove("DATABASE_URL")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["import", "--format", "recbole"])
        .arg(&sample)
        .output()
        .expect("agp import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = agp_rerank::import::read(agp_rerank::import::Format::Recbole, &[sample])
        .expect("read sample");
    let mut users: Vec<String> = data
        .interactions
        .iter()
        .map(|i| i.user_id.clone())
        .collect();
    users.dedup();
    (users, data.items.iter().map(|i| i.id.clone()).collect())
}

/// `agp serve` on `data_dir`, answering at the returned base URL once ready.
pub async fn serve(bin: &Path, data_dir: &Path, llm_url: &str) -> (Child, String) {
    let port = free_port();
    let child = Command::new(bin)
        .env("AGP_LOG", "error")
        .env_remove("DATABASE_URL")
        .env("AGP_LLM_BASE_URL", llm_url)
        .env("AGP_LLM_CONCURRENCY", "256")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .spawn()
        .expect("agp serve");
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    (child, base)
}

/// `agp serve` without job workers on `url` (a shared Postgres), listening on `port`, with
/// extra environment `env`: a replica of a deployment.
pub fn replica(
    bin: &Path,
    url: &str,
    llm: &str,
    data_dir: &Path,
    port: u16,
    env: &[(&str, &str)],
) -> Child {
    Command::new(bin)
        .env("AGP_LOG", "error")
        .env("DATABASE_URL", url)
        .env("AGP_LLM_BASE_URL", llm)
        .env("AGP_LLM_CONCURRENCY", "256")
        .envs(env.iter().copied())
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "serve",
            "--workers",
            "0",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("agp serve")
}

/// Waits (60 s at most) until `base` answers `/readyz` with 200.
pub async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
    let by = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < by, "agp serve not ready at {base}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Migrates `pool` and writes the Amazon Games sample into the default project; returns its
/// distinct users (sorted) and its items.
pub async fn load_sample(pool: &sqlx::PgPool) -> (Vec<String>, Vec<String>) {
    agp_rerank::app::prepare_database(pool)
        .await
        .expect("migrate");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/amazon-games-sample");
    let data =
        agp_rerank::import::read(agp_rerank::import::Format::Recbole, &[sample]).expect("sample");
    agp_rerank::store::import::write(pool, "default", &data.items, &data.interactions, |_| {})
        .await
        .expect("import");
    let mut users: Vec<String> = data
        .interactions
        .iter()
        .map(|i| i.user_id.clone())
        .collect();
    users.sort();
    users.dedup();
    (users, data.items.iter().map(|i| i.id.clone()).collect())
}

/// A rerank body: 20 of the catalog's items for `user`.
pub fn rerank_body(user: &str, k: usize, items: &[String]) -> Value {
    let c: Vec<Value> = (0..20)
        .map(|j| json!({"id": items[(k * 7 + j * 13) % items.len()]}))
        .collect();
    json!({"user_id": user, "candidates": c})
}

/// Sends SIGTERM (or SIGKILL) and reaps the child.
pub fn stop(mut child: Child, kill: bool) {
    let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let _ = child.wait();
}

/// Runs `body` on a multi-thread runtime with the URL of a throwaway embedded Postgres
/// cluster (stopped and removed afterwards).
pub fn on_embedded_pg<F: std::future::Future<Output = ()>>(
    name: &str,
    body: impl FnOnce(String) -> F,
) {
    use agp_rerank::store::embedded;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("agp-bench-{name}-{}", std::process::id()));
    let pg = embedded::EmbeddedPg::start(&embedded::EmbeddedOptions {
        data_dir: dir.clone(),
        ephemeral: true,
    })
    .expect("embedded Postgres (install postgresql-15: scripts/install-deps.sh)");
    rt.block_on(body(pg.url(embedded::DB_NAME)));
    pg.stop();
    let _ = std::fs::remove_dir_all(dir);
}

/// Serves `state`'s app on a free local port in this runtime; returns its base URL.
pub async fn serve_app(state: agp_rerank::app::AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(agp_rerank::app::serve(
        listener,
        agp_rerank::app::build_app(state),
        std::future::pending(),
    ));
    base
}

/// Runs every queued job to its end, as a worker would (`summaries` for their reranker).
pub async fn run_queued_jobs(
    pool: &sqlx::PgPool,
    llm: &agp_rerank::llm::LlmClient,
    summaries: bool,
) {
    use agp_rerank::jobs::{self, WorkerOptions};
    let settings = agp_rerank::serving::RerankSettings {
        summaries,
        ..Default::default()
    };
    let reranker = agp_rerank::serving::Reranker::new(pool.clone(), llm.clone(), settings);
    let opts = WorkerOptions::new(0);
    while let Some(job) = agp_rerank::store::jobs::claim(pool, &opts.id, 60, None)
        .await
        .expect("claim")
    {
        jobs::execute(
            pool.clone(),
            llm.clone(),
            reranker.clone(),
            job,
            &opts,
            None,
        )
        .await;
    }
}
