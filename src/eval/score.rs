//! Scores a `p_gen` (or no profile) on evaluation cases with the very code the rerank path
//! uses: the reranker's cached summaries and profiles, then the shared ranking function.

use std::collections::HashMap;
use std::sync::Arc;

use super::params::DataParams;
use crate::agp::case::{Case, CaseOutcome};
use crate::agp::profile;
use crate::agp::rank::{self, RankError, RankMode, RankOptions};
use crate::llm::{CallContext, LlmClient};
use crate::serving::{PromptSelector, RerankError, Reranker};
use crate::store::prompts::PRODUCTION;
use crate::store::rerank::ItemLite;

/// How profiles are made for a method.
#[derive(Debug, Clone)]
pub enum ProfileMode {
    /// No LLM-written profile: the ranking prompt gets the raw recent-items list instead
    /// (the LLMRank-style baseline).
    HistoryOnly,
    /// A profile written by this `p_gen` version.
    Prompt { version: i32, template: Arc<String> },
}

/// Scores cases for one project.
pub struct Scorer {
    reranker: Arc<Reranker>,
    llm: LlmClient,
    project: String,
    items: HashMap<String, Arc<ItemLite>>,
    history_len: usize,
    sum: Option<(i32, Arc<String>)>,
    rank_template: Arc<String>,
    rank_opts: RankOptions,
    /// Cases scored at once (the LLM limiter bounds the real concurrency).
    pub parallel: usize,
}

impl Scorer {
    /// A scorer over the items of `cases` (loaded once), with the production `p_rank` and
    /// (when `summaries`) `p_sum`.
    pub async fn new(
        reranker: Arc<Reranker>,
        llm: LlmClient,
        project: &str,
        cases: &[Case],
        data: &DataParams,
    ) -> Result<Self, RerankError> {
        let (history_len, summaries, rank_repeats) =
            (data.history_len, data.summaries, data.rank_repeats);
        let mut ids: Vec<&str> = cases
            .iter()
            .flat_map(|c| c.history.iter().chain(c.candidates.iter()))
            .map(String::as_str)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let refs: Vec<crate::serving::ItemRef> = ids
            .iter()
            .map(|id| crate::serving::ItemRef {
                id: id.to_string(),
                title: None,
                text: None,
            })
            .collect();
        let loaded = reranker.load_items(project, &refs, "items").await?;
        let items = loaded.into_iter().map(|i| (i.id.clone(), i)).collect();
        let prod = PromptSelector::Label(PRODUCTION.into());
        let (_, rank_template) = reranker
            .resolve_prompt(project, crate::agp::prompt::PromptName::PRank, &prod, "")
            .await?;
        let sum = if summaries {
            Some(
                reranker
                    .resolve_prompt(project, crate::agp::prompt::PromptName::PSum, &prod, "")
                    .await?,
            )
        } else {
            None
        };
        let rank_opts = RankOptions {
            mode: data.rank_mode,
            repeats: rank_repeats.max(1),
            no_cache: false,
            ..reranker.settings.rank
        };
        Ok(Scorer {
            reranker,
            llm,
            project: project.to_string(),
            items,
            history_len: history_len.max(1),
            sum,
            rank_template,
            rank_opts,
            parallel: 16,
        })
    }

    /// The text the LLM sees for an item.
    fn text(&self, id: &str) -> String {
        match self.items.get(id) {
            Some(i) => {
                crate::agp::summarize::item_text(&i.title, i.text.as_deref(), i.attributes.as_ref())
            }
            None => id.to_string(),
        }
    }

    /// The case's last L history items, loaded.
    fn recent(&self, case: &Case) -> Vec<Arc<ItemLite>> {
        let start = case.history.len().saturating_sub(self.history_len);
        case.history[start..]
            .iter()
            .filter_map(|id| self.items.get(id).cloned())
            .collect()
    }

