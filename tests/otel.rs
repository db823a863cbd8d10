//! OpenTelemetry traces, received by a real OTLP/HTTP collector (an in-process server that
//! accepts `POST /v1/traces` with OTLP JSON, as an OpenTelemetry Collector's receiver does):
//! a rerank sent with a W3C `traceparent` continues the caller's trace, answers with its own
//! `traceparent`, and its span tree holds every step, the LLM calls with model, tokens and
//! cache hits. One test: the subscriber is global to the test binary.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agp_rerank::telemetry::{self, LogFormat};
use axum::routing::post;
use serde_json::{Value, json};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, Value>,
}

/// An OTLP/HTTP JSON receiver on a free port; returns its base URL and what it received.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                let mut spans = store.lock().unwrap();
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for s in ss["spans"].as_array().into_iter().flatten() {
                            let attributes = s["attributes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|a| {
                                    let v = &a["value"];
                                    let v = ["stringValue", "intValue", "boolValue", "doubleValue"]
                                        .iter()
                                        .find_map(|k| v.get(*k).cloned())
                                        .unwrap_or(Value::Null);
                                    (a["key"].as_str().unwrap_or("").to_string(), v)
                                })
                                .collect();
                            spans.push(Received {
                                trace: s["traceId"].as_str().unwrap_or("").to_lowercase(),
                                id: s["spanId"].as_str().unwrap_or("").to_lowercase(),
                                parent: s["parentSpanId"].as_str().unwrap_or("").to_lowercase(),
                                name: s["name"].as_str().unwrap_or("").to_string(),
                                attributes,
                            });
                        }
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerank_continues_the_callers_trace_and_its_span_tree_reaches_the_collector() {
    let (url, got) = collector().await;
    telemetry::init("info", LogFormat::Text, Some(&url)).expect("OTLP layer");
    let (app, _llm) = common::spawn_app_scripted(common::reversing_llm).await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("i{i}"), "title": format!("Item {i}")}))
        .collect();
    assert_eq!(app.put("/v1/items", json!({"items": items})).await.0, 200);
    let (s, _) = app
        .post(
            "/v1/interactions",
            json!({"interactions": [{"user_id": "u1", "item_id": "i0"}]}),
        )
        .await;
    assert_eq!(s, 200);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let r = app
        .client
        .post(app.url("/v1/rerank"))
        .header("traceparent", format!("00-{trace}-{caller}-01"))
        .json(&json!({"user_id": "u1", "candidates": [{"id": "i2"}, {"id": "i3"}, {"id": "i4"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let returned = r.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(returned.starts_with(&format!("00-{trace}-")), "{returned}");
    let b: Value = r.json().await.unwrap();
    assert!(b["meta"]["fallback"].is_null(), "{b}");

    // Spans are batched: flush, then wait for the request's tree to arrive.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        telemetry::flush_traces();
        let spans: Vec<Received> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == trace)
            .cloned()
            .collect();
        if spans.iter().any(|s| s.name == "rerank.journal") {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans received: {spans:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let root = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("the request span");
    assert_eq!(
        root.parent, caller,
        "the request span's parent is the caller's span"
    );
    assert_eq!(returned, format!("00-{trace}-{}-01", root.id));
    // Every span of the trace hangs from the request span.
    let under_root = |s: &Received| {
        let mut cur = s;
        for _ in 0..20 {
            if cur.id == root.id {
                return true;
            }
            match by_id.get(cur.parent.as_str()) {
                Some(p) => cur = p,
                None => return false,
            }
        }
        false
    };
    for name in [
        "rerank.resolve",
        "rerank.candidates",
        "rerank.history",
        "rerank.llm",
        "rerank.profile",
        "rerank.rank",
        "rerank.fuse",
        "rerank.journal",
    ] {
        let s = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"));
        assert!(under_root(s), "{name} is not under the request span");
    }
    // The LLM calls: a profile and a ranking, with model, tokens and the cache flag.
    let calls: Vec<&Received> = spans.iter().filter(|s| s.name == "llm.call").collect();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    for c in &calls {
        assert!(under_root(c));
        assert_eq!(c.attributes["model"], "test-model", "{c:?}");
        assert_eq!(c.attributes["cache_hit"], false, "{c:?}");
        assert_eq!(c.attributes["outcome"], "ok", "{c:?}");
        let tokens = &c.attributes["prompt_tokens"];
        assert!(
            tokens
                .as_str()
                .and_then(|t| t.parse::<i64>().ok())
                .or(tokens.as_i64())
                > Some(0),
            "{c:?}"
        );
    }
    let roles: Vec<&Value> = calls.iter().map(|c| &c.attributes["role"]).collect();
    assert!(
        roles.contains(&&json!("profile")) && roles.contains(&&json!("rank")),
        "{roles:?}"
    );
    let profile_call = calls
        .iter()
        .find(|c| c.attributes["role"] == "profile")
        .unwrap();
    assert_eq!(
        by_id[profile_call.parent.as_str()].name,
        "rerank.profile",
        "the profile call is the profile step's"
    );
}
