//! When the LLM cannot be used: `strict` requests get 502/504, the others the fallback
//! order (the incoming order, or the popularity ranker over the candidates' counts).

use std::sync::Arc;

use super::{Answer, Fallback, FallbackRanker, RerankError, RerankRequest, Reranker};
use crate::rankers::{Incoming, Popularity, Ranker};
use crate::store::rerank::{self as db, ItemLite};

impl Reranker {
    /// The answer without the LLM, or the `strict` error.
    pub(super) async fn fall_back(
        &self,
        req: &RerankRequest,
        reason: Fallback,
        detail: String,
        candidates: &[Arc<ItemLite>],
    ) -> Result<Answer, RerankError> {
        if req.strict {
            match reason {
                Fallback::LlmTimeout => return Err(RerankError::StrictTimeout(detail)),
                Fallback::LlmError | Fallback::UnusableOutput => {
                    return Err(RerankError::StrictUpstream(detail));
                }
                Fallback::ColdStart => {}
            }
        }
        Ok(Answer {
            order: self.fallback_order(&req.project, candidates).await,
            fallback: Some((reason, detail)),
            repaired: false,
            profile_id: None,
        })
    }

    async fn fallback_order(&self, project: &str, candidates: &[Arc<ItemLite>]) -> Vec<usize> {
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        if self.settings.fallback_ranker == FallbackRanker::Popularity {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            match db::popularity(&self.pool, project, &refs).await {
                Ok(counts) => {
                    let counts = counts
                        .into_iter()
                        .map(|(k, v)| (k, v.max(0) as u64))
                        .collect();
                    return Popularity::from_counts(counts).rank("", &[], &ids);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "popularity lookup failed; using the incoming order")
                }
            }
        }
        Incoming.rank("", &[], &ids)
    }
}
