//! The AGP method (AGP.md) as plain code over plain data and an LLM handle (`Chat`): no SQL,
//! no job context. The rerank path, the evaluation and the optimization job all use it.
//!
//! - `prompt`: the six prompts, placeholders, defaults, validation, rendering
//! - `summarize`, `profile`, `rank`: steps 0-2 (item summary, user profile, listwise ranking)
//! - `case`: a user with a held-out item and a list to rank, and what scoring it gave
//! - `feedback`, `update`: steps 3-5 (`p_fb` per user, `p_agg` per batch, `p_opt` candidates,
//!   the update strength)
//! - `length`: brings over-long answers under their limits at sentence boundaries
//! - `screen`: rejects candidates that leak, run long or lost their placeholder
//! - `accept`: the acceptance decision (paper or validation)
//! - `batch`: one AGP batch from scoring to the accepted candidate, over a `BatchHost`

pub mod accept;
pub mod batch;
pub mod case;
pub mod feedback;
pub mod length;
pub mod profile;
pub mod prompt;
pub mod rank;
pub mod screen;
pub mod summarize;
pub mod update;

use std::future::Future;

use crate::llm::{CallContext, ChatRequest, ChatResponse, LlmClient, LlmError, Role};

/// The LLM as the method sees it: one chat completion for a role. `LlmCall` is the real
/// one; unit tests script it.
pub trait Chat: Sync {
    fn chat(
        &self,
        role: Role,
        req: &ChatRequest,
    ) -> impl Future<Output = Result<ChatResponse, LlmError>> + Send;
}

/// The real LLM: the client with the caller's context (priority, deadline, tally, ids).
#[derive(Debug, Clone, Copy)]
pub struct LlmCall<'a> {
    pub client: &'a LlmClient,
    pub ctx: &'a CallContext,
}

impl Chat for LlmCall<'_> {
    fn chat(
        &self,
        role: Role,
        req: &ChatRequest,
    ) -> impl Future<Output = Result<ChatResponse, LlmError>> + Send {
        self.client.chat(role, req, self.ctx)
    }
}
