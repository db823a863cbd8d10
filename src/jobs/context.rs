//! What a job body gets: the database, the LLM, the rerank path's caches, its row, a tally
//! of its LLM usage, progress reporting, the resumable state, and the lookups every job
//! body needs (prompt templates, the evaluation data, titles, stage costs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::agp::case::Case;
use crate::agp::prompt::PromptName;
use crate::eval::cases::{Prepared, prepare_from};
use crate::eval::params::DataParams;
use crate::eval::{Holdout, UserSeq};
use crate::llm::usage::{Cost, TallySnapshot};
use crate::llm::{CallContext, LlmClient, Tally};
use crate::report::StageCost;
use crate::serving::Reranker;
use crate::store::jobs::{self as db, JobRow};
use crate::store::prompts::PRODUCTION;
use crate::store::states::HistoryOrder;

/// What a job shows of its progress (stored as data in `jobs.progress`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
    /// What the job publishes as its best result so far (optimizations: the best version).
    pub best: Option<BestSoFar>,
}

/// The best prompt version a job has found so far, and its validation NDCG@10 when scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestSoFar {
    pub version: i32,
    pub score: Option<f64>,
}

/// What a job publishes about itself (stored with its resume state, which stays private to
/// the job body): the API and the console read this, never the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Published {
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
    pub best: Option<BestSoFar>,
}

impl Published {
    /// The published part of a job row's stored progress (defaults where absent).
    pub fn of(stored: &serde_json::Value) -> Published {
        serde_json::from_value(stored.clone()).unwrap_or_default()
    }
}

/// Receives progress as it happens (the CLI draws bars with it).
pub trait ProgressSink: Send + Sync {
    fn update(&self, p: &Progress, usage: &TallySnapshot);
}

/// How a job body ends without a result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the job was cancelled")]
    Cancelled,
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Failed(e.into())
    }
}

/// `Err(JobError::Failed)` with a message.
pub fn failed(msg: impl std::fmt::Display) -> JobError {
    JobError::Failed(anyhow::anyhow!("{msg}"))
}

/// Everything a job body needs.
pub struct JobContext {
    pub pool: PgPool,
    pub llm: LlmClient,
    pub reranker: Arc<Reranker>,
    pub job: JobRow,
    /// Usage of this attempt (the whole job's usage is in `llm_usage` by job id).
    pub tally: Arc<Tally>,
    cancel: Arc<AtomicBool>,
    sink: Option<Arc<dyn ProgressSink>>,
    progress: Mutex<Progress>,
}

impl JobContext {
    /// Fails the job at once when this worker has no LLM for one of `roles`: the job would
    /// otherwise "succeed" having done nothing.
    pub fn require_llm(&self, roles: &[crate::llm::Role]) -> Result<(), JobError> {
        match roles.iter().find(|r| !self.llm.is_configured(**r)) {
            None => Ok(()),
            Some(r) => Err(failed(format!(
                "no LLM is configured for the {} role on this worker: start it with --llm \
                 (an OpenAI-compatible URL, or `local`)",
                r.as_str()
            ))),
        }
    }

    /// A context for running `job`.
    pub fn new(
        pool: PgPool,
        llm: LlmClient,
        reranker: Arc<Reranker>,
        job: JobRow,
        cancel: Arc<AtomicBool>,
        sink: Option<Arc<dyn ProgressSink>>,
    ) -> Self {
        JobContext {
            pool,
            llm,
            reranker,
            job,
            tally: Arc::new(Tally::default()),
            cancel,
            sink,
            progress: Mutex::new(Progress {
                phase: "starting".into(),
                ..Default::default()
            }),
        }
    }

    /// The job's id.
    pub fn id(&self) -> Uuid {
        self.job.id
    }

    /// The job's project.
    pub fn project(&self) -> &str {
        &self.job.project
    }

    /// The job's parameters, checked.
    pub fn params<P: serde::de::DeserializeOwned>(&self) -> Result<P, JobError> {
        serde_json::from_value(self.job.params.clone())
            .map_err(|e| failed(format!("bad job parameters: {e}")))
    }

    /// A background LLM call context attributed to this job.
    pub fn call_ctx(&self) -> CallContext {
        let mut c =
            CallContext::background(self.job.project.clone()).with_tally(self.tally.clone());
        c.job_id = Some(self.job.id);
        c
    }

    /// Whether cancellation was requested (checked at batch boundaries).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` when cancellation was requested.
    pub fn check_cancel(&self) -> Result<(), JobError> {
        if self.cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The state saved by an earlier attempt, if any (resume from there).
    pub fn saved_state<S: serde::de::DeserializeOwned>(&self) -> Option<S> {
        let v = self.job.progress.get("state").filter(|s| !s.is_null())?;
        match serde_json::from_value(v.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(job = %self.id(), error = %e, "saved state unreadable; starting over");
                None
            }
        }
    }