    /// Scores one case.
    /// The rank mode of the evaluation's settings.
    pub fn rank_mode(&self) -> RankMode {
        self.rank_opts.mode
    }

    /// Ranks one case with profiles of `mode`, the LLM ranking in `rank_mode`.
    pub async fn score(
        &self,
        case: &Case,
        mode: &ProfileMode,
        rank_mode: RankMode,
        ctx: &CallContext,
    ) -> CaseOutcome {
        let incoming: Vec<usize> = (0..case.candidates.len()).collect();
        let fail = |why: String| CaseOutcome {
            rank: case
                .target_rank(&incoming)
                .unwrap_or(case.candidates.len() + 1),
            order: incoming.clone(),
            profile: None,
            repaired: false,
            failure: Some(why),
            windows_without_logprobs: 0,
        };
        let recent = self.recent(case);
        let texts = match self
            .reranker
            .history_texts(&self.project, &recent, self.sum.as_ref(), ctx)
            .await
        {
            Ok(t) => t,
            Err(e) => return fail(e.to_string()),
        };
        let (profile_text, profile) = match mode {
            ProfileMode::HistoryOnly => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                (
                    format!(
                        "Items the user interacted with recently, oldest first:\n{}",
                        profile::history_block(&refs)
                    ),
                    None,
                )
            }
            ProfileMode::Prompt { version, template } => {
                match self
                    .reranker
                    .profile(
                        &self.project,
                        &case.user_id,
                        &texts,
                        *version,
                        template,
                        ctx,
                        crate::store::states::ProfileWriter::Inline,
                    )
                    .await
                {
                    Ok(p) => (p.text.to_string(), Some(p.text)),
                    Err(e) => return fail(e.to_string()),
                }
            }
        };
        let cand_texts: Vec<String> = case.candidates.iter().map(|c| self.text(c)).collect();
        let refs: Vec<&str> = cand_texts.iter().map(String::as_str).collect();
        let llm = crate::agp::LlmCall {
            client: &self.llm,
            ctx,
        };
        match rank::llm_rank(
            &llm,
            &self.rank_template,
            Some(&profile_text),
            None,
            &refs,
            &RankOptions {
                mode: rank_mode,
                ..self.rank_opts
            },
        )
        .await
        {
            Ok(o) => CaseOutcome {
                rank: case
                    .target_rank(&o.order)
                    .unwrap_or(case.candidates.len() + 1),
                order: o.order,
                profile,
                repaired: o.repaired,
                failure: None,
                windows_without_logprobs: o.fallback_windows,
            },
            Err(RankError::Unusable) => CaseOutcome {
                profile,
                ..fail("unusable ranking answer".into())
            },
            Err(RankError::Llm(e)) => CaseOutcome {
                profile,
                ..fail(e.to_string())
            },
        }
    }

    /// Makes (and caches) the summaries the cases' profiles will need, without scoring.
    pub async fn prefetch_summaries(&self, cases: &[Case], ctx: &CallContext) {
        if self.sum.is_none() {
            return;
        }
        futures_util::future::join_all(cases.iter().map(|c| async move {
            let recent = self.recent(c);
            let _ = self
                .reranker
                .history_texts(&self.project, &recent, self.sum.as_ref(), ctx)
                .await;
        }))
        .await;
    }

    /// Scores many cases, `parallel` at a time, calling `tick` after each.
    pub async fn score_all(
        &self,
        cases: &[Case],
        mode: &ProfileMode,
        rank_mode: RankMode,
        ctx: &CallContext,
        tick: &(dyn Fn() + Sync),
    ) -> Vec<CaseOutcome> {
        let mut out = Vec::with_capacity(cases.len());
        for chunk in cases.chunks(self.parallel.max(1)) {
            let done = futures_util::future::join_all(chunk.iter().map(|c| async move {
                let r = self.score(c, mode, rank_mode, ctx).await;
                tick();
                r
            }))
            .await;
            out.extend(done);
        }
        out
    }
}
