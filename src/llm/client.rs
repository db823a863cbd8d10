//! `LlmClient`: the handle every LLM caller gets. A value handed in (never a global), so
//! tests hand in the test server's URL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::breaker::{Admission, Breaker, Health};
use tracing::Instrument;

use super::budget::Budgets;
use super::config::{LlmSettings, Route};
use super::limiter::{Permit, PriorityLimiter};
use super::retry::parse_retry_after;
use super::usage::{UsageRecord, record_metrics};
use super::{CallContext, ChatRequest, ChatResponse, LlmError, Priority, Role};
use crate::store::journal::{Journal, JournalOptions, Record};
use crate::store::states::BudgetClass;
use crate::store::states::UsageOutcome;

/// Structured-output support of an upstream server, learned from its answers.
const SCHEMA_UNKNOWN: u8 = 0;
const SCHEMA_UNSUPPORTED: u8 = 2;

/// One upstream server: its concurrency limit is shared by every role routed to it.
#[derive(Debug)]
struct Endpoint {
    base_url: String,
    limiter: Arc<PriorityLimiter>,
    schema_support: AtomicU8,
    breaker: Breaker,
}

#[derive(Debug)]
struct RoleRoute {
    endpoint: Arc<Endpoint>,
    route: Route,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    routes: HashMap<Role, RoleRoute>,
    settings: LlmSettings,
    pool: Option<PgPool>,
    /// Where usage rows go (none without a database).
    journal: Option<Arc<Journal>>,
    /// The projects' LLM budgets (none without a database).
    budgets: Option<Budgets>,
}

/// Cheap to clone; all clones share limits, cache and usage writer.
#[derive(Debug, Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
}

impl LlmClient {
    /// A client over `settings`. With a pool, deterministic calls are cached in Postgres and
    /// usage rows are stored through a private journal (`with_journal` shares the process's);
    /// without one, neither.
    pub fn new(settings: LlmSettings, pool: Option<PgPool>) -> Self {
        let journal = pool.as_ref().and_then(|p| {
            Journal::open(p.clone(), JournalOptions::default())
                .inspect_err(
                    |e| tracing::error!(error = %e, "no journal: LLM usage rows are not stored"),
                )
                .ok()
        });
        LlmClient::with_journal(settings, pool, journal)
    }

    /// A client whose usage rows go to `journal`.
    pub fn with_journal(
        settings: LlmSettings,
        pool: Option<PgPool>,
        journal: Option<Arc<Journal>>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut endpoints: HashMap<String, Arc<Endpoint>> = HashMap::new();
        let mut routes = HashMap::new();
        for (role, route) in &settings.routes {
            let endpoint = endpoints
                .entry(route.base_url.clone())
                .or_insert_with(|| {
                    Arc::new(Endpoint {
                        base_url: route.base_url.clone(),
                        limiter: PriorityLimiter::new(
                            settings.concurrency,
                            settings.reserved_interactive,
                        ),
                        schema_support: AtomicU8::new(SCHEMA_UNKNOWN),
                        breaker: Breaker::new(settings.breaker),
                    })
                })
                .clone();
            routes.insert(
                *role,
                RoleRoute {
                    endpoint,
                    route: route.clone(),
                },
            );
        }
        LlmClient {
            inner: Arc::new(Inner {
                http,
                routes,
                settings,
                budgets: pool.clone().map(Budgets::new),
                pool,
                journal,
            }),
        }
    }

    /// Forgets this process's copy of the project's budget (after a change through it).
    pub fn budget_changed(&self, project: &str) {
        if let Some(b) = &self.inner.budgets {
            b.forget(project);
        }
    }

    /// A client with no LLM configured: every call fails with `NotConfigured`.
    pub fn disabled() -> Self {
        LlmClient::new(LlmSettings::none(), None)
    }

    /// Whether `role` has a route.
    pub fn is_configured(&self, role: Role) -> bool {
        self.inner.routes.contains_key(&role)
    }

    /// The model `role` is routed to.
    pub fn model(&self, role: Role) -> Option<&str> {
        self.inner.routes.get(&role).map(|r| r.route.model.as_str())
    }

