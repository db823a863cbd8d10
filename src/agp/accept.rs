//! Accepting a candidate prompt (AGP.md). `paper`: re-score the candidate on the same batch;
//! keep it only if the mean true-item rank strictly improves. `validation` (beyond the
//! paper): it must not be worse on the batch, then it must beat the best validation
//! NDCG@10 so far; the best prompts are kept in a beam, and the run stops early after
//! `patience` batches without an improvement.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a candidate prompt is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Acceptance {
    /// The paper's rule: re-score on the same batch; keep if the mean true-item rank strictly improves.
    Paper,
    /// Not worse on the batch, and strictly better validation NDCG@10 than the best so far.
    Validation,
}

/// The decision after the candidate was scored on the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum OnBatch {
    /// Decided without validation: accepted or not, and why.
    Decided { accepted: bool, reason: String },
    /// Passed the batch; score it on the validation users, then call `on_validation`.
    Validate,
}

/// The decision on the batch (mean ranks: lower is better).
pub fn on_batch(rule: Acceptance, current_mean: f64, candidate_mean: f64) -> OnBatch {
    match rule {
        Acceptance::Paper => {
            let accepted = candidate_mean < current_mean;
            OnBatch::Decided {
                accepted,
                reason: format!(
                    "batch mean rank {current_mean:.2} -> {candidate_mean:.2}{}",
                    if accepted { "" } else { ": not better" }
                ),
            }
        }
        Acceptance::Validation if candidate_mean > current_mean => OnBatch::Decided {
            accepted: false,
            reason: format!(
                "worse on the batch: mean rank {current_mean:.2} -> {candidate_mean:.2}"
            ),
        },
        Acceptance::Validation => OnBatch::Validate,
    }
}

/// The decision on validation NDCG@10 (higher is better): strictly better than the best.
pub fn on_validation(
    current_mean: f64,
    candidate_mean: f64,
    best: f64,
    candidate: f64,
) -> (bool, String) {
    let accepted = candidate > best;
    (
        accepted,
        format!(
            "batch mean rank {current_mean:.2} -> {candidate_mean:.2}; validation NDCG@10 {best:.4} -> {candidate:.4}{}",
            if accepted { "" } else { ": not better" }
        ),
    )
}

/// The beam after accepting `version` with validation score `score`: best first, `width` kept.
pub fn push_beam(beam: &mut Vec<(i32, f64)>, version: i32, score: f64, width: usize) {
    beam.push((version, score));
    beam.sort_by(|a, b| b.1.total_cmp(&a.1));
    beam.truncate(width.max(1));
}

/// Whether the run stops early: validation acceptance, a patience, and that many batches in
/// a row without an accepted candidate.
pub fn stop_early(rule: Acceptance, patience: usize, since_improvement: usize) -> bool {
    rule == Acceptance::Validation && patience > 0 && since_improvement >= patience
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_accepts_only_a_strictly_better_batch() {
        let d = |c, n| on_batch(Acceptance::Paper, c, n);
        assert!(matches!(
            d(5.0, 4.0),
            OnBatch::Decided { accepted: true, .. }
        ));
        assert!(
            matches!(d(5.0, 5.0), OnBatch::Decided { accepted: false, ref reason } if reason.contains("not better"))
        );
        assert!(matches!(
            d(5.0, 6.0),
            OnBatch::Decided {
                accepted: false,
                ..
            }
        ));
    }

    #[test]
    fn validation_screens_on_the_batch_then_needs_a_better_validation_score() {
        assert!(matches!(
            on_batch(Acceptance::Validation, 5.0, 5.5),
            OnBatch::Decided { accepted: false, ref reason } if reason.starts_with("worse on the batch")
        ));
        assert_eq!(
            on_batch(Acceptance::Validation, 5.0, 5.0),
            OnBatch::Validate,
            "a tie passes"
        );
        assert_eq!(
            on_batch(Acceptance::Validation, 5.0, 3.0),
            OnBatch::Validate
        );
        let (ok, why) = on_validation(5.0, 4.0, 0.40, 0.45);
        assert!(ok && why.contains("0.4000 -> 0.4500"), "{why}");
        let (ok, why) = on_validation(5.0, 4.0, 0.40, 0.40);
        assert!(!ok && why.ends_with("not better"), "{why}");
    }

    #[test]
    fn the_beam_keeps_the_best_and_early_stop_needs_patience() {
        let mut beam = vec![(1, 0.3)];
        push_beam(&mut beam, 2, 0.5, 2);
        push_beam(&mut beam, 3, 0.4, 2);
        assert_eq!(beam, vec![(2, 0.5), (3, 0.4)]);
        assert!(stop_early(Acceptance::Validation, 3, 3));
        assert!(!stop_early(Acceptance::Validation, 3, 2));
        assert!(!stop_early(Acceptance::Validation, 0, 99), "0: never");
        assert!(
            !stop_early(Acceptance::Paper, 3, 99),
            "paper runs every batch"
        );
    }
}
