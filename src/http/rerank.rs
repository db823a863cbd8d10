//! `POST /v1/rerank`, `POST /v1/feedback`, `GET /v1/users/{id}/profile`.

use crate::experiment::interleave::Team;
use std::collections::HashSet;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{AppError, ErrorBody};
use super::extract::{Json, Path, Query};
use super::state::AppState;
use crate::agp::prompt::PromptName;
use crate::agp::rank::RankMode;
use crate::auth::Principal;
use crate::llm::usage::TallySnapshot;
use crate::rankers::BlendWeights;
use crate::serving::{
    BlendSelector, BlendUsed, Fallback, ItemRef, PromptSelector, RankInfo, RerankError,
    RerankRequest,
};
use crate::store::prompts::PRODUCTION;
use crate::store::rerank as db;

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/rerank", post(rerank))
        .route("/v1/feedback", post(feedback))
        .route("/v1/users/{id}/profile", get(profile))
}

/// A candidate or history entry: a catalog id, or an inline item with a title and/or text.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub id: String,
    #[serde(default)]
    #[schema(max_length = 1000, pattern = "NO_NUL")]
    pub title: Option<String>,
    #[serde(default)]
    #[schema(max_length = 20000, pattern = "NO_NUL")]
    pub text: Option<String>,
}

/// Which `p_gen` to use: by label (default `production`) or by version, not both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptBody {
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub version: Option<i32>,
}

/// How `PromptBody` is documented: one of the two, or neither (the `production` label).
#[derive(ToSchema)]
#[schema(as = PromptBody)]
#[allow(dead_code)]
enum PromptBodyDoc {
    /// A label (an A/B split label picks by a stable hash of the user).
    #[schema(title = "by label")]
    Label {
        #[schema(pattern = "LABEL")]
        label: String,
    },
    /// An exact version.
    #[schema(title = "by version")]
    Version {
        #[schema(minimum = 1, maximum = 2147483647)]
        version: i32,
    },
}

/// Body of `POST /v1/rerank`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user_id": "u1", "candidates": [{"id": "new-1", "title": "Brand new game", "text": "Co-op puzzle platformer"}, {"id": "new-2", "title": "Space strategy", "text": "4X in real time"}], "top_n": 2}))]
pub struct RerankBody {
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub user_id: String,
    /// Catalog ids, or inline items (an id with a title and/or text); ids must be distinct.
    #[schema(min_items = 1, max_items = 200)]
    pub candidates: Vec<ItemBody>,
    /// How many results to return (default all; more than the candidates returns them all).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub top_n: Option<usize>,
    #[serde(default)]
    #[schema(value_type = Option<PromptBodyDoc>)]
    pub prompt: Option<PromptBody>,
    /// Overrides the stored history (anonymous or session users), oldest first.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub history: Option<Vec<ItemBody>>,
    /// Turn LLM faults into 502/504 instead of a fallback order.
    #[serde(default)]
    pub strict: bool,
    /// How the LLM's order is fused with the incoming order and the built-in rankers
    /// (default: the blend labelled `production`).
    #[serde(default)]
    #[schema(value_type = Option<BlendBodyDoc>)]
    pub blend: Option<BlendBody>,
    /// How the LLM ranks: `generate` (the model writes the whole order) or `logprobs` (one
    /// output token per window of up to 20, ordered by the log-probabilities of the
    /// candidates' letters). Default: the blend's mode, else the server's `--rank-mode`.
    #[serde(default)]
    pub rank_mode: Option<RankMode>,
}

/// Which blend to use: a label, a version, or weights; one of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlendBody {
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub version: Option<i32>,
    #[serde(default)]
    pub weights: Option<BlendWeights>,
}