    /// The settings in force.
    pub fn settings(&self) -> &LlmSettings {
        &self.inner.settings
    }

    /// How the server behind `role` looks from here (circuit breaker state).
    pub fn health(&self, role: Role) -> Option<Health> {
        self.inner
            .routes
            .get(&role)
            .map(|r| r.endpoint.breaker.health(Instant::now()))
    }

    /// Waits until all usage rows sent so far are stored.
    pub async fn flush_usage(&self) {
        if let Some(j) = &self.inner.journal {
            j.flush().await;
        }
    }

    /// The journal usage rows go to.
    pub fn journal(&self) -> Option<Arc<Journal>> {
        self.inner.journal.clone()
    }

    /// One chat completion for `role`: cache, concurrency limit, timeout and retries included.
    /// Traced as an `llm.call` span with the model, the tokens, whether the cache answered,
    /// the attempts and the outcome.
    pub async fn chat(
        &self,
        role: Role,
        req: &ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatResponse, LlmError> {
        let model = self.model(role).unwrap_or("none");
        let span = tracing::info_span!(
            "llm.call",
            role = role.as_str(),
            model,
            prompt_tokens = tracing::field::Empty,
            completion_tokens = tracing::field::Empty,
            cache_hit = tracing::field::Empty,
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = self
            .chat_traced(role, req, ctx)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(r) => {
                span.record("prompt_tokens", r.prompt_tokens);
                span.record("completion_tokens", r.completion_tokens);
                span.record("cache_hit", r.cached);
                span.record("attempts", r.attempts);
                span.record("outcome", UsageOutcome::Ok.as_str());
            }
            Err(e) => {
                span.record("cache_hit", false);
                span.record("outcome", e.kind());
            }
        }
        result
    }

    async fn chat_traced(
        &self,
        role: Role,
        req: &ChatRequest,
        ctx: &CallContext,
    ) -> Result<ChatResponse, LlmError> {
        let Some(rr) = self.inner.routes.get(&role) else {
            return Err(LlmError::NotConfigured(role.as_str().into()));
        };
        let s = &self.inner.settings;
        let temperature = req.temperature.unwrap_or(s.temperature);
        let body = request_body(
            &rr.route.model,
            req,
            temperature,
            req.seed.unwrap_or(s.seed),
            req.max_tokens.unwrap_or(s.max_tokens),
        );
        let deterministic = temperature == 0.0 || (req.cache_seeded && req.seed.is_some());
        let cacheable =
            s.cache && !ctx.no_cache && !req.no_cache && deterministic && self.inner.pool.is_some();
        let key = cacheable.then(|| cache_key(&ctx.project, &rr.endpoint.base_url, &body));

        if let (Some(pool), Some(key)) = (&self.inner.pool, &key) {
            // A rerank must not wait on a slow or absent database for a cache lookup.
            let lookup = crate::store::llm::cache_get(pool, key);
            let found = match ctx.priority {
                Priority::Interactive => tokio::time::timeout(INTERACTIVE_CACHE_WAIT, lookup)
                    .await
                    .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut)),
                Priority::Background => lookup.await,
            };
            match found {
                Ok(Some(v)) => {
                    if let Ok(mut resp) = serde_json::from_value::<ChatResponse>(v) {
                        resp.cached = true;
                        resp.latency_ms = 0;
                        resp.attempts = 0;
                        self.account(role, rr, ctx, &Ok(resp.clone()), Duration::ZERO);
                        return Ok(resp);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "LLM cache lookup failed; calling upstream"),
            }
        }

        let started = Instant::now();
        let result = self.call_with_retries(role, rr, body, ctx).await;
        let latency = started.elapsed();
        let result = result.map(|mut r| {
            r.latency_ms = latency.as_millis() as u64;
            r
        });
        self.account(role, rr, ctx, &result, latency);
        // A truncated answer is incomplete, except a log-probability call's: it asks for
        // exactly its few tokens.
        if let (Ok(resp), Some(pool), Some(key)) = (&result, &self.inner.pool, key)
            && (!resp.truncated() || req.top_logprobs.is_some())
            && !resp.content.trim().is_empty()
            && let Ok(v) = serde_json::to_value(resp)
        {
            let (pool, model) = (pool.clone(), rr.route.model.clone());
            let put = async move {
                if let Err(e) = crate::store::llm::cache_put(&pool, &key, &model, &v).await {
                    tracing::warn!(error = %e, "could not store an LLM answer in the cache");
                }
            };
            // A rerank waits for the cache write only briefly (the database may be away; the
            // write goes on in the background); jobs wait, so that a resumed job finds every
            // answer it already paid for.
            match ctx.priority {
                Priority::Interactive => {
                    let _ = tokio::time::timeout(INTERACTIVE_CACHE_WAIT, tokio::spawn(put)).await;
                }
                Priority::Background => put.await,
            }
        }
        result
    }

