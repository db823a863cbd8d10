//! When the LLM cannot be used: `strict` requests get 502/504; the others are answered by
//! the blend without the LLM (`blend::fused_order`), with the reason in `meta.fallback`.

use super::{Fallback, LlmRanking, RerankError, RerankRequest, Reranker};

impl Reranker {
    /// The LLM-less answer's reason, or the `strict` error.
    pub(super) fn fall_back(
        &self,
        req: &RerankRequest,
        reason: Fallback,
        detail: String,
    ) -> Result<LlmRanking, RerankError> {
        if req.strict {
            match reason {
                Fallback::LlmTimeout => return Err(RerankError::StrictTimeout(detail)),
                Fallback::LlmError | Fallback::UnusableOutput => {
                    return Err(RerankError::StrictUpstream(detail));
                }
                // A spent budget is the operator's choice, not a failure: answered as usual.
                Fallback::ColdStart | Fallback::Budget => {}
            }
        }
        Ok(LlmRanking {
            order: None,
            fallback: Some((reason, detail)),
            repaired: false,
            profile_id: None,
            profile_source: None,
            rank: None,
        })
    }
}
