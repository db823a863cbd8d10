//! The LLM client against the in-process test server (the same protocol as real servers):
//! retries, no-retry classes, timeouts, concurrency and priority, cache, structured output
//! fallback, garbage, and usage rows in Postgres.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::retry::RetryPolicy;
use agp_rerank::llm::test_server::{Reply, TestLlm};
use agp_rerank::llm::{
    CallContext, ChatRequest, JsonSchema, LlmClient, LlmError, Message, Role, Tally,
};
use serde_json::json;

fn settings(server: &TestLlm) -> LlmSettings {
    let mut s = LlmSettings::single(server.base_url.clone(), "test-model");
    s.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        budget: Duration::from_secs(10),
    };
    s.timeout = Duration::from_secs(5);
    s
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(vec![
        Message::system("You are a test."),
        Message::user(text),
    ])
}

fn ctx() -> CallContext {
    CallContext::interactive("default")
}

#[tokio::test]
async fn retries_429_honouring_retry_after_then_succeeds() {
    let server = TestLlm::sequence(vec![Reply::rate_limited(1), Reply::text("fine")]).await;
    let client = LlmClient::new(settings(&server), None);
    let started = Instant::now();
    let r = client.chat(Role::Rank, &ask("x"), &ctx()).await.unwrap();
    assert_eq!(r.content, "fine");
    assert_eq!(r.attempts, 2);
    assert_eq!(server.calls(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_500_then_succeeds_and_gives_up_when_exhausted() {
    let server = TestLlm::sequence(vec![
        Reply::status(500),
        Reply::status(503),
        Reply::text("ok"),
    ])
    .await;
    let client = LlmClient::new(settings(&server), None);
    let r = client.chat(Role::Rank, &ask("x"), &ctx()).await.unwrap();
    assert_eq!(
        (r.content.as_str(), r.attempts, server.calls()),
        ("ok", 3, 3)
    );

    let server = TestLlm::always(Reply::status(502)).await;
    let client = LlmClient::new(settings(&server), None);
    let err = client
        .chat(Role::Rank, &ask("x"), &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Exhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), "server_error");
    assert_eq!(server.calls(), 4, "bounded by max_attempts");
}

#[tokio::test]
async fn no_retry_on_400_or_garbage() {
    let server = TestLlm::always(Reply::status(400)).await;
    let client = LlmClient::new(settings(&server), None);
    let err = client
        .chat(Role::Rank, &ask("x"), &ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Refused { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(server.calls(), 1);

    let server = TestLlm::always(Reply::Raw("{\"choices\": [oops".into())).await;
    let client = LlmClient::new(settings(&server), None);
    let err = client
        .chat(Role::Rank, &ask("x"), &ctx())
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Garbage(_)), "{err:?}");
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn timeout_fires_at_the_configured_time() {
    let server = TestLlm::always(Reply::Hang).await;
    let mut s = settings(&server);
    s.timeout = Duration::from_millis(300);
    s.retry.max_attempts = 1;
    let client = LlmClient::new(s, None);
    let started = Instant::now();
    let err = client
        .chat(Role::Rank, &ask("x"), &ctx())
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1000),
        "{took:?}"
    );

    // With retries, every attempt times out and the budget bounds the whole call.
    let mut s = settings(&server);
    s.timeout = Duration::from_millis(100);
    s.retry.max_attempts = 3;
    let client = LlmClient::new(s, None);
    let started = Instant::now();
    let err = client
        .chat(Role::Rank, &ask("x"), &ctx())
        .await
        .unwrap_err();
    assert!(
        err.is_timeout() && matches!(err, LlmError::Exhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn concurrency_limit_holds_under_a_burst() {
    let server = TestLlm::always(Reply::text("ok").after(100)).await;
    let mut s = settings(&server);
    s.concurrency = 3;
    s.reserved_interactive = 0;
    let client = LlmClient::new(s, None);
    let started = Instant::now();
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.chat(
                    Role::Rank,
                    &ask(&format!("q{i}")),
                    &CallContext::background("default"),
                )
                .await
            })
        })
        .collect();
    for h in calls {
        h.await.unwrap().unwrap();
    }
    assert_eq!(server.calls(), 12);
    assert_eq!(
        server.max_in_flight(),
        3,
        "never more than the limit in flight"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "12 calls / 3 slots x 100 ms"
    );
}

