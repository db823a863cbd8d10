//! A scriptable in-process server speaking the OpenAI chat completions protocol: the only
//! fake in the system, used by the test suite and the benchmarks. Each call is answered by a
//! script function that sees the request and the call number, and returns a canned or
//! computed answer, a delay, an error status, malformed JSON, a truncated answer, or a hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// How the server answers one call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this assistant content.
    Text(String),
    /// 200 with this content and `finish_reason: "length"`.
    Truncated(String),
    /// 200 with this content and, for its first token, these `(token, logprob)`
    /// alternatives in the OpenAI `logprobs` shape (a server that supports them).
    Logprobs {
        content: String,
        top: Vec<(String, f64)>,
    },
    /// This status with a JSON error body (and `Retry-After` seconds when given).
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// 200 with this raw, not-necessarily-JSON body.
    Raw(String),
    /// Wait, then answer with the inner reply.
    Delay(Duration, Box<Reply>),
    /// Never answer (the client's timeout must fire).
    Hang,
}

impl Reply {
    /// 200 with `content`.
    pub fn text(content: impl Into<String>) -> Self {
        Reply::Text(content.into())
    }
    /// 200 with the JSON value serialized as content.
    pub fn json(v: Value) -> Self {
        Reply::Text(v.to_string())
    }
    /// A one-token answer whose alternatives are `top` (the first is the chosen token).
    pub fn first_token(top: &[(&str, f64)]) -> Self {
        Reply::Logprobs {
            content: top.first().map(|(t, _)| t.to_string()).unwrap_or_default(),
            top: top.iter().map(|(t, l)| (t.to_string(), *l)).collect(),
        }
    }
    /// An error status with a short body.
    pub fn status(status: u16) -> Self {
        Reply::Status {
            status,
            body: format!("scripted {status}"),
            retry_after: None,
        }
    }
    /// 429 with `Retry-After: secs`.
    pub fn rate_limited(secs: u64) -> Self {
        Reply::Status {
            status: 429,
            body: "slow down".into(),
            retry_after: Some(secs),
        }
    }
    /// This reply after `ms` milliseconds.
    pub fn after(self, ms: u64) -> Self {
        Reply::Delay(Duration::from_millis(ms), Box::new(self))
    }
}

/// What the script sees of a call.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 0-based number of this call on this server.
    pub n: usize,
    /// The request body as sent.
    pub body: Value,
    /// The pipeline role the client named (`x-agp-role`), when it named one.
    pub role: Option<crate::llm::Role>,
}

impl Seen {
    /// The call's role as the client named it (`x-agp-role`).
    pub fn role(&self) -> Option<crate::llm::Role> {
        self.role
    }