    /// `chat`, then parse the answer's JSON into `T` (prose around it is tolerated).
    pub async fn chat_json<T: serde::de::DeserializeOwned>(
        &self,
        role: Role,
        req: &ChatRequest,
        ctx: &CallContext,
    ) -> Result<(T, ChatResponse), LlmError> {
        let resp = self.chat(role, req, ctx).await?;
        let parsed = super::parse_json_answer(&resp.content)?;
        Ok((parsed, resp))
    }

    async fn call_with_retries(
        &self,
        role: Role,
        rr: &RoleRoute,
        mut body: Value,
        ctx: &CallContext,
    ) -> Result<ChatResponse, LlmError> {
        let policy = self.inner.settings.retry;
        let started = Instant::now();
        let mut attempt = 0u32;
        if rr.endpoint.schema_support.load(Ordering::Relaxed) == SCHEMA_UNSUPPORTED {
            strip_schema(&mut body);
        }
        let breaker = &rr.endpoint.breaker;
        let mut probe = None;
        if ctx.priority == Priority::Interactive {
            match breaker.admit(started) {
                Admission::Allow => {}
                Admission::Probe => probe = Some(ProbeGuard(breaker)),
                Admission::Refuse(why) => {
                    metrics::counter!("agp_llm_refused_total").increment(1);
                    return Err(LlmError::Unavailable(why));
                }
            }
        }
        loop {
            attempt += 1;
            let result = {
                let permit = rr.endpoint.limiter.acquire(ctx.priority);
                let permit = match ctx.deadline {
                    Some(d) => match tokio::time::timeout_at(d.into(), permit).await {
                        Ok(p) => p,
                        Err(_) => return Err(LlmError::Timeout(started.elapsed())),
                    },
                    None => permit.await,
                };
                // The budget is read and charged while the slot is held (llm::budget).
                let Some(permit) = self.within_budget(ctx, permit).await? else {
                    attempt -= 1;
                    continue;
                };
                let left = ctx
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()));
                // A call that queued behind a hung server until its deadline does not fire a
                // doomed request: it would only add a timeout that says nothing new about the
                // server's health (and open the circuit on queueing alone).
                if left.is_some_and(|left| left < MIN_ATTEMPT) {
                    return Err(LlmError::Timeout(started.elapsed()));
                }
                let timeout = left.map_or(self.inner.settings.timeout, |left| {
                    self.inner.settings.timeout.min(left)
                });
                let result = self.attempt(role, rr, &body, timeout).await;
                if let (Some(b), Ok(r)) = (&self.inner.budgets, &result) {
                    let tokens = u64::from(r.prompt_tokens) + u64::from(r.completion_tokens);
                    let cost = (self.inner.settings.prices.get(&rr.route.model))
                        .map_or(0, |p| p.micros(r.prompt_tokens, r.completion_tokens));
                    b.charge(&ctx.project, class_of(ctx), tokens, cost).await;
                }
                drop(permit);
                result
            };
            let err = match result {
                Ok(mut resp) => {
                    breaker.success();
                    if let Some(p) = probe.take() {
                        p.done();
                    }
                    resp.attempts = attempt;
                    return Ok(resp);
                }
                Err(e) => e,
            };
            if err.signals_down() {
                breaker.failure(Instant::now(), err.kind());
                if let Some(p) = probe.take() {
                    p.done();
                }
            } else if !matches!(err, LlmError::RateLimited { .. }) {
                // 4xx or garbage: the server is alive.
                breaker.success();
                if let Some(p) = probe.take() {
                    p.done();
                }
            }
            // A server that rejects `response_format`: remember, and ask again without it.
            if let LlmError::Refused {
                status: 400 | 422,
                body: text,
            } = &err
                && body.get("response_format").is_some()
                && mentions_response_format(text)
            {
                tracing::info!(base_url = %rr.endpoint.base_url, "LLM server rejects response_format; using prompt-only JSON");
                rr.endpoint
                    .schema_support
                    .store(SCHEMA_UNSUPPORTED, Ordering::Relaxed);
                strip_schema(&mut body);
                attempt -= 1;
                continue;
            }
            if !err.retryable() {
                return Err(err);
            }
            // A probe that failed re-opened the circuit: an interactive caller stops here.
            if ctx.priority == Priority::Interactive
                && let Admission::Refuse(_) = breaker.admit_peek(Instant::now())
            {
                return Err(exhausted(attempt, started, err));
            }
            let retry_after = match &err {
                LlmError::RateLimited { retry_after } => *retry_after,
                _ => None,
            };
            let delay = policy.next_delay(
                attempt,
                retry_after,
                rand::random::<f64>(),
                started.elapsed(),
            );
            let delay = delay.filter(|d| {
                ctx.deadline
                    .is_none_or(|dl| Instant::now() + *d + MIN_ATTEMPT < dl)
            });
            match delay {
                Some(delay) => {
                    tracing::debug!(attempt, ?delay, error = %err, "retrying LLM call");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(exhausted(attempt, started, err)),
            }
        }
    }

    /// Keeps the slot when the call's budget allows it. When it is spent: an interactive
    /// call fails with `OverBudget`; a background one gives the slot back, waits until the
    /// budget allows it again (`None`: take a slot again), or fails if its job is cancelled.
    async fn within_budget(
        &self,
        ctx: &CallContext,
        permit: Permit,
    ) -> Result<Option<Permit>, LlmError> {
        let Some(b) = &self.inner.budgets else {
            return Ok(Some(permit));
        };
        let Err(spent) = b.check(&ctx.project, class_of(ctx)).await else {
            return Ok(Some(permit));
        };
        drop(permit);
        match ctx.priority {
            Priority::Interactive => Err(LlmError::OverBudget(spent.why)),
            Priority::Background => {
                b.wait(&ctx.project, ctx.job_id, spent)
                    .await
                    .map_err(|s| LlmError::OverBudget(s.why))?;
                Ok(None)
            }
        }
    }

    /// One HTTP attempt, bounded by `timeout`.
    async fn attempt(
        &self,
        role: Role,
        rr: &RoleRoute,
        body: &Value,
        timeout: Duration,
    ) -> Result<ChatResponse, LlmError> {
        let url = format!("{}/chat/completions", rr.endpoint.base_url);
        // The role travels in a header (servers ignore it; logs, proxies and the test server
        // can tell the pipeline's calls apart without reading prompts).
        let mut req = self
            .inner
            .http
            .post(&url)
            .header(ROLE_HEADER, role.as_str())
            .json(body)
            .timeout(timeout);
        if let Some(key) = &rr.route.api_key {
            req = req.bearer_auth(key.expose());
        }
        let fut = async {
            let resp = req.send().await.map_err(|e| classify(e, timeout))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = resp.text().await.map_err(|e| classify(e, timeout))?;
            if status.as_u16() == 429 {
                return Err(LlmError::RateLimited { retry_after });
            }
            if status.is_server_error() {
                return Err(LlmError::Server {
                    status: status.as_u16(),
                    body: clip(&text),
                });
            }
            if !status.is_success() {
                return Err(LlmError::Refused {
                    status: status.as_u16(),
                    body: clip(&text),
                });
            }
            parse_completion(&text, &rr.route.model)
        };
        // reqwest's timeout covers the body too; this outer one also bounds DNS and TLS.
        match tokio::time::timeout(timeout + Duration::from_millis(50), fut).await {
            Ok(r) => r,
            Err(_) => Err(LlmError::Timeout(timeout)),
        }
    }

    fn account(
        &self,
        role: Role,
        rr: &RoleRoute,
        ctx: &CallContext,
        result: &Result<ChatResponse, LlmError>,
        latency: Duration,
    ) {
        let (pt, ct, cached_tokens, hit, outcome) = match result {
            Ok(r) => (
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.cached,
                UsageOutcome::Ok,
            ),
            Err(e) => (0, 0, 0, false, e.outcome()),
        };
        let record = UsageRecord {
            uid: uuid::Uuid::new_v4(),
            created_at: chrono::Utc::now(),
            project: ctx.project.clone(),
            role: role.as_str().to_string(),
            provider: rr.endpoint.base_url.clone(),
            model: rr.route.model.clone(),
            latency_us: latency.as_micros() as u64,
            prompt_tokens: pt,
            completion_tokens: ct,
            cached_tokens,
            cache_hit: hit,
            outcome,
            request_id: ctx.request_id.clone(),
            job_id: ctx.job_id,
        };
        record_metrics(&record);
        if let Some(t) = &ctx.tally {
            t.add(&record);
        }
        if let Some(j) = &self.inner.journal {
            j.append_nowait(&Record::Usage(record));
        }
    }
}

