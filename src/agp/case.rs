//! What the method learns from: a user's history, the item they chose next (held out), and
//! a list to rank that contains it; and what ranking it with a profile gave.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One case: a user, the history before the held-out target, and the list to rank.
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

    /// The target's rank in `order`, or one past the end when it is missing.
    pub fn rank_or_last(&self, order: &[usize]) -> usize {
        self.target_rank(order).unwrap_or(self.candidates.len() + 1)
    }
}

/// What happened to one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseOutcome {
    /// 1-based rank of the target in the final order (the incoming order on failure).
    pub rank: usize,
    /// Final order (indices into the case's candidates).
    pub order: Vec<usize>,
    /// The profile used, when one was written.
    pub profile: Option<Arc<String>>,
    pub repaired: bool,
    /// Why the LLM order could not be had (the incoming order was scored instead).
    pub failure: Option<String>,
    /// Log-probability windows answered without log-probabilities (ranked by generation).
    pub windows_without_logprobs: usize,
}

/// Mean rank of outcomes (0 for none).
pub fn mean_rank(o: &[CaseOutcome]) -> f64 {
    if o.is_empty() {
        0.0
    } else {
        o.iter().map(|x| x.rank as f64).sum::<f64>() / o.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_rank_is_one_based_and_missing_is_last() {
        let c = Case {
            user_id: "u".into(),
            history: vec![],
            target: "b".into(),
            candidates: vec!["a".into(), "b".into(), "c".into()],
        };
        assert_eq!(c.target_rank(&[1, 0, 2]), Some(1));
        assert_eq!(c.target_rank(&[0, 2, 1]), Some(3));
        assert_eq!(c.rank_or_last(&[0, 2]), 4);
    }
}
