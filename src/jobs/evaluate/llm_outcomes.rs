//! An LLM method's outcomes on an evaluation's cases, and what the report shows besides
//! metrics (notes, the prompts used). Shared by the evaluation's LLM methods (`evaluate.rs`)
//! and the `fused` method (`fused.rs`), which fuses an LLM method's orders.

use crate::agp::case::{Case, CaseOutcome};
use crate::agp::prompt::PromptName;
use crate::eval::params::Scored;
use crate::eval::score::{ProfileMode, Scorer};
use crate::jobs::context::{JobContext, JobError};
use crate::report::PromptShown;

/// What an evaluation's report shows besides metrics: its notes and the prompts it used.
#[derive(Default)]
pub(in crate::jobs) struct NotesAndPrompts {
    pub notes: Vec<String>,
    pub prompts: Vec<PromptShown>,
}

impl NotesAndPrompts {
    /// Adds a note once (the fused method ranks the evaluated users a second time).
    pub fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }
}

/// An LLM method's outcome on each case (noting failures and repairs, and the prompts it
/// used).
pub(in crate::jobs) async fn llm_outcomes(
    ctx: &JobContext,
    scorer: &Scorer,
    cases: &[Case],
    what: Scored,
    seed: u64,
    shown: &mut NotesAndPrompts,
) -> Result<Vec<CaseOutcome>, JobError> {
    let mode = match what.profile_version() {
        Some(v) => {
            let template = ctx.template(PromptName::PGen, v).await?;
            if !shown.prompts.iter().any(|p| p.version == v) {
                shown.prompts.push(PromptShown {
                    label: format!("p_gen v{v}"),
                    version: v,
                    template: template.to_string(),
                });
            }
            ProfileMode::Prompt {
                version: v,
                template,
            }
        }
        None => ProfileMode::HistoryOnly,
    };
    let call = ctx.call_ctx();
    let tick = || ctx.tick(|p| p.done += 1);
    let rank_mode = what.rank_mode(scorer.rank_mode());
    let outcomes = scorer
        .score_all(cases, &mode, rank_mode, &call, &tick)
        .await;
    let name = what.name();
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    if failures > 0 {
        shown.note(format!(
            "seed {seed}, {name}: {failures} of {} lists fell back to the incoming order (LLM failure)",
            outcomes.len()
        ));
    }
    let repaired = outcomes.iter().filter(|o| o.repaired).count();
    if repaired > 0 {
        shown.note(format!(
            "seed {seed}, {name}: {repaired} of {} ranking answers needed repair",
            outcomes.len()
        ));
    }
    let generated = outcomes
        .iter()
        .filter(|o| o.windows_without_logprobs > 0)
        .count();
    if generated > 0 {
        shown.note(format!(
            "seed {seed}, {name}: the LLM server returned no log-probabilities for {generated} of {} \
             lists; they were ranked in generation mode instead",
            outcomes.len()
        ));
    }
    Ok(outcomes)
}