/// How `BlendBody` is documented.
#[derive(ToSchema)]
#[schema(as = BlendBody)]
#[allow(dead_code)]
enum BlendBodyDoc {
    /// A label (an A/B split label picks by a stable hash of the user).
    #[schema(title = "by label")]
    Label {
        #[schema(pattern = "LABEL")]
        label: String,
    },
    /// An exact version.
    #[schema(title = "by version")]
    Version {
        #[schema(minimum = 1, maximum = 2147483647)]
        version: i32,
    },
    /// Weights for this request only (`{"llm": 0, "incoming": 1}` makes no LLM call).
    #[schema(title = "by weights")]
    Weights { weights: BlendWeights },
}

/// One result, pointing back into the request by `index`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RerankResult {
    /// Position of the candidate in the request.
    pub index: usize,
    pub id: String,
    /// Derived from the final rank: `(n - rank) / n` for 0-based rank among n candidates
    /// (1.0 for the top item, falling evenly to 1/n).
    pub score: f64,
}

/// A prompt reference.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromptRef {
    pub name: PromptName,
    pub version: i32,
}

/// LLM usage of one request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Upstream LLM calls made (cache hits excluded).
    pub llm_calls: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens the LLM server read from its prompt (prefix) cache, when it reports
    /// them (OpenAI, vLLM, llama.cpp); 0 otherwise.
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub cache_hits: u64,
    /// Time spent waiting for the LLM, in milliseconds (the rest of latency_ms is the service).
    pub llm_ms: f64,
}

impl From<TallySnapshot> for Usage {
    fn from(t: TallySnapshot) -> Self {
        Usage {
            llm_calls: t.llm_calls,
            prompt_tokens: t.prompt_tokens,
            cached_tokens: t.cached_tokens,
            completion_tokens: t.completion_tokens,
            cache_hits: t.cache_hits,
            llm_ms: t.llm_micros as f64 / 1000.0,
        }
    }
}

/// How the answer was made.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RerankMeta {
    pub prompt: PromptRef,
    /// Versions of every prompt used (`p_gen`, `p_rank`, `p_sum`).
    #[schema(value_type = Object)]
    pub prompt_versions: serde_json::Value,
    pub profile_id: Option<uuid::Uuid>,
    /// Where the profile came from: `fresh` (stored by an earlier rerank), `refreshed_ahead`
    /// (written in the background when the user's new interactions arrived) or `inline`
    /// (written during this request). Null when no profile was used.
    pub profile_source: Option<crate::serving::ProfileSource>,
    /// The ranking model.
    pub model: Option<String>,
    /// Null, or why the fallback order was returned.
    pub fallback: Option<Fallback>,
    /// Human-readable reason for the fallback.
    pub fallback_detail: Option<String>,
    /// The LLM's ranking needed ids dropped or appended.
    pub repaired: bool,
    /// The blend that fused the answer: its version (null for request weights), weights, and
    /// any component that could not take part.
    pub blend: BlendUsed,
    /// How the LLM ranked: the mode, the ranking calls, and the log-probability windows
    /// answered without log-probabilities (ranked again by generation). Null when the LLM
    /// was not asked or failed.
    pub rank: Option<RankInfo>,
    /// Present when the list was interleaved (the user is in an interleaved experiment's
    /// share): what was merged, and per result the arm (team) that supplied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interleaving: Option<InterleavingMeta>,
    pub usage: Usage,
    pub latency_ms: u64,
}

/// An interleaved answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InterleavingMeta {
    /// `p_gen` or `blend`: what the experiment compares.
    pub name: String,
    pub control: i32,
    pub treatment: i32,
    /// Per result, in order: `control` or `treatment` (the team whose item it is), or
    /// `both` (both rankings had it at this rank: a click on it credits neither).
    pub teams: Vec<Team>,
}

/// Answer of `POST /v1/rerank`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RerankResponse {
    /// Request id (`rr_...`): pass it to `POST /v1/feedback`.
    pub id: String,
    /// Best first, cut to `top_n`.
    pub results: Vec<RerankResult>,
    pub meta: RerankMeta,
}

