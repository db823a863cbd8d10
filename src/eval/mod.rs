//! Offline evaluation over plain data: user splits, held-out items and candidate lists
//! (protocols), the cases of a seed, metrics, the request parameters and methods, and the
//! scorer that ranks cases with the rerank path's own code, and the tuning of a blend on
//! validation users. The jobs in `jobs/` run it.

pub mod cases;
pub mod metrics;
pub mod params;
pub mod protocol;
pub mod score;
pub mod split;
pub mod tune;

use serde::{Deserialize, Serialize};

/// One user's interaction sequence (item ids, history order: oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSeq {
    pub user_id: String,
    pub items: Vec<String>,
}

/// How the held-out item is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holdout {
    /// The user's last item (data with a real order, e.g. LLMRank's Amazon files).
    Last,
    /// A seeded random item (data without timestamps: Yelp core-40, Goodreads).
    Random,
}

/// Candidate-list protocol (see AGP.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// 1 target + (n - 1) seeded random items the user never interacted with, shuffled.
    Llmrank,
    /// A base recommender's top-n for the user; users whose target is outside are reported.
    BaseTopk,
    /// Production traffic: logged reranks with a positive outcome; the list as the caller
    /// sent it, the positive item as the target, the history the service used; split by time.
    Logged,
}

pub use crate::rankers::BaseRecommender;
