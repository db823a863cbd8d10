//! Every LLM call of the system goes through this module: an OpenAI-compatible chat client
//! with per-provider concurrency limits (interactive calls first), retries with backoff,
//! a Postgres response cache for deterministic calls, and usage accounting.
//!
//! - `config`: settings (flags / `AGP_LLM_*`), routes per role
//! - `client`: `LlmClient`, the handle callers get
//! - `limiter`, `retry`: concurrency with priorities; backoff policy
//! - `usage`: per-call records, tallies, metrics, the batched usage writer
//! - `local`: a supervised `llama-server` child process (`agp serve --llm local`)
//! - `test_server`: a scriptable in-process server speaking the same protocol (tests, benches;
//!   only with the `test-support` feature, which tests and benches get through Cargo.toml)

pub mod breaker;
pub mod budget;
pub mod client;
pub mod config;
pub mod limiter;
pub mod local;
pub mod retry;
#[cfg(feature = "test-support")]
pub mod test_server;
pub mod usage;

use crate::store::states::UsageOutcome;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::LlmClient;
pub use usage::Tally;

/// What a call is for; each role can be routed to its own model and provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Summarize,
    Profile,
    Rank,
    Feedback,
    Aggregate,
    Optimize,
}

impl Role {
    /// All roles, in pipeline order.
    pub const ALL: [Role; 6] = [
        Role::Summarize,
        Role::Profile,
        Role::Rank,
        Role::Feedback,
        Role::Aggregate,
        Role::Optimize,
    ];

    /// Lower-case name used in configuration, metrics and usage rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Summarize => "summarize",
            Role::Profile => "profile",
            Role::Rank => "rank",
            Role::Feedback => "feedback",
            Role::Aggregate => "aggregate",
            Role::Optimize => "optimize",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Queueing class at the concurrency limiter: interactive calls (reranks) go first and have
/// slots reserved; background calls (jobs) take what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    Interactive,
    Background,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// A JSON schema the answer should follow (sent as `response_format` when the server takes it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonSchema {
    pub name: String,
    pub schema: serde_json::Value,
}

/// A chat request. Unset sampling fields take the route's defaults.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
    pub max_tokens: Option<u32>,
    pub json_schema: Option<JsonSchema>,
    /// Ask for token log-probabilities (`top_logprobs` alternatives per token).
    pub top_logprobs: Option<u8>,
    /// Cache this call even at a temperature above 0: for sampled calls with an explicit
    /// seed whose answer should be reproducible (a resumed job re-asks the same question).
    pub cache_seeded: bool,
    /// Never answer this call from the cache (and do not store its answer).
    pub no_cache: bool,
}

impl ChatRequest {
    /// A request with these messages and the route's defaults.
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            ..Default::default()
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub content: String,
    pub model: String,
    /// `stop`, `length` (truncated by max_tokens), ...
    pub finish_reason: Option<String>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the server read from its prompt (prefix) cache, when it says.
    #[serde(default)]
    pub cached_tokens: u32,
    /// Raw `logprobs` object when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<serde_json::Value>,
    /// Served from the cache: no upstream call was made.
    #[serde(default)]
    pub cached: bool,
    /// Wall time of the call including queueing and retries (zero for cache hits).
    #[serde(default)]
    pub latency_ms: u64,
    /// Upstream attempts made (0 for cache hits).
    #[serde(default)]
    pub attempts: u32,
}

impl ChatResponse {
    /// True when the answer was cut off by the token limit.
    pub fn truncated(&self) -> bool {
        self.finish_reason.as_deref() == Some("length")
    }
}

/// Who a call is made for: attributes usage rows and chooses the queueing class.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub project: String,
    pub priority: Priority,
    pub request_id: Option<String>,
    pub job_id: Option<uuid::Uuid>,
    /// Running totals for the caller (a rerank's `meta.usage`, a job step's cost).
    pub tally: Option<Arc<Tally>>,
    /// Bypass the response cache for this call.
    pub no_cache: bool,
    /// Answer (or fail with a timeout) by then: caps each attempt's timeout, the wait for a
    /// slot and the retries. Reranks set it from their deadline; jobs leave it unset.
    pub deadline: Option<std::time::Instant>,
}