/// The request header that names the call's role (`rank`, `profile`, ...).
pub const ROLE_HEADER: &str = "x-agp-role";

/// Longest wait of an interactive call for its cache lookup.
const INTERACTIVE_CACHE_WAIT: Duration = Duration::from_millis(250);

/// Shortest attempt worth starting before a caller's deadline (no chat answer comes faster).
const MIN_ATTEMPT: Duration = Duration::from_millis(250);

fn exhausted(attempts: u32, started: Instant, last: LlmError) -> LlmError {
    if attempts == 1 {
        return last;
    }
    LlmError::Exhausted {
        attempts,
        elapsed: started.elapsed(),
        last: Box::new(last),
    }
}

/// Marks the half-open probe as abandoned if the call ends without an outcome (cancelled).
struct ProbeGuard<'a>(&'a Breaker);

impl ProbeGuard<'_> {
    fn done(self) {
        std::mem::forget(self);
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.probe_abandoned();
    }
}

/// The JSON body of a chat completions request.
pub fn request_body(
    model: &str,
    req: &ChatRequest,
    temperature: f32,
    seed: u64,
    max_tokens: u32,
) -> Value {
    let mut body = json!({
        "model": model,
        "messages": req.messages,
        "temperature": temperature,
        "seed": seed,
        "max_tokens": max_tokens,
        "stream": false,
    });
    if let Some(schema) = &req.json_schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": schema.name, "schema": schema.schema, "strict": true}
        });
    }
    if let Some(n) = req.top_logprobs {
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(n);
    }
    body
}

