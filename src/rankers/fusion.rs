//! Weighted rank fusion: several orders of one candidate list into one.
//!
//! Weighted Borda count: each component gives a candidate `(n - 1 - position) / (n - 1)`
//! points (1 for its first, 0 for its last), a candidate's score is the weighted mean of its
//! points, and the list is sorted by score, full ties keeping the incoming order.
//!
//! Why Borda rather than reciprocal-rank fusion: every component here ranks the same whole
//! list (RRF's strength, fusing partial lists, does not arise); Borda points are linear in
//! position, so a weight reads directly as "how many positions of another component's vote
//! this one outweighs", which keeps tuned weights interpretable; and the score does not depend
//! on a constant such as RRF's k = 60, which on lists of 20 would make every position count
//! almost the same while a small k would ignore everything below the first few. Two useful
//! properties follow: a single component with a positive weight is reproduced exactly, and two
//! equally weighted components that disagree completely (one the reverse of the other) tie
//! everywhere, which gives back the incoming order.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest weight accepted for one component.
pub const MAX_WEIGHT: f64 = 1000.0;

/// The weights of a blend, by component (absent = 0). Only the ratios matter.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BlendWeights {
    /// The LLM's ranking (0: the LLM is not called at all).
    #[schema(minimum = 0, maximum = 1000)]
    pub llm: f64,
    /// The order the candidates came in (the caller's recommender).
    #[schema(minimum = 0, maximum = 1000)]
    pub incoming: f64,
    /// Most-interacted items first.
    #[schema(minimum = 0, maximum = 1000)]
    pub popularity: f64,
    /// Co-occurrence item-kNN from the user's recent items.
    #[schema(minimum = 0, maximum = 1000)]
    pub item_knn: f64,
}

/// A component of a blend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Llm,
    Incoming,
    Popularity,
    ItemKnn,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Llm,
        Component::Incoming,
        Component::Popularity,
        Component::ItemKnn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Llm => "llm",
            Component::Incoming => "incoming",
            Component::Popularity => "popularity",
            Component::ItemKnn => "item_knn",
        }
    }
}

impl BlendWeights {
    /// The default blend of a new project: the LLM and the caller's order, equally weighted.
    pub const DEFAULT: BlendWeights = BlendWeights {
        llm: 1.0,
        incoming: 1.0,
        popularity: 0.0,
        item_knn: 0.0,
    };

    /// The LLM alone (today's behaviour before blends).
    pub const LLM_ONLY: BlendWeights = BlendWeights {
        llm: 1.0,
        incoming: 0.0,
        popularity: 0.0,
        item_knn: 0.0,
    };

    /// A component's weight.
    pub fn get(&self, c: Component) -> f64 {
        match c {
            Component::Llm => self.llm,
            Component::Incoming => self.incoming,
            Component::Popularity => self.popularity,
            Component::ItemKnn => self.item_knn,
        }
    }

    /// Sets a component's weight.
    pub fn set(&mut self, c: Component, w: f64) {
        match c {
            Component::Llm => self.llm = w,
            Component::Incoming => self.incoming = w,
            Component::Popularity => self.popularity = w,
            Component::ItemKnn => self.item_knn = w,
        }
    }

    /// Components with a positive weight.
    pub fn active(&self) -> Vec<Component> {
        Component::ALL
            .into_iter()
            .filter(|&c| self.get(c) > 0.0)
            .collect()
    }

    /// Every weight finite, between 0 and [`MAX_WEIGHT`], and at least one positive; the
    /// message names the field under `field`.
    pub fn validate(&self, field: &str) -> Result<(), String> {
        for c in Component::ALL {
            let w = self.get(c);
            if !w.is_finite() || !(0.0..=MAX_WEIGHT).contains(&w) {
                return Err(format!(
                    "{field}.{} must be between 0 and {MAX_WEIGHT}, got {w}",
                    c.as_str()
                ));
            }
        }
        if self.active().is_empty() {
            return Err(format!("{field} needs at least one positive weight"));
        }
        Ok(())
    }

    /// The same blend with the LLM left out (when it cannot be used); `None` when nothing
    /// else has weight.
    pub fn without_llm(&self) -> Option<BlendWeights> {
        let w = BlendWeights { llm: 0.0, ..*self };
        (!w.active().is_empty()).then_some(w)
    }

    /// Scaled so the largest weight is 1 (ratios kept), for display and comparison.
    pub fn normalized(&self) -> BlendWeights {
        let max = Component::ALL
            .into_iter()
            .map(|c| self.get(c))
            .fold(0.0, f64::max);
        if max <= 0.0 {
            return *self;
        }
        let mut w = *self;
        for c in Component::ALL {
            w.set(c, self.get(c) / max);
        }
        w
    }
}

/// Borda points of each candidate in an order: `points[candidate]`, 1 for the first, 0 for
/// the last (1 for a single candidate).
fn points(order: &[usize], n: usize) -> Vec<f64> {
    let mut p = vec![0.0; n];
    let denom = n.saturating_sub(1).max(1) as f64;
    for (pos, &c) in order.iter().enumerate() {
        if c < n {
            p[c] = if n == 1 {
                1.0
            } else {
                (n - 1 - pos) as f64 / denom
            };
        }
    }
    p
}

