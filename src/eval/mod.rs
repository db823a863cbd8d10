//! Offline evaluation: user splits, candidate protocols, base recommenders, metrics, reports.
//! Pure code over plain data; the runner (`run`) wires it to the store and the LLM.

pub mod base;
pub mod metrics;
pub mod protocol;
pub mod report;
pub mod run;
pub mod score;
pub mod split;

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
}

/// The base recommender of the `base-topk` protocol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BaseRecommender {
    /// Most-interacted items overall.
    Popularity,
    /// Item-to-item co-occurrence kNN over the user's recent items.
    Cooc,
}

/// One evaluation case: a user, the history before the held-out target, and the list to rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub user_id: String,
    /// Item ids before the target, oldest first (all of them; the caller keeps the last L).
    pub history: Vec<String>,
    pub target: String,
    /// Candidate item ids in their incoming ("base") order.
    pub candidates: Vec<String>,
}

impl Case {
    /// 1-based position of the target in `order` (indices into `candidates`), if present.
    pub fn target_rank(&self, order: &[usize]) -> Option<usize> {
        order
            .iter()
            .position(|&i| self.candidates.get(i) == Some(&self.target))
            .map(|p| p + 1)
    }
}