#[tokio::test]
async fn interactive_calls_overtake_background_work() {
    let server = TestLlm::always(Reply::text("ok").after(400)).await;
    let mut s = settings(&server);
    s.concurrency = 2;
    s.reserved_interactive = 1;
    let client = LlmClient::new(s, None);
    let background: Vec<_> = (0..4)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move {
                c.chat(
                    Role::Profile,
                    &ask(&format!("b{i}")),
                    &CallContext::background("default"),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    client
        .chat(Role::Rank, &ask("interactive"), &ctx())
        .await
        .unwrap();
    let waited = started.elapsed();
    // Behind the queue it would wait for 4 x 400 ms of background calls.
    assert!(
        waited < Duration::from_millis(900),
        "interactive call waited {waited:?} behind background work"
    );
    for h in background {
        h.await.unwrap().unwrap();
    }
    assert_eq!(server.max_in_flight(), 2);
}

#[tokio::test]
async fn two_projects_sending_the_same_prompt_never_share_a_cache_hit() {
    let (pool, _) = common::fresh_db().await;
    let server = TestLlm::start(|s| Reply::text(format!("echo: {}", s.last_user()))).await;
    let client = LlmClient::new(settings(&server), Some(pool.clone()));
    let call = |project: &'static str| {
        let client = client.clone();
        async move {
            client
                .chat(
                    Role::Summarize,
                    &ask("an item's exact text"),
                    &CallContext::background(project),
                )
                .await
                .unwrap()
        }
    };
    let a1 = call("alpha").await;
    let b1 = call("beta").await;
    let a2 = call("alpha").await;
    let b2 = call("beta").await;
    assert!(!a1.cached, "alpha's first call goes upstream");
    assert!(
        !b1.cached,
        "beta never learns that alpha sent the same prompt"
    );
    assert!(a2.cached && b2.cached, "each project hits its own cache");
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn cache_hits_make_no_upstream_call_and_usage_rows_are_written() {
    let (pool, _) = common::fresh_db().await;
    let server = TestLlm::start(|s| Reply::text(format!("echo: {}", s.last_user()))).await;
    let client = LlmClient::new(settings(&server), Some(pool.clone()));
    let tally = Arc::new(Tally::default());
    let job = uuid::Uuid::new_v4();
    let mut c = CallContext::background("default").with_tally(tally.clone());
    c.job_id = Some(job);

    let first = client
        .chat(Role::Summarize, &ask("same"), &c)
        .await
        .unwrap();
    let second = client
        .chat(Role::Summarize, &ask("same"), &c)
        .await
        .unwrap();
    assert_eq!(
        server.calls(),
        1,
        "the second identical deterministic call is a cache hit"
    );
    assert!(!first.cached && second.cached);
    assert_eq!(first.content, second.content);

    // Not deterministic: never cached. A different prompt: a new call.
    let mut hot = ask("same");
    hot.temperature = Some(0.7);
    client.chat(Role::Summarize, &hot, &c).await.unwrap();
    client.chat(Role::Summarize, &hot, &c).await.unwrap();
    client
        .chat(Role::Summarize, &ask("other"), &c)
        .await
        .unwrap();
    assert_eq!(server.calls(), 4);

    let snap = tally.snapshot();
    assert_eq!((snap.llm_calls, snap.cache_hits), (4, 1));
    assert!(snap.prompt_tokens > 0 && snap.completion_tokens > 0);

    client.flush_usage().await;
    let rows: Vec<(String, bool, i32, i32, String)> = sqlx::query_as(
        "SELECT role, cache_hit, prompt_tokens, completion_tokens, outcome FROM llm_usage WHERE job_id = $1 ORDER BY id",
    )
    .bind(job)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.0 == "summarize" && r.4 == "ok"));
    assert_eq!(rows.iter().filter(|r| r.1).count(), 1);
    assert_eq!(
        rows[0].2 as u64 + rows[2].2 as u64 + rows[3].2 as u64 + rows[4].2 as u64,
        snap.prompt_tokens
    );
    let by_role = agp_rerank::store::llm::job_usage_by_role(&pool, job)
        .await
        .unwrap();
    assert_eq!(by_role.len(), 1);
    // Stored latencies have millisecond resolution; everything else matches exactly.
    let t = by_role[0].1;
    assert_eq!(
        (
            t.calls,
            t.cache_hits,
            t.prompt_tokens,
            t.completion_tokens,
            t.errors
        ),
        (
            snap.llm_calls,
            snap.cache_hits,
            snap.prompt_tokens,
            snap.completion_tokens,
            snap.errors
        )
    );
}

