//! LLM settings: one default route (base URL, key, model, sampling defaults) plus optional
//! per-role overrides, and the local `llama-server` option.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Role;
use super::retry::RetryPolicy;
use crate::secret::Secret;

/// Which LLM `serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LlmMode {
    /// The server at `--llm-base-url` when set; no LLM otherwise (reranks fall back).
    Auto,
    /// Start the local llama-server (see scripts/setup-local-llm.sh) as a supervised child.
    Local,
    /// No LLM: every rerank returns its fallback order.
    None,
}

/// LLM flags, shared by every command that calls an LLM.
#[derive(Debug, Clone, Args)]
pub struct LlmArgs {
    /// Which LLM to use: `auto` (the --llm-base-url server if set), `local` (managed
    /// llama-server), `none`.
    #[arg(long = "llm", env = "AGP_LLM", value_enum, default_value_t = LlmMode::Auto)]
    pub mode: LlmMode,
    /// OpenAI-compatible base URL, e.g. `http://127.0.0.1:8091/v1` or `https://api.openai.com/v1`.
    #[arg(long, env = "AGP_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// API key sent as a bearer token (kept out of logs).
    #[arg(long, env = "AGP_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<Secret>,
    /// Model name sent with every call.
    #[arg(long, env = "AGP_LLM_MODEL", default_value = "default")]
    pub llm_model: String,
    /// Per-attempt timeout in milliseconds.
    #[arg(long, env = "AGP_LLM_TIMEOUT_MS", default_value_t = 30_000)]
    pub llm_timeout_ms: u64,
    /// Concurrent calls per upstream server.
    #[arg(long, env = "AGP_LLM_CONCURRENCY", default_value_t = 4)]
    pub llm_concurrency: usize,
    /// Of those, slots only interactive calls (reranks) may use.
    #[arg(long, env = "AGP_LLM_RESERVED_INTERACTIVE", default_value_t = 1)]
    pub llm_reserved_interactive: usize,
    /// Attempts per call, retries included (timeouts, connection errors, 429, 5xx).
    #[arg(long, env = "AGP_LLM_MAX_ATTEMPTS", default_value_t = 4)]
    pub llm_max_attempts: u32,
    /// Total time for one call's attempts and backoff, in milliseconds.
    #[arg(long, env = "AGP_LLM_RETRY_BUDGET_MS", default_value_t = 60_000)]
    pub llm_retry_budget_ms: u64,
    /// First backoff ceiling in milliseconds (doubles per retry, full jitter, capped at 5 s).
    #[arg(long, env = "AGP_LLM_BACKOFF_MS", default_value_t = 200)]
    pub llm_backoff_ms: u64,
    /// Default sampling temperature (0 = deterministic and cacheable).
    #[arg(long, env = "AGP_LLM_TEMPERATURE", default_value_t = 0.0)]
    pub llm_temperature: f32,
    /// Default sampling seed.
    #[arg(long, env = "AGP_LLM_SEED", default_value_t = 42)]
    pub llm_seed: u64,
    /// Default completion token limit.
    #[arg(long, env = "AGP_LLM_MAX_TOKENS", default_value_t = 512)]
    pub llm_max_tokens: u32,
    /// Consecutive failed attempts (timeouts, connection errors, 5xx) after which reranks stop
    /// calling the server and answer their fallback at once (circuit breaker).
    #[arg(long, env = "AGP_LLM_BREAKER_THRESHOLD", default_value_t = 5)]
    pub llm_breaker_threshold: u32,
    /// How long the circuit stays open before one probe call, in milliseconds (doubles while
    /// the server stays down, up to 30 s).
    #[arg(long, env = "AGP_LLM_BREAKER_COOLDOWN_MS", default_value_t = 2000)]
    pub llm_breaker_cooldown_ms: u64,
    /// Cache answers of deterministic (temperature 0) calls in Postgres.
    #[arg(long, env = "AGP_LLM_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub llm_cache: bool,
    /// Per-role model, `ROLE=MODEL`, repeatable or comma-separated
    /// (roles: summarize, profile, rank, feedback, aggregate, optimize).
    #[arg(long, env = "AGP_LLM_ROLE_MODELS", value_delimiter = ',')]
    pub llm_role_model: Vec<String>,
    /// Per-role base URL, `ROLE=URL`, repeatable or comma-separated.
    #[arg(long, env = "AGP_LLM_ROLE_BASE_URLS", value_delimiter = ',')]
    pub llm_role_base_url: Vec<String>,
    /// Per-role API key, `ROLE=KEY`, repeatable or comma-separated.
    #[arg(
        long,
        env = "AGP_LLM_ROLE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub llm_role_api_key: Vec<Secret>,
    /// Per-model prices for cost budgets, `MODEL=INPUT:OUTPUT` in currency units per million
    /// prompt and completion tokens, repeatable or comma-separated (e.g.
    /// `gpt-4o-mini=0.15:0.60`). A model without a price costs nothing (its tokens still count).
    #[arg(long, env = "AGP_LLM_PRICES", value_delimiter = ',')]
    pub llm_price: Vec<String>,
    /// llama-server binary for `--llm local` (default: the one scripts/setup-local-llm.sh caches).
    #[arg(long, env = "AGP_LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// GGUF model for `--llm local` (default: the cached SmolLM2-135M-Instruct).
    #[arg(long, env = "AGP_LLAMA_MODEL")]
    pub llama_model: Option<PathBuf>,
    /// Port of the local llama-server (127.0.0.1 only).
    #[arg(long, env = "AGP_LLAMA_PORT", default_value_t = 8091)]
    pub llama_port: u16,
    /// CPU threads for the local llama-server.
    #[arg(long, env = "AGP_LLAMA_THREADS", default_value_t = 2)]
    pub llama_threads: usize,
}

