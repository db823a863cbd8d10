//! AGP Rerank: an HTTP service that reranks a recommender's candidate lists with an LLM,
//! personalized by user profiles that an LLM writes with a learned prompt (AGP).
//!
//! The folders are the layers (lower first, none imports one above it): `catalog/` the data
//! model; `store/` every SQL statement, the embedded Postgres and the journal; `llm/` the
//! client; `agp/` the method as plain code; `rankers/` the non-LLM rankers; `serving/` the
//! rerank path; `eval/` splits, protocols, metrics; `report/`; `jobs/` the job bodies;
//! `cluster/` the leader's cluster-wide work (experiment looks, autopilot ticks, log
//! partitions); `http/` the edge. `import/` reads datasets and loads them into a project;
//! `simulator.rs` replays a data set's users against a running service (`agp simulate`).

pub mod agp;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod eval;
pub mod experiment;
pub mod hash;
pub mod http;
pub mod import;
pub mod jobs;
pub mod llm;
pub mod rankers;
pub mod report;
pub mod secret;
pub mod serving;
pub mod simulator;
pub mod store;
pub mod telemetry;
mod text_enum;