/// Largest `top_n` accepted (more than the candidates simply returns them all).
const MAX_TOP_N: usize = 1_000_000;

fn to_refs(field: &str, items: &[ItemBody], state: &AppState) -> Result<Vec<ItemRef>, AppError> {
    let l = &state.config.limits;
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        crate::catalog::check_id(&format!("{at}.id"), &it.id, l.max_id_len)?;
        if let Some(t) = &it.title
            && t.chars().count() > l.max_title_len
        {
            return Err(AppError::Validation(format!(
                "{at}.title is longer than {} characters",
                l.max_title_len
            )));
        }
        if let Some(t) = &it.text
            && t.chars().count() > l.max_text_len
        {
            return Err(AppError::Validation(format!(
                "{at}.text is longer than {} characters",
                l.max_text_len
            )));
        }
        if field == "candidates" && !seen.insert(it.id.as_str()) {
            return Err(AppError::Validation(format!(
                "{at}.id {:?} appears more than once",
                it.id
            )));
        }
        out.push(ItemRef {
            id: it.id.clone(),
            title: it.title.clone(),
            text: it.text.clone(),
        });
    }
    Ok(out)
}

/// Rerank candidates for a user with the LLM, personalized by the user's profile.
#[utoipa::path(post, path = "/v1/rerank", tag = "rerank", request_body = RerankBody,
    responses(
        (status = 200, description = "Candidates best first (fallback order on LLM faults, see meta.fallback)", body = RerankResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Empty, duplicate or too many candidates, unknown ids, bad top_n, unknown prompt", body = ErrorBody),
        (status = 502, description = "strict: the LLM failed or answered unusably", body = ErrorBody),
        (status = 504, description = "strict: the LLM timed out", body = ErrorBody),
    ))]
pub async fn rerank(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<RerankBody>,
) -> Result<Json<RerankResponse>, AppError> {
    let req = request(&state, &who, body)?;
    let req_top_n = req.top_n;
    let out = state.reranker.rerank(&req).await.map_err(|e| match e {
        RerankError::Invalid(m) => AppError::Validation(m),
        RerankError::StrictTimeout(m) => AppError::UpstreamTimeout(m),
        RerankError::StrictUpstream(m) => AppError::Upstream(m),
        RerankError::Db(e) => AppError::from(e),
    })?;
    Ok(Json(RerankResponse {
        id: req.request_id,
        results: out
            .results
            .into_iter()
            .map(|r| RerankResult {
                index: r.index,
                id: r.id,
                score: r.score,
            })
            .collect(),
        meta: RerankMeta {
            prompt: PromptRef {
                name: PromptName::PGen,
                version: out.prompt_version,
            },
            prompt_versions: serde_json::to_value(&out.prompt_versions).unwrap_or_default(),
            profile_id: out.profile_id,
            profile_source: out.profile_source,
            model: out.model,
            fallback: out.fallback,
            fallback_detail: out.fallback_detail,
            repaired: out.repaired,
            blend: out.blend,
            rank: out.rank,
            interleaving: out.interleaving.map(|i| InterleavingMeta {
                name: i.name.to_string(),
                control: i.control,
                treatment: i.treatment,
                teams: i.teams.into_iter().take(req_top_n).collect(),
            }),
            usage: out.usage.into(),
            latency_ms: out.latency_ms,
        },
    }))
}