/// Fuses `(weight, order)` pairs over `n` candidates (each order a permutation of `0..n`,
/// best first): the fused order and each candidate's score (weighted mean of its Borda
/// points, in [0, 1]; indexed by candidate). Components with weight 0 are ignored; with no
/// positive weight, the incoming order.
pub fn fuse(components: &[(f64, &[usize])], n: usize) -> (Vec<usize>, Vec<f64>) {
    let total: f64 = components.iter().map(|(w, _)| w.max(0.0)).sum();
    let mut score = vec![0.0; n];
    if total > 0.0 {
        for (w, order) in components.iter().filter(|(w, _)| *w > 0.0) {
            for (s, p) in score.iter_mut().zip(points(order, n)) {
                *s += w / total * p;
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: full ties keep the incoming order. Scores are compared rounded to 1e-9, so
    // floating-point noise in the weighted sums cannot break a tie.
    order.sort_by_key(|&c| std::cmp::Reverse((score[c] * 1e9).round() as i64));
    (order, score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn borda_arithmetic_hand_computed() {
        // 4 candidates; A = [2, 0, 1, 3], B = [0, 1, 2, 3]; weights 2 and 1.
        // points A: c2 1, c0 2/3, c1 1/3, c3 0; B: c0 1, c1 2/3, c2 1/3, c3 0
        // score = (2 A + B) / 3: c0 (4/3 + 1) / 3 = 7/9, c1 (2/3 + 2/3) / 3 = 4/9,
        // c2 (2 + 1/3) / 3 = 7/9, c3 0 -> c0 and c2 tie: incoming order, c0 first.
        let a = [2, 0, 1, 3];
        let b = [0, 1, 2, 3];
        let (order, score) = fuse(&[(2.0, &a), (1.0, &b)], 4);
        assert!(close(score[0], 7.0 / 9.0) && close(score[2], 7.0 / 9.0));
        assert!(close(score[1], 4.0 / 9.0) && close(score[3], 0.0));
        assert_eq!(order, vec![0, 2, 1, 3]);
        // weight 3 on A: c2 (3 + 1/3) / 4 = 0.833 > c0 (2 + 1) / 4 = 0.75
        let (order, _) = fuse(&[(3.0, &a), (1.0, &b)], 4);
        assert_eq!(order, vec![2, 0, 1, 3]);
    }

    #[test]
    fn one_component_is_reproduced_and_scale_does_not_matter() {
        let a = [3, 1, 4, 0, 2];
        let b = [0, 1, 2, 3, 4];
        assert_eq!(fuse(&[(1.0, &a), (0.0, &b)], 5).0, a.to_vec());
        assert_eq!(fuse(&[(0.5, &a)], 5).0, a.to_vec());
        assert_eq!(
            fuse(&[(2.0, &a), (1.0, &b)], 5).0,
            fuse(&[(20.0, &a), (10.0, &b)], 5).0
        );
        // nothing weighted: incoming
        assert_eq!(fuse(&[(0.0, &a)], 5).0, vec![0, 1, 2, 3, 4]);
        assert_eq!(fuse(&[], 3).0, vec![0, 1, 2]);
        assert_eq!(fuse(&[(1.0, &[0])], 1), (vec![0], vec![1.0]));
    }

    #[test]
    fn a_reversed_equal_partner_cancels_to_the_incoming_order() {
        let llm: Vec<usize> = (0..20).rev().collect();
        let incoming: Vec<usize> = (0..20).collect();
        let (order, score) = fuse(&[(1.0, &llm), (1.0, &incoming)], 20);
        assert_eq!(order, incoming);
        assert!(score.iter().all(|s| close(*s, 0.5)));
    }

    #[test]
    fn weights_validate_and_drop_the_llm() {
        assert!(BlendWeights::DEFAULT.validate("blend").is_ok());
        let none = BlendWeights::default();
        assert!(
            none.validate("w")
                .unwrap_err()
                .contains("at least one positive")
        );
        let bad = BlendWeights {
            popularity: -1.0,
            ..BlendWeights::DEFAULT
        };
        assert!(bad.validate("w").unwrap_err().contains("w.popularity"));
        let nan = BlendWeights {
            llm: f64::NAN,
            ..BlendWeights::DEFAULT
        };
        assert!(nan.validate("w").is_err());
        assert_eq!(BlendWeights::LLM_ONLY.without_llm(), None);
        assert_eq!(
            BlendWeights::DEFAULT.without_llm(),
            Some(BlendWeights {
                incoming: 1.0,
                ..BlendWeights::default()
            })
        );
        let w = BlendWeights {
            llm: 2.0,
            incoming: 4.0,
            ..BlendWeights::default()
        };
        assert_eq!(w.normalized().llm, 0.5);
        assert_eq!(w.active(), vec![Component::Llm, Component::Incoming]);
        let parsed: BlendWeights = serde_json::from_str(r#"{"llm": 1}"#).unwrap();
        assert_eq!(parsed, BlendWeights::LLM_ONLY);
        assert!(serde_json::from_str::<BlendWeights>(r#"{"bm25": 1}"#).is_err());
    }
}
