//! One AGP batch (AGP.md): score the batch's users with the current `p_gen` and ask each
//! user whose true item was not first for a critique (no barrier between the two), aggregate
//! the critiques, ask for `verify_steps` rewrites at once, then try them in order (screened
//! candidates are rejected unscored) until one is accepted.
//!
//! The batch runs in a `BatchHost`, which scores prompts on cases and stores candidates (the job
//! gives it the database and the rerank path's caches; unit tests give it arithmetic), and
//! calls the LLM through `Chat`. What happened is returned as steps for the caller to store.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Chat;
use super::accept::{self, Acceptance, OnBatch};
use super::case::{Case, CaseOutcome, mean_rank};
use super::feedback::{self, Titles};
use super::screen::screen;
use super::update::{self, UpdateInput};
use crate::llm::usage::{Cost, TallySnapshot, cost_between};

// The names `jobs/optimize.rs` still uses (it is left untouched here).

/// A `p_gen` under test.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub version: i32,
    pub template: Arc<String>,
}

/// What a batch runs in: it scores prompts, stores candidates, meters usage and says when to stop.
pub trait BatchHost: Sync {
    /// Scores one case with a profile written by `prompt`.
    fn score(&self, case: &Case, prompt: &Prompt) -> impl Future<Output = CaseOutcome> + Send;
    /// Validation NDCG@10 of `prompt` (validation acceptance).
    fn validate(&self, prompt: &Prompt) -> impl Future<Output = f64> + Send;
    /// Stores a candidate as a `p_gen` version (the same text once per run); `None` when the
    /// text cannot be a version. `rejected` says why it was rejected, if it was.
    fn store_candidate(
        &self,
        text: &str,
        parent: i32,
        rejected: &str,
    ) -> impl Future<Output = anyhow::Result<Option<i32>>> + Send;
    /// LLM usage so far (step costs are differences).
    fn usage(&self) -> TallySnapshot;
    /// Whether the run was asked to stop.
    fn cancelled(&self) -> bool;
}

/// What kind of step a row of an optimization is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// The starting prompt scored on validation.
    Baseline,
    /// Every true item of the batch was ranked first: nothing to learn.
    Skip,
    /// The batch's scores and aggregated critique.
    Feedback,
    /// One candidate prompt: scored and accepted or not, or rejected unscored.
    Candidate,
}

impl StepKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Baseline => "baseline",
            StepKind::Skip => "skip",
            StepKind::Feedback => "feedback",
            StepKind::Candidate => "candidate",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<StepKind> {
        [
            StepKind::Baseline,
            StepKind::Skip,
            StepKind::Feedback,
            StepKind::Candidate,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One step of a batch, for the caller to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    pub version: Option<i32>,
    pub scores: Value,
    pub accepted: Option<bool>,
    pub reason: String,
    pub cost: Cost,
    /// The candidate was scored (its scores belong with its version).
    pub scored: bool,
}

/// The settings of the loop a batch needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub verify_steps: usize,
    pub acceptance: Acceptance,
    pub position_feedback: bool,
    pub aggregate: bool,
    pub max_prompt_words: usize,
    pub update_temperature: f64,
}

/// The prompts of steps 3-5.
#[derive(Debug, Clone, PartialEq)]
pub struct Templates {
    pub feedback: Arc<String>,
    pub aggregate: Arc<String>,
    pub update: Arc<String>,
}

/// The data set's item titles and user ids: what a prompt must not leak, and what critiques cite.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetNames {
    pub titles: Titles,
    pub title_list: Vec<String>,
    pub users: Vec<String>,
}

/// One batch to run.
#[derive(Debug, Clone)]
pub struct BatchSpec<'a> {
    pub cases: &'a [Case],
    pub current: Prompt,
    /// Best validation NDCG@10 so far (validation acceptance).
    pub best_validation: f64,
    /// Makes the update seeds of this batch (with the candidate's number appended).
    pub seed_key: String,
    pub settings: &'a Settings,
    pub templates: &'a Templates,
    /// The data set's titles and user ids.
    pub known: &'a DatasetNames,
}

