//! The AGP method as plain code over plain data plus an LLM handle: prompts, summaries,
//! profiles and ranking. The rerank path and the evaluation/optimization jobs share it.

pub mod optimizer;
pub mod profile;
pub mod prompt;
pub mod rank;
pub mod summarize;
