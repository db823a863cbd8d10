//! The HTTP edge: one file per area, each with its own `router()`, plus what they share: the
//! error type and its JSON body (`error`), the request extractors that answer with that body
//! (`extract`), middleware, the OpenAPI document, and the server loop with its connection limits.

pub mod autopilot;
pub mod blends;
pub mod budget;
pub mod console;
pub mod error;
pub mod experiments;
pub mod extract;
pub mod items;
pub mod jobs;
pub mod middleware;
pub mod openapi;
pub mod prompts;
pub mod rate_limit;
pub mod rerank;
pub mod server;
pub mod service;
pub mod state;
pub mod users;
