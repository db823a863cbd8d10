//! The LLM part of a rerank: item summaries and the profile (memory, then Postgres, then
//! one LLM call shared by concurrent requests and finished in the background if the request
//! gives up), then the ranking call.

use std::sync::Arc;

use tracing::{Instrument, info_span};
use uuid::Uuid;

use super::cache::{CachedProfile, ProfileKey, SummaryKey};
use super::{Fallback, LlmRanking, Prompts, RankInfo, RerankRequest, Reranker, UsedProfile};
use crate::agp::rank::{self, RankError, RankMode, RankOptions};
use crate::agp::{LlmCall, profile, summarize};
use crate::llm::{CallContext, LlmError, Role, Tally};
use crate::store::rerank::{self as db, ItemLite};
use crate::store::states::ProfileWriter;

/// Time after the deadline for a call that ran into it to report back.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

impl Reranker {
    /// The LLM's order, or why there is none (a fallback reason and a public message).
    pub(super) async fn ranked_by_llm(
        &self,
        req: &RerankRequest,
        prompts: &Prompts,
        history: &[Arc<ItemLite>],
        candidates: &[Arc<ItemLite>],
        tally: &Arc<Tally>,
        mode: RankMode,
    ) -> Result<LlmRanking, (Fallback, String)> {
        if history.is_empty() {
            return Err((
                Fallback::ColdStart,
                "no history for this user: nothing to write a profile from".into(),
            ));
        }
        let ctx = self.call_context(req, tally);
        let deadline = ctx.deadline.unwrap_or_else(std::time::Instant::now);
        let opts = RankOptions {
            mode,
            ..self.settings.rank
        };
        let work = self.profile_and_rank(req, prompts, history, candidates, &ctx, &opts);
        // LLM calls stop at the deadline themselves (and tell the circuit breaker); this
        // bound catches the rest (a summary or profile still being written, a slow query).
        match tokio::time::timeout_at((deadline + DEADLINE_GRACE).into(), work).await {
            Ok(answer) => answer,
            Err(_) => Err((
                Fallback::LlmTimeout,
                format!(
                    "the rerank deadline of {} ms passed (AGP_RERANK_DEADLINE_MS)",
                    self.settings.deadline.as_millis()
                ),
            )),
        }
    }

    async fn profile_and_rank(
        &self,
        req: &RerankRequest,
        prompts: &Prompts,
        history: &[Arc<ItemLite>],
        candidates: &[Arc<ItemLite>],
        ctx: &CallContext,
        opts: &RankOptions,
    ) -> Result<LlmRanking, (Fallback, String)> {
        let fail = |e: LlmError| {
            let reason = if e.is_timeout() {
                Fallback::LlmTimeout
            } else if e.is_over_budget() {
                Fallback::Budget
            } else {
                Fallback::LlmError
            };
            if reason == Fallback::Budget {
                // Expected while the budget is spent: counted in metrics, not a warning.
                tracing::debug!(request_id = %req.request_id, error = %e, "rerank answers without the LLM: budget");
            } else {
                tracing::warn!(request_id = %req.request_id, error = %e, reason = reason.as_str(), "rerank falls back");
            }
            (reason, e.public_message())
        };
        let project = req.project.as_str();
        let texts = self
            .history_texts(project, history, prompts.summary.as_ref(), ctx)
            .instrument(info_span!("rerank.summaries", items = history.len()))
            .await
            .map_err(fail)?;
        let (version, template) = &prompts.profile;
        let profile = self
            .profile(
                project,
                &req.user_id,
                &texts,
                *version,
                template,
                ctx,
                ProfileWriter::Inline,
            )
            .instrument(info_span!("rerank.profile", p_gen = version))
            .await
            .map_err(fail)?;
        let cand_texts: Vec<String> = candidates
            .iter()
            .map(|c| summarize::item_text(&c.title, c.text.as_deref(), c.attributes.as_ref()))
            .collect();
        let refs: Vec<&str> = cand_texts.iter().map(String::as_str).collect();
        let llm = LlmCall {
            client: &self.llm,
            ctx,
        };
        let ranked = rank::llm_rank(
            &llm,
            &prompts.rank.1,
            Some(&profile.text),
            None,
            &refs,
            opts,
        )
        .instrument(info_span!("rerank.rank", candidates = refs.len()))
        .await;
        match ranked {
            Ok(o) => Ok(LlmRanking {
                order: Some(o.order),
                fallback: None,
                repaired: o.repaired,
                profile_id: Some(profile.id),
                profile_source: Some(profile.source),
                rank: Some(RankInfo {
                    mode: opts.mode,
                    calls: o.calls,
                    windows_without_logprobs: o.fallback_windows,
                }),
            }),
            Err(RankError::Unusable) => Err((
                Fallback::UnusableOutput,
                "the LLM's ranking answer held no usable candidate number".into(),
            )),
            Err(RankError::Llm(e)) => Err(fail(e)),
        }
    }

