//! Test harness: the real router on port 0 against real Postgres, one fresh database per test.
//! Without `DATABASE_URL` a throwaway embedded cluster is started once per test binary (the
//! same code `agp serve` uses) and stopped when the binary exits.
#![allow(dead_code)]

pub mod proc;
pub mod proxy;

use std::sync::OnceLock;

use agp_rerank::app::{AppState, build_app};
use agp_rerank::config::AppConfig;
use agp_rerank::store::embedded;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

struct Cluster {
    admin: PgConnectOptions,
    _pg: Option<embedded::EmbeddedPg>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static TEST_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

extern "C" fn stop_cluster() {
    if let Some(Cluster { _pg: Some(pg), .. }) = CLUSTER.get() {
        pg.stop();
    }
    if let Some(dir) = TEST_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Cluster {
            admin: url.parse().expect("DATABASE_URL is a valid URL"),
            _pg: None,
        },
        _ => {
            let dir = std::env::temp_dir().join(format!("agp-test-{}", std::process::id()));
            let _ = TEST_DIR.set(dir.clone());
            let pg = embedded::EmbeddedPg::start(&embedded::EmbeddedOptions {
                data_dir: dir,
                ephemeral: true,
            })
            .expect("start the embedded test cluster");
            // SAFETY: registering a plain extern "C" function is always sound.
            unsafe { libc::atexit(stop_cluster) };
            Cluster {
                admin: pg.url("postgres").parse().expect("embedded URL parses"),
                _pg: Some(pg),
            }
        }
    })
}

/// A fresh, migrated database on the test cluster.
pub async fn fresh_db() -> (PgPool, String) {
    let c = cluster();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = c
        .admin
        .clone()
        .connect()
        .await
        .expect("connect to the test cluster");
    sqlx::Executor::execute(
        &mut admin,
        sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
    )
    .await
    .expect("create test database");
    let opts = c.admin.clone().database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts.clone())
        .await
        .expect("connect test db");
    agp_rerank::app::prepare_database(&pool)
        .await
        .expect("migrate test db");
    (pool, opts.to_url_lossy().to_string())
}

/// A running app and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub db_url: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `method path` with a JSON body; returns status and parsed JSON (Null if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn put(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Sends a raw body with the given content type.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Scalar query helper for assertions on stored rows.
    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }
}

/// Starts the real app on port 0 with `config` against a fresh database.
pub async fn spawn_app_with(config: AppConfig) -> TestApp {
    spawn_state(|pool| AppState::new(pool, config), Default::default()).await
}

/// Starts the real app with `config` and an LLM client over `settings`.
pub async fn spawn_app_with_llm(
    config: AppConfig,
    settings: agp_rerank::llm::config::LlmSettings,
) -> TestApp {
    spawn_state(
        |pool| {
            let client = agp_rerank::llm::LlmClient::new(settings, Some(pool.clone()));
            AppState::with_llm(pool, config, client)
        },
        Default::default(),
    )
    .await
}