/// Where and how one role's calls go.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
}

/// A model's price in currency units per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// What a call costs, in millionths of the currency (prices are per million tokens).
    pub fn micros(&self, prompt_tokens: u32, completion_tokens: u32) -> i64 {
        let m = f64::from(prompt_tokens) * self.input_per_million
            + f64::from(completion_tokens) * self.output_per_million;
        m.round().clamp(0.0, i64::MAX as f64) as i64
    }

    /// `MODEL=INPUT:OUTPUT`, both finite and at least 0.
    pub fn parse(s: &str) -> Result<(String, Price), String> {
        let bad = || {
            format!(
                "--llm-price entries look like MODEL=INPUT:OUTPUT (per million tokens), got {s:?}"
            )
        };
        let (model, prices) = s.rsplit_once('=').ok_or_else(bad)?;
        let (input, output) = prices.split_once(':').ok_or_else(bad)?;
        let num = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && (0.0..=1_000_000.0).contains(p))
                .ok_or_else(|| format!("--llm-price {s:?}: prices are numbers from 0 to 1000000"))
        };
        let model = model.trim();
        if model.is_empty() {
            return Err(bad());
        }
        Ok((
            model.to_string(),
            Price {
                input_per_million: num(input)?,
                output_per_million: num(output)?,
            },
        ))
    }
}

/// Everything the client needs, resolved from flags.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// Route per role; a role missing here is not configured.
    pub routes: BTreeMap<Role, Route>,
    pub timeout: Duration,
    pub concurrency: usize,
    pub reserved_interactive: usize,
    pub retry: RetryPolicy,
    pub temperature: f32,
    pub seed: u64,
    pub max_tokens: u32,
    pub cache: bool,
    /// When to stop calling a server that keeps failing.
    pub breaker: super::breaker::BreakerPolicy,
    /// Prices per model, for cost budgets.
    pub prices: BTreeMap<String, Price>,
}

impl LlmSettings {
    /// Settings with one route for every role (tests, benches, `--llm local`).
    pub fn single(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        let route = Route {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
        };
        LlmSettings {
            routes: Role::ALL.into_iter().map(|r| (r, route.clone())).collect(),
            ..LlmSettings::none()
        }
    }

    /// No LLM configured.
    pub fn none() -> Self {
        LlmSettings {
            routes: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            concurrency: 4,
            reserved_interactive: 1,
            retry: RetryPolicy::default(),
            temperature: 0.0,
            seed: 42,
            max_tokens: 512,
            cache: true,
            breaker: Default::default(),
            prices: BTreeMap::new(),
        }
    }
}