/// Cache key: hash of the project, the server and the exact request body (model, messages,
/// parameters). The project keeps tenants apart: a cache hit (counted in `meta.usage`) must
/// not tell one project that another already sent the same prompt.
pub fn cache_key(project: &str, base_url: &str, body: &Value) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(project.as_bytes());
    h.update([0]);
    h.update(base_url.as_bytes());
    h.update([0]);
    h.update(body.to_string().as_bytes());
    h.finalize().to_vec()
}

fn strip_schema(body: &mut Value) {
    if let Some(o) = body.as_object_mut() {
        o.remove("response_format");
    }
}

fn mentions_response_format(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("response_format") || t.contains("json_schema") || t.contains("response format")
}

fn classify(e: reqwest::Error, timeout: Duration) -> LlmError {
    if e.is_timeout() {
        LlmError::Timeout(timeout)
    } else if e.is_connect() || e.is_request() {
        LlmError::Connect(e.to_string())
    } else if e.is_body() || e.is_decode() {
        LlmError::Garbage(format!("could not read the answer: {e}"))
    } else {
        LlmError::Connect(e.to_string())
    }
}

fn clip(s: &str) -> String {
    const MAX: usize = 500;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Prompt tokens served from the server's prompt cache: OpenAI and vLLM report
/// `usage.prompt_tokens_details.cached_tokens`, llama.cpp's server also `timings.cache_n`.
fn cached_prompt_tokens(v: &Value) -> u32 {
    v.pointer("/usage/prompt_tokens_details/cached_tokens")
        .or_else(|| v.pointer("/timings/cache_n"))
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32
}

/// Parses a chat completions response body.
pub fn parse_completion(text: &str, model: &str) -> Result<ChatResponse, LlmError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| LlmError::Garbage(format!("response is not JSON ({e}): {}", clip(text))))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| LlmError::Garbage(format!("response has no choices: {}", clip(text))))?;
    let content = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| LlmError::Garbage("response has no message content".into()))?
        // Postgres cannot store NUL, and no prompt needs one.
        .replace('\0', "");
    let usage = v.get("usage");
    let tokens = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(|x| x.as_u64())
            .unwrap_or(0) as u32
    };
    Ok(ChatResponse {
        content,
        model: v
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or(model)
            .to_string(),
        finish_reason: choice
            .get("finish_reason")
            .and_then(|f| f.as_str())
            .map(str::to_string),
        prompt_tokens: tokens("prompt_tokens"),
        completion_tokens: tokens("completion_tokens"),
        cached_tokens: cached_prompt_tokens(&v),
        logprobs: choice.get("logprobs").filter(|l| !l.is_null()).cloned(),
        cached: false,
        latency_ms: 0,
        attempts: 0,
    })
}