/// Starts the real app built by `state` on a fresh database, served under `limits`.
pub async fn spawn_state(
    state: impl FnOnce(PgPool) -> AppState,
    limits: agp_rerank::http::server::ServerLimits,
) -> TestApp {
    let (pool, db_url) = fresh_db().await;
    let app = build_app(state(pool.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(agp_rerank::http::server::serve(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        pool,
        db_url,
    }
}

/// Starts the real app with development defaults.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppConfig::default()).await
}

/// Asserts the contract's error body and returns its message.
pub fn error_message(body: &serde_json::Value, expected_type: &str) -> String {
    assert_eq!(body["error"]["type"], expected_type, "error body: {body}");
    body["error"]["message"]
        .as_str()
        .expect("message is a string")
        .to_string()
}

/// A working upstream: rankings reverse the list (the last candidate first), every other
/// role answers a short text.
pub fn reversing_llm(
    s: &agp_rerank::llm::test_server::Seen,
) -> agp_rerank::llm::test_server::Reply {
    use agp_rerank::llm::test_server::Reply;
    let n = s.last_user().lines().filter(|l| l.starts_with('[')).count();
    if n > 0 {
        Reply::json(serde_json::json!({"ranking": (1..=n).rev().collect::<Vec<_>>()}))
    } else {
        Reply::text("a profile or summary")
    }
}

/// Which pipeline step a test-server call is, from the role the client named (never from
/// prompt wording, which may change).
pub fn llm_step(s: &agp_rerank::llm::test_server::Seen) -> &'static str {
    use agp_rerank::llm::Role;
    match s.role() {
        Some(Role::Summarize) => "sum",
        Some(Role::Profile) => "gen",
        Some(Role::Rank) => "rank",
        Some(Role::Feedback) => "fb",
        Some(Role::Aggregate) => "agg",
        Some(Role::Optimize) => "opt",
        None => "other",
    }
}

/// The number at the end of each candidate line of a ranking prompt ("[3] Item 57" -> 57).
pub fn candidate_values(s: &agp_rerank::llm::test_server::Seen) -> Vec<i64> {
    s.last_user()
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// A rerank request for catalog ids, production `p_gen`, all results, stored history.
pub fn rerank_request(
    request_id: &str,
    user: &str,
    ids: &[&str],
) -> agp_rerank::serving::RerankRequest {
    agp_rerank::serving::RerankRequest {
        project: agp_rerank::store::DEFAULT_PROJECT.into(),
        request_id: request_id.into(),
        user_id: user.into(),
        candidates: ids
            .iter()
            .map(|i| agp_rerank::serving::ItemRef {
                id: i.to_string(),
                title: None,
                text: None,
            })
            .collect(),
        top_n: ids.len(),
        prompt: agp_rerank::serving::PromptSelector::Label("production".into()),
        history: None,
        strict: false,
        rank_mode: None,
        blend: agp_rerank::serving::BlendSelector::Stored(
            agp_rerank::serving::PromptSelector::Label("production".into()),
        ),
    }
}

/// The candidates' labels as the ranking prompt shows them (`1`, `2`, ... or `A`, `B`, ...).
pub fn candidate_labels(s: &agp_rerank::llm::test_server::Seen) -> Vec<String> {
    s.last_user()
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l[1..].split(']').next().map(str::to_string))
        .collect()
}

/// A ranking answer putting the candidates at these 0-based positions first, in the form
/// the call asks for: JSON numbers in generation mode; in log-probability mode the best
/// candidate's letter, with every candidate's letter among the alternatives (falling
/// log-probabilities; every second one with a leading space, as tokenizers split them).
pub fn ranking_reply(
    s: &agp_rerank::llm::test_server::Seen,
    order: &[usize],
) -> agp_rerank::llm::test_server::Reply {
    use agp_rerank::llm::test_server::Reply;
    if s.top_logprobs() > 0 {
        let labels = candidate_labels(s);
        let top: Vec<(String, f64)> = order
            .iter()
            .take(s.top_logprobs())
            .enumerate()
            .map(|(pos, &i)| {
                let space = if pos % 2 == 1 { " " } else { "" };
                (format!("{space}{}", labels[i]), -0.5 * pos as f64 - 0.1)
            })
            .collect();
        let refs: Vec<(&str, f64)> = top.iter().map(|(t, l)| (t.as_str(), *l)).collect();
        Reply::first_token(&refs)
    } else {
        Reply::json(serde_json::json!({"ranking": order.iter().map(|i| i + 1).collect::<Vec<_>>()}))
    }
}

/// The ids of a rerank answer's results, in order.
pub fn result_ids(b: &serde_json::Value) -> Vec<String> {
    b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The app with a scripted test LLM: 2 s per attempt, no retry, summaries off.
pub async fn spawn_app_scripted(
    script: impl Fn(&agp_rerank::llm::test_server::Seen) -> agp_rerank::llm::test_server::Reply
    + Send
    + Sync
    + 'static,
) -> (TestApp, agp_rerank::llm::test_server::TestLlm) {
    let llm = agp_rerank::llm::test_server::TestLlm::start(script).await;
    let mut settings =
        agp_rerank::llm::config::LlmSettings::single(llm.base_url.clone(), "test-model");
    settings.timeout = std::time::Duration::from_secs(2);
    settings.retry.max_attempts = 1;
    let mut config = AppConfig::default();
    config.rerank.summaries = false;
    (spawn_app_with_llm(config, settings).await, llm)
}

/// Seeds a running server over HTTP: items `i0..` titled `Item {i}`, and `per_user`
/// interactions for each of `users` users (`u{u}` with items `(u + k) % items`).
pub async fn seed_http(
    client: &reqwest::Client,
    base: &str,
    items: usize,
    per_user: usize,
    users: usize,
) {
    let catalog: Vec<serde_json::Value> = (0..items)
        .map(|i| serde_json::json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    let r = client
        .put(format!("{base}/v1/items"))
        .json(&serde_json::json!({"items": catalog}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inters: Vec<serde_json::Value> = (0..users)
        .flat_map(|u| {
            (0..per_user).map(move |k| {
                serde_json::json!({"user_id": format!("u{u}"), "item_id": format!("i{}", (u + k) % items)})
            })
        })
        .collect();
    let r = client
        .post(format!("{base}/v1/interactions"))
        .json(&serde_json::json!({"interactions": inters}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