fn split_pair<'a>(what: &str, s: &'a str) -> Result<(Role, &'a str), String> {
    let (role, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{what} entries look like ROLE=VALUE, got {s:?}"))?;
    let role = Role::parse(role.trim()).ok_or_else(|| {
        format!("{what}: unknown role {role:?} (roles: summarize, profile, rank, feedback, aggregate, optimize)")
    })?;
    Ok((role, value.trim()))
}

impl LlmArgs {
    /// Resolves the routes. `base_url` replaces `--llm-base-url` (used by `--llm local`).
    pub fn settings(&self, base_url: Option<String>) -> Result<LlmSettings, String> {
        let default_url = base_url
            .or_else(|| self.llm_base_url.clone())
            .filter(|u| !u.trim().is_empty());
        let mut models = BTreeMap::new();
        for s in &self.llm_role_model {
            let (r, v) = split_pair("--llm-role-model", s)?;
            models.insert(r, v.to_string());
        }
        let mut urls = BTreeMap::new();
        for s in &self.llm_role_base_url {
            let (r, v) = split_pair("--llm-role-base-url", s)?;
            urls.insert(r, v.trim_end_matches('/').to_string());
        }
        let mut keys = BTreeMap::new();
        for s in &self.llm_role_api_key {
            let (r, v) = split_pair("--llm-role-api-key", s.expose())?;
            keys.insert(r, Secret::new(v));
        }
        let mut routes = BTreeMap::new();
        if self.mode != LlmMode::None {
            for role in Role::ALL {
                let url = urls.get(&role).cloned().or_else(|| default_url.clone());
                let Some(url) = url else { continue };
                let api_key = keys
                    .get(&role)
                    .cloned()
                    .or_else(|| self.llm_api_key.clone())
                    .filter(|k| !k.expose().is_empty());
                let model = models
                    .get(&role)
                    .cloned()
                    .unwrap_or_else(|| self.llm_model.clone());
                routes.insert(
                    role,
                    Route {
                        base_url: url.trim_end_matches('/').to_string(),
                        api_key,
                        model,
                    },
                );
            }
        }
        if self.llm_concurrency == 0 {
            return Err("--llm-concurrency must be at least 1".into());
        }
        let prices = self
            .llm_price
            .iter()
            .map(|s| Price::parse(s))
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        if !prices.is_empty() {
            let models: std::collections::BTreeSet<&str> =
                routes.values().map(|r| r.model.as_str()).collect();
            for model in models.into_iter().filter(|m| !prices.contains_key(*m)) {
                tracing::warn!(
                    model,
                    "no --llm-price for this model: its calls cost nothing in cost budgets"
                );
            }
        }
        Ok(LlmSettings {
            routes,
            timeout: Duration::from_millis(self.llm_timeout_ms.max(1)),
            concurrency: self.llm_concurrency,
            reserved_interactive: self.llm_reserved_interactive,
            retry: RetryPolicy {
                max_attempts: self.llm_max_attempts.max(1),
                base_delay: Duration::from_millis(self.llm_backoff_ms),
                max_delay: Duration::from_secs(5),
                budget: Duration::from_millis(self.llm_retry_budget_ms),
            },
            temperature: self.llm_temperature,
            seed: self.llm_seed,
            max_tokens: self.llm_max_tokens,
            cache: self.llm_cache,
            prices,
            breaker: super::breaker::BreakerPolicy {
                threshold: self.llm_breaker_threshold.max(1),
                cooldown: Duration::from_millis(self.llm_breaker_cooldown_ms.max(1)),
                max_cooldown: Duration::from_secs(30)
                    .max(Duration::from_millis(self.llm_breaker_cooldown_ms)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        llm: LlmArgs,
    }

    #[test]
    fn prices_parse_per_model_and_cost_a_call_in_millionths() {
        let t = T::try_parse_from([
            "t",
            "--llm-price",
            "gpt-4o-mini=0.15:0.60,org/model:v2=3:15",
        ])
        .unwrap();
        let s = t.llm.settings(None).unwrap();
        let mini = s.prices["gpt-4o-mini"];
        // 1,000 prompt tokens at 0.15 and 200 completion tokens at 0.60 per million.
        assert_eq!(mini.micros(1000, 200), 150 + 120);
        assert_eq!(s.prices["org/model:v2"].micros(1, 1), 18);
        for bad in ["x", "m=1", "m=-1:2", "m=1:nan", "=1:2", "m=1:2000000"] {
            let t = T::try_parse_from(["t", "--llm-price", bad]).unwrap();
            assert!(t.llm.settings(None).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn roles_can_have_their_own_model_and_server() {
        let t = T::try_parse_from([
            "t",
            "--llm-base-url",
            "http://a/v1/",
            "--llm-model",
            "small",
            "--llm-role-model",
            "optimize=big,rank=mid",
            "--llm-role-base-url",
            "optimize=https://b/v1",
        ])
        .unwrap();
        let s = t.llm.settings(None).unwrap();
        assert_eq!(
            s.routes[&Role::Summarize],
            Route {
                base_url: "http://a/v1".into(),
                api_key: None,
                model: "small".into()
            }
        );
        assert_eq!(s.routes[&Role::Rank].model, "mid");
        assert_eq!(s.routes[&Role::Optimize].base_url, "https://b/v1");
        assert_eq!(s.routes[&Role::Optimize].model, "big");
    }

    #[test]
    fn no_url_means_no_routes_and_bad_roles_are_named() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert!(t.llm.settings(None).unwrap().routes.is_empty());
        let t = T::try_parse_from(["t", "--llm-role-model", "ranker=x"]).unwrap();
        assert!(t.llm.settings(None).unwrap_err().contains("ranker"));
    }
}