#[tokio::test]
async fn errors_are_recorded_as_usage_outcomes() {
    let (pool, _) = common::fresh_db().await;
    let server = TestLlm::always(Reply::status(401)).await;
    let client = LlmClient::new(settings(&server), Some(pool.clone()));
    let mut c = ctx();
    c.request_id = Some("rr_test".into());
    assert!(client.chat(Role::Rank, &ask("x"), &c).await.is_err());
    client.flush_usage().await;
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM llm_usage WHERE request_id = 'rr_test'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(outcome, "refused");
}

#[tokio::test]
async fn structured_output_falls_back_when_the_server_rejects_it() {
    let server = TestLlm::start(|s| {
        if s.wants_schema() {
            Reply::Status {
                status: 400,
                body: "response_format is not supported".into(),
                retry_after: None,
            }
        } else {
            Reply::text("Here you go: {\"ranking\": [3, 1, 2]}")
        }
    })
    .await;
    let client = LlmClient::new(settings(&server), None);
    let mut req = ask("rank");
    req.json_schema = Some(JsonSchema {
        name: "ranking".into(),
        schema: json!({"type": "object"}),
    });
    #[derive(serde::Deserialize)]
    struct Ranking {
        ranking: Vec<u32>,
    }
    let (r, resp): (Ranking, _) = client.chat_json(Role::Rank, &req, &ctx()).await.unwrap();
    assert_eq!(r.ranking, vec![3, 1, 2]);
    assert_eq!(resp.attempts, 1, "the fallback is not counted as a retry");
    assert_eq!(server.calls(), 2);
    // Learned: the next call goes straight without response_format.
    client
        .chat_json::<Ranking>(Role::Rank, &req, &ctx())
        .await
        .unwrap();
    assert_eq!(server.calls(), 3);
    assert!(server.requests()[2].get("response_format").is_none());
    assert!(server.requests()[0].get("response_format").is_some());
}

#[tokio::test]
async fn truncated_wrong_schema_and_unconfigured() {
    let server = TestLlm::sequence(vec![
        Reply::Truncated("{\"ranking\": [1, 2".into()),
        Reply::json(json!({"items": "x"})),
    ])
    .await;
    let client = LlmClient::new(settings(&server), None);
    let r = client.chat(Role::Rank, &ask("x"), &ctx()).await.unwrap();
    assert!(r.truncated());
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Ranking {
        ranking: Vec<u32>,
    }
    let err = client
        .chat_json::<Ranking>(Role::Rank, &ask("y"), &ctx())
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Garbage(_)), "{err:?}");

    let none = LlmClient::disabled();
    let err = none.chat(Role::Rank, &ask("x"), &ctx()).await.unwrap_err();
    assert!(matches!(err, LlmError::NotConfigured(_)));
    assert!(err.to_string().contains("AGP_LLM_BASE_URL"));
}

#[tokio::test]
async fn connection_refused_is_a_connect_error_after_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = LlmSettings::single(format!("http://127.0.0.1:{port}/v1"), "m");
    s.retry = RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(5),
        ..Default::default()
    };
    let client = LlmClient::new(s, None);
    let err = client
        .chat(Role::Rank, &ask("x"), &ctx())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "connect_error", "{err:?}");
}