/// The budget a call is charged to.
fn class_of(ctx: &CallContext) -> BudgetClass {
    match ctx.priority {
        Priority::Interactive => BudgetClass::Interactive,
        Priority::Background => BudgetClass::Background,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{JsonSchema, Message};

    #[test]
    fn body_has_schema_and_logprobs_when_asked() {
        let mut req = ChatRequest::new(vec![Message::user("hi")]);
        let plain = request_body("m", &req, 0.0, 7, 64);
        assert!(plain.get("response_format").is_none() && plain.get("logprobs").is_none());
        assert_eq!(plain["seed"], 7);
        req.json_schema = Some(JsonSchema {
            name: "r".into(),
            schema: json!({"type": "object"}),
        });
        req.top_logprobs = Some(3);
        let b = request_body("m", &req, 0.0, 7, 64);
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["top_logprobs"], 3);
    }

    #[test]
    fn cache_key_depends_on_every_parameter() {
        let req = ChatRequest::new(vec![Message::user("hi")]);
        let a = cache_key("p", "u", &request_body("m", &req, 0.0, 1, 64));
        assert_eq!(a, cache_key("p", "u", &request_body("m", &req, 0.0, 1, 64)));
        assert_ne!(
            a,
            cache_key("p2", "u", &request_body("m", &req, 0.0, 1, 64))
        );
        assert_ne!(
            a,
            cache_key("p", "u2", &request_body("m", &req, 0.0, 1, 64))
        );
        assert_ne!(
            a,
            cache_key("p", "u", &request_body("m2", &req, 0.0, 1, 64))
        );
        assert_ne!(a, cache_key("p", "u", &request_body("m", &req, 0.0, 2, 64)));
        assert_ne!(a, cache_key("p", "u", &request_body("m", &req, 0.0, 1, 65)));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        let body = request_body("m", &req, 0.0, 1, 64);
        assert_ne!(cache_key("ab", "c", &body), cache_key("a", "bc", &body));
    }

    #[test]
    fn completions_parse_and_garbage_is_typed() {
        let ok = r#"{"model":"x","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],
                    "usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        let r = parse_completion(ok, "m").unwrap();
        assert_eq!(
            (
                r.content.as_str(),
                r.prompt_tokens,
                r.completion_tokens,
                r.truncated()
            ),
            ("hi", 5, 2, true)
        );
        assert!(matches!(
            parse_completion("{not json", "m"),
            Err(LlmError::Garbage(_))
        ));
        assert!(matches!(
            parse_completion(r#"{"choices":[]}"#, "m"),
            Err(LlmError::Garbage(_))
        ));
        assert!(matches!(
            parse_completion(r#"{"choices":[{"message":{}}]}"#, "m"),
            Err(LlmError::Garbage(_))
        ));
    }
}
