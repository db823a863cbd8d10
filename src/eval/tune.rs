//! Tuning a blend on validation users: every weight combination of a small grid fuses the
//! component orders already computed for each case (no LLM calls), and the combination with
//! the best NDCG@10 wins (then MRR, then fewer components, then grid order). Pure code.

use super::metrics::{self, Metrics};
use crate::rankers::{BlendWeights, Component, fuse};

/// One case's orders by each blend component (indices into its candidates, best first), and
/// where its target is.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseOrders {
    /// Index of the target among the candidates (`None`: not in the list).
    pub target: Option<usize>,
    pub n: usize,
    /// The LLM's order (`None`: no LLM method, or the LLM failed on this case: then the
    /// incoming order stands in, as in production).
    pub llm: Option<Vec<usize>>,
    pub popularity: Vec<usize>,
    pub item_knn: Vec<usize>,
}

impl CaseOrders {
    /// The component's order (the incoming order for `Incoming`, and for a missing LLM order).
    fn order(&self, c: Component) -> Vec<usize> {
        match c {
            Component::Llm => self.llm.clone().unwrap_or_else(|| (0..self.n).collect()),
            Component::Incoming => (0..self.n).collect(),
            Component::Popularity => self.popularity.clone(),
            Component::ItemKnn => self.item_knn.clone(),
        }
    }

    /// 1-based rank of the target in `order` (one past the end when it is not in the list).
    fn rank_in(&self, order: &[usize]) -> usize {
        self.target
            .and_then(|t| order.iter().position(|&i| i == t))
            .map_or(self.n + 1, |p| p + 1)
    }
}

/// Weights tried for each non-LLM component; the LLM's weight is 0 or 1 (only ratios matter).
pub const GRID: [f64; 5] = [0.0, 0.5, 1.0, 2.0, 4.0];

/// Every combination of the grid (with the LLM only when `with_llm`), none all-zero.
pub fn grid(with_llm: bool) -> Vec<BlendWeights> {
    let llm: &[f64] = if with_llm { &[1.0, 0.0] } else { &[0.0] };
    let mut out = Vec::new();
    for &l in llm {
        for &i in &GRID {
            for &p in &GRID {
                for &k in &GRID {
                    let w = BlendWeights {
                        llm: l,
                        incoming: i,
                        popularity: p,
                        item_knn: k,
                    };
                    if !w.active().is_empty() {
                        out.push(w);
                    }
                }
            }
        }
    }
    out
}

/// Target ranks of the cases under the fusion `w`.
pub fn fused_ranks(cases: &[CaseOrders], w: &BlendWeights) -> Vec<usize> {
    cases
        .iter()
        .map(|c| {
            let orders: Vec<(f64, Vec<usize>)> = w
                .active()
                .into_iter()
                .map(|comp| (w.get(comp), c.order(comp)))
                .collect();
            let parts: Vec<(f64, &[usize])> =
                orders.iter().map(|(x, o)| (*x, o.as_slice())).collect();
            c.rank_in(&fuse(&parts, c.n).0)
        })
        .collect()
}

/// The result of tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuned {
    pub weights: BlendWeights,
    /// The winner's metrics on the tuning cases.
    pub metrics: Metrics,
    /// Each single component's metrics on the tuning cases.
    pub singles: Vec<(Component, Metrics)>,
    /// Combinations tried.
    pub tried: usize,
}

/// Picks the best blend of `grid` on `cases`.
pub fn tune(cases: &[CaseOrders], grid: &[BlendWeights]) -> Tuned {
    let mut best: Option<(BlendWeights, Metrics)> = None;
    for w in grid {
        let m = metrics::from_ranks(&fused_ranks(cases, w));
        let better = match &best {
            None => true,
            Some((bw, bm)) => {
                let key = |w: &BlendWeights, m: &Metrics| {
                    (
                        (m.ndcg_10 * 1e9).round() as i64,
                        (m.mrr * 1e9).round() as i64,
                        -(w.active().len() as i64),
                    )
                };
                key(w, &m) > key(bw, bm)
            }
        };
        if better {
            best = Some((*w, m));
        }
    }
    let (weights, metrics) = best.unwrap_or((BlendWeights::DEFAULT, Metrics::default()));
    let with_llm = grid.iter().any(|w| w.llm > 0.0);
    let singles = Component::ALL
        .into_iter()
        .filter(|&c| c != Component::Llm || with_llm)
        .map(|c| {
            let mut w = BlendWeights::default();
            w.set(c, 1.0);
            (c, metrics::from_ranks(&fused_ranks(cases, &w)))
        })
        .collect();
    Tuned {
        weights: weights.normalized(),
        metrics,
        singles,
        tried: grid.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case of 4 candidates with the target at index `t`, components as given.
    fn case(t: usize, llm: Option<[usize; 4]>, pop: [usize; 4], knn: [usize; 4]) -> CaseOrders {
        CaseOrders {
            target: Some(t),
            n: 4,
            llm: llm.map(|o| o.to_vec()),
            popularity: pop.to_vec(),
            item_knn: knn.to_vec(),
        }
    }

    #[test]
    fn the_grid_covers_every_combination_once() {
        assert_eq!(grid(false).len(), 5 * 5 * 5 - 1);
        assert_eq!(grid(true).len(), 2 * 5 * 5 * 5 - 1);
        assert!(grid(false).iter().all(|w| w.llm == 0.0));
    }

    #[test]
    fn an_informative_llm_wins_and_a_reversed_one_gets_no_weight() {
        // target index 2; incoming puts it third, popularity second, item-kNN first
        // (3 users); an informative LLM puts it first; a reversed one last.
        let knn = [2, 0, 1, 3];
        let pop = [0, 2, 1, 3];
        let good: Vec<CaseOrders> = (0..3)
            .map(|_| case(2, Some([2, 1, 0, 3]), pop, knn))
            .chain(std::iter::once(case(
                3,
                Some([3, 0, 1, 2]),
                pop,
                [0, 1, 2, 3],
            )))
            .collect();
        let t = tune(&good, &grid(true));
        assert!(t.weights.llm > 0.0, "{t:?}");
        assert_eq!(
            metrics::from_ranks(&fused_ranks(&good, &t.weights)).hr_1,
            1.0
        );

        let bad: Vec<CaseOrders> = (0..4)
            .map(|_| case(2, Some([3, 1, 0, 2]), pop, knn))
            .collect();
        let t = tune(&bad, &grid(true));
        assert_eq!(t.weights.llm, 0.0, "{t:?}");
        // item-kNN alone already puts every target first: the simplest such blend wins
        assert_eq!(t.weights.active(), vec![Component::ItemKnn]);
        assert_eq!(t.metrics.hr_1, 1.0);
        let knn_alone = t
            .singles
            .iter()
            .find(|s| s.0 == Component::ItemKnn)
            .unwrap();
        assert_eq!(knn_alone.1.hr_1, 1.0);
    }

    #[test]
    fn a_missing_llm_order_stands_in_as_the_incoming_order() {
        let c = case(1, None, [0, 1, 2, 3], [0, 1, 2, 3]);
        let w = BlendWeights::LLM_ONLY;
        assert_eq!(fused_ranks(std::slice::from_ref(&c), &w), vec![2]);
        let outside = CaseOrders { target: None, ..c };
        assert_eq!(fused_ranks(&[outside], &w), vec![5]);
    }
}