    /// Summaries of the history items (cached per content, p_sum version and model), or their
    /// raw metadata when summaries are off.
    pub async fn history_texts(
        &self,
        project: &str,
        history: &[Arc<ItemLite>],
        sum: Option<&(i32, Arc<String>)>,
        ctx: &CallContext,
    ) -> Result<Vec<String>, LlmError> {
        let raw: Vec<String> = history
            .iter()
            .map(|i| summarize::item_text(&i.title, i.text.as_deref(), i.attributes.as_ref()))
            .collect();
        let Some((version, template)) = sum else {
            return Ok(raw);
        };
        let model = self
            .llm
            .model(Role::Summarize)
            .ok_or_else(|| LlmError::NotConfigured("summarize".into()))?
            .to_string();
        let key = |i: &ItemLite| SummaryKey {
            project: project.to_string(),
            item: i.id.clone(),
            content_hash: i.content_hash.clone(),
            version: *version,
            model: model.clone(),
        };
        let mut out: Vec<Option<String>> = history
            .iter()
            .map(|i| self.caches.summaries.get(&key(i)).map(|s| s.to_string()))
            .collect();
        let missing: Vec<(&str, &[u8])> = history
            .iter()
            .zip(&out)
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| (i.id.as_str(), i.content_hash.as_slice()))
            .collect();
        if !missing.is_empty() {
            match db::get_summaries(&self.pool, project, &missing, *version, &model).await {
                Ok(found) => {
                    for (slot, item) in out.iter_mut().zip(history) {
                        if slot.is_none()
                            && let Some(s) = found.get(&item.id)
                        {
                            self.caches.summaries.insert(key(item), Arc::new(s.clone()));
                            *slot = Some(s.clone());
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "summary cache lookup failed"),
            }
        }
        let todo: Vec<usize> = (0..history.len()).filter(|&i| out[i].is_none()).collect();
        // One LLM call per missing summary, shared by concurrent requests for the same item.
        let made = futures_util::future::join_all(todo.iter().map(|&i| {
            let item = &history[i];
            let raw = &raw[i];
            async move {
                let key = key(item);
                let (pool, llm, caches) =
                    (self.pool.clone(), self.llm.clone(), self.caches.clone());
                let (template, raw, ctx) = (template.clone(), raw.clone(), ctx.without_deadline());
                self.summary_flights
                    .run(key.clone(), || {
                        // Detached: a rerank that gives up at its deadline still leaves the
                        // summary for the next request.
                        detached(async move {
                            let s = summarize::summarize(
                                &crate::agp::LlmCall {
                                    client: &llm,
                                    ctx: &ctx,
                                },
                                &template,
                                &raw,
                            )
                            .await?;
                            let k = &key;
                            if let Err(e) = db::put_summary(
                                &pool,
                                &k.project,
                                &k.item,
                                &k.content_hash,
                                k.version,
                                &k.model,
                                &s,
                            )
                            .await
                            {
                                tracing::warn!(error = %e, "could not store a summary");
                            }
                            let s = Arc::new(s);
                            caches.summaries.insert(key, s.clone());
                            Ok(s)
                        })
                    })
                    .await
            }
        }))
        .await;
        for (&i, s) in todo.iter().zip(made) {
            out[i] = Some(s?.to_string());
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The profile for this history under this `p_gen` version: memory, then Postgres, then
    /// one LLM call shared by all concurrent requests (and refreshes) for the same key.
    /// `writer` says who asks (a rerank, or a refresh ahead); it is stored with a profile this
    /// call writes.
    #[allow(clippy::too_many_arguments)]
    pub async fn profile(
        &self,
        project: &str,
        user: &str,
        texts: &[String],
        version: i32,
        template: &str,
        ctx: &CallContext,
        writer: ProfileWriter,
    ) -> Result<UsedProfile, LlmError> {
        let model = self
            .llm
            .model(Role::Profile)
            .ok_or_else(|| LlmError::NotConfigured("profile".into()))?
            .to_string();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let key = ProfileKey {
            project: project.to_string(),
            user: user.to_string(),
            history_hash: profile::history_hash(&refs),
            version,
            model: model.clone(),
        };
        if let Some(p) = self.caches.profiles.get(&key) {
            return Ok(UsedProfile::of(p, false));
        }
        let (pool, llm, caches) = (self.pool.clone(), self.llm.clone(), self.caches.clone());
        let (template, texts, ctx) = (template.to_string(), texts.to_vec(), ctx.without_deadline());
        let (p, written) = self
            .profile_flights
            .run(key.clone(), || {
                // Detached: a rerank that gives up at its deadline still leaves the profile
                // for the user's next request.
                detached(async move {
                    let k = &key;
                    let slot = k.slot();
                    let found = db::get_profile(&pool, slot).await;
                    match found {
                        Ok(Some(row)) => {
                            let v = cached(row);
                            caches.profiles.insert(key.clone(), v.clone());
                            return Ok((v, false));
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "profile cache lookup failed"),
                    }
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    let text = profile::generate(
                        &crate::agp::LlmCall {
                            client: &llm,
                            ctx: &ctx,
                        },
                        &template,
                        &refs,
                    )
                    .await?;
                    let stored = db::put_profile(&pool, slot, &text, writer).await;
                    let v = match stored {
                        Ok(row) => cached(row),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not store a profile");
                            CachedProfile {
                                id: Uuid::new_v4(),
                                text: Arc::new(text),
                                written_by: writer,
                            }
                        }
                    };
                    caches.profiles.insert(key.clone(), v.clone());
                    Ok((v, true))
                })
            })
            .await?;
        Ok(UsedProfile::of(p, written))
    }
}

fn cached(row: db::StoredProfile) -> CachedProfile {
    CachedProfile {
        id: row.id,
        text: Arc::new(row.profile),
        written_by: row.written_by,
    }
}

/// Runs `fut` as its own task, so that it finishes even if the caller stops waiting.
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, LlmError>> + Send + 'static,
) -> Result<T, LlmError> {
    tokio::spawn(fut.in_current_span())
        .await
        .unwrap_or_else(|e| Err(LlmError::Garbage(format!("background task failed: {e}"))))
}