    /// Content of the last user message.
    pub fn last_user(&self) -> String {
        self.messages()
            .into_iter()
            .rev()
            .find(|(r, _)| r == "user")
            .map(|(_, c)| c)
            .unwrap_or_default()
    }
    /// Content of the system message, if any.
    pub fn system(&self) -> String {
        self.messages()
            .into_iter()
            .find(|(r, _)| r == "system")
            .map(|(_, c)| c)
            .unwrap_or_default()
    }
    /// (role, content) of every message.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["role"].as_str().unwrap_or("").to_string(),
                            m["content"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    /// How many log-probability alternatives the call asked for (0: none).
    pub fn top_logprobs(&self) -> usize {
        if self.body["logprobs"].as_bool() == Some(true) {
            self.body["top_logprobs"].as_u64().unwrap_or(0) as usize
        } else {
            0
        }
    }
    /// Whether the call asked for structured output.
    pub fn wants_schema(&self) -> bool {
        self.body.get("response_format").is_some()
    }
}

type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Shared {
    script: Mutex<Script>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: Mutex<Vec<Value>>,
    /// The last prompt, for the prefix cache it simulates (one slot, like llama-server's).
    last_prompt: Mutex<String>,
}

/// A running test server. Dropping it stops it.
pub struct TestLlm {
    /// Base URL including `/v1`, ready for `AGP_LLM_BASE_URL`.
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestLlm {
    /// Starts a server on 127.0.0.1 (free port) answering with `script`.
    pub async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            script: Mutex::new(Arc::new(script)),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            last_prompt: Mutex::new(String::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test LLM server");
        let addr = listener.local_addr().expect("test LLM server address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestLlm {
            base_url: format!("http://{addr}/v1"),
            shared,
            task,
        }
    }

    /// A server that always answers with `reply`.
    pub async fn always(reply: Reply) -> Self {
        TestLlm::start(move |_| reply.clone()).await
    }

    /// A server that answers with `replies` in order, repeating the last one.
    pub async fn sequence(replies: Vec<Reply>) -> Self {
        let replies = Arc::new(replies);
        TestLlm::start(move |s| {
            replies
                .get(s.n)
                .or(replies.last())
                .cloned()
                .unwrap_or(Reply::text(""))
        })
        .await
    }

    /// Replaces the script (calls made so far keep their numbers).
    pub fn set_script(&self, script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.shared.script.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(script);
    }

    /// Calls received so far.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Largest number of calls in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Request bodies received so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Rough token count for the usage block: about four characters per token.
fn tokens(s: &str) -> u64 {
    (s.chars().count() as u64).div_ceil(4)
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let n = shared.calls.fetch_add(1, Ordering::SeqCst);
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&shared);
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("bad JSON: {e}")}})),
            )
                .into_response();
        }
    };
    shared
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(body.clone());
    let role = headers
        .get(crate::llm::client::ROLE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::llm::Role::parse);
    let seen = Seen { n, body, role };
    let script = shared
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut reply = script(&seen);
    loop {
        match reply {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                reply = *inner;
            }
            Reply::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            Reply::Text(content) => return completion(&shared, &seen, content, "stop", None),
            Reply::Truncated(content) => {
                return completion(&shared, &seen, content, "length", None);
            }
            Reply::Logprobs { content, top } => {
                let alternatives: Vec<Value> = top
                    .iter()
                    .map(|(t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()}))
                    .collect();
                let first = top.first().cloned().unwrap_or_default();
                let lp = json!({"content": [{"token": first.0, "logprob": first.1,
                    "bytes": first.0.as_bytes(), "top_logprobs": alternatives}]});
                return completion(&shared, &seen, content, "length", Some(lp));
            }
            Reply::Raw(raw) => {
                return (StatusCode::OK, [("content-type", "application/json")], raw)
                    .into_response();
            }
            Reply::Status {
                status,
                body,
                retry_after,
            } => {
                let code =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut resp = (code, Json(json!({"error": {"message": body}}))).into_response();
                if let Some(s) = retry_after
                    && let Ok(v) = HeaderValue::from_str(&s.to_string())
                {
                    resp.headers_mut().insert("retry-after", v);
                }
                return resp;
            }
        }
    }
}

/// How many leading characters of the prompt the previous prompt shared (what a one-slot
/// prefix cache would not read again); remembers this prompt for the next call.
fn prefix_cached(shared: &Shared, seen: &Seen) -> usize {
    let text: String = seen
        .messages()
        .iter()
        .map(|(r, c)| format!("<{r}>{c}"))
        .collect();
    let mut last = shared.last_prompt.lock().unwrap_or_else(|p| p.into_inner());
    let common = last
        .chars()
        .zip(text.chars())
        .take_while(|(a, b)| a == b)
        .count();
    *last = text;
    common
}

fn completion(
    shared: &Shared,
    seen: &Seen,
    content: String,
    finish: &str,
    logprobs: Option<Value>,
) -> Response {
    let prompt: u64 = seen.messages().iter().map(|(_, c)| tokens(c) + 4).sum();
    let common = prefix_cached(shared, seen);
    let cached = (common as u64 / 4).min(prompt);
    let model = seen.body["model"]
        .as_str()
        .unwrap_or("test-model")
        .to_string();
    Json(json!({
        "id": format!("chatcmpl-test-{}", seen.n),
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
            "finish_reason": finish, "logprobs": logprobs}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": tokens(&content),
            "total_tokens": prompt + tokens(&content),
            "prompt_tokens_details": {"cached_tokens": cached}}
    }))
    .into_response()
}