/// What the batch accepted, if anything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accepted {
    pub version: i32,
    /// Its validation NDCG@10 (validation acceptance).
    pub validation: Option<f64>,
}

/// The steps of a batch and its accepted candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub steps: Vec<Step>,
    pub accepted: Option<Accepted>,
}

/// Why a batch did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("the batch was cancelled")]
    Cancelled,
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

/// Meters a step: LLM usage and wall time since it began.
struct Meter<'l, L: BatchHost> {
    host: &'l L,
    before: TallySnapshot,
    t0: Instant,
}

impl<'l, L: BatchHost> Meter<'l, L> {
    fn start(host: &'l L) -> Self {
        Meter {
            host,
            before: host.usage(),
            t0: Instant::now(),
        }
    }

    fn cost(&self) -> Cost {
        cost_between(
            &self.before,
            &self.host.usage(),
            self.t0.elapsed().as_millis() as u64,
        )
    }
}

/// What scoring the batch with the current prompt found.
struct Scored {
    mean: f64,
    errors: usize,
    critiques: Vec<String>,
}

/// Scores every case with the current prompt; a user whose true item is not first is asked
/// for a critique as soon as their ranking is known.
async fn score_current(llm: &impl Chat, host: &impl BatchHost, spec: &BatchSpec<'_>) -> Scored {
    let s = spec.settings;
    let scored = futures_util::future::join_all(spec.cases.iter().map(|case| async move {
        let out = host.score(case, &spec.current).await;
        let critique = if out.rank > 1 {
            feedback::critique(
                llm,
                &spec.templates.feedback,
                &spec.current.template,
                &spec.known.titles,
                case,
                &out,
                s.position_feedback,
            )
            .await
        } else {
            None
        };
        (out, critique)
    }))
    .await;
    let (outcomes, critiques): (Vec<CaseOutcome>, Vec<Option<String>>) = scored.into_iter().unzip();
    Scored {
        mean: mean_rank(&outcomes),
        errors: outcomes.iter().filter(|o| o.rank > 1).count(),
        critiques: critiques.into_iter().flatten().collect(),
    }
}

/// Runs one batch.
pub async fn run(
    llm: &impl Chat,
    host: &impl BatchHost,
    spec: &BatchSpec<'_>,
) -> Result<BatchOutcome, Stopped> {
    let s = spec.settings;
    let meter = Meter::start(host);
    let cur = score_current(llm, host, spec).await;
    let mut steps = Vec::new();
    if cur.errors == 0 {
        steps.push(Step {
            kind: StepKind::Skip,
            version: None,
            scores: json!({"batch_mean_rank": cur.mean}),
            accepted: None,
            reason: "every true item ranked first: nothing to learn".into(),
            cost: meter.cost(),
            scored: false,
        });
        return Ok(BatchOutcome {
            steps,
            accepted: None,
        });
    }
    let critique =
        update::aggregate(llm, &spec.templates.aggregate, &cur.critiques, s.aggregate).await;
    let k = spec.cases.first().map_or(0, |c| c.candidates.len());
    let strength = if s.position_feedback {
        update::update_strength(cur.mean, k)
    } else {
        5
    };
    steps.push(Step {
        kind: StepKind::Feedback,
        version: Some(spec.current.version),
        scores: json!({"batch_mean_rank": cur.mean, "errors": cur.errors, "strength": strength, "critique": critique}),
        accepted: None,
        reason: format!(
            "{} of {} users had the true item below first place",
            cur.errors,
            spec.cases.len()
        ),
        cost: meter.cost(),
        scored: false,
    });
    let input = UpdateInput {
        current: &spec.current.template,
        critique: &critique,
        errors: cur.errors,
        batch_size: spec.cases.len(),
        strength,
        mean_rank: s.position_feedback.then_some(cur.mean),
        max_words: s.max_prompt_words,
        temperature: s.update_temperature,
    };
    let seeds: Vec<u64> = (0..s.verify_steps)
        .map(|attempt| crate::hash::stable_hash(&format!("{}/{attempt}", spec.seed_key)))
        .collect();
    let answers = update::candidates(llm, &spec.templates.update, &input, &seeds).await;
    for answer in answers {
        if host.cancelled() {
            return Err(Stopped::Cancelled);
        }
        let step = try_candidate(host, spec, cur.mean, answer).await?;
        let accepted = step
            .accepted
            .unwrap_or(false)
            .then_some(step.version)
            .flatten()
            .map(|version| Accepted {
                version,
                validation: step
                    .scores
                    .get("validation_ndcg_10")
                    .and_then(Value::as_f64),
            });
        steps.push(step);
        if accepted.is_some() {
            return Ok(BatchOutcome { steps, accepted });
        }
    }
    Ok(BatchOutcome {
        steps,
        accepted: None,
    })
}