/// The checked request: sizes, ids, `top_n`, the prompt selector.
fn request(state: &AppState, who: &Principal, body: RerankBody) -> Result<RerankRequest, AppError> {
    let max = state.reranker.settings.max_candidates;
    crate::catalog::check_id("user_id", &body.user_id, state.config.limits.max_id_len)?;
    if body.candidates.is_empty() {
        return Err(AppError::Validation(
            "candidates must contain at least one candidate".into(),
        ));
    }
    if body.candidates.len() > max {
        return Err(AppError::Validation(format!(
            "candidates has {} entries; the limit is {max} (AGP_RERANK_MAX_CANDIDATES)",
            body.candidates.len()
        )));
    }
    let n = body.candidates.len();
    let top_n = body.top_n.unwrap_or(n);
    if !(1..=MAX_TOP_N).contains(&top_n) {
        return Err(AppError::Validation(format!(
            "top_n must be between 1 and {MAX_TOP_N}, got {top_n}"
        )));
    }
    let candidates = to_refs("candidates", &body.candidates, state)?;
    let history = match &body.history {
        Some(h) if h.len() > 1000 => {
            return Err(AppError::Validation(format!(
                "history has {} entries; the limit is 1000",
                h.len()
            )));
        }
        Some(h) => Some(to_refs("history", h, state)?),
        None => None,
    };
    Ok(RerankRequest {
        project: who.project.clone(),
        request_id: format!("rr_{}", uuid::Uuid::new_v4().simple()),
        user_id: body.user_id,
        candidates,
        top_n: top_n.min(n),
        prompt: selector(body.prompt)?,
        history,
        strict: body.strict,
        blend: blend_selector(body.blend)?,
        rank_mode: body.rank_mode,
    })
}

/// Which blend the request asks for (default: the production label).
fn blend_selector(blend: Option<BlendBody>) -> Result<BlendSelector, AppError> {
    let Some(b) = blend else {
        return Ok(BlendSelector::Stored(PromptSelector::Label(
            PRODUCTION.into(),
        )));
    };
    let given = [b.label.is_some(), b.version.is_some(), b.weights.is_some()];
    match (given.iter().filter(|g| **g).count(), b) {
        (0, _) => Err(AppError::Validation(
            "blend needs a label, a version or weights (leave blend out for the production label)"
                .into(),
        )),
        (
            1,
            BlendBody {
                weights: Some(w), ..
            },
        ) => {
            w.validate("blend.weights").map_err(AppError::Validation)?;
            Ok(BlendSelector::Weights(w))
        }
        (
            1,
            BlendBody {
                version: Some(v), ..
            },
        ) if v < 1 => Err(AppError::Validation(format!(
            "blend.version must be at least 1, got {v}"
        ))),
        (
            1,
            BlendBody {
                version: Some(v), ..
            },
        ) => Ok(BlendSelector::Stored(PromptSelector::Version(v))),
        (1, BlendBody { label: Some(l), .. }) => {
            crate::agp::prompt::check_label("blend.label", &l).map_err(AppError::Validation)?;
            Ok(BlendSelector::Stored(PromptSelector::Label(l)))
        }
        _ => Err(AppError::Validation(
            "blend takes one of label, version or weights".into(),
        )),
    }
}

/// Which `p_gen` the request asks for (default: the production label).
fn selector(prompt: Option<PromptBody>) -> Result<PromptSelector, AppError> {
    match prompt {
        None => Ok(PromptSelector::Label(PRODUCTION.into())),
        Some(PromptBody {
            label: Some(_),
            version: Some(_),
        }) => Err(AppError::Validation(
            "prompt takes either label or version, not both".into(),
        )),
        Some(PromptBody {
            version: Some(v), ..
        }) if v < 1 => Err(AppError::Validation(format!(
            "prompt.version must be at least 1, got {v}"
        ))),
        Some(PromptBody {
            version: Some(v), ..
        }) => Ok(PromptSelector::Version(v)),
        Some(PromptBody { label: Some(l), .. }) => {
            crate::agp::prompt::check_label("prompt.label", &l).map_err(AppError::Validation)?;
            Ok(PromptSelector::Label(l))
        }
        Some(PromptBody { .. }) => Err(AppError::Validation(
            "prompt needs a label or a version (leave prompt out for the production label)".into(),
        )),
    }
}

