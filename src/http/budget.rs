//! The project's LLM budget: tokens (and optionally cost, priced by `--llm-price`) per hour
//! and per day for interactive work (reranks) and background work (jobs, refreshes), and what
//! each spent in the current UTC hour and day. When the
//! interactive budget is spent, reranks answer without the LLM (`meta.fallback: "budget"`);
//! when the background one is, jobs pause until the window rolls (`llm::budget`).

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{AppError, ErrorBody};
use super::extract::Json;
use super::state::AppState;
use crate::auth::Principal;
use crate::store::budget::{self as db, Limits};
use crate::store::states::BudgetClass;

/// Largest limit accepted (tokens).
const MAX_TOKENS: i64 = 1_000_000_000_000;

/// Largest cost limit accepted (currency units).
const MAX_COST: f64 = 1_000_000_000.0;

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/budget", get(read).put(set))
}

/// The limits, each absent when unlimited.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"interactive_tokens_per_hour": 200000, "background_tokens_per_day": 5000000, "interactive_cost_per_day": 25.0}))]
pub struct BudgetBody {
    #[schema(minimum = 0, maximum = 1000000000000_i64)]
    pub interactive_tokens_per_hour: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000000000_i64)]
    pub interactive_tokens_per_day: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000000000_i64)]
    pub background_tokens_per_hour: Option<i64>,
    #[schema(minimum = 0, maximum = 1000000000000_i64)]
    pub background_tokens_per_day: Option<i64>,
    /// Cost in the currency of the configured per-model prices (`--llm-price`).
    #[schema(minimum = 0, maximum = 1000000000)]
    pub interactive_cost_per_hour: Option<f64>,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub interactive_cost_per_day: Option<f64>,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub background_cost_per_hour: Option<f64>,
    #[schema(minimum = 0, maximum = 1000000000)]
    pub background_cost_per_day: Option<f64>,
}

/// Tokens and cost one class spent in the current UTC hour and day, and when those windows
/// roll (cost: calls of priced models; spend is counted while a budget is set).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpendView {
    pub tokens_this_hour: i64,
    pub tokens_today: i64,
    pub cost_this_hour: f64,
    pub cost_today: f64,
    pub hour_ends: chrono::DateTime<chrono::Utc>,
    pub day_ends: chrono::DateTime<chrono::Utc>,
}

/// The budget and what was spent against it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    #[serde(flatten)]
    pub limits: BudgetBody,
    pub interactive: SpendView,
    pub background: SpendView,
}

impl BudgetBody {
    fn limits(self) -> Result<Limits, AppError> {
        let tokens = [
            (
                "interactive_tokens_per_hour",
                self.interactive_tokens_per_hour,
            ),
            (
                "interactive_tokens_per_day",
                self.interactive_tokens_per_day,
            ),
            (
                "background_tokens_per_hour",
                self.background_tokens_per_hour,
            ),
            ("background_tokens_per_day", self.background_tokens_per_day),
        ];
        let costs = [
            ("interactive_cost_per_hour", self.interactive_cost_per_hour),
            ("interactive_cost_per_day", self.interactive_cost_per_day),
            ("background_cost_per_hour", self.background_cost_per_hour),
            ("background_cost_per_day", self.background_cost_per_day),
        ];
        for (name, v) in tokens {
            within(name, v, 0, MAX_TOKENS)?;
        }
        for (name, v) in costs {
            within(name, v, 0.0, MAX_COST)?;
        }
        Ok(Limits {
            interactive_tokens_per_hour: self.interactive_tokens_per_hour,
            interactive_tokens_per_day: self.interactive_tokens_per_day,
            background_tokens_per_hour: self.background_tokens_per_hour,
            background_tokens_per_day: self.background_tokens_per_day,
            interactive_cost_per_hour: self.interactive_cost_per_hour,
            interactive_cost_per_day: self.interactive_cost_per_day,
            background_cost_per_hour: self.background_cost_per_hour,
            background_cost_per_day: self.background_cost_per_day,
        })
    }

    fn of(l: Limits) -> BudgetBody {
        BudgetBody {
            interactive_tokens_per_hour: l.interactive_tokens_per_hour,
            interactive_tokens_per_day: l.interactive_tokens_per_day,
            background_tokens_per_hour: l.background_tokens_per_hour,
            background_tokens_per_day: l.background_tokens_per_day,
            interactive_cost_per_hour: l.interactive_cost_per_hour,
            interactive_cost_per_day: l.interactive_cost_per_day,
            background_cost_per_hour: l.background_cost_per_hour,
            background_cost_per_day: l.background_cost_per_day,
        }
    }
}

/// A limit, when given, between `min` and `max`.
fn within<T: PartialOrd + Copy + std::fmt::Display>(
    name: &str,
    v: Option<T>,
    min: T,
    max: T,
) -> Result<(), AppError> {
    match v {
        Some(v) if !(min..=max).contains(&v) => Err(AppError::Validation(format!(
            "{name} must be between {min} and {max}, got {v}"
        ))),
        _ => Ok(()),
    }
}

async fn view(state: &AppState, project: &str) -> Result<BudgetView, AppError> {
    let limits = db::limits(&state.pool, project).await?;
    let spend = |s: db::Spent| SpendView {
        tokens_this_hour: s.hour,
        tokens_today: s.day,
        cost_this_hour: s.cost_hour,
        cost_today: s.cost_day,
        hour_ends: s.hour_ends,
        day_ends: s.day_ends,
    };
    Ok(BudgetView {
        limits: BudgetBody::of(limits),
        interactive: spend(db::spent(&state.pool, project, BudgetClass::Interactive).await?),
        background: spend(db::spent(&state.pool, project, BudgetClass::Background).await?),
    })
}

/// The project's LLM budget and what was spent this UTC hour and day (admin).
#[utoipa::path(get, path = "/v1/budget", tag = "budget",
    responses((status = 200, body = BudgetView), (status = 403, body = ErrorBody)))]
pub async fn read(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<BudgetView>, AppError> {
    Ok(Json(view(&state, &who.project).await?))
}

/// Set the project's LLM budget (every limit: an absent one is unlimited). Spend is counted
/// while a budget is set; every replica sees a change within two seconds.
#[utoipa::path(put, path = "/v1/budget", tag = "budget", request_body = BudgetBody,
    responses((status = 200, body = BudgetView), (status = 422, body = ErrorBody)))]
pub async fn set(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<BudgetBody>,
) -> Result<Json<BudgetView>, AppError> {
    let limits = body.limits()?;
    db::set_limits(&state.pool, &who.project, &limits).await?;
    state.llm.budget_changed(&who.project);
    Ok(Json(view(&state, &who.project).await?))
}