/// A candidate step rejected before scoring.
fn rejected(version: Option<i32>, scores: Value, reason: String, cost: Cost) -> Step {
    Step {
        kind: StepKind::Candidate,
        version,
        scores,
        accepted: Some(false),
        reason,
        cost,
        scored: false,
    }
}

/// Screens, stores, scores and decides one candidate.
async fn try_candidate(
    host: &impl BatchHost,
    spec: &BatchSpec<'_>,
    current_mean: f64,
    answer: Result<String, crate::llm::LlmError>,
) -> Result<Step, Stopped> {
    let meter = Meter::start(host);
    let current = &spec.current;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let why = format!("update call failed: {}", e.public_message());
            return Ok(rejected(None, json!({}), why, meter.cost()));
        }
    };
    let (answer, repaired) = update::ensure_history_placeholder(answer);
    let (answer, shortened) = update::fit_candidate(answer, spec.settings.max_prompt_words);
    let noted = |why: String| match &shortened {
        Some(n) => format!("{why} ({n})"),
        None => why,
    };
    if answer.trim() == current.template.trim() {
        let why = "identical to the current prompt".to_string();
        return Ok(rejected(
            Some(current.version),
            json!({}),
            why,
            meter.cost(),
        ));
    }
    let known = spec.known;
    let max_words = spec.settings.max_prompt_words;
    if let Some(why) = screen(&answer, max_words, &known.title_list, &known.users) {
        let why = noted(why);
        let version = host.store_candidate(&answer, current.version, &why).await?;
        return Ok(rejected(
            version,
            json!({"text": answer}),
            why,
            meter.cost(),
        ));
    }
    let version = host
        .store_candidate(&answer, current.version, "")
        .await?
        .unwrap_or(current.version);
    let prompt = Prompt {
        version,
        template: Arc::new(answer),
    };
    let outcomes =
        futures_util::future::join_all(spec.cases.iter().map(|c| host.score(c, &prompt))).await;
    let cand_mean = mean_rank(&outcomes);
    let (accepted, reason, validation) =
        match accept::on_batch(spec.settings.acceptance, current_mean, cand_mean) {
            OnBatch::Decided { accepted, reason } => (accepted, reason, None),
            OnBatch::Validate => {
                let v = host.validate(&prompt).await;
                let (ok, why) =
                    accept::on_validation(current_mean, cand_mean, spec.best_validation, v);
                (ok, why, Some(v))
            }
        };
    let reason = if repaired {
        format!("{reason} ({{{{history}}}} was missing and was added)")
    } else {
        reason
    };
    let reason = noted(reason);
    Ok(Step {
        kind: StepKind::Candidate,
        version: Some(version),
        scores: json!({"batch_mean_rank": cand_mean, "current_batch_mean_rank": current_mean,
                       "validation_ndcg_10": validation, "placeholder_added": repaired,
                       "shortened": shortened.is_some()}),
        accepted: Some(accepted),
        reason,
        cost: meter.cost(),
        scored: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agp::prompt::{PromptName, default_template};
    use crate::llm::{ChatRequest, ChatResponse, LlmError, Role};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers each role from a script; update answers come from a list, in seed order.
    struct ScriptedLlm {
        updates: Vec<&'static str>,
        seeds: Mutex<Vec<u64>>,
        feedback_calls: AtomicUsize,
    }

    impl Chat for ScriptedLlm {
        async fn chat(&self, role: Role, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
            let content = match role {
                Role::Feedback => {
                    self.feedback_calls.fetch_add(1, Ordering::SeqCst);
                    "The profile missed the genre.".to_string()
                }
                Role::Aggregate => "Ask for genres.".to_string(),
                Role::Optimize => {
                    let seed = req.seed.unwrap_or(0);
                    let mut seeds = self.seeds.lock().unwrap();
                    seeds.push(seed);
                    let i = seeds.len() - 1;
                    self.updates.get(i).copied().unwrap_or("").to_string()
                }
                other => panic!("no {other:?} calls in a batch"),
            };
            Ok(ChatResponse {
                content,
                model: "scripted".into(),
                finish_reason: Some("stop".into()),
                prompt_tokens: 1,
                completion_tokens: 1,
                cached_tokens: 0,
                logprobs: None,
                cached: false,
                latency_ms: 0,
                attempts: 1,
            })
        }
    }

    /// Ranks the target first for prompts that say GOOD, last otherwise; validation NDCG is
    /// 0.6 for GOOD, 0.2 otherwise; versions count up from 10.
    #[derive(Default)]
    struct ArithmeticLab {
        scored: Mutex<Vec<String>>,
        stored: Mutex<Vec<(String, String)>>,
    }

    impl BatchHost for ArithmeticLab {
        async fn score(&self, case: &Case, prompt: &Prompt) -> CaseOutcome {
            self.scored
                .lock()
                .unwrap()
                .push(prompt.template.to_string());
            let good = prompt.template.contains("GOOD");
            let t = case
                .candidates
                .iter()
                .position(|c| c == &case.target)
                .unwrap();
            let mut order: Vec<usize> = (0..case.candidates.len()).filter(|&i| i != t).collect();
            if good {
                order.insert(0, t);
            } else {
                order.push(t);
            }
            CaseOutcome {
                rank: case.rank_or_last(&order),
                order,
                profile: Some(Arc::new("profile".into())),
                repaired: false,
                failure: None,
                windows_without_logprobs: 0,
            }
        }
        async fn validate(&self, prompt: &Prompt) -> f64 {
            if prompt.template.contains("GOOD") {
                0.6
            } else {
                0.2
            }
        }
        async fn store_candidate(
            &self,
            text: &str,
            _: i32,
            why: &str,
        ) -> anyhow::Result<Option<i32>> {
            let mut s = self.stored.lock().unwrap();
            s.push((text.to_string(), why.to_string()));
            Ok(Some(9 + s.len() as i32))
        }
        fn usage(&self) -> TallySnapshot {
            TallySnapshot::default()
        }
        fn cancelled(&self) -> bool {
            false
        }
    }

    fn cases() -> Vec<Case> {
        (0..4)
            .map(|u| Case {
                user_id: format!("user{u}"),
                history: vec!["h1".into(), "h2".into()],
                target: "t".into(),
                candidates: vec!["a".into(), "t".into(), "b".into(), "c".into()],
            })
            .collect()
    }

    fn fixtures(acceptance: Acceptance) -> (Settings, Templates, DatasetNames) {
        let t = |n| Arc::new(default_template(n).to_string());
        (
            Settings {
                verify_steps: 3,
                acceptance,
                position_feedback: true,
                aggregate: true,
                max_prompt_words: 50,
                update_temperature: 0.7,
            },
            Templates {
                feedback: t(PromptName::PFb),
                aggregate: t(PromptName::PAgg),
                update: t(PromptName::POpt),
            },
            DatasetNames {
                users: vec!["user1".into()],
                ..Default::default()
            },
        )
    }

    async fn run_with(
        acceptance: Acceptance,
        updates: Vec<&'static str>,
    ) -> (BatchOutcome, ArithmeticLab, ScriptedLlm) {
        let (settings, templates, known) = fixtures(acceptance);
        let llm = ScriptedLlm {
            updates,
            seeds: Mutex::new(Vec::new()),
            feedback_calls: AtomicUsize::new(0),
        };
        let host = ArithmeticLab::default();
        let cases = cases();
        let spec = BatchSpec {
            cases: &cases,
            current: Prompt {
                version: 1,
                template: Arc::new("Current {{history}}".into()),
            },
            best_validation: 0.2,
            seed_key: "job/0/0".into(),
            settings: &settings,
            templates: &templates,
            known: &known,
        };
        let out = run(&llm, &host, &spec).await.unwrap();
        (out, host, llm)
    }

    #[tokio::test]
    async fn a_batch_screens_scores_and_stops_at_the_first_accepted_candidate() {
        let (out, host, llm) = run_with(
            Acceptance::Validation,
            vec![
                "Describe user1 in depth {{history}}",
                "Still weak {{history}}",
                "GOOD profile please",
            ],
        )
        .await;
        assert_eq!(
            llm.feedback_calls.load(Ordering::SeqCst),
            4,
            "every user was wrong"
        );
        let kinds: Vec<StepKind> = out.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Feedback,
                StepKind::Candidate,
                StepKind::Candidate,
                StepKind::Candidate
            ]
        );
        let fb = &out.steps[0];
        assert_eq!(fb.scores["batch_mean_rank"], 4.0);
        assert_eq!(
            fb.scores["strength"], 10,
            "true items last: a large rewrite"
        );
        assert_eq!(fb.scores["critique"], "Ask for genres.");
        // 1: leaks a user id, rejected unscored; 2: scored, not better on the batch... equal,
        // so validated and not better; 3: lost its placeholder (added back), accepted.
        assert!(out.steps[1].reason.contains("user id") && !out.steps[1].scored);
        assert_eq!(out.steps[2].accepted, Some(false));
        assert!(
            out.steps[2].reason.contains("not better"),
            "{}",
            out.steps[2].reason
        );
        assert_eq!(out.steps[3].accepted, Some(true));
        assert!(out.steps[3].reason.contains("was missing and was added"));
        assert_eq!(out.steps[3].scores["validation_ndcg_10"], 0.6);
        assert_eq!(
            out.accepted,
            Some(Accepted {
                version: 12,
                validation: Some(0.6)
            })
        );
        let scored = host.scored.lock().unwrap();
        assert!(
            !scored.iter().any(|t| t.contains("user1")),
            "the leak was never scored"
        );
        assert_eq!(host.stored.lock().unwrap().len(), 3);
        let seeds = llm.seeds.lock().unwrap();
        assert_eq!(seeds.len(), 3);
        assert_ne!(seeds[0], seeds[1], "each candidate has its own seed");
    }

    #[tokio::test]
    async fn paper_mode_needs_a_strictly_better_batch_and_a_perfect_batch_is_skipped() {
        let (out, _, _) = run_with(
            Acceptance::Paper,
            vec![
                "Still weak {{history}}",
                "GOOD {{history}}",
                "never asked {{history}}",
            ],
        )
        .await;
        assert_eq!(out.steps[1].accepted, Some(false));
        assert_eq!(out.steps[2].accepted, Some(true));
        assert_eq!(out.steps.len(), 3, "stops at the first accepted");
        assert_eq!(
            out.accepted,
            Some(Accepted {
                version: 11,
                validation: None
            })
        );

        // Every true item first: one skip step, no LLM work.
        let (settings, templates, known) = fixtures(Acceptance::Paper);
        let llm = ScriptedLlm {
            updates: vec![],
            seeds: Mutex::new(Vec::new()),
            feedback_calls: AtomicUsize::new(0),
        };
        let host = ArithmeticLab::default();
        let cases = cases();
        let spec = BatchSpec {
            cases: &cases,
            current: Prompt {
                version: 3,
                template: Arc::new("GOOD {{history}}".into()),
            },
            best_validation: 0.0,
            seed_key: "k".into(),
            settings: &settings,
            templates: &templates,
            known: &known,
        };
        let out = run(&llm, &host, &spec).await.unwrap();
        assert_eq!(out.steps.len(), 1);
        assert_eq!(out.steps[0].kind, StepKind::Skip);
        assert_eq!(llm.feedback_calls.load(Ordering::SeqCst), 0);
        assert!(out.accepted.is_none());
    }
}