impl CallContext {
    /// A context for an interactive call (a rerank) of `project`.
    pub fn interactive(project: impl Into<String>) -> Self {
        CallContext {
            project: project.into(),
            priority: Priority::Interactive,
            request_id: None,
            job_id: None,
            tally: None,
            no_cache: false,
            deadline: None,
        }
    }

    /// A context for a background call (jobs) of `project`.
    pub fn background(project: impl Into<String>) -> Self {
        CallContext {
            priority: Priority::Background,
            ..CallContext::interactive(project)
        }
    }

    /// Adds a tally the call's usage is added to.
    pub fn with_tally(mut self, tally: Arc<Tally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// The same context without a deadline (work that outlives the request that started it).
    pub fn without_deadline(&self) -> Self {
        CallContext {
            deadline: None,
            ..self.clone()
        }
    }

    /// Sets the time by which the call must be over.
    pub fn with_deadline(mut self, deadline: std::time::Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// Why a call failed. Callers tell a timeout from a refusal from garbage by the variant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error(
        "no LLM is configured for role {0} (set AGP_LLM_BASE_URL, or run `agp serve --llm local`)"
    )]
    NotConfigured(String),
    #[error("the LLM did not answer within {0:?}")]
    Timeout(Duration),
    /// The server is known to be down (circuit open): the call was not made.
    #[error("{0}")]
    Unavailable(String),
    #[error("could not reach the LLM: {0}")]
    Connect(String),
    #[error("the LLM is rate limiting (429){}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("the LLM server failed with {status}: {body}")]
    Server { status: u16, body: String },
    #[error("the LLM refused the request with {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the LLM answered something unusable: {0}")]
    Garbage(String),
    /// The project's LLM budget for this kind of work is spent (the call was not made).
    #[error("{0}")]
    OverBudget(String),
    #[error("gave up after {attempts} attempts in {elapsed:?}: {last}")]
    Exhausted {
        attempts: u32,
        elapsed: Duration,
        last: Box<LlmError>,
    },
}

impl LlmError {
    /// Whether another attempt may succeed (timeouts, connection errors, 429, 5xx).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            LlmError::Timeout(_)
                | LlmError::Connect(_)
                | LlmError::RateLimited { .. }
                | LlmError::Server { .. }
        )
    }

    /// The underlying error when retries were exhausted.
    pub fn root(&self) -> &LlmError {
        match self {
            LlmError::Exhausted { last, .. } => last.root(),
            other => other,
        }
    }

    /// How the call ended, as usage rows store it.
    pub fn outcome(&self) -> UsageOutcome {
        match self.root() {
            LlmError::NotConfigured(_) => UsageOutcome::NotConfigured,
            LlmError::Timeout(_) => UsageOutcome::Timeout,
            LlmError::Unavailable(_) => UsageOutcome::CircuitOpen,
            LlmError::Connect(_) => UsageOutcome::ConnectError,
            LlmError::RateLimited { .. } => UsageOutcome::RateLimited,
            LlmError::Server { .. } => UsageOutcome::ServerError,
            LlmError::Refused { .. } => UsageOutcome::Refused,
            LlmError::Garbage(_) => UsageOutcome::Garbage,
            LlmError::OverBudget(_) => UsageOutcome::OverBudget,
            LlmError::Exhausted { .. } => UsageOutcome::Exhausted,
        }
    }

    /// Short stable label for metrics and usage rows (the outcome's name).
    pub fn kind(&self) -> &'static str {
        self.outcome().as_str()
    }

    /// True when the root cause is a spent budget (rerank maps it to `budget`).
    pub fn is_over_budget(&self) -> bool {
        matches!(self.root(), LlmError::OverBudget(_))
    }

    /// True when the root cause is a timeout (rerank maps it to `llm_timeout`).
    pub fn is_timeout(&self) -> bool {
        matches!(self.root(), LlmError::Timeout(_))
    }

    /// Whether this attempt's failure says the server is unhealthy (counts toward opening
    /// the circuit): timeouts, connection errors and 5xx. A 4xx or a garbled answer came
    /// from a live server.
    pub fn signals_down(&self) -> bool {
        matches!(
            self,
            LlmError::Timeout(_) | LlmError::Connect(_) | LlmError::Server { .. }
        )
    }

    /// A message safe to show API clients: what failed, never the upstream's own error body
    /// or answer text (those may carry keys, internal hosts or prompt text; they are logged).
    pub fn public_message(&self) -> String {
        match self {
            LlmError::Server { status, .. } => format!("the LLM server failed with {status}"),
            LlmError::Refused { status, .. } => {
                format!("the LLM refused the request with {status}")
            }
            LlmError::Garbage(_) => "the LLM answered something unusable".into(),
            LlmError::Connect(_) => "could not reach the LLM server".into(),
            LlmError::Exhausted {
                attempts,
                elapsed,
                last,
            } => format!(
                "gave up after {attempts} attempts in {} ms: {}",
                elapsed.as_millis(),
                last.public_message()
            ),
            other => other.to_string(),
        }
    }
}

