//! The real client against a real `llama-server` with the local model (SmolLM2-135M,
//! temperature 0, fixed seed, one slot). Asserts protocol and robustness, never quality.
//! Skips with a visible message when the model is not set up (scripts/setup-local-llm.sh);
//! with `AGP_REQUIRE_LOCAL_LLM=1` (CI) a missing model is a failure instead.

mod common;

use std::time::{Duration, Instant};

use agp_rerank::llm::config::LlmSettings;
use agp_rerank::llm::local::{LOCAL_MODEL_NAME, LocalLlm, LocalOptions};
use agp_rerank::llm::{CallContext, ChatRequest, JsonSchema, LlmClient, LlmError, Message, Role};
use serde_json::json;

fn local_options() -> Option<LocalOptions> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = LocalOptions::new(None, None, port, 2);
    if opts.available() {
        return Some(opts);
    }
    let msg = format!(
        "local LLM not set up ({} / {}): run scripts/setup-local-llm.sh",
        opts.server.display(),
        opts.model.display()
    );
    if std::env::var("AGP_REQUIRE_LOCAL_LLM").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED real-LLM test: {msg}");
    None
}

#[derive(Debug, serde::Deserialize)]
struct Ranking {
    ranking: Vec<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_llama_server_protocol_and_robustness() {
    let Some(opts) = local_options() else { return };
    let local = LocalLlm::start(opts).await.expect("start llama-server");
    let (pool, _) = common::fresh_db().await;
    let mut settings = LlmSettings::single(local.base_url(), LOCAL_MODEL_NAME);
    settings.max_tokens = 48;
    settings.timeout = Duration::from_secs(60);
    let client = LlmClient::new(settings.clone(), Some(pool.clone()));
    let mut ctx = CallContext::interactive("default");
    ctx.request_id = Some("real-llm-test".into());

    // 1. A plain call: content and usage come back.
    let req = ChatRequest::new(vec![
        Message::system("You are a helpful assistant. Answer in one short sentence."),
        Message::user("Name one video game genre."),
    ]);
    let a = client
        .chat(Role::Summarize, &req, &ctx)
        .await
        .expect("plain call");
    assert!(!a.content.trim().is_empty(), "empty answer");
    assert!(
        a.prompt_tokens > 0 && a.completion_tokens > 0,
        "usage counted: {a:?}"
    );

    // 2. The identical deterministic call is served from the cache.
    let b = client
        .chat(Role::Summarize, &req, &ctx)
        .await
        .expect("cached call");
    assert!(b.cached && b.content == a.content);

    // 3. Determinism without the cache: same request, byte-identical answer.
    ctx.no_cache = true;
    let c = client
        .chat(Role::Summarize, &req, &ctx)
        .await
        .expect("uncached call");
    assert_eq!(
        c.content, a.content,
        "temperature 0 + seed + one slot is deterministic"
    );

    // 4. Structured output: the JSON-schema constraint makes the answer parse.
    let mut rank = ChatRequest::new(vec![
        Message::system(
            "Rank the candidates for the user. Answer with JSON: {\"ranking\": [ids best first]}.",
        ),
        Message::user(
            "User likes strategy games.\n[1] Chess Master\n[2] Racing Fever\n[3] Civilization\nRanking:",
        ),
    ]);
    rank.json_schema = Some(JsonSchema {
        name: "ranking".into(),
        schema: json!({
            "type": "object",
            "properties": {"ranking": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
            "required": ["ranking"]
        }),
    });
    let (parsed, resp): (Ranking, _) = client
        .chat_json(Role::Rank, &rank, &ctx)
        .await
        .expect("structured output parses");
    assert!(
        parsed.ranking.len() <= 3,
        "{parsed:?} from {:?}",
        resp.content
    );

    // 5. A timeout is honoured against the real server.
    let mut fast = settings.clone();
    fast.timeout = Duration::from_millis(5);
    fast.retry.max_attempts = 1;
    let impatient = LlmClient::new(fast, None);
    let long = ChatRequest {
        max_tokens: Some(200),
        ..ChatRequest::new(vec![Message::user("Write a long story about a dragon.")])
    };
    let started = Instant::now();
    let err = impatient.chat(Role::Rank, &long, &ctx).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );

    // 6. Usage rows were written for the calls.
    client.flush_usage().await;
    let (calls, hits, tokens): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT cache_hit), count(*) FILTER (WHERE cache_hit), coalesce(sum(prompt_tokens), 0)
         FROM llm_usage WHERE request_id = 'real-llm-test'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((calls, hits), (3, 1));
    assert!(tokens > 0);

