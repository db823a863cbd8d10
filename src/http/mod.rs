//! The HTTP edge: one file per area, each with its own `router()`, plus the shared error
//! type, middleware and the OpenAPI document.

pub mod error;
pub mod items;
pub mod jobs;
pub mod middleware;
pub mod openapi;
pub mod prompts;
pub mod rerank;
pub mod service;
pub mod users;
