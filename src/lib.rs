//! AGP Rerank: an HTTP service that reranks a recommender's candidate lists with an LLM,
//! personalized by user profiles that an LLM writes with a learned prompt (AGP).
//!
//! The tree follows the architecture: `http/` is the edge, `store/` holds every SQL
//! statement and the embedded Postgres, `catalog/` the data model, `import/` the bulk readers.

pub mod agp;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod eval;
pub mod hash;
pub mod http;
pub mod import;
pub mod jobs;
pub mod llm;
pub mod rankers;
pub mod report;
pub mod serving;
pub mod store;
pub mod telemetry;