/// Body of `POST /v1/feedback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"request_id": "rr_0123456789abcdef0123456789abcdef", "user_id": "u1", "item_id": "i7", "kind": "click"}))]
pub struct FeedbackBody {
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub request_id: String,
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub user_id: String,
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub item_id: String,
    /// What happened (`click`, `purchase`, ...).
    #[schema(min_length = 1, max_length = 256, pattern = "ID")]
    pub kind: String,
}

/// Answer of `POST /v1/feedback`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackRecorded {
    /// False when the same (request, item, kind) was recorded before.
    pub recorded: bool,
}

/// Join an outcome (click, purchase, ...) to the rerank that produced the list.
#[utoipa::path(post, path = "/v1/feedback", tag = "rerank", request_body = FeedbackBody,
    responses(
        (status = 200, body = FeedbackRecorded),
        (status = 404, description = "Unknown request id", body = ErrorBody),
        (status = 422, description = "User or item does not match the request", body = ErrorBody),
    ))]
pub async fn feedback(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<FeedbackBody>,
) -> Result<Json<FeedbackRecorded>, AppError> {
    for (field, v) in [
        ("request_id", &body.request_id),
        ("user_id", &body.user_id),
        ("item_id", &body.item_id),
        ("kind", &body.kind),
    ] {
        crate::catalog::check_id(field, v, state.config.limits.max_id_len)?;
    }
    let mut logged = db::logged_request(&state.pool, &who.project, &body.request_id).await?;
    if logged.is_none() {
        // The log row may still be on its way from this process's journal: wait for it.
        state
            .reranker
            .flush_within(std::time::Duration::from_secs(5))
            .await;
        logged = db::logged_request(&state.pool, &who.project, &body.request_id).await?;
    }
    let Some(logged) = logged else {
        return Err(AppError::NotFound(format!(
            "rerank request {:?} not found",
            body.request_id
        )));
    };
    if logged.user_id != body.user_id {
        return Err(AppError::Validation(format!(
            "user_id {:?} does not match the user of request {:?}",
            body.user_id, body.request_id
        )));
    }
    let in_list = logged
        .candidates
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(body.item_id.as_str())));
    if !in_list {
        return Err(AppError::Validation(format!(
            "item_id {:?} was not among the candidates of request {:?}",
            body.item_id, body.request_id
        )));
    }
    let recorded = db::insert_feedback(
        &state.pool,
        &who.project,
        &body.request_id,
        logged.created_at,
        &body.user_id,
        &body.item_id,
        &body.kind,
    )
    .await?;
    Ok(Json(FeedbackRecorded { recorded }))
}

/// Query of the profile endpoint.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ProfileQuery {
    /// Only a profile written by this `p_gen` version (default: the newest of any version).
    #[param(minimum = 1, maximum = 2147483647)]
    pub version: Option<i32>,
}

/// A user's profile with its provenance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileResponse {
    pub user_id: String,
    pub profile_id: uuid::Uuid,
    pub profile: String,
    pub prompt: PromptRef,
    pub model: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub age_seconds: i64,
}

/// The newest profile written for the user.
#[utoipa::path(get, path = "/v1/users/{id}/profile", tag = "rerank",
    params(("id" = String, Path, description = "User id"), ProfileQuery),
    responses((status = 200, body = ProfileResponse), (status = 404, description = "No profile yet", body = ErrorBody)))]
pub async fn profile(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<ProfileQuery>,
) -> Result<Json<ProfileResponse>, AppError> {
    let row = db::latest_profile(&state.pool, &who.project, &id, q.version)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "no profile for user {id:?} yet (one is written at the user's first rerank)"
            ))
        })?;
    Ok(Json(ProfileResponse {
        user_id: row.user_id,
        profile_id: row.id,
        profile: row.profile,
        prompt: PromptRef {
            name: PromptName::PGen,
            version: row.prompt_version,
        },
        model: row.model,
        age_seconds: (chrono::Utc::now() - row.created_at).num_seconds().max(0),
        created_at: row.created_at,
    }))
}