/// Extracts the first JSON object or array from an answer that may wrap it in prose or
/// code fences, and parses it into `T`.
pub fn parse_json_answer<T: serde::de::DeserializeOwned>(content: &str) -> Result<T, LlmError> {
    let trimmed = content.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Ok(v);
    }
    let start = trimmed.find(['{', '[']);
    let end = trimmed.rfind(['}', ']']);
    match (start, end) {
        (Some(s), Some(e)) if e > s => serde_json::from_str(&trimmed[s..=e]).map_err(|err| {
            LlmError::Garbage(format!("answer does not match the expected JSON: {err}"))
        }),
        _ => Err(LlmError::Garbage("answer contains no JSON".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("nope"), None);
    }

    #[test]
    fn json_answers_are_found_in_prose() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct R {
            ranking: Vec<u32>,
        }
        let r: R =
            parse_json_answer("Sure! ```json\n{\"ranking\": [2, 1]}\n``` hope this helps").unwrap();
        assert_eq!(r.ranking, vec![2, 1]);
        assert!(matches!(
            parse_json_answer::<R>("no json here"),
            Err(LlmError::Garbage(_))
        ));
        assert!(matches!(
            parse_json_answer::<R>("{\"other\": 1}"),
            Err(LlmError::Garbage(_))
        ));
    }

    #[test]
    fn error_classes() {
        assert!(LlmError::Timeout(Duration::from_secs(1)).retryable());
        assert!(
            LlmError::Server {
                status: 500,
                body: String::new()
            }
            .retryable()
        );
        assert!(LlmError::RateLimited { retry_after: None }.retryable());
        assert!(
            !LlmError::Refused {
                status: 400,
                body: String::new()
            }
            .retryable()
        );
        assert!(!LlmError::Garbage(String::new()).retryable());
        let ex = LlmError::Exhausted {
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: Box::new(LlmError::Timeout(Duration::from_secs(1))),
        };
        assert!(ex.is_timeout());
        assert_eq!(ex.outcome(), UsageOutcome::Timeout);
    }

    #[test]
    fn public_messages_never_carry_upstream_bodies() {
        let secret = "internal-host:9000 key=sk-123";
        for e in [
            LlmError::Server {
                status: 500,
                body: secret.into(),
            },
            LlmError::Refused {
                status: 400,
                body: secret.into(),
            },
            LlmError::Garbage(secret.into()),
            LlmError::Connect(secret.into()),
            LlmError::Exhausted {
                attempts: 2,
                elapsed: Duration::from_millis(30),
                last: Box::new(LlmError::Server {
                    status: 503,
                    body: secret.into(),
                }),
            },
        ] {
            let m = e.public_message();
            assert!(!m.contains("sk-123") && !m.contains("internal-host"), "{m}");
            assert!(
                e.to_string().contains("sk-123"),
                "the full error keeps it for logs"
            );
        }
        assert!(
            LlmError::Exhausted {
                attempts: 2,
                elapsed: Duration::from_millis(30),
                last: Box::new(LlmError::Server {
                    status: 503,
                    body: String::new()
                }),
            }
            .public_message()
            .contains("503")
        );
    }
}