    /// Updates the displayed progress (no database write).
    pub fn tick(&self, f: impl FnOnce(&mut Progress)) {
        let p = {
            let mut g = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g);
            g.clone()
        };
        if let Some(s) = &self.sink {
            s.update(&p, &self.tally.snapshot());
        }
    }

    /// Saves progress and the resumable state: called after every finished batch. A state
    /// that cannot be serialized fails the job rather than storing nothing over it.
    pub async fn save<S: Serialize>(&self, state: &S) -> Result<(), JobError> {
        let state = serde_json::to_value(state)
            .map_err(|e| failed(format!("cannot serialize the resume state: {e}")))?;
        let p = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let value = serde_json::json!({
            "phase": p.phase, "done": p.done, "total": p.total, "message": p.message,
            "best": p.best, "usage": self.tally.snapshot(), "state": state,
        });
        db::save_progress(&self.pool, self.job.id, &value).await?;
        self.llm.flush_usage().await;
        Ok(())
    }

    /// A stored version's template.
    pub async fn template(&self, name: PromptName, version: i32) -> Result<Arc<String>, JobError> {
        let row =
            crate::store::prompts::version(&self.pool, self.project(), name.as_str(), version)
                .await?
                .ok_or_else(|| failed(format!("{name} version {version} does not exist")))?;
        Ok(Arc::new(row.template))
    }

    /// The version the production label gives (its first arm when split).
    pub async fn production_version(&self, name: PromptName) -> Result<i32, JobError> {
        let label =
            crate::store::prompts::label(&self.pool, self.project(), name.as_str(), PRODUCTION)
                .await?
                .ok_or_else(|| failed(format!("{name} has no production label")))?;
        Ok(label
            .version
            .or_else(|| label.split.and_then(|s| s.first().map(|a| a.version)))
            .unwrap_or(1))
    }

    /// The production template of a prompt.
    pub async fn production_template(&self, name: PromptName) -> Result<Arc<String>, JobError> {
        let v = self.production_version(name).await?;
        self.template(name, v).await
    }

    /// What a report is about: "project P, dataset D (format), protocol X".
    pub async fn subject(&self, data: &DataParams) -> Result<String, JobError> {
        let dataset = crate::store::catalog::dataset(&self.pool, self.project()).await?;
        let protocol = match data.protocol {
            crate::eval::Protocol::Llmrank => "llmrank".to_string(),
            crate::eval::Protocol::Logged => "logged (production traffic)".to_string(),
            crate::eval::Protocol::BaseTopk => format!(
                "base-topk ({})",
                serde_json::to_value(data.base)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        };
        Ok(match dataset {
            Some(d) => format!(
                "project {}, dataset {d}, protocol {protocol}",
                self.project()
            ),
            None => format!("project {}, protocol {protocol}", self.project()),
        })
    }

    /// The cases of one seed from the project's stored interactions.
    pub async fn prepare(&self, p: &DataParams, seed: u64) -> Result<Prepared, JobError> {
        let rows = crate::store::catalog::user_sequences(&self.pool, self.project()).await?;
        let seqs: Vec<UserSeq> = rows
            .into_iter()
            .map(|(user_id, items)| UserSeq { user_id, items })
            .collect();
        if p.protocol == crate::eval::Protocol::Logged {
            let logged =
                crate::store::rerank::logged_cases(&self.pool, self.project(), &p.positive_kinds)
                    .await?;
            return crate::eval::cases::prepare_logged(logged, &seqs, p).map_err(failed);
        }
        let order = crate::store::catalog::history_order(&self.pool, self.project()).await?;
        let holdout = match order {
            HistoryOrder::Unordered => Holdout::Random,
            HistoryOrder::Chronological => Holdout::Last,
        };
        Ok(prepare_from(&seqs, holdout, p, seed))
    }

    /// Titles of every item the cases mention.
    pub async fn item_titles(&self, cases: &[Case]) -> Result<BTreeMap<String, String>, JobError> {
        let mut ids: Vec<&str> = cases
            .iter()
            .flat_map(|c| {
                c.history
                    .iter()
                    .chain(&c.candidates)
                    .chain(std::iter::once(&c.target))
            })
            .map(String::as_str)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(
            crate::store::rerank::items_by_ids(&self.pool, self.project(), &ids)
                .await?
                .into_iter()
                .map(|i| (i.id, i.title))
                .collect(),
        )
    }

    /// The job's LLM cost per stage (from its usage rows, every attempt) and in all.
    pub async fn stage_costs(&self) -> Result<(Vec<StageCost>, Cost), JobError> {
        let rows = crate::store::llm::job_usage_by_role(&self.pool, self.id()).await?;
        let mut total = Cost::default();
        let stages = rows
            .into_iter()
            .map(|(role, t)| {
                let cost = Cost {
                    llm_calls: t.calls,
                    cache_hits: t.cache_hits,
                    prompt_tokens: t.prompt_tokens,
                    completion_tokens: t.completion_tokens,
                    wall_ms: t.latency_ms,
                };
                total += cost;
                StageCost {
                    stage: stage_name(&role).to_string(),
                    cost,
                }
            })
            .collect();
        Ok((stages, total))
    }
}

/// The report's name of the stage an LLM role serves.
fn stage_name(role: &str) -> &str {
    match crate::llm::Role::parse(role) {
        Some(crate::llm::Role::Summarize) => "summaries",
        Some(crate::llm::Role::Profile) => "profiles",
        Some(crate::llm::Role::Rank) => "ranking",
        Some(crate::llm::Role::Feedback) => "feedback",
        Some(crate::llm::Role::Aggregate) => "aggregation",
        Some(crate::llm::Role::Optimize) => "update",
        None => role,
    }
}