    // 7. The whole rerank path against the real model (quality aside): a permutation comes
    // back, with the profile written by the model and a parsed (possibly repaired) ranking.
    // The deadline `agp serve --llm local` uses: a CPU model writes a few tokens a second.
    let mut config = agp_rerank::config::AppConfig::default();
    config.rerank.deadline = Duration::from_millis(agp_rerank::config::default_deadline_ms(true));
    let state = agp_rerank::app::AppState::with_llm(pool.clone(), config, client.clone());
    let items: Vec<agp_rerank::catalog::NewItem> = [
        "Fire Emblem: The Sacred Stones",
        "Advance Wars",
        "Golden Sun",
        "Mario Kart: Super Circuit",
        "Madden NFL 2005",
        "Final Fantasy Tactics Advance",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| agp_rerank::catalog::NewItem {
        id: format!("g{i}"),
        title: t.to_string(),
        text: None,
        attributes: None,
    })
    .collect();
    let history: Vec<agp_rerank::catalog::NewInteraction> = (0..3)
        .map(|i| agp_rerank::catalog::NewInteraction {
            user_id: "gamer".into(),
            item_id: format!("g{i}"),
            kind: None,
            value: None,
            timestamp: None,
        })
        .collect();
    agp_rerank::store::import::write(&pool, "default", &items, &history, |_| {})
        .await
        .unwrap();
    let req = common::rerank_request("rr_real", "gamer", &["g3", "g4", "g5"]);
    let out = state.reranker.rerank(&req).await.expect("rerank");
    let mut idx: Vec<usize> = out.results.iter().map(|r| r.index).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2], "a permutation of the candidates");
    assert_eq!(
        out.usage.llm_calls, 5,
        "3 summaries + profile + ranking: {out:?}"
    );
    assert!(
        out.fallback.is_none()
            || out.fallback == Some(agp_rerank::serving::Fallback::UnusableOutput),
        "{out:?}"
    );
    eprintln!(
        "real-model rerank: fallback {:?}, repaired {}, {:?}",
        out.fallback, out.repaired, out.results
    );
    let profile = agp_rerank::store::rerank::latest_profile(&pool, "default", "gamer", None)
        .await
        .unwrap();
    assert!(
        profile.is_some_and(|p| !p.profile.is_empty()),
        "the model wrote a profile"
    );

    // 8. Log-probability mode end to end: one ranking call of one output token whose
    // alternatives llama-server returns (the profile is cached from step 7), and the
    // prompt-cache counters it reports.
    let mut req = common::rerank_request("rr_real_lp", "gamer", &["g3", "g4", "g5"]);
    req.rank_mode = Some(agp_rerank::agp::rank::RankMode::Logprobs);
    let out = state.reranker.rerank(&req).await.expect("rerank");
    let mut idx: Vec<usize> = out.results.iter().map(|r| r.index).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2]);
    let rank = out.rank.expect("the LLM ranked");
    assert_eq!(
        (rank.calls, rank.windows_without_logprobs),
        (1, 0),
        "llama-server returns log-probabilities: {out:?}"
    );
    assert_eq!(out.usage.llm_calls, 1, "{out:?}");
    assert_eq!(out.usage.completion_tokens, 1, "{out:?}");
    assert!(
        out.fallback.is_none(),
        "a letter among the alternatives: {out:?}"
    );
    // The same user's next rerank shares the system message, instructions and profile.
    let mut req = common::rerank_request("rr_real_lp2", "gamer", &["g5", "g3"]);
    req.rank_mode = Some(agp_rerank::agp::rank::RankMode::Logprobs);
    let out = state.reranker.rerank(&req).await.expect("rerank");
    assert!(
        out.usage.cached_tokens > 0,
        "llama-server reused the shared prefix: {:?}",
        out.usage
    );
    eprintln!("real-model log-probability rerank: {:?}", out.usage);

    // 9. The supervisor restarts a llama-server that dies, and calls work again.
    let old = local.pid();
    assert!(old > 0);
    // SAFETY: killing the child process this test started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(local.healthy() && local.pid() != 0 && local.pid() != old) {
        assert!(
            Instant::now() < deadline,
            "llama-server was not restarted within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.no_cache = true;
    let ping = ChatRequest::new(vec![
        Message::system("You are a helpful assistant. Answer in one short sentence."),
        Message::user("Name one video game genre."),
    ]);
    let again = client
        .chat(Role::Summarize, &ping, &ctx)
        .await
        .expect("a call after the restart");
    assert_eq!(
        again.content, a.content,
        "same model, same deterministic answer"
    );

    local.stop().await;
}
