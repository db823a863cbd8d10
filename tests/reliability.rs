//! Hostile conditions, each against the real app on real Postgres: a hung LLM under the
//! default settings, a dead LLM (circuit breaker), upstream error bodies, NUL characters
//! in every place a string reaches SQL, slow and idle connections, odd request ids.

mod common;

use std::time::{Duration, Instant};

use agp_rerank::config::AppConfig;
use agp_rerank::http::server::ServerLimits;
use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::test_server::{Reply, TestLlm};
use common::{TestApp, error_message};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers every role: summaries and profiles echo, rankings keep the incoming order.
async fn seed(app: &TestApp) {
    let items: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    let inters: Vec<Value> = (0..3)
        .map(|i| json!({"user_id": "u1", "item_id": format!("i{i}")}))
        .collect();
    let (s, b) = app
        .post("/v1/interactions", json!({"interactions": inters}))
        .await;
    assert_eq!(s, 200, "{b}");
}

fn rerank_body(strict: bool) -> Value {
    json!({"user_id": "u1", "candidates": [{"id": "i5"}, {"id": "i6"}, {"id": "i7"}], "strict": strict})
}

#[tokio::test]
async fn a_hung_llm_under_default_settings_gets_the_fallback_then_the_circuit_opens() {
    let llm = TestLlm::start(common::reversing_llm).await;
    // Every setting at its default: request timeout 30 s, rerank deadline 5 s, LLM attempt
    // timeout 30 s with retries. Before the fix both timeouts were 30 s and reranks got 503.
    let config = AppConfig::default();
    let deadline = config.rerank.deadline;
    assert!(config.request_timeout > deadline);
    let app = common::spawn_app_with_llm(
        config,
        LlmSettings::single(llm.base_url.clone(), "test-model"),
    )
    .await;
    seed(&app).await;
    let (s, b) = app.post("/v1/rerank", rerank_body(false)).await;
    assert_eq!((s, &b["meta"]["fallback"]), (200, &Value::Null), "{b}");

    // The upstream hangs from now on; the user's profile is cached, so every call is a ranking.
    llm.set_script(|_| Reply::Hang);
    let started = Instant::now();
    let calls = (0..8).map(|_| app.post("/v1/rerank", rerank_body(false)));
    let answers = futures_util::future::join_all(calls).await;
    let wave = started.elapsed();
    for (s, b) in &answers {
        assert_eq!(*s, 200, "{b}");
        assert_eq!(b["meta"]["fallback"], "llm_timeout", "{b}");
    }
    assert!(
        wave >= deadline && wave < deadline + Duration::from_secs(2),
        "answered at the deadline: {wave:?}"
    );
    let started = Instant::now();
    let (s, b) = app.post("/v1/rerank", rerank_body(true)).await;
    assert_eq!(s, 504, "strict gets 504, not 503: {b}");
    error_message(&b, "upstream_timeout");
    assert!(started.elapsed() < deadline + Duration::from_secs(2));

    // Five timed-out attempts in a row opened the circuit: reranks answer at once.
    let (_, r) = app.get("/readyz").await;
    let llm_state = r["checks"]["llm"].as_str().unwrap_or_default().to_string();
    assert!(llm_state.starts_with("down:"), "{r}");
    let started = Instant::now();
    let (s, b) = app.post("/v1/rerank", rerank_body(false)).await;
    assert_eq!(
        (s, b["meta"]["fallback"].as_str()),
        (200, Some("llm_error")),
        "{b}"
    );
    let detail = b["meta"]["fallback_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("known to be down"), "{detail}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fail fast: {:?}",
        started.elapsed()
    );

    // The upstream comes back: after the cooldown a probe goes through and closes the circuit.
    llm.set_script(common::reversing_llm);
    let back = Instant::now();
    loop {
        let (_, b) = app.post("/v1/rerank", rerank_body(false)).await;
        if b["meta"]["fallback"].is_null() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "still falling back: {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, r) = app.get("/readyz").await;
    assert!(
        r["checks"]["llm"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ok"),
        "{r}"
    );
}

#[tokio::test]
async fn upstream_error_bodies_never_reach_clients() {
    let secret = "sk-live-0123 at internal-llm.corp:8443";
    let llm = TestLlm::start(move |s| {
        if s.last_user().lines().any(|l| l.starts_with('[')) {
            Reply::Status {
                status: 500,
                body: secret.into(),
                retry_after: None,
            }
        } else {
            common::reversing_llm(s)
        }
    })
    .await;
    let mut settings = LlmSettings::single(llm.base_url.clone(), "test-model");
    settings.retry.max_attempts = 1;
    let app = common::spawn_app_with_llm(AppConfig::default(), settings).await;
    seed(&app).await;
    let (s, b) = app.post("/v1/rerank", rerank_body(false)).await;
    assert_eq!(
        (s, b["meta"]["fallback"].as_str()),
        (200, Some("llm_error")),
        "{b}"
    );
    let (s, strict) = app.post("/v1/rerank", rerank_body(true)).await;
    assert_eq!(s, 502);
    for text in [b.to_string(), strict.to_string()] {
        assert!(
            !text.contains("sk-live") && !text.contains("internal-llm"),
            "{text}"
        );
        assert!(text.contains("500"), "the status is kept: {text}");
    }
}

#[tokio::test]
async fn nul_characters_are_refused_wherever_a_string_reaches_sql() {
    let app = common::spawn_app().await;
    seed(&app).await;
    for path in [
        "/v1/items/a%00b",
        "/v1/users/a%00b/history",
        "/v1/users/a%00b/profile",
        "/v1/prompts/p_gen/versions/1?x=%00",
        "/v1/optimizations/%00",
    ] {
        let (s, b) = app.get(path).await;
        assert_eq!(s, 400, "{path}: {b}");
        let m = error_message(&b, "validation_error");
        assert!(m.contains("control characters"), "{path}: {m}");
    }
    let nul = "x\u{0}y";
    let cases = [
        (
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": [{"id": "i1"}], "prompt": {"label": nul}}),
            "prompt.label",
        ),
        (
            "/v1/rerank",
            json!({"user_id": "u1", "candidates": [{"id": "n1", "title": nul}]}),
            "candidates[0].title",
        ),
        (
            "/v1/prompts/p_gen/versions",
            json!({"template": format!("{{{{history}}}} {nul}")}),
            "template",
        ),
        (
            "/v1/prompts/p_gen/versions",
            json!({"template": "{{history}}", "message": nul}),
            "message",
        ),
        (
            "/v1/interactions",
            json!({"interactions": [{"user_id": "u1", "item_id": "i1", "kind": nul}]}),
            "interactions[0].kind",
        ),
        (
            "/v1/feedback",
            json!({"request_id": nul, "user_id": "u1", "item_id": "i1", "kind": "click"}),
            "request_id",
        ),
        ("/v1/evaluations", json!({"methods": [nul]}), "methods[0]"),
    ];
    for (path, body, field) in cases {
        let (s, b) = app.post(path, body).await;
        assert_eq!(s, 422, "{path} {field}: {b}");
        let m = error_message(&b, "validation_error");
        assert!(m.contains(field) && m.contains("NUL"), "{path}: {m}");
    }
    let (s, b) = app
        .put(
            "/v1/items",
            json!({"items": [{"id": "i1", "title": "t", "attributes": {"k": nul}}]}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    let versions = app
        .count("SELECT count(*) FROM prompt_versions WHERE name = 'p_gen'")
        .await;
    assert_eq!(versions, 1, "nothing was written");
}

/// Opens a socket that sends part of a request head and then nothing.
async fn half_sent(addr: &str) -> Option<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .ok()?;
    Some(s)
}

/// Whether the server closed the socket (read gives EOF or a reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 408 or similar before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_sockets_cannot_lock_out_real_clients() {
    agp_rerank::http::server::fit_connection_cap(10_000);
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(1500),
        keep_alive_timeout: Duration::from_millis(2500),
        max_connections: 64,
        max_header_bytes: 16 * 1024,
    };
    let app = common::spawn_state(
        |pool| agp_rerank::app::AppState::new(pool, AppConfig::default()),
        limits,
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();

    // 400 half-sent requests against a cap of 64 connections.
    let mut attackers = Vec::new();
    for _ in 0..400 {
        if let Some(s) = half_sent(&addr).await {
            attackers.push(s);
        }
    }
    assert!(attackers.len() >= 300, "opened {}", attackers.len());

    // Real clients are still served, each on a new connection, without waiting for the
    // attackers' header deadline.
    for i in 0..20 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let started = Instant::now();
        let r = client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "request {i} waited {:?}",
            started.elapsed()
        );
    }

    // Every half-sent request is closed by its header deadline (or was evicted earlier).
    for (i, s) in attackers.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "attacker socket {i} still open"
        );
    }

    // A kept-alive connection is closed once idle for the keep-alive timeout, not before.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        !closed_within(&mut s, Duration::from_millis(1800)).await,
        "kept alive past the header timeout"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(2)).await,
        "closed after idling"
    );

    // Heads larger than the limit are refused.
    let big = "a".repeat(20_000);
    let r = reqwest::Client::new()
        .get(format!("{}/healthz", app.base))
        .header("x-padding", big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
}

#[tokio::test]
async fn the_head_limit_is_the_documented_one() {
    // Default limits: 65,536 bytes of request line and headers.
    let app = common::spawn_app().await;
    let head = |padding: usize| {
        let url = format!("{}/healthz", app.base);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .header("x-padding", "a".repeat(padding))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or_default())
        }
    };
    assert_eq!(head(65_000).await.0, 200, "just under the limit");
    for padding in [66_000, 100_000] {
        let (s, b) = head(padding).await;
        assert_eq!(s, 431, "{padding} bytes of padding");
        assert!(
            error_message(&b, "validation_error").contains("exceed 65536 bytes"),
            "{b}"
        );
    }
}

#[tokio::test]
async fn odd_request_ids_are_replaced_not_echoed() {
    let app = common::spawn_app().await;
    for bad in [
        "x".repeat(500),
        "has space".to_string(),
        "caf\u{e9}".to_string(),
    ] {
        let r = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", bad.as_bytes())
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36, "a fresh uuid instead of {bad:?}: {id}");
    }
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-0123:abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-0123:abc");
}
