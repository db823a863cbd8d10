//! Non-LLM rankers behind one seam: the production fallback answers with them and the
//! evaluation's baselines are them, so both are the same code.
//!
//! - `Ranker` orders a given candidate list for a user (ties keep the incoming order):
//!   `Incoming`, `Random`, `Popularity`, `ItemKnn` (item-to-item co-occurrence kNN over a
//!   fitted `Cooc` model, from the last L items or the whole history).
//! - `fusion` fuses several orders of one list with weights (weighted Borda count): the
//!   production answer and the evaluation's `fused` method.
//! - `Recommend` picks the top-n of the whole catalog for a history: the base recommenders
//!   of the `base-topk` protocol.
//!
//! Leakage note: fit `Popularity` and `Cooc` on training sequences from which every evaluated
//! user's held-out item has been removed.

pub mod cooc;
pub mod fusion;
pub mod popularity;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

pub use cooc::{Cooc, ItemKnn};
pub use fusion::{BlendWeights, Component, fuse};
pub use popularity::Popularity;

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

/// Orders a candidate list for a user: a permutation of `0..candidates.len()`, best first.
pub trait Ranker: Send + Sync {
    fn rank(&self, user: &str, history: &[String], candidates: &[String]) -> Vec<usize>;
    fn name(&self) -> &'static str;
}

impl<R: Ranker + ?Sized> Ranker for &R {
    fn rank(&self, user: &str, history: &[String], candidates: &[String]) -> Vec<usize> {
        (**self).rank(user, history, candidates)
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// A base recommender: the top-n items for a history (oldest first), never an item of the
/// history, best first.
pub trait Recommend {
    fn top_n(&self, history: &[String], n: usize) -> Vec<String>;
}

/// The candidates as they came.
#[derive(Debug, Clone, Copy, Default)]
pub struct Incoming;

impl Ranker for Incoming {
    fn rank(&self, _user: &str, _history: &[String], candidates: &[String]) -> Vec<usize> {
        (0..candidates.len()).collect()
    }
    fn name(&self) -> &'static str {
        "incoming"
    }
}

/// A seeded random order, different per user and stable per (seed, user).
#[derive(Debug, Clone, Copy)]
pub struct Random {
    pub seed: u64,
}

impl Ranker for Random {
    fn rank(&self, user: &str, _history: &[String], candidates: &[String]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ crate::hash::stable_hash(user));
        order.shuffle(&mut rng);
        order
    }
    fn name(&self) -> &'static str {
        "random"
    }
}

/// Fits the base recommender `kind` with its defaults (co-occurrence: window
/// [`Cooc::DEFAULT_WINDOW`], recent [`Cooc::DEFAULT_RECENT`]).
pub fn fit_base(kind: BaseRecommender, seqs: &[Vec<String>]) -> Box<dyn Recommend + Send + Sync> {
    match kind {
        BaseRecommender::Popularity => Box::new(Popularity::fit(seqs)),
        BaseRecommender::Cooc => {
            Box::new(Cooc::fit(seqs, Cooc::DEFAULT_WINDOW, Cooc::DEFAULT_RECENT))
        }
    }
}

/// Small sequences with hand-computed counts, for the rankers' tests.
#[cfg(test)]
pub(crate) mod testdata {
    pub fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// [a,b,c], [a,b], [b,d]: pop a=2, b=3, c=1, d=1;
    /// window 5: cooc(a,b)=2, cooc(a,c)=1, cooc(b,c)=1, cooc(b,d)=1, cooc(a,d)=cooc(c,d)=0.
    pub fn data() -> Vec<Vec<String>> {
        vec![
            strings(&["a", "b", "c"]),
            strings(&["a", "b"]),
            strings(&["b", "d"]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;

    #[test]
    fn fit_base_dispatches() {
        let p = fit_base(BaseRecommender::Popularity, &data());
        assert_eq!(p.top_n(&strings(&["a"]), 3), strings(&["b", "c", "d"]));
        let c = fit_base(BaseRecommender::Cooc, &data());
        assert_eq!(c.top_n(&strings(&["a"]), 3), strings(&["b", "c", "d"]));
    }

    #[test]
    fn incoming_and_random_are_permutations_random_is_stable_per_user() {
        let c = strings(&["a", "b", "c", "d", "e"]);
        assert_eq!(Incoming.rank("u", &[], &c), vec![0, 1, 2, 3, 4]);
        let r = Random { seed: 7 };
        let mut o = r.rank("u1", &[], &c);
        assert_eq!(o, r.rank("u1", &[], &c));
        o.sort();
        assert_eq!(o, vec![0, 1, 2, 3, 4]);
        let spread = (0..20)
            .map(|u| r.rank(&format!("u{u}"), &[], &c))
            .collect::<std::collections::HashSet<_>>();
        assert!(spread.len() > 5, "orders differ between users");
    }
}

/// How the LLM ranks a window of candidates.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum RankMode {
    /// The model writes the whole order as JSON (one forward pass per output token).
    #[default]
    Generate,
    /// One output token: the letter of the best candidate; the window is ordered by the
    /// log-probabilities the server returns for the alternatives of that token (FIRST).
    Logprobs,
}

impl RankMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RankMode::Generate => "generate",
            RankMode::Logprobs => "logprobs",
        }
    }
}
